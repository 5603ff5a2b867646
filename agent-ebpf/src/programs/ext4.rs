//! ext4: explicit shutdowns (`EXT4_IOC_SHUTDOWN`) and reported filesystem errors (which include
//! the journal abort ext4 reports as "Detected aborted journal").

use agent_ebpf::{EventKind, Field};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use super::{emit, offsets};

#[tracepoint]
pub fn ext4_shutdown(ctx: TracePointContext) -> u32 {
    let _ = try_read_and_emit(
        &ctx,
        EventKind::Ext4Shutdown,
        Field::Ext4ShutdownDev,
        Field::Ext4ShutdownFlags,
    );
    0
}

#[tracepoint]
pub fn ext4_error(ctx: TracePointContext) -> u32 {
    let _ = try_read_and_emit(
        &ctx,
        EventKind::Ext4Error,
        Field::Ext4ErrorDev,
        Field::Ext4ErrorLine,
    );
    0
}

/// Both events are a `dev_t` and one `unsigned`: the flags of a shutdown, the line of an error.
#[inline(always)]
fn try_read_and_emit(
    ctx: &TracePointContext,
    kind: EventKind,
    dev: Field,
    word: Field,
) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    // SAFETY: offsets come from this tracepoint's format file.
    let (dev, word) = unsafe {
        (
            ctx.read_at::<u32>(o.get(dev))?,
            ctx.read_at::<u32>(o.get(word))?,
        )
    };
    match kind {
        EventKind::Ext4Shutdown => emit(kind, dev, 0, word, 0),
        _ => emit(kind, dev, 0, 0, u64::from(word)),
    }
    Ok(())
}
