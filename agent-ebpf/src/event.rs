//! What the programs send through the ring buffer.

/// Kinds of discrete events sent through the ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    XfsShutdown = 1,
    XfsBufIoError = 2,
    XfsAilAbort = 3,
    XfsFsCorrupt = 4,
    XfsInodeCorrupt = 5,
    XfsGroupCorrupt = 6,
    BlockError = 7,
    /// `xfs_do_force_shutdown` returned (kprobe fallback); the device is unknown.
    XfsShutdownSomewhere = 8,
    /// `ext4:ext4_shutdown` (`EXT4_IOC_SHUTDOWN`); `flags` are `EXT4_GOING_FLAGS_*`.
    Ext4Shutdown = 9,
    /// `ext4:ext4_error`; `arg` is the source line of the kernel function that reported it.
    Ext4Error = 10,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::XfsShutdown,
            2 => Self::XfsBufIoError,
            3 => Self::XfsAilAbort,
            4 => Self::XfsFsCorrupt,
            5 => Self::XfsInodeCorrupt,
            6 => Self::XfsGroupCorrupt,
            7 => Self::BlockError,
            8 => Self::XfsShutdownSomewhere,
            9 => Self::Ext4Shutdown,
            10 => Self::Ext4Error,
            _ => return None,
        })
    }
}

/// One discrete event. `dev` is the kernel `dev_t` encoding (major << 20 | minor).
///
/// Field use per kind: `code` is the errno (negative) for errors and the ptag for shutdowns;
/// `flags` the shutdown or sickness flags; `arg` the sector (block) or inode (XFS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    pub kind: u32,
    pub dev: u32,
    pub ts_ns: u64,
    pub tgid: u32,
    pub code: i32,
    pub flags: u32,
    pub _pad: u32,
    pub arg: u64,
}
