//! Write canaries as evidence: when a watch's canary is due on its mount (at most one
//! outstanding per mount, bounded with the mount checks), what its answer means for the
//! mount's target (`not_writable` with the step and errno, or cleared), and what an answer that
//! does not come within `detect.probe_timeout` means (`not_writable`, "timed out").

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use nix::errno::Errno;
use tracing::{debug, warn};

use super::{
    Signal,
    engine::{Engine, log_transition},
};
use crate::{
    metrics::CanaryLabels,
    scan::canary::{self, CanaryOutcome},
    topology::MountEntry,
};

/// Whether a canary's `errno` comes from this namespace's read-only view of a filesystem that
/// is itself writable (skipped), rather than from the filesystem (a failure).
fn only_the_view_is_read_only(errno: Errno, entry: &MountEntry) -> bool {
    errno == Errno::EROFS && entry.read_only().is_none() && entry.view_read_only()
}

/// One mount's canary: the attempt in flight, when the last one started, where it writes.
#[derive(Debug, Default)]
pub(super) struct CanaryFollow {
    since: Option<Instant>,
    last: Option<Instant>,
    timeout_reported: bool,
    dir: PathBuf,
    /// The sandbox-read-only warning was logged (once per mount).
    sandbox_warned: bool,
}

impl Engine {
    /// Mounts whose watch asks for a canary: mount point -> (directory, period). The first
    /// watch on a mount wins.
    fn canaries(&self) -> BTreeMap<PathBuf, (PathBuf, Duration)> {
        let mut out = BTreeMap::new();
        for (w, ws) in self.cfg.watch.iter().zip(&self.watches) {
            if let (false, Some(m)) = (w.canary.is_zero(), ws.mount.as_ref()) {
                out.entry(PathBuf::from(m))
                    .or_insert((w.path.clone(), w.canary));
            }
        }
        out
    }

    fn count_canary(&self, dir: &Path, outcome: &str) {
        self.metrics
            .canary_writes
            .get_or_create(&CanaryLabels {
                target: dir.display().to_string(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// At each scan: start the canaries that are due, report the ones that do not answer.
    pub(super) fn follow_canaries(&mut self, now: SystemTime) {
        let wanted = self.canaries();
        let timeout = self.cfg.detect.probe_timeout;
        let mps: Vec<PathBuf> = self.mounts.keys().cloned().collect();
        for mp in mps {
            match wanted.get(&mp) {
                Some((dir, period)) => self.follow_canary(&mp, dir, *period, timeout, now),
                None => {
                    // No canary (any more) on this mount: nothing to say about writes.
                    if let Some(o) = self.mounts.get_mut(&mp)
                        && let Some(t) = o.target.clear(Signal::NotWritable, now)
                    {
                        log_transition(&o.target, &t);
                    }
                }
            }
        }
    }

    fn follow_canary(
        &mut self,
        mp: &Path,
        dir: &Path,
        period: Duration,
        timeout: Duration,
        now: SystemTime,
    ) {
        let Some(o) = self.mounts.get_mut(mp) else {
            return;
        };
        if let Some(since) = o.canary.since {
            let waited = since.elapsed();
            if waited >= timeout && !o.canary.timeout_reported {
                o.canary.timeout_reported = true;
                warn!(path = %o.canary.dir.display(), waited_s = waited.as_secs_f64(), "write canary timed out");
                let detail = format!(
                    "write canary under {} timed out: no answer after {:.1}s (create, write 4 KiB, fsync)",
                    o.canary.dir.display(),
                    waited.as_secs_f64()
                );
                if let Some(t) = o.target.raise(Signal::NotWritable, detail, now) {
                    log_transition(&o.target, &t);
                }
                let dir = o.canary.dir.clone();
                self.count_canary(&dir, "timeout");
            }
            return;
        }
        if o.canary.last.is_some_and(|t| t.elapsed() < period) {
            return;
        }
        if self.checks_outstanding >= self.checks_max {
            self.count_canary(dir, "skipped");
            return;
        }
        self.checks_outstanding += 1;
        let started = Instant::now();
        o.canary.since = Some(started);
        o.canary.last = Some(started);
        o.canary.timeout_reported = false;
        o.canary.dir = dir.to_path_buf();
        canary::spawn(
            self.check_tx.clone(),
            dir.to_path_buf(),
            mp.to_path_buf(),
            o.entry.mount_id,
        );
    }

    /// A canary answered (late ones too: a hung write that returns clears or updates).
    pub(super) fn on_canary_done(&mut self, mp: &Path, outcome: CanaryOutcome) {
        let now = SystemTime::now();
        let Some(o) = self.mounts.get_mut(mp) else {
            return;
        };
        o.canary.since = None;
        let dir = o.canary.dir.clone();
        let counted = match outcome {
            CanaryOutcome::Written { elapsed } => {
                debug!(path = %dir.display(), ms = elapsed.as_millis(), "write canary ok");
                if let Some(t) = o.target.clear(Signal::NotWritable, now) {
                    log_transition(&o.target, &t);
                }
                "ok"
            }
            // The filesystem is writable but this namespace's view of the mount is not (the
            // unit's ProtectSystem=strict, where the start-up remount could not lift it): the
            // runtime may well write, so this says nothing about the storage. EROFS through a
            // view that is rw is the filesystem refusing writes (ext4's emergency read-only
            // after a journal abort, which mountinfo shows only on newer kernels): a failure.
            CanaryOutcome::Failed { errno, .. } if only_the_view_is_read_only(errno, &o.entry) => {
                if !o.canary.sandbox_warned {
                    o.canary.sandbox_warned = true;
                    warn!(path = %dir.display(), "write canary skipped: the mount is read-only only in the agent's sandbox");
                }
                "skipped"
            }
            CanaryOutcome::Failed { step, errno } => {
                let refused = if errno == Errno::EROFS && o.entry.read_only().is_none() {
                    " (the mount is rw: the filesystem itself refuses writes)"
                } else {
                    ""
                };
                let detail = format!(
                    "write canary under {}: {step} failed: {errno}{refused}",
                    dir.display()
                );
                if let Some(t) = o.target.raise(Signal::NotWritable, detail, now) {
                    log_transition(&o.target, &t);
                }
                "failed"
            }
            CanaryOutcome::NotThisMount { found } => {
                debug!(path = %dir.display(), found, "write canary: the path is on another mount now; nothing written");
                "skipped"
            }
        };
        self.count_canary(&dir, counted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::parse_mountinfo;

    fn entry(options: &str, super_options: &str) -> MountEntry {
        let line =
            format!("40 22 7:0 / /var/lib/docker {options} - ext4 /dev/loop0 {super_options}\n");
        parse_mountinfo(&line).unwrap().remove(0)
    }

    #[test]
    fn erofs_counts_as_a_failure_unless_only_the_view_is_read_only() {
        // The sandbox's read-only bind of a writable filesystem: says nothing about storage.
        assert!(only_the_view_is_read_only(
            Errno::EROFS,
            &entry("ro,relatime", "rw")
        ));
        // Mounted rw everywhere, yet EROFS: ext4's emergency read-only (journal aborted) on a
        // kernel whose mountinfo does not show it.
        assert!(!only_the_view_is_read_only(
            Errno::EROFS,
            &entry("rw,relatime", "rw")
        ));
        // The filesystem itself read-only (read_only reports it; the canary fails too).
        assert!(!only_the_view_is_read_only(
            Errno::EROFS,
            &entry("ro", "ro")
        ));
        assert!(!only_the_view_is_read_only(
            Errno::ENOSPC,
            &entry("ro", "rw")
        ));
    }
}
