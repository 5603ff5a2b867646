//! XFS: explicit shutdowns, buffer I/O errors, aborted log items and corruption marks.

use agent_ebpf::{EventKind, Field};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use super::{emit, offsets};

#[tracepoint]
pub fn xfs_force_shutdown(ctx: TracePointContext) -> u32 {
    let _ = try_shutdown(&ctx);
    0
}

fn try_shutdown(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    // SAFETY: offsets come from this tracepoint's format file.
    let (dev, ptag, flags) = unsafe {
        (
            ctx.read_at::<u32>(o.get(Field::ShutdownDev))?,
            ctx.read_at::<i32>(o.get(Field::ShutdownPtag))?,
            ctx.read_at::<u32>(o.get(Field::ShutdownFlags))?,
        )
    };
    emit(EventKind::XfsShutdown, dev, ptag, flags, 0);
    Ok(())
}

#[tracepoint]
pub fn xfs_buf_ioerror(ctx: TracePointContext) -> u32 {
    let _ = try_buf_ioerror(&ctx);
    0
}

fn try_buf_ioerror(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    // SAFETY: offsets come from this tracepoint's format file.
    let error = unsafe { ctx.read_at::<i32>(o.get(Field::BufIoerrorError))? };
    // The kernel also calls this with 0 to clear a buffer's error.
    if error >= 0 {
        return Ok(());
    }
    // SAFETY: as above.
    let dev = unsafe { ctx.read_at::<u32>(o.get(Field::BufIoerrorDev))? };
    emit(EventKind::XfsBufIoError, dev, error, 0, 0);
    Ok(())
}

#[tracepoint]
pub fn xlog_ail_insert_abort(ctx: TracePointContext) -> u32 {
    if let Some(o) = offsets() {
        // SAFETY: offset from this tracepoint's format file.
        if let Ok(dev) = unsafe { ctx.read_at::<u32>(o.get(Field::AilAbortDev)) } {
            emit(EventKind::XfsAilAbort, dev, 0, 0, 0);
        }
    }
    0
}

#[tracepoint]
pub fn xfs_fs_mark_corrupt(ctx: TracePointContext) -> u32 {
    let _ = try_corrupt(
        &ctx,
        EventKind::XfsFsCorrupt,
        Field::FsCorruptDev,
        Field::FsCorruptFlags,
        None,
    );
    0
}

#[tracepoint]
pub fn xfs_inode_mark_corrupt(ctx: TracePointContext) -> u32 {
    let _ = try_corrupt(
        &ctx,
        EventKind::XfsInodeCorrupt,
        Field::InodeCorruptDev,
        Field::InodeCorruptFlags,
        Some(Field::InodeCorruptIno),
    );
    0
}

/// `xfs_group_mark_corrupt` (6.13+) or `xfs_ag_mark_corrupt` (older); userspace attaches
/// whichever exists and fills the offsets from its format file.
#[tracepoint]
pub fn xfs_group_mark_corrupt(ctx: TracePointContext) -> u32 {
    let _ = try_corrupt(
        &ctx,
        EventKind::XfsGroupCorrupt,
        Field::GroupCorruptDev,
        Field::GroupCorruptFlags,
        None,
    );
    0
}

#[inline(always)]
fn try_corrupt(
    ctx: &TracePointContext,
    kind: EventKind,
    dev: Field,
    flags: Field,
    arg: Option<Field>,
) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    // SAFETY: offsets come from this tracepoint's format file.
    let (dev, flags) = unsafe {
        (
            ctx.read_at::<u32>(o.get(dev))?,
            ctx.read_at::<u32>(o.get(flags))?,
        )
    };
    let arg = match arg {
        // SAFETY: as above.
        Some(f) => unsafe { ctx.read_at::<u64>(o.get(f))? },
        None => 0,
    };
    emit(kind, dev, 0, flags, arg);
    Ok(())
}
