//! SUNRPC tasks in flight: `sunrpc:rpc_task_begin` -> `sunrpc:rpc_task_end` (or
//! `rpc_task_complete`). A task of an NFS mount whose server is gone never ends; userspace
//! ages the entries. The tracepoints carry only the task and client ids (no server), so the
//! entry is keyed by both and carries a count: without `CONFIG_SUNRPC_DEBUG` every task id is 0.

use agent_ebpf::{Field, RpcKey, RqVal, Stat};
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};

use super::{RPC_INFLIGHT, count, offsets};

const BPF_NOEXIST: u64 = 1;

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
    if let Some(v) = RPC_INFLIGHT.get_ptr_mut(key) {
        // Same key in flight (task ids are all 0 without SUNRPC debug): keep the oldest start.
        // SAFETY: map value pointer; a lost update only miscounts, and a stall verdict also
        // needs the mount's own probe to be unanswered.
        unsafe { (*v).count = (*v).count.saturating_add(1) };
        return Ok(());
    }
    let val = RqVal {
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        count: 1,
        nr_sector: 0,
    };
    if RPC_INFLIGHT.insert(key, val, BPF_NOEXIST).is_err() {
        count(Stat::RpcMapFull);
    }
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
    if let Some(v) = RPC_INFLIGHT.get_ptr_mut(key) {
        // SAFETY: map value pointer, see `try_begin`.
        let more = unsafe {
            if (*v).count > 1 {
                (*v).count -= 1;
                true
            } else {
                false
            }
        };
        if !more {
            let _ = RPC_INFLIGHT.remove(key);
        }
    }
    Ok(())
}
