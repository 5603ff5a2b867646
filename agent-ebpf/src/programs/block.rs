//! Block requests on the classic tracepoints: in-flight tracking (issue -> complete) where
//! the BTF-enabled programs (`block_btf.rs`) cannot run, and errors (`block_rq_error`) on
//! every kernel that has it.

use agent_ebpf::{
    EventKind, FLAG_ERRORS_FROM_COMPLETE, Field, OP_LEN, Request, Stat, classic_rq_key,
};
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};

use super::{BPF_NOEXIST, RQ_INFLIGHT, count, emit, offsets};

#[tracepoint]
pub fn block_rq_issue(ctx: TracePointContext) -> u32 {
    let _ = try_issue(&ctx);
    0
}

fn try_issue(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    // SAFETY: offsets come from this tracepoint's format file.
    let (dev, sector, nr_sector) = unsafe {
        (
            ctx.read_at::<u32>(o.get(Field::RqIssueDev))?,
            ctx.read_at::<u64>(o.get(Field::RqIssueSector))?,
            ctx.read_at::<u32>(o.get(Field::RqIssueNrSector))?,
        )
    };
    // SAFETY: as above; an unreadable operation is recorded as unknown, not a lost request.
    let op =
        unsafe { ctx.read_at::<[u8; OP_LEN]>(o.get(Field::RqIssueRwbs)) }.unwrap_or([0; OP_LEN]);
    let key = classic_rq_key(dev, sector);
    if let Some(v) = RQ_INFLIGHT.get_ptr_mut(key) {
        // Another request with the same key (a flush) is in flight: keep the oldest start.
        // SAFETY: map value pointer; a lost update only leaks an entry, which the scanner's
        // sysfs cross-check removes.
        unsafe { (*v).count = (*v).count.saturating_add(1) };
        return Ok(());
    }
    let val = Request {
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        sector,
        dev,
        count: 1,
        nr_sector,
        _pad: 0,
        op,
    };
    if RQ_INFLIGHT.insert(key, val, BPF_NOEXIST).is_err() {
        count(Stat::RqMapFull);
    }
    Ok(())
}

#[tracepoint]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    let _ = try_complete(&ctx);
    0
}

fn try_complete(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    // SAFETY: offsets come from this tracepoint's format file.
    let (dev, sector) = unsafe {
        (
            ctx.read_at::<u32>(o.get(Field::RqCompleteDev))?,
            ctx.read_at::<u64>(o.get(Field::RqCompleteSector))?,
        )
    };
    done(dev, sector);
    if o.flags & FLAG_ERRORS_FROM_COMPLETE != 0 {
        // SAFETY: as above.
        let error = unsafe { ctx.read_at::<i32>(o.get(Field::RqCompleteError))? };
        if error != 0 {
            emit(EventKind::BlockError, dev, error, 0, sector);
        }
    }
    Ok(())
}

#[tracepoint]
pub fn block_rq_error(ctx: TracePointContext) -> u32 {
    let _ = try_error(&ctx);
    0
}

fn try_error(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    // SAFETY: offsets come from this tracepoint's format file.
    let (dev, sector, error) = unsafe {
        (
            ctx.read_at::<u32>(o.get(Field::RqErrorDev))?,
            ctx.read_at::<u64>(o.get(Field::RqErrorSector))?,
            ctx.read_at::<i32>(o.get(Field::RqErrorError))?,
        )
    };
    emit(EventKind::BlockError, dev, error, 0, sector);
    Ok(())
}

/// A requeued request leaves the driver; it is issued again later with a fresh start time.
#[tracepoint]
pub fn block_rq_requeue(ctx: TracePointContext) -> u32 {
    if let Some(o) = offsets() {
        // SAFETY: offsets come from this tracepoint's format file.
        let read = unsafe {
            (
                ctx.read_at::<u32>(o.get(Field::RqRequeueDev)),
                ctx.read_at::<u64>(o.get(Field::RqRequeueSector)),
            )
        };
        if let (Ok(dev), Ok(sector)) = read {
            done(dev, sector);
        }
    }
    0
}

#[inline(always)]
fn done(dev: u32, sector: u64) {
    let key = classic_rq_key(dev, sector);
    if let Some(v) = RQ_INFLIGHT.get_ptr_mut(key) {
        // SAFETY: map value pointer, see `try_issue`.
        unsafe {
            if (*v).count > 1 {
                (*v).count -= 1;
                return;
            }
        }
        let _ = RQ_INFLIGHT.remove(key);
    }
}
