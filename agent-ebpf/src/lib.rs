//! Types shared by the kernel programs and the `bindsto` agent.
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel side writes it into maps and the
//! ring buffer, userspace reads the same bytes back. With the `user` feature the types implement
//! `aya::Pod` so they can be used as map keys and values.
#![no_std]

/// Length of the path strings a mount-family syscall records at entry (bytes, NUL included).
pub const PATH_LEN: usize = 128;
/// Length of the filesystem type string recorded at entry.
pub const FSTYPE_LEN: usize = 32;
/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;

/// Capacity of the in-flight block request map. Sized for a busy host; inserts that fail when
/// it is full are counted in [`Stat::RqMapFull`], never silently dropped.
pub const RQ_MAP_ENTRIES: u32 = 65_536;
/// Capacity of the in-flight mount-call map (one entry per thread inside a mount syscall).
pub const MOUNT_MAP_ENTRIES: u32 = 8_192;
/// Ring buffer size in bytes (power of two, multiple of the page size).
pub const RINGBUF_BYTES: u32 = 256 * 1024;

/// A tracepoint field whose offset userspace reads from tracefs and hands to the programs.
///
/// The discriminant is the index into [`Offsets::off`]. Offsets are never compiled in: block
/// layouts moved twice between 6.1 and 6.18 (ioprio, rwbs length).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    ShutdownDev = 0,
    ShutdownPtag,
    ShutdownFlags,
    BufIoerrorDev,
    BufIoerrorError,
    AilAbortDev,
    FsCorruptDev,
    FsCorruptFlags,
    InodeCorruptDev,
    InodeCorruptIno,
    InodeCorruptFlags,
    GroupCorruptDev,
    GroupCorruptFlags,
    RqIssueDev,
    RqIssueSector,
    RqIssueNrSector,
    RqCompleteDev,
    RqCompleteSector,
    RqCompleteNrSector,
    RqCompleteError,
    RqErrorDev,
    RqErrorSector,
    RqErrorError,
    RqRequeueDev,
    RqRequeueSector,
    MountDevName,
    MountDirName,
    MountType,
    UmountName,
    FsopenFsName,
    FsconfigCmd,
    MoveMountToPathname,
    OpenTreeFilename,
    MountSetattrPath,
    BioQueueDev,
    BioQueueSector,
    BioCompleteDev,
    BioCompleteSector,
    BioCompleteError,
    RpcBeginTaskId,
    RpcBeginClientId,
    RpcEndTaskId,
    RpcEndClientId,
    Ext4ShutdownDev,
    Ext4ShutdownFlags,
    Ext4ErrorDev,
    Ext4ErrorLine,
    /// The operation (`rwbs`: "W", "RA", "FWS", ...), recorded for the incident evidence.
    RqIssueRwbs,
    BioQueueRwbs,
}

/// Number of [`Field`] variants.
pub const FIELD_COUNT: usize = Field::BioQueueRwbs as usize + 1;

/// Offsets of every [`Field`] plus behaviour flags; one entry in the `OFFSETS` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Offsets {
    pub off: [u16; FIELD_COUNT],
    pub flags: u32,
    /// Major number of device-mapper (from /proc/devices, 0 while dm is not loaded): bios of
    /// these devices are tracked from `block_bio_queue` to `block_bio_complete`, because a
    /// suspended or bio-based dm device queues them before any request or sysfs counter exists.
    pub bio_major: u32,
}

impl Offsets {
    pub const fn new() -> Self {
        Self {
            off: [0; FIELD_COUNT],
            flags: 0,
            bio_major: 0,
        }
    }

    /// Never panics: a panic path in a BPF program is a call the verifier rejects.
    #[inline(always)]
    pub fn get(&self, f: Field) -> usize {
        match self.off.get(f as usize) {
            Some(v) => *v as usize,
            None => 0,
        }
    }

    pub fn set(&mut self, f: Field, offset: u16) {
        self.off[f as usize] = offset;
    }
}

impl Default for Offsets {
    fn default() -> Self {
        Self::new()
    }
}

/// `Offsets::flags`: the kernel has no `block:block_rq_error`, so `block_rq_complete` reports
/// errors itself (5.10). When the error tracepoint exists, completion must not report them too.
pub const FLAG_ERRORS_FROM_COMPLETE: u32 = 1 << 0;

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

/// A block request in flight, the value of `RQ_INFLIGHT`. The key is the kernel's request
/// pointer where the BTF-enabled programs run (unique while the request lives); the classic
/// tracepoints do not expose it, so there it is [`classic_rq_key`] of device and sector, and
/// `count` covers requests that share it (flushes all have sector 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Request {
    /// When the block layer allocated it (`request.start_time_ns`), or the issue time where
    /// the kernel did not stamp it; monotonic ns either way.
    pub start_ns: u64,
    pub sector: u64,
    /// Whole-disk `dev_t` (major << 20 | minor).
    pub dev: u32,
    pub count: u32,
    pub nr_sector: u32,
    pub _pad: u32,
    /// `rwbs`, as the tracepoints write it ("W", "RA", "FWS", ...), NUL-padded.
    pub op: [u8; OP_LEN],
}

impl Request {
    /// The device-and-sector view the scanner and the evidence share with the bio map.
    pub fn split(&self) -> (RqKey, RqVal) {
        (
            RqKey {
                dev: self.dev,
                _pad: 0,
                sector: self.sector,
            },
            RqVal {
                start_ns: self.start_ns,
                count: self.count,
                nr_sector: self.nr_sector,
                op: self.op,
            },
        )
    }
}

/// The classic programs' key for a request: device and sector folded into 64 bits. Two
/// requests in flight at once collide only if their sectors differ by the devices' mixed
/// numbers, some 2^40 sectors apart for real disks; a collision shares an entry (`count`),
/// and sysfs, not the map, decides a stall.
#[inline(always)]
pub fn classic_rq_key(dev: u32, sector: u64) -> u64 {
    sector ^ u64::from(dev).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Where the running kernel keeps what the BTF-enabled block programs (`tp_btf`) read, in
/// bytes, found by userspace in the kernel's BTF and set as their read-only global
/// [`RQ_LAYOUT_GLOBAL`] before loading: the verifier sees constants, so each field is one
/// load from the request, with no helper call and no tracefs record built.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RqLayout {
    /// Which argument of `block_rq_issue` is the request: 1 before 5.11 (`q, rq`), else 0.
    pub issue_arg: u32,
    /// `request.rq_disk` (kernels before the gendisk moved to the queue), or [`NO_MEMBER`]: then `request.q` -> `disk`.
    pub rq_disk: u32,
    pub rq_q: u32,
    pub q_disk: u32,
    pub disk_major: u32,
    pub disk_first_minor: u32,
    /// `request.__sector`, `__data_len`, `cmd_flags`, `start_time_ns`.
    pub sector: u32,
    pub data_len: u32,
    pub cmd_flags: u32,
    pub start_time_ns: u32,
    /// Bit numbers of `REQ_PREFLUSH`, `REQ_FUA`, `REQ_RAHEAD`, `REQ_SYNC`, `REQ_META` in
    /// `cmd_flags` (`enum req_flag_bits`), for the `rwbs` the classic tracepoint would write.
    pub bit_preflush: u32,
    pub bit_fua: u32,
    pub bit_rahead: u32,
    pub bit_sync: u32,
    pub bit_meta: u32,
    /// How `block_rq_complete` reports errors: [`COMPLETE_ERRORS_NONE`] (`block_rq_error`
    /// does), `_ERRNO` (an `int`, 5.10) or `_STATUS` (a `blk_status_t`).
    pub complete_errors: u32,
}

/// A member this kernel does not have.
pub const NO_MEMBER: u32 = u32::MAX;
pub const COMPLETE_ERRORS_NONE: u32 = 0;
pub const COMPLETE_ERRORS_ERRNO: u32 = 1;
pub const COMPLETE_ERRORS_STATUS: u32 = 2;

/// The global the BTF-enabled block programs read their layout from.
pub const RQ_LAYOUT_GLOBAL: &str = "RQ_LAYOUT";

/// Key of an in-flight bio of a device-mapper device (and the device-and-sector view of a
/// request): whole-disk device and start sector, as biolatency does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RqKey {
    pub dev: u32,
    pub _pad: u32,
    pub sector: u64,
}

/// Value of an in-flight bio or RPC task (and the split view of a [`Request`]). `count`
/// covers several with the same key in flight at once; `start_ns` is the oldest one's start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RqVal {
    pub start_ns: u64,
    pub count: u32,
    pub nr_sector: u32,
    /// The first request's `rwbs` (NUL-padded; 8 bytes are enough for every combination the
    /// kernel writes and fit both its 8- and 10-byte layouts); zero for RPC tasks.
    pub op: [u8; OP_LEN],
}

/// Bytes of `rwbs` kept per in-flight request.
pub const OP_LEN: usize = 8;

/// Completions of tracked bios on one device (`BIO_DONE`, keyed by kernel `dev_t`): progress
/// for the bio-level stall check.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BioDone {
    /// `bpf_ktime_get_ns` of the last completion.
    pub last_ns: u64,
    pub completed: u64,
}

/// Capacity of the in-flight bio map (tracked devices only).
pub const BIO_MAP_ENTRIES: u32 = 16_384;

/// Capacity of the in-flight RPC task map (sunrpc tasks of every RPC client on the host).
pub const RPC_MAP_ENTRIES: u32 = 16_384;

/// Key of an RPC task in flight: the sunrpc client (`rpc_clnt.cl_clid`) and the task's id
/// (`tk_pid`, which is 0 on kernels built without `CONFIG_SUNRPC_DEBUG`; the value's count
/// then covers every task of the client).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RpcKey {
    pub client_id: u32,
    pub task_id: u32,
}

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

/// Indexes of the per-CPU `STATS` counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Ring buffer full: an event was dropped.
    EventsLost = 0,
    /// Block request map full: a request is not tracked.
    RqMapFull = 1,
    /// Mount call map full: a call is not tracked.
    MountMapFull = 2,
    /// Bio map full: a bio of a tracked (dm) device is not tracked.
    BioMapFull = 3,
    /// RPC task map full: an RPC task is not tracked.
    RpcMapFull = 4,
    /// Bio completion map full: a tracked device's completions are not recorded.
    BioDoneFull = 5,
}

pub const STAT_COUNT: u32 = 6;

/// Capacity of the per-device bio completion map (`BIO_DONE`, one entry per tracked dm device).
pub const BIO_DONE_ENTRIES: u32 = 1024;

/// Where the running kernel's `struct task_struct` keeps what the stack iterator (`stacks`
/// object) reads, in bytes; userspace finds them in the kernel's BTF and sets them as the
/// iterator's read-only global `TASK_OFFSETS` before loading it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `pid` (the thread id).
    pub pid: u32,
    /// `tgid` (the process id).
    pub tgid: u32,
    /// `__state` (5.14 and later) or `state`; its low 32 bits either way (little-endian).
    pub state: u32,
    /// `sched_info.last_arrival` (when the task last ran, ns); 0 where the kernel lacks it.
    pub last_arrival: u32,
}

/// Frames of one kernel stack the iterator prints.
pub const STACK_FRAMES: usize = 32;

/// The global the stack iterator reads its offsets from.
pub const TASK_OFFSETS_GLOBAL: &str = "TASK_OFFSETS";

/// Names of the maps, shared so userspace and kernel cannot drift apart.
pub mod maps {
    pub const OFFSETS: &str = "OFFSETS";
    pub const EVENTS: &str = "EVENTS";
    pub const RQ_INFLIGHT: &str = "RQ_INFLIGHT";
    pub const MOUNT_CALLS: &str = "MOUNT_CALLS";
    pub const STATS: &str = "STATS";
    pub const BIO_INFLIGHT: &str = "BIO_INFLIGHT";
    pub const BIO_DONE: &str = "BIO_DONE";
    pub const RPC_INFLIGHT: &str = "RPC_INFLIGHT";
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)] plain data with explicit padding fields and no
    // pointers; every bit pattern is valid.
    unsafe impl aya::Pod for Offsets {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for RqKey {}
    unsafe impl aya::Pod for RqVal {}
    unsafe impl aya::Pod for MountCall {}
    unsafe impl aya::Pod for BioDone {}
    unsafe impl aya::Pod for RpcKey {}
    unsafe impl aya::Pod for TaskOffsets {}
    unsafe impl aya::Pod for Request {}
    unsafe impl aya::Pod for RqLayout {}
}
