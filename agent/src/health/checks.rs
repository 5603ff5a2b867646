//! Mount checks as evidence: when the engine starts one (`statx`/`statfs` off-thread, at
//! most one outstanding per mount), what an answer means for the mount's target, and what a
//! check left unanswered means (`nfs_stall` for NFS mounts).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Instant, SystemTime},
};

use nix::errno::Errno;
use tracing::{debug, warn};

use super::{
    Signal,
    engine::{Engine, log_transition},
};
use crate::{
    metrics,
    scan::{
        self,
        check::{self, CheckDone, CheckKind},
    },
};

impl Engine {
    pub(super) fn check_now(&mut self, mps: Vec<PathBuf>) {
        for mp in mps {
            self.spawn_check(&mp);
        }
    }

    fn count_check(&self, outcome: &str) {
        self.metrics
            .mount_checks
            .get_or_create(&metrics::OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Starts a check of the mount unless one is still outstanding (a hung one stays
    /// outstanding: one blocked thread per mount at most).
    pub(super) fn spawn_check(&mut self, mp: &Path) {
        let Some(o) = self.mounts.get(mp) else {
            return;
        };
        if o.check_since.is_some() {
            return;
        }
        if self.checks_outstanding >= self.checks_max {
            if self.checks_outstanding == self.checks_max {
                warn!(
                    outstanding = self.checks_outstanding,
                    "too many mount probes unanswered; new ones wait"
                );
            }
            self.count_check("skipped");
            return;
        }
        self.checks_outstanding += 1;
        let Some(o) = self.mounts.get_mut(mp) else {
            return;
        };
        o.check_since = Some(Instant::now());
        o.check_started_ns = scan::monotonic_ns();
        o.check_timeout_reported = false;
        check::spawn(self.check_tx.clone(), mp.to_path_buf(), o.entry.mount_id);
    }

    pub fn on_check_done(&mut self, done: CheckDone) {
        self.checks_outstanding = self.checks_outstanding.saturating_sub(1);
        let now = SystemTime::now();
        let cfg = Arc::clone(&self.cfg);
        match self.mounts.get(&done.mount_point) {
            Some(o) if o.entry.mount_id == done.mount_id => {}
            _ => return,
        }
        let outcome = match done.kind {
            CheckKind::Mount(outcome) => outcome,
            CheckKind::Canary(outcome) => {
                self.on_canary_done(&done.mount_point, outcome);
                return;
            }
        };
        let outcome = &outcome;
        self.count_check(if outcome.statx.is_ok() { "ok" } else { "error" });
        let Some(o) = self.mounts.get_mut(&done.mount_point) else {
            return;
        };
        o.check_since = None;
        let mut transitions = Vec::new();
        match outcome.statx {
            Err(Errno::EIO) if o.entry.fstype == "xfs" => {
                // Counted once with its event, or alone if that never comes (see `once`).
                (self.shutdowns).confirmed(o.entry.dev, o.entry.mount_id, scan::monotonic_ns());
                // Already known (from the tracepoint): keep that more precise reason.
                if !o.target.has(Signal::XfsShutdown) {
                    let detail =
                        "statx of the mount root fails with EIO: the filesystem is shut down"
                            .to_string();
                    transitions.extend(o.target.raise(Signal::XfsShutdown, detail, now));
                    warn!(mount = %done.mount_point.display(), "XFS shutdown confirmed by statx (EIO)");
                }
            }
            Err(e) if o.is_nfs() && matches!(e, Errno::EIO | Errno::ETIMEDOUT | Errno::ESTALE) => {
                transitions.extend(o.target.raise(
                    Signal::NfsStall,
                    format!("statx of the mount root fails: {e}"),
                    now,
                ));
            }
            Err(e) => debug!(mount = %done.mount_point.display(), error = %e, "probe failed"),
            Ok(()) => {
                // statfs went to the server (statx may have come from the attribute cache).
                if outcome.usage.is_some() {
                    o.answered_since_ns = Some(o.check_started_ns);
                }
                transitions.extend(o.target.clear(Signal::NfsStall, now));
            }
        }
        if let Some(u) = outcome.usage {
            let space = cfg.detect.fs_full_percent > 0.0
                && u.space_used_percent >= cfg.detect.fs_full_percent;
            let inodes = cfg.detect.inodes_full_percent > 0.0
                && u.inodes_used_percent
                    .is_some_and(|p| p >= cfg.detect.inodes_full_percent);
            transitions.extend(o.target.set(
                Signal::FsFull,
                space || inodes,
                || {
                    format!(
                        "space {:.1}% used, inodes {} used",
                        u.space_used_percent,
                        u.inodes_used_percent
                            .map_or_else(|| "n/a".to_string(), |p| format!("{p:.1}%"))
                    )
                },
                now,
            ));
        }
        for t in transitions {
            log_transition(&o.target, &t);
        }
    }

    /// Counts the confirmed shutdowns whose event did not come within the grace.
    pub(super) fn count_unevented_shutdowns(&mut self, now_ns: u64) {
        for dev in self.shutdowns.expire(now_ns) {
            warn!(%dev, "XFS shutdown confirmed by statx without its event; counted from the check");
            self.count_shutdown(dev);
        }
    }

    /// At each scan: a check of every mount, or, while one is unanswered, what its wait means.
    pub(super) fn follow_check(&mut self, mp: &Path, rpc: scan::rpc::RpcInflight, now: SystemTime) {
        let detect = &self.cfg.detect;
        let Some(o) = self.mounts.get_mut(mp) else {
            return;
        };
        let Some(since) = o.check_since else {
            self.spawn_check(mp);
            return;
        };
        let waited = since.elapsed();
        let timed_out = waited >= detect.probe_timeout && !o.check_timeout_reported;
        if timed_out {
            o.check_timeout_reported = true;
            warn!(mount = %mp.display(), waited_s = waited.as_secs_f64(), "mount probe timed out");
        }
        let detail = o
            .is_nfs()
            .then(|| scan::rpc::nfs_stall(rpc, waited, &o.entry.source, detect))
            .flatten();
        if let Some(detail) = detail
            && let Some(t) = o.target.raise(Signal::NfsStall, detail, now)
        {
            log_transition(&o.target, &t);
        }
        if timed_out {
            self.count_check("timeout");
        }
    }
}
