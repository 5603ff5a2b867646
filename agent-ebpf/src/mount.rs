//! Mount-family syscalls in flight.

use crate::{COMM_LEN, FSTYPE_LEN, PATH_LEN};

/// Mount-family syscalls tracked while in flight.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Mount = 1,
    Umount = 2,
    Fsopen = 3,
    Fsconfig = 4,
    Fsmount = 5,
    MoveMount = 6,
    OpenTree = 7,
    MountSetattr = 8,
}

impl Syscall {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Mount,
            2 => Self::Umount,
            3 => Self::Fsopen,
            4 => Self::Fsconfig,
            5 => Self::Fsmount,
            6 => Self::MoveMount,
            7 => Self::OpenTree,
            8 => Self::MountSetattr,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Mount => "mount",
            Self::Umount => "umount",
            Self::Fsopen => "fsopen",
            Self::Fsconfig => "fsconfig",
            Self::Fsmount => "fsmount",
            Self::MoveMount => "move_mount",
            Self::OpenTree => "open_tree",
            Self::MountSetattr => "mount_setattr",
        }
    }
}

/// A mount-family syscall in flight, keyed by `pid_tgid` in the `MOUNT_CALLS` map. Strings are
/// NUL-terminated and read from user memory at entry (empty when the page was not resident).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MountCall {
    pub start_ns: u64,
    pub tgid: u32,
    pub syscall: u32,
    pub comm: [u8; COMM_LEN],
    pub source: [u8; PATH_LEN],
    pub target: [u8; PATH_LEN],
    pub fstype: [u8; FSTYPE_LEN],
}

impl MountCall {
    pub const fn zeroed() -> Self {
        Self {
            start_ns: 0,
            tgid: 0,
            syscall: 0,
            comm: [0; COMM_LEN],
            source: [0; PATH_LEN],
            target: [0; PATH_LEN],
            fstype: [0; FSTYPE_LEN],
        }
    }
}
