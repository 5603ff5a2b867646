//! Off-thread mount checks: `statx` of a mount's root and `statfs`.
//!
//! After an XFS log I/O error the filesystem is shut down without `xfs_force_shutdown`
//! firing on current kernels; `statx` of the root then fails with EIO at once, which is the
//! confirmation. `statfs` feeds `fs_full`. Both can hang on a dead NFS server, so they run on
//! blocking threads, at most one outstanding per mount, and the caller applies a timeout.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::errno::Errno;
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub space_used_percent: f64,
    pub inodes_used_percent: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CheckOutcome {
    pub statx: Result<(), Errno>,
    pub usage: Option<Usage>,
    pub elapsed: Duration,
}

/// Runs the check on the calling thread (which must not be an async worker).
pub fn run(mount_point: &Path) -> CheckOutcome {
    let start = std::time::Instant::now();
    let statx = statx_root(mount_point);
    // A filesystem that already answered EIO has nothing meaningful to say about usage.
    let usage = if statx.is_ok() {
        nix::sys::statfs::statfs(mount_point).ok().and_then(|s| {
            usage(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
            )
        })
    } else {
        None
    };
    CheckOutcome {
        statx,
        usage,
        elapsed: start.elapsed(),
    }
}

/// Result of a finished off-thread check of a mount.
#[derive(Debug)]
pub struct CheckDone {
    pub mount_point: PathBuf,
    pub mount_id: u32,
    pub kind: CheckKind,
}

/// Which check answered.
#[derive(Debug)]
pub enum CheckKind {
    /// `statx` + `statfs` of the mount root.
    Mount(CheckOutcome),
    /// The write canary of a watch on the mount.
    Canary(super::canary::CanaryOutcome),
}

/// Runs [`run`] on a blocking thread; the result is sent to `tx` (a hung check never sends).
pub fn spawn(tx: mpsc::UnboundedSender<CheckDone>, mount_point: PathBuf, mount_id: u32) {
    tokio::task::spawn_blocking(move || {
        let outcome = run(&mount_point);
        let _ = tx.send(CheckDone {
            mount_point,
            mount_id,
            kind: CheckKind::Mount(outcome),
        });
    });
}

fn statx_root(path: &Path) -> Result<(), Errno> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: zeroed statx is a valid out buffer.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and out pointer.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_SYNC_AS_STAT | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS,
            &mut buf,
        )
    };
    if rc == 0 { Ok(()) } else { Err(Errno::last()) }
}

/// Used percentages as `df` computes them: used / (used + available to users).
pub fn usage(blocks: u64, bfree: u64, bavail: u64, files: u64, ffree: u64) -> Option<Usage> {
    let used = blocks.checked_sub(bfree)?;
    let denom = used + bavail;
    if denom == 0 {
        return None;
    }
    let inodes = (files > 0).then(|| 100.0 * files.saturating_sub(ffree) as f64 / files as f64);
    Some(Usage {
        space_used_percent: 100.0 * used as f64 / denom as f64,
        inodes_used_percent: inodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_like_df() {
        let u = usage(100, 10, 5, 1000, 250).unwrap();
        assert!((u.space_used_percent - 94.736).abs() < 0.01);
        assert_eq!(u.inodes_used_percent, Some(75.0));
        assert_eq!(usage(0, 0, 0, 0, 0), None);
        assert_eq!(usage(10, 20, 0, 0, 0), None);
    }

    #[test]
    fn checks_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let o = run(dir.path());
        assert_eq!(o.statx, Ok(()));
        assert!(o.usage.is_some());
        let missing = run(&dir.path().join("nope"));
        assert_eq!(missing.statx, Err(Errno::ENOENT));
    }
}
