//! Block requests on the BTF-enabled tracepoints (`tp_btf`, 5.5+): the same in-flight
//! tracking as `block.rs`, at a fraction of its cost on every I/O.
//!
//! A classic tracepoint builds its whole trace record (device, sector, `rwbs`, the task's
//! `comm`) before the program runs, and the program copies fields out of it with a helper
//! call each; here the program gets the `struct request` pointer and loads the few fields it
//! needs, at offsets userspace found in the kernel's BTF ([`RqLayout`], read-only, so the
//! verifier knows them). The pointer is the map key: unique while the request lives, so a
//! completion deletes its entry without reading anything, and flushes no longer share one.
//! The block layer's own allocation stamp (`start_time_ns`) is the start where it is set.

use agent_ebpf::{
    COMPLETE_ERRORS_ERRNO, COMPLETE_ERRORS_STATUS, EventKind, NO_MEMBER, OP_LEN, Request, RqLayout,
    Stat,
};
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};

use super::{RQ_INFLIGHT, count, emit};

/// Set by userspace before loading (`RQ_LAYOUT_GLOBAL`).
#[unsafe(no_mangle)]
static RQ_LAYOUT: RqLayout = RqLayout {
    issue_arg: 0,
    rq_disk: NO_MEMBER,
    rq_q: 0,
    q_disk: 0,
    disk_major: 0,
    disk_first_minor: 0,
    sector: 0,
    data_len: 0,
    cmd_flags: 0,
    start_time_ns: 0,
    bit_preflush: 0,
    bit_fua: 0,
    bit_rahead: 0,
    bit_sync: 0,
    bit_meta: 0,
    complete_errors: 0,
};

/// One field of the layout; volatile so the compiler cannot fold the placeholder values in.
macro_rules! layout {
    ($f:ident) => {
        // SAFETY: a read of a static.
        unsafe { core::ptr::read_volatile(&RQ_LAYOUT.$f) }
    };
}

/// `EIO`: what a `blk_status_t` error is reported as (the errno mapping is the kernel's).
const EIO: i32 = 5;

/// One kernel load of a `T` at `base + off`. The verifier checks it against the BTF type
/// `base` points to; a bad pointer reads as zero instead of faulting.
#[inline(always)]
fn load<T: Copy + Default>(base: *const u8, off: u32) -> T {
    if base.is_null() {
        return T::default();
    }
    // SAFETY: see above; the offset is a verifier-time constant from `RQ_LAYOUT`.
    unsafe { core::ptr::read_volatile(base.add(off as usize) as *const T) }
}

/// The request's whole-disk `dev_t`, as the tracepoints compute it (`disk_devt`).
#[inline(always)]
fn dev_of(rq: *const u8) -> u32 {
    let rq_disk = layout!(rq_disk);
    let disk: *const u8 = if rq_disk != NO_MEMBER {
        load(rq, rq_disk)
    } else {
        let q: *const u8 = load(rq, layout!(rq_q));
        load(q, layout!(q_disk))
    };
    let major: u32 = load(disk, layout!(disk_major));
    let minor: u32 = load(disk, layout!(disk_first_minor));
    (major << 20) | minor
}

/// The `rwbs` the classic tracepoint writes for these flags (`blk_fill_rwbs`), in the few
/// letters the evidence shows: flush before, the operation, then FUA, readahead, sync, meta.
#[inline(always)]
fn rwbs(flags: u32) -> [u8; OP_LEN] {
    // Built in a register, a letter per byte: an index into a stack array is pointer
    // arithmetic the verifier refuses. Seven letters at most, in eight bytes.
    let mut text: u64 = 0;
    let mut shift = 0;
    let mut push = |c: u8| {
        if shift < 64 {
            text |= u64::from(c) << shift;
            shift += 8;
        }
    };
    let bit = |n: u32| n < 32 && flags & (1 << n) != 0;
    if bit(layout!(bit_preflush)) {
        push(b'F');
    }
    // REQ_OP_MASK: the low 8 bits, the same numbering on every kernel since 4.10.
    match flags & 0xff {
        0 => push(b'R'),
        1 | 9 | 13 => push(b'W'), // WRITE, WRITE_ZEROES, ZONE_APPEND
        2 => push(b'F'),
        3 => push(b'D'),
        5 => {
            push(b'D');
            push(b'E');
        }
        _ => push(b'N'),
    }
    if bit(layout!(bit_fua)) {
        push(b'F');
    }
    if bit(layout!(bit_rahead)) {
        push(b'A');
    }
    if bit(layout!(bit_sync)) {
        push(b'S');
    }
    if bit(layout!(bit_meta)) {
        push(b'M');
    }
    text.to_le_bytes()
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue_btf(ctx: BtfTracePointContext) -> i32 {
    // Only one branch is verified: the layout is constant.
    let rq: *const u8 = if layout!(issue_arg) == 1 {
        ctx.arg(1)
    } else {
        ctx.arg(0)
    };
    let stamped: u64 = load(rq, layout!(start_time_ns));
    let start_ns = if stamped != 0 {
        stamped
    } else {
        // SAFETY: helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    };
    let data_len: u32 = load(rq, layout!(data_len));
    let val = Request {
        start_ns,
        sector: load(rq, layout!(sector)),
        dev: dev_of(rq),
        count: 1,
        nr_sector: data_len >> 9,
        _pad: 0,
        op: rwbs(load(rq, layout!(cmd_flags))),
    };
    // A requeued request is issued again under the same pointer: the entry is replaced,
    // with the same allocation stamp.
    if RQ_INFLIGHT.insert(&(rq as u64), &val, 0).is_err() {
        count(Stat::RqMapFull);
    }
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete_btf(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    let _ = RQ_INFLIGHT.remove(&(rq as u64));
    // Where the kernel has no `block_rq_error` (5.10), completions carry the errors.
    let error = match layout!(complete_errors) {
        COMPLETE_ERRORS_ERRNO => ctx.arg::<i32>(1),
        COMPLETE_ERRORS_STATUS if ctx.arg::<u8>(1) != 0 => -EIO,
        _ => 0,
    };
    if error != 0 {
        emit(
            EventKind::BlockError,
            dev_of(rq),
            error,
            0,
            load(rq, layout!(sector)),
        );
    }
    0
}
