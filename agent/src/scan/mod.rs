//! Reads what is in flight from the kernel maps and decides, with the block layer's own
//! counters in sysfs, whether a device is stalled. The map gives ages; sysfs gives the
//! verdict, so an entry leaked by a lost completion never turns into a phantom stall.

pub mod bio;
pub mod check;
pub mod pathcheck;
pub mod rpc;

use std::{collections::BTreeMap, time::Duration};

use agent_ebpf::{MountCall, RqKey, RqVal, Syscall};
use aya::maps::{HashMap, MapData};

use crate::topology::DevId;

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        Err(_) => 0,
    }
}

/// What the request map says about one whole disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapInflight {
    pub requests: u64,
    pub oldest_start_ns: Option<u64>,
}

/// Groups the request map by disk.
pub fn block_inflight(map: &HashMap<MapData, RqKey, RqVal>) -> BTreeMap<DevId, MapInflight> {
    let mut out: BTreeMap<DevId, MapInflight> = BTreeMap::new();
    for (key, val) in map.iter().flatten() {
        let e = out.entry(DevId::from_kernel(key.dev)).or_default();
        e.requests += u64::from(val.count.max(1));
        e.oldest_start_ns = Some(
            e.oldest_start_ns
                .map_or(val.start_ns, |o| o.min(val.start_ns)),
        );
    }
    out
}

/// Removes, in one pass, the entries of each disk in `idle` issued before the time given for
/// it: when sysfs said nothing was in flight on the disk (or it was gone), such entries lost
/// their completion (partial completion, a race). Returns how many went, per disk.
pub fn forget_leaked(
    map: &mut HashMap<MapData, RqKey, RqVal>,
    idle: &BTreeMap<DevId, u64>,
) -> BTreeMap<DevId, usize> {
    let stale: Vec<RqKey> = map
        .iter()
        .flatten()
        .filter(|(k, v)| {
            idle.get(&DevId::from_kernel(k.dev))
                .is_some_and(|&before_ns| v.start_ns < before_ns)
        })
        .map(|(k, _)| k)
        .collect();
    let mut dropped = BTreeMap::new();
    for k in stale.iter().filter(|k| map.remove(k).is_ok()) {
        *dropped.entry(DevId::from_kernel(k.dev)).or_insert(0) += 1;
    }
    dropped
}

/// Per-device progress tracking from `/sys/block/<dev>/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    last_completed: Option<u64>,
    /// Monotonic ns of the last scan that saw progress (completions, or nothing in flight).
    last_progress_ns: u64,
}

impl Progress {
    /// Records one scan; returns how long the device has gone without progress while
    /// requests were in flight. A device with nothing in flight is never stuck, and a
    /// completion proves the device moves.
    pub fn observe(&mut self, now_ns: u64, inflight: u64, completed: u64) -> Duration {
        let moved = self.last_completed.is_none_or(|c| c != completed);
        self.last_completed = Some(completed);
        if inflight == 0 || moved {
            self.last_progress_ns = now_ns;
        }
        Duration::from_nanos(now_ns.saturating_sub(self.last_progress_ns))
    }
}

/// A mount-family syscall in flight, decoded from the map.
#[derive(Clone, Debug, PartialEq)]
pub struct InflightCall {
    pub tgid: u32,
    pub tid: u32,
    pub syscall: &'static str,
    pub comm: String,
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub age: Duration,
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub fn decode_call(pid_tgid: u64, c: &MountCall, now_ns: u64) -> InflightCall {
    InflightCall {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        syscall: Syscall::from_u32(c.syscall).map_or("unknown", Syscall::name),
        comm: cstr(&c.comm),
        source: cstr(&c.source),
        target: cstr(&c.target),
        fstype: cstr(&c.fstype),
        age: Duration::from_nanos(now_ns.saturating_sub(c.start_ns)),
    }
}

/// All mount-family calls in flight. Entries whose thread no longer exists (it died in a
/// way that skipped the exit tracepoint) are removed.
pub fn mount_calls(map: &mut HashMap<MapData, u64, MountCall>, now_ns: u64) -> Vec<InflightCall> {
    let mut calls = Vec::new();
    let mut dead = Vec::new();
    for (key, call) in map.iter().flatten() {
        let c = decode_call(key, &call, now_ns);
        let alive = std::path::Path::new(&format!("/proc/{}/task/{}", c.tgid, c.tid)).exists();
        if alive {
            calls.push(c);
        } else {
            dead.push(key);
        }
    }
    for k in dead {
        let _ = map.remove(&k);
    }
    calls.sort_by_key(|c| std::cmp::Reverse(c.age));
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn idle_device_never_stalls() {
        let mut p = Progress::default();
        assert_eq!(p.observe(0, 0, 10), Duration::ZERO);
        assert_eq!(p.observe(100 * S, 0, 10), Duration::ZERO);
        // A request appears after a long idle period: its age counts from the last scan.
        assert_eq!(p.observe(101 * S, 1, 10), Duration::from_secs(1));
    }

    #[test]
    fn no_completions_with_requests_in_flight_is_a_stall() {
        let mut p = Progress::default();
        p.observe(0, 1, 5);
        assert_eq!(p.observe(2 * S, 1, 5), Duration::from_secs(2));
        assert_eq!(p.observe(4 * S, 3, 5), Duration::from_secs(4));
        // One completion: progress, even with requests still in flight.
        assert_eq!(p.observe(5 * S, 3, 6), Duration::ZERO);
    }

    #[test]
    fn decodes_mount_call_strings() {
        let mut c = MountCall::zeroed();
        c.start_ns = S;
        c.syscall = Syscall::Mount as u32;
        c.comm[..5].copy_from_slice(b"mount");
        c.source[..9].copy_from_slice(b"/dev/loop");
        c.target[..4].copy_from_slice(b"/mnt");
        c.fstype[..3].copy_from_slice(b"xfs");
        let d = decode_call((42u64 << 32) | 43, &c, 4 * S);
        assert_eq!((d.tgid, d.tid, d.syscall), (42, 43, "mount"));
        assert_eq!(
            (d.source.as_str(), d.target.as_str(), d.fstype.as_str()),
            ("/dev/loop", "/mnt", "xfs")
        );
        assert_eq!(d.comm, "mount");
        assert_eq!(d.age, Duration::from_secs(3));
    }
}
