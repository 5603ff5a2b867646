//! Block requests and device-mapper bios in flight, and the layout the BTF-enabled block
//! programs read.

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

/// Capacity of the per-device bio completion map (`BIO_DONE`, one entry per tracked dm device).
pub const BIO_DONE_ENTRIES: u32 = 1024;
