//! ext4 as evidence: `ext4:ext4_shutdown` fails its mounts (`fs_shutdown`), `ext4:ext4_error`
//! or a rise of `/sys/fs/ext4/<dev>/errors_count` degrades them (`fs_errors`) and has the
//! super options confirm whether the error stopped the filesystem (journal aborted), which
//! fails them too. The counters are followed at every scan, so kernels or moments without
//! the tracepoints still see errors within a scan.

use std::{
    path::{Path, PathBuf},
    time::{Instant, SystemTime},
};

use tracing::{debug, warn};

use super::{
    Signal,
    engine::{Engine, log_transition},
};
use crate::{
    probes::{dev::DevId, events},
    topology::{
        self,
        ext4::{Ext4Errors, Ext4Stopped},
    },
};

/// What the engine follows of one ext4 mount.
#[derive(Debug, Default)]
pub(super) struct Ext4Follow {
    /// The block device's kernel name (the `/sys/fs/ext4/` directory), once looked up.
    name: Option<String>,
    /// `errors_count` at the last scan (the first read is the baseline: errors of earlier
    /// mounts are history, not news).
    count: Option<u64>,
    /// The last error seen while observed (event or counter).
    last_error: Option<Instant>,
}

impl Engine {
    pub(super) fn on_ext4_shutdown(&mut self, dev: DevId, flags: u32, now: SystemTime) {
        let detail = format!(
            "ext4_shutdown on {dev}: {}",
            events::ext4_going_flags(flags)
        );
        warn!(%dev, flags, "ext4 shutdown");
        for mp in self.mounts_on_fs(dev) {
            self.raise_mount(&mp, Signal::FsShutdown, detail.clone(), now);
        }
    }

    pub(super) fn on_ext4_error(&mut self, dev: DevId, line: u32, now: SystemTime) {
        warn!(%dev, line, "ext4 reported an error");
        let mps = self.mounts_on_fs(dev);
        for mp in &mps {
            let Some(o) = self.mounts.get_mut(mp) else {
                continue;
            };
            o.ext4.last_error = Some(Instant::now());
            let sysfs = o.ext4.errors(self.sysfs.root());
            let last = sysfs.map(|e| format!(" ({} errors; {})", e.count, e.describe_last()));
            let detail = format!(
                "ext4_error on {dev} line {line}{}",
                last.unwrap_or_default()
            );
            self.raise_mount(mp, Signal::FsErrors, detail, now);
        }
        self.confirm_ext4(&mps, now);
        self.check_now(mps);
    }

    /// At each scan: new errors in the counters, and `fs_errors` cleared once
    /// `io_errors_window` passed without one.
    pub(super) fn follow_ext4(&mut self, mp: &Path, now: SystemTime) {
        let window = self.cfg.detect.io_errors_window;
        let sysfs_root = self.sysfs.root().to_path_buf();
        let dev = match self.mounts.get_mut(mp) {
            Some(o) if o.entry.fstype == "ext4" => {
                if o.ext4.name.is_none() {
                    o.ext4.name = self.sysfs.block_device(o.entry.dev).map(|b| b.name);
                }
                o.entry.dev
            }
            _ => return,
        };
        let Some(o) = self.mounts.get_mut(mp) else {
            return;
        };
        let mut rose = None;
        if let Some(e) = o.ext4.errors(&sysfs_root) {
            if o.ext4.count.is_some_and(|c| e.count > c) {
                o.ext4.last_error = Some(Instant::now());
                rose = Some(e.clone());
            }
            o.ext4.count = Some(e.count);
        }
        let quiet = o.ext4.last_error.is_none_or(|t| t.elapsed() >= window);
        if quiet && let Some(t) = o.target.clear(Signal::FsErrors, now) {
            log_transition(&o.target, &t);
        }
        // Stopped before it was observed (the agent restarted): the super options say so.
        let stopped = Ext4Stopped::from_options(
            &o.entry.options,
            &o.entry.super_options,
            o.ext4.last_error.is_some(),
        );
        if let Some(s) = stopped {
            self.raise_mount(mp, Signal::FsShutdown, s.describe().to_string(), now);
        }
        if let Some(e) = rose {
            debug!(mount = %mp.display(), %dev, count = e.count, "ext4 errors_count rose");
            let detail = format!("errors_count {}: {}", e.count, e.describe_last());
            self.raise_mount(mp, Signal::FsErrors, detail, now);
            self.confirm_ext4(&[mp.to_path_buf()], now);
        }
    }

    /// Reads the mount table afresh (a shutdown or abort changes the super options without a
    /// mount event) and fails the mounts whose ext4 stopped.
    fn confirm_ext4(&mut self, mps: &[PathBuf], now: SystemTime) {
        if mps.is_empty() {
            return;
        }
        let entries = match topology::read_mountinfo() {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "cannot read mountinfo to confirm an ext4 error");
                return;
            }
        };
        for mp in mps {
            let Some(o) = self.mounts.get(mp) else {
                continue;
            };
            let id = o.entry.mount_id;
            let Some(e) = entries.iter().find(|e| e.mount_id == id) else {
                continue;
            };
            if let Some(s) = Ext4Stopped::from_options(&e.options, &e.super_options, true) {
                warn!(mount = %mp.display(), state = s.describe(), "ext4 stopped");
                self.raise_mount(mp, Signal::FsShutdown, s.describe().to_string(), now);
            }
        }
    }
}

impl Ext4Follow {
    fn errors(&self, sysfs_root: &Path) -> Option<Ext4Errors> {
        Ext4Errors::read(sysfs_root, self.name.as_deref()?)
    }
}
