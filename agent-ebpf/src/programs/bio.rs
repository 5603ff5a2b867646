//! Bio-level tracking for device-mapper devices: `block_bio_queue` -> `block_bio_complete`.
//!
//! A suspended dm device (a stalled volume behind dm) queues bios inside dm before any
//! request is allocated, so `block_rq_*` and `/sys/block/dm-*/inflight` never see them. Only
//! devices whose major is `Offsets::bio_major` are tracked: on request-based devices the bio's
//! sector has advanced by completion time, and their requests are tracked already. Errors of
//! bio-based devices (dm `error` target) never reach `block_rq_error` either, so a failed bio
//! completion is reported here.

use agent_ebpf::{BioDone, EventKind, Field, OP_LEN, RqKey, Stat};
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};

use super::{BIO_DONE, BIO_INFLIGHT, count, emit, offsets, track_end, track_start};

#[inline(always)]
fn tracked(dev: u32, bio_major: u32) -> bool {
    bio_major != 0 && dev >> 20 == bio_major
}

#[tracepoint]
pub fn block_bio_queue(ctx: TracePointContext) -> u32 {
    let _ = try_queue(&ctx);
    0
}

fn try_queue(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    // SAFETY: offsets come from this tracepoint's format file.
    let dev = unsafe { ctx.read_at::<u32>(o.get(Field::BioQueueDev))? };
    if !tracked(dev, o.bio_major) {
        return Ok(());
    }
    // SAFETY: as above.
    let sector = unsafe { ctx.read_at::<u64>(o.get(Field::BioQueueSector))? };
    let key = RqKey {
        dev,
        _pad: 0,
        sector,
    };
    // SAFETY: as above; unreadable means unknown.
    let op =
        unsafe { ctx.read_at::<[u8; OP_LEN]>(o.get(Field::BioQueueRwbs)) }.unwrap_or([0; OP_LEN]);
    track_start(&BIO_INFLIGHT, key, op, Stat::BioMapFull);
    Ok(())
}

#[tracepoint]
pub fn block_bio_complete(ctx: TracePointContext) -> u32 {
    let _ = try_complete(&ctx);
    0
}

fn try_complete(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    // SAFETY: offsets come from this tracepoint's format file.
    let dev = unsafe { ctx.read_at::<u32>(o.get(Field::BioCompleteDev))? };
    if !tracked(dev, o.bio_major) {
        return Ok(());
    }
    // SAFETY: as above.
    let (sector, error) = unsafe {
        (
            ctx.read_at::<u64>(o.get(Field::BioCompleteSector))?,
            ctx.read_at::<i32>(o.get(Field::BioCompleteError))?,
        )
    };
    let key = RqKey {
        dev,
        _pad: 0,
        sector,
    };
    track_end(&BIO_INFLIGHT, key);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match BIO_DONE.get_ptr_mut(dev) {
        // SAFETY: map value pointer; concurrent completions may lose an increment, which
        // only matters as "progress happened", and that stays true.
        Some(d) => unsafe {
            (*d).last_ns = now;
            (*d).completed = (*d).completed.wrapping_add(1);
        },
        None => {
            let first = BioDone {
                last_ns: now,
                completed: 1,
            };
            // Full: this device's completions go unseen, so its bios could look stalled;
            // counted so that is never silent (userspace prunes devices that went away).
            if BIO_DONE.insert(dev, first, 0).is_err() {
                count(Stat::BioDoneFull);
            }
        }
    }
    if error != 0 {
        emit(EventKind::BlockError, dev, error, 0, sector);
    }
    Ok(())
}
