//! What ext4 says about itself outside the mounted tree: the error counters in
//! `/sys/fs/ext4/<dev>/` and the superblock state it writes into mountinfo's super options.
//!
//! Both are kernel-generated, so reading them never touches the filesystem. The counters are
//! the fallback where `ext4:ext4_error` is missing (and catch events the ring buffer lost);
//! the super options confirm a shutdown or an aborted journal, which `statx` does not: ext4
//! keeps answering `statx` and `statfs` after either.

use std::{fs, path::Path};

/// `/sys/fs/ext4/<dev>/` error counters. `errors_count` is stored in the superblock, so it
/// counts errors of earlier mounts too: only a rise means a new error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ext4Errors {
    pub count: u64,
    /// Seconds since the epoch (0: never).
    pub first_time: u64,
    pub last_time: u64,
    /// The kernel function and line of the last error (empty when never).
    pub last_func: String,
    pub last_line: u64,
}

impl Ext4Errors {
    /// Reads the counters of the ext4 filesystem on block device `name` (its kernel name,
    /// the superblock's `s_id`); `None` when it has no such directory (not ext4, or an old
    /// kernel without `errors_count`).
    pub fn read(sysfs_root: &Path, name: &str) -> Option<Self> {
        let dir = sysfs_root.join("fs/ext4").join(name);
        let text = |f: &str| fs::read_to_string(dir.join(f)).ok();
        let num = |f: &str| text(f).and_then(|t| t.trim().parse::<u64>().ok());
        Some(Self {
            count: num("errors_count")?,
            first_time: num("first_error_time").unwrap_or(0),
            last_time: num("last_error_time").unwrap_or(0),
            last_func: text("last_error_func")
                .map(|t| t.trim().to_string())
                .unwrap_or_default(),
            last_line: num("last_error_line").unwrap_or(0),
        })
    }

    /// "in <func>:<line> at <time>" for the last error, for reasons.
    pub fn describe_last(&self) -> String {
        if self.last_time == 0 {
            return String::new();
        }
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.last_time);
        let at = humantime::format_rfc3339_seconds(at);
        format!("last in {}:{} at {at}", self.last_func, self.last_line)
    }
}

/// What ext4's super options in mountinfo say about a filesystem that reported errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext4Stopped {
    /// `shutdown` (6.x): `EXT4_IOC_SHUTDOWN` or the device went away.
    Shutdown,
    /// `emergency_ro` (6.x): an error aborted the journal and writes are refused.
    EmergencyRo,
    /// Superblock `ro` under a `rw` mount: `errors=remount-ro` aborted the journal (kernels
    /// before the `emergency_ro` flag set `SB_RDONLY` instead).
    RemountedRo,
}

impl Ext4Stopped {
    /// From a mount's per-mount and super options. `errors_seen`: whether the filesystem
    /// reported an error while observed (a superblock that is `ro` for other reasons is not
    /// an abort).
    pub fn from_options(options: &str, super_options: &str, errors_seen: bool) -> Option<Self> {
        let has = |opts: &str, name: &str| opts.split(',').any(|o| o == name);
        if has(super_options, "shutdown") {
            Some(Self::Shutdown)
        } else if has(super_options, "emergency_ro") {
            Some(Self::EmergencyRo)
        } else if errors_seen && has(super_options, "ro") && has(options, "rw") {
            Some(Self::RemountedRo)
        } else {
            None
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Shutdown => "ext4 is shut down (mountinfo: shutdown)",
            Self::EmergencyRo => {
                "ext4 aborted its journal after an error and refuses writes (mountinfo: emergency_ro)"
            }
            Self::RemountedRo => {
                "ext4 aborted its journal after an error and turned read-only (errors=remount-ro)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_like_sysfs_shows_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("fs/ext4/loop3");
        fs::create_dir_all(&d).unwrap();
        for (f, v) in [
            ("errors_count", "2\n"),
            ("first_error_time", "1796164560\n"),
            ("last_error_time", "1796164561\n"),
            ("last_error_func", "trigger_test_error\n"),
            ("last_error_line", "129\n"),
        ] {
            fs::write(d.join(f), v).unwrap();
        }
        let e = Ext4Errors::read(dir.path(), "loop3").unwrap();
        assert_eq!((e.count, e.first_time, e.last_line), (2, 1796164560, 129));
        assert!(
            e.describe_last()
                .starts_with("last in trigger_test_error:129 at 2026-")
        );
        assert_eq!(Ext4Errors::read(dir.path(), "loop4"), None);
        assert_eq!(Ext4Errors::default().describe_last(), "");
    }

    #[test]
    fn super_options_tell_shutdown_and_abort() {
        let f = Ext4Stopped::from_options;
        // As 6.18 writes them.
        assert_eq!(
            f("rw,relatime", "rw,shutdown", false),
            Some(Ext4Stopped::Shutdown)
        );
        assert_eq!(
            f("rw,relatime", "rw,errors=remount-ro,emergency_ro", false),
            Some(Ext4Stopped::EmergencyRo)
        );
        assert_eq!(
            f("rw,relatime", "ro,errors=remount-ro", true),
            Some(Ext4Stopped::RemountedRo)
        );
        // Read-only without an error seen, or a read-only mount: not an abort.
        assert_eq!(f("rw,relatime", "ro", false), None);
        assert_eq!(f("ro,relatime", "ro", true), None);
        assert_eq!(f("rw,relatime", "rw,errors=remount-ro", true), None);
    }
}
