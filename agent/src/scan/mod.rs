//! Scan: reads what is in flight from the kernel maps and sysfs, one scanner per source, and
//! checks mounts off-thread. Each scanner returns a plain verdict (what is stalled or blocked,
//! with details, and what leaked entries it pruned from its map); the engine (`health`)
//! applies verdicts to targets.
//!
//! - [`block`]: block requests, cross-checked with the block layer's own counters in sysfs
//!   (the map gives ages, sysfs the verdict, so a leaked entry never becomes a phantom stall);
//! - [`bio`]: device-mapper bios queued before request accounting;
//! - [`rpc`]: SUNRPC tasks, the NFS side;
//! - [`calls`]: mount-family syscalls in flight;
//! - [`stats`]: the programs' drop counters;
//! - [`check`], [`pathcheck`]: `statx`/`statfs` of a mount and `stat` of a watched path, on
//!   their own threads;
//! - [`canary`]: the write canary of a watch (create, write 4 KiB, `fsync`, remove), on its
//!   own thread.
//!
//! May depend on `config`, `probes` and `topology`.

pub mod bio;
pub mod block;
pub mod calls;
pub mod canary;
pub mod check;
pub mod pathcheck;
pub mod rpc;
pub mod stats;

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        Err(_) => 0,
    }
}
