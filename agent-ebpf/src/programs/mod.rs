//! Maps shared by all programs and the helpers they use to read them.

mod bio;
mod block;
mod block_btf;
mod ext4;
mod mounts;
mod rpc;
mod xfs;
mod xfs_kprobe;

use agent_ebpf::{
    BIO_DONE_ENTRIES, BIO_MAP_ENTRIES, BioDone, Event, EventKind, MOUNT_MAP_ENTRIES, MountCall,
    OP_LEN, Offsets, RINGBUF_BYTES, RPC_MAP_ENTRIES, RQ_MAP_ENTRIES, Request, RpcKey, RqKey, RqVal,
    STAT_COUNT, Stat,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};

/// Tracepoint field offsets, written once by userspace before any program is attached.
#[map(name = "OFFSETS")]
static OFFSETS: Array<Offsets> = Array::with_max_entries(1, 0);

/// Discrete events (shutdowns, errors) for userspace to decode.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

/// Block requests in flight, by request pointer (BTF-enabled programs) or by
/// `classic_rq_key`. A plain hash, not LRU: an LRU would evict exactly the stuck request we
/// are looking for.
#[map(name = "RQ_INFLIGHT")]
static RQ_INFLIGHT: HashMap<u64, Request> = HashMap::with_max_entries(RQ_MAP_ENTRIES, 0);

/// Bios of tracked (device-mapper) devices in flight; see `bio.rs`.
#[map(name = "BIO_INFLIGHT")]
static BIO_INFLIGHT: HashMap<RqKey, RqVal> = HashMap::with_max_entries(BIO_MAP_ENTRIES, 0);

/// Bio completions per tracked device (progress for the bio-level stall check).
#[map(name = "BIO_DONE")]
static BIO_DONE: HashMap<u32, BioDone> = HashMap::with_max_entries(BIO_DONE_ENTRIES, 0);

/// RPC tasks in flight (sunrpc), see `rpc.rs`. Plain hash for the same reason as above.
#[map(name = "RPC_INFLIGHT")]
static RPC_INFLIGHT: HashMap<RpcKey, RqVal> = HashMap::with_max_entries(RPC_MAP_ENTRIES, 0);

/// Mount-family syscalls in flight, keyed by pid_tgid.
#[map(name = "MOUNT_CALLS")]
static MOUNT_CALLS: HashMap<u64, MountCall> = HashMap::with_max_entries(MOUNT_MAP_ENTRIES, 0);

/// Scratch space to build a `MountCall` (320 bytes would not fit the 512-byte BPF stack
/// alongside everything else).
#[map(name = "MOUNT_SCRATCH")]
static MOUNT_SCRATCH: PerCpuArray<MountCall> = PerCpuArray::with_max_entries(1, 0);

/// Counters for things the kernel side had to drop; see `Stat`.
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// `BPF_NOEXIST`: insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn offsets() -> Option<&'static Offsets> {
    OFFSETS.get(0)
}

#[inline(always)]
fn count(stat: Stat) {
    if let Some(p) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot; programs do not nest on one CPU for these tracepoints.
        unsafe { *p += 1 };
    }
}

/// Records the start of an operation keyed by `key` in `map`: a second start with the same
/// key (a resubmitted bio, task ids that are 0 without SUNRPC debug) only bumps the count and
/// keeps the oldest start, so the age userspace sees never gets younger.
#[inline(always)]
fn track_start<K>(map: &HashMap<K, RqVal>, key: K, op: [u8; OP_LEN], full: Stat) {
    if let Some(v) = map.get_ptr_mut(&key) {
        // SAFETY: map value pointer; a lost update only miscounts, and userspace never judges
        // from the count alone (bios: completion progress; RPC: the mount's probe).
        unsafe { (*v).count = (*v).count.saturating_add(1) };
        return;
    }
    let val = RqVal {
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        count: 1,
        nr_sector: 0,
        op,
    };
    if map.insert(&key, &val, BPF_NOEXIST).is_err() {
        count(full);
    }
}

/// The end of one operation started with [`track_start`]: the entry goes with its last user.
#[inline(always)]
fn track_end<K>(map: &HashMap<K, RqVal>, key: K) {
    if let Some(v) = map.get_ptr_mut(&key) {
        // SAFETY: map value pointer, see `track_start`.
        let more = unsafe {
            if (*v).count > 1 {
                (*v).count -= 1;
                true
            } else {
                false
            }
        };
        if !more {
            let _ = map.remove(&key);
        }
    }
}

/// Sends one event; a full ring buffer is counted, never waited for.
#[inline(always)]
fn emit(kind: EventKind, dev: u32, code: i32, flags: u32, arg: u64) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                kind: kind as u32,
                dev,
                // SAFETY: helper without arguments.
                ts_ns: unsafe { bpf_ktime_get_ns() },
                tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
                code,
                flags,
                _pad: 0,
                arg,
            });
            entry.submit(0);
        }
        None => count(Stat::EventsLost),
    }
}
