//! SUNRPC tasks in flight: `sunrpc:rpc_task_begin` -> `sunrpc:rpc_task_end` (or
//! `rpc_task_complete`). A task of an NFS mount whose server is gone never ends; userspace
//! ages the entries. The tracepoints carry only the task and client ids (no server), so the
//! entry is keyed by both and carries a count: without `CONFIG_SUNRPC_DEBUG` every task id is 0.

use agent_ebpf::{Field, OP_LEN, RpcKey, Stat};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use super::{RPC_INFLIGHT, offsets, track_end, track_start};

#[tracepoint]
pub fn rpc_task_begin(ctx: TracePointContext) -> u32 {
    let _ = try_begin(&ctx);
    0
}

fn try_begin(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    // SAFETY: offsets come from this tracepoint's format file.
    let key = unsafe {
        RpcKey {
            client_id: ctx.read_at::<u32>(o.get(Field::RpcBeginClientId))?,
            task_id: ctx.read_at::<u32>(o.get(Field::RpcBeginTaskId))?,
        }
    };
    track_start(&RPC_INFLIGHT, key, [0; OP_LEN], Stat::RpcMapFull);
    Ok(())
}

#[tracepoint]
pub fn rpc_task_end(ctx: TracePointContext) -> u32 {
    let _ = try_end(&ctx);
    0
}

fn try_end(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    // SAFETY: offsets come from this tracepoint's format file.
    let key = unsafe {
        RpcKey {
            client_id: ctx.read_at::<u32>(o.get(Field::RpcEndClientId))?,
            task_id: ctx.read_at::<u32>(o.get(Field::RpcEndTaskId))?,
        }
    };
    track_end(&RPC_INFLIGHT, key);
    Ok(())
}
