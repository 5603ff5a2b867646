//! The write canary: can the container runtime still write under a watched path?
//!
//! Off the engine's threads (one outstanding per mount; the engine applies the timeout), it
//! creates `.bindsto-canary` in the watched directory, writes 4 KiB, `fsync`s and removes it.
//! Everything goes through one directory descriptor whose mount is checked first, so it never
//! writes through a path that is not the watched mount (an unmounted path falls through to
//! the filesystem below). A canary file left by an earlier run (kill -9 mid-write) is removed
//! before the next one is created. `O_EXCL | O_NOFOLLOW`: a link someone put at the name is
//! never followed or truncated.

use std::{
    ffi::CStr,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, open, openat},
    sys::stat::Mode,
    unistd::{UnlinkatFlags, fsync, unlinkat, write},
};
use tokio::sync::mpsc;

use super::check::{CheckDone, CheckKind};

/// The canary's name, the same every run, so a stale one is found and removed.
pub const FILE_NAME: &str = ".bindsto-canary";
const NAME: &CStr = c".bindsto-canary";
const SIZE: usize = 4096;

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum CanaryOutcome {
    /// Created, written, synced and removed.
    Written { elapsed: Duration },
    /// A step failed with an errno.
    Failed { step: &'static str, errno: Errno },
    /// The directory is not on the watched mount: nothing was written.
    NotThisMount { found: u64 },
}

/// Runs one canary on the calling thread (which must not be an async worker).
pub fn run(dir: &Path, mount_id: u32) -> CanaryOutcome {
    let start = Instant::now();
    let fail = |step, errno| CanaryOutcome::Failed { step, errno };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let dirfd = match open(dir, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => return fail("open directory", e),
    };
    match mount_of(&dirfd) {
        Ok(Some(found)) if found != u64::from(mount_id) => {
            return CanaryOutcome::NotThisMount { found };
        }
        Ok(_) => {}
        Err(e) => return fail("statx", e),
    }
    // A stale canary (an earlier run killed mid-write) goes first.
    match unlinkat(&dirfd, NAME, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return fail("remove stale", e),
    }
    let create =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let file = match openat(&dirfd, NAME, create, Mode::S_IRUSR | Mode::S_IWUSR) {
        Ok(fd) => fd,
        Err(e) => return fail("create", e),
    };
    let written = write_all(&file).map_err(|e| ("write", e));
    let synced = written.and_then(|()| fsync(&file).map_err(|e| ("fsync", e)));
    drop(file);
    // Removed whatever happened to the write.
    let removed = unlinkat(&dirfd, NAME, UnlinkatFlags::NoRemoveDir);
    match (synced, removed) {
        (Err((step, errno)), _) => fail(step, errno),
        (Ok(()), Err(e)) if e != Errno::ENOENT => fail("remove", e),
        (Ok(()), _) => CanaryOutcome::Written {
            elapsed: start.elapsed(),
        },
    }
}

fn write_all(fd: &OwnedFd) -> Result<(), Errno> {
    let buf = [0xb5u8; SIZE];
    let mut done = 0;
    while done < SIZE {
        match write(fd, &buf[done..]) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The mount id of the directory (`STATX_MNT_ID`, Linux 5.8); `None` where the kernel does
/// not report it (the path was resolved at the scan that chose it, which is the fallback).
fn mount_of(dirfd: &OwnedFd) -> Result<Option<u64>, Errno> {
    // SAFETY: zeroed statx is a valid out buffer.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, an empty NUL-terminated path with AT_EMPTY_PATH and a valid
    // out pointer.
    let rc = unsafe {
        libc::statx(
            dirfd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut buf,
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    Ok((buf.stx_mask & libc::STATX_MNT_ID != 0).then_some(buf.stx_mnt_id))
}

/// Runs [`run`] on a blocking thread; the answer goes to `tx` (a hung one never answers).
pub fn spawn(
    tx: mpsc::UnboundedSender<CheckDone>,
    dir: PathBuf,
    mount_point: PathBuf,
    mount_id: u32,
) {
    tokio::task::spawn_blocking(move || {
        let outcome = run(&dir, mount_id);
        let _ = tx.send(CheckDone {
            mount_point,
            mount_id,
            kind: CheckKind::Canary(outcome),
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_id_of(p: &Path) -> u32 {
        let fd = open(p, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        mount_of(&fd).unwrap().unwrap() as u32
    }

    #[test]
    fn writes_syncs_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let id = mount_id_of(dir.path());
        let o = run(dir.path(), id);
        assert!(matches!(o, CanaryOutcome::Written { .. }), "{o:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_stale_canary_is_removed_and_a_link_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let id = mount_id_of(dir.path());
        std::fs::write(dir.path().join(FILE_NAME), b"left by a killed run").unwrap();
        assert!(matches!(run(dir.path(), id), CanaryOutcome::Written { .. }));
        assert!(!dir.path().join(FILE_NAME).exists());
        // A hard link at the name to a file that matters: removed (the link), never truncated.
        let precious = dir.path().join("precious");
        std::fs::write(&precious, b"keep me").unwrap();
        std::fs::hard_link(&precious, dir.path().join(FILE_NAME)).unwrap();
        assert!(matches!(run(dir.path(), id), CanaryOutcome::Written { .. }));
        assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
    }

    #[test]
    fn another_mount_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let id = mount_id_of(dir.path());
        let o = run(dir.path(), id.wrapping_add(100_000));
        assert!(matches!(o, CanaryOutcome::NotThisMount { .. }), "{o:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn errors_name_the_step_and_errno() {
        let o = run(Path::new("/nonexistent-bindsto-canary-dir"), 1);
        assert_eq!(
            o,
            CanaryOutcome::Failed {
                step: "open directory",
                errno: Errno::ENOENT
            }
        );
    }
}
