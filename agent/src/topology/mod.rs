//! Topology: which mounts and block devices there are, and which disks a mount sits on.
//!
//! The block tracepoints report the *whole disk* a request went to, XFS tracepoints and
//! `/proc/self/mountinfo` report the device a filesystem is mounted from (a partition, a
//! device-mapper or md device). This stage connects the two: it parses mountinfo
//! ([`mountinfo`]), walks sysfs (partition -> disk, dm/md -> slaves, [`sysfs`]) so that "disk
//! 259:1 is hung" becomes "these mounts are affected", and decides which of them to observe
//! ([`reconcile`]).
//!
//! Depends on `config` and `probes` (for [`DevId`](crate::probes::dev::DevId)) only. Nothing here touches a watched
//! filesystem: mountinfo and sysfs are kernel-generated, and [`mount_for_path`] is purely
//! lexical.

pub mod ext4;
pub mod mountinfo;
pub mod reconcile;
pub mod sysfs;

use std::{io, path::PathBuf};

use thiserror::Error;

pub use mountinfo::{MountEntry, mount_for_path, parse_mountinfo, read_mountinfo};
pub use sysfs::{BlockDevice, DiskStat, Sysfs};

/// Where the agent reads its own mount table from.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

#[derive(Debug, Error)]
pub enum TopologyError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A mountinfo line that does not have the documented shape (1-based line number).
    #[error("mountinfo line {line}: {what}")]
    Mountinfo { line: usize, what: String },
}
