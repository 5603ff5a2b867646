//! Decoding what the kernel programs send through the ring buffer.

use agent_ebpf::{Event, EventKind};

use crate::probes::dev::DevId;

/// A decoded kernel event. Timestamps are CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// `xfs:xfs_force_shutdown` on the filesystem whose superblock device is `dev`.
    XfsShutdown {
        dev: DevId,
        ptag: i32,
        flags: u32,
        ts_ns: u64,
    },
    /// `xfs:xfs_buf_ioerror` with a negative errno.
    XfsBufIoError { dev: DevId, error: i32, ts_ns: u64 },
    /// `xfs:xlog_ail_insert_abort`: a log item was aborted (log I/O failed).
    XfsAilAbort { dev: DevId, ts_ns: u64 },
    /// One of the XFS "mark corrupt" tracepoints.
    XfsCorrupt {
        dev: DevId,
        what: CorruptWhat,
        flags: u32,
        ts_ns: u64,
    },
    /// `xfs_do_force_shutdown` returned (kprobe fallback on kernels without the tracepoint);
    /// which filesystem is not known.
    XfsShutdownSomewhere { ts_ns: u64 },
    /// `ext4:ext4_shutdown` on the filesystem whose superblock device is `dev`.
    Ext4Shutdown { dev: DevId, flags: u32, ts_ns: u64 },
    /// `ext4:ext4_error`: ext4 reported an error (`line` in the kernel function that did).
    Ext4Error { dev: DevId, line: u32, ts_ns: u64 },
    /// A block request failed on the whole disk `dev`.
    BlockError {
        dev: DevId,
        error: i32,
        sector: u64,
        ts_ns: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorruptWhat {
    Fs,
    Inode(u64),
    Group,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record too short: {got} bytes, expected {want}")]
    TooShort { got: usize, want: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

impl KernelEvent {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let want = size_of::<Event>();
        if bytes.len() < want {
            return Err(DecodeError::TooShort {
                got: bytes.len(),
                want,
            });
        }
        // SAFETY: length checked above; Event is plain #[repr(C)] data valid for any bits,
        // and read_unaligned copes with the ring buffer's 8-byte alignment.
        let e: Event = unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() };
        let dev = DevId::from_kernel(e.dev);
        let ts_ns = e.ts_ns;
        let kind = EventKind::from_u32(e.kind).ok_or(DecodeError::UnknownKind(e.kind))?;
        Ok(match kind {
            EventKind::XfsShutdown => Self::XfsShutdown {
                dev,
                ptag: e.code,
                flags: e.flags,
                ts_ns,
            },
            EventKind::XfsBufIoError => Self::XfsBufIoError {
                dev,
                error: e.code,
                ts_ns,
            },
            EventKind::XfsAilAbort => Self::XfsAilAbort { dev, ts_ns },
            EventKind::XfsFsCorrupt => Self::XfsCorrupt {
                dev,
                what: CorruptWhat::Fs,
                flags: e.flags,
                ts_ns,
            },
            EventKind::XfsInodeCorrupt => Self::XfsCorrupt {
                dev,
                what: CorruptWhat::Inode(e.arg),
                flags: e.flags,
                ts_ns,
            },
            EventKind::XfsGroupCorrupt => Self::XfsCorrupt {
                dev,
                what: CorruptWhat::Group,
                flags: e.flags,
                ts_ns,
            },
            EventKind::XfsShutdownSomewhere => Self::XfsShutdownSomewhere { ts_ns },
            EventKind::Ext4Shutdown => Self::Ext4Shutdown {
                dev,
                flags: e.flags,
                ts_ns,
            },
            EventKind::Ext4Error => Self::Ext4Error {
                dev,
                line: u32::try_from(e.arg).unwrap_or(u32::MAX),
                ts_ns,
            },
            EventKind::BlockError => Self::BlockError {
                dev,
                error: e.code,
                sector: e.arg,
                ts_ns,
            },
        })
    }

    pub fn dev(&self) -> DevId {
        match self {
            Self::XfsShutdown { dev, .. }
            | Self::XfsBufIoError { dev, .. }
            | Self::XfsAilAbort { dev, .. }
            | Self::XfsCorrupt { dev, .. }
            | Self::Ext4Shutdown { dev, .. }
            | Self::Ext4Error { dev, .. }
            | Self::BlockError { dev, .. } => *dev,
            Self::XfsShutdownSomewhere { .. } => DevId::from_kernel(0),
        }
    }
}

/// Names for XFS shutdown flags (SHUTDOWN_* in fs/xfs/xfs_mount.h), for readable reasons.
pub fn shutdown_flags(flags: u32) -> String {
    const NAMES: &[(u32, &str)] = &[
        (0x01, "metadata_io"),
        (0x02, "log_io"),
        (0x04, "force_umount"),
        (0x08, "corruption"),
        (0x10, "corruption_ondisk"),
        (0x20, "device_removed"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        format!("{flags:#x}")
    } else {
        names.join("|")
    }
}

/// Names for `EXT4_GOING_FLAGS_*` (the argument of `EXT4_IOC_SHUTDOWN`).
pub fn ext4_going_flags(flags: u32) -> &'static str {
    match flags {
        0 => "default (freeze, then shut down)",
        1 => "logflush (journal flushed first)",
        2 => "nologflush (journal not flushed)",
        _ => "unknown flags",
    }
}

/// `strerror`-style name for a negative errno from a tracepoint.
pub fn errno_name(err: i32) -> String {
    let e = nix::errno::Errno::from_raw(err.saturating_abs());
    format!("{e} ({err})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(e: &Event) -> Vec<u8> {
        // SAFETY: Event is plain data.
        unsafe { std::slice::from_raw_parts((e as *const Event).cast::<u8>(), size_of::<Event>()) }
            .to_vec()
    }

    #[test]
    fn decodes_shutdown_with_kernel_dev_encoding() {
        let e = Event {
            kind: EventKind::XfsShutdown as u32,
            dev: (7 << 20) | 3,
            ts_ns: 42,
            code: 0x40,
            flags: 0x6,
            ..Default::default()
        };
        let got = KernelEvent::decode(&bytes(&e)).unwrap();
        assert_eq!(
            got,
            KernelEvent::XfsShutdown {
                dev: DevId { major: 7, minor: 3 },
                ptag: 0x40,
                flags: 6,
                ts_ns: 42
            }
        );
        assert_eq!(shutdown_flags(6), "log_io|force_umount");
    }

    #[test]
    fn decodes_block_error_and_unaligned_input() {
        let e = Event {
            kind: EventKind::BlockError as u32,
            dev: (259 << 20) | 1,
            code: -5,
            arg: 1234,
            ..Default::default()
        };
        let mut buf = vec![0u8];
        buf.extend(bytes(&e));
        let got = KernelEvent::decode(&buf[1..]).unwrap();
        assert_eq!(
            got.dev(),
            DevId {
                major: 259,
                minor: 1
            }
        );
        assert!(matches!(
            got,
            KernelEvent::BlockError {
                error: -5,
                sector: 1234,
                ..
            }
        ));
        assert!(errno_name(-5).contains("EIO"));
    }

    #[test]
    fn decodes_ext4_events() {
        let shutdown = Event {
            kind: EventKind::Ext4Shutdown as u32,
            dev: (7 << 20) | 2,
            flags: 2,
            ..Default::default()
        };
        assert_eq!(
            KernelEvent::decode(&bytes(&shutdown)).unwrap(),
            KernelEvent::Ext4Shutdown {
                dev: DevId { major: 7, minor: 2 },
                flags: 2,
                ts_ns: 0
            }
        );
        let error = Event {
            kind: EventKind::Ext4Error as u32,
            dev: (259 << 20) | 4,
            arg: 129,
            ..Default::default()
        };
        let got = KernelEvent::decode(&bytes(&error)).unwrap();
        assert!(matches!(got, KernelEvent::Ext4Error { line: 129, .. }));
        assert_eq!(
            got.dev(),
            DevId {
                major: 259,
                minor: 4
            }
        );
        assert!(ext4_going_flags(2).starts_with("nologflush"));
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert_eq!(
            KernelEvent::decode(&[0u8; 8]),
            Err(DecodeError::TooShort {
                got: 8,
                want: size_of::<Event>()
            })
        );
        let e = Event {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(
            KernelEvent::decode(&bytes(&e)),
            Err(DecodeError::UnknownKind(99))
        );
    }
}
