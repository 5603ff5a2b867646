//! Block requests in flight (`rq_inflight`), judged with the block layer's own counters in
//! sysfs: a disk is stalled when requests are in flight and none completed for
//! `io_stall_after`. The map gives ages; sysfs gives the verdict, so an entry leaked by a lost
//! completion never turns into a phantom stall, and such entries are pruned here.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use agent_ebpf::Request;
use aya::maps::{HashMap, MapData};
use tracing::debug;

use super::{bio::BioInflight, monotonic_ns};
use crate::{
    probes::{batch, dev::DevId},
    topology::Sysfs,
};

/// What the request map says about one whole disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapInflight {
    pub requests: u64,
    pub oldest_start_ns: Option<u64>,
}

/// Groups the request map by disk.
pub fn block_inflight(map: &HashMap<MapData, u64, Request>) -> BTreeMap<DevId, MapInflight> {
    let mut out: BTreeMap<DevId, MapInflight> = BTreeMap::new();
    batch::for_each(map, |_, val| {
        let e = out.entry(DevId::from_kernel(val.dev)).or_default();
        e.requests += u64::from(val.count.max(1));
        e.oldest_start_ns = Some(
            e.oldest_start_ns
                .map_or(val.start_ns, |o| o.min(val.start_ns)),
        );
    });
    out
}

/// Removes, in one pass, the entries of each disk in `idle` issued before the time given for
/// it: when sysfs said nothing was in flight on the disk (or it was gone), such entries lost
/// their completion (partial completion, a race). Returns how many went, per disk.
pub fn forget_leaked(
    map: &mut HashMap<MapData, u64, Request>,
    idle: &BTreeMap<DevId, u64>,
) -> BTreeMap<DevId, usize> {
    let mut stale: Vec<(u64, u32)> = Vec::new();
    batch::for_each(map, |k, v| {
        if idle
            .get(&DevId::from_kernel(v.dev))
            .is_some_and(|&before_ns| v.start_ns < before_ns)
        {
            stale.push((k, v.dev));
        }
    });
    let mut dropped = BTreeMap::new();
    for (_, dev) in stale.iter().filter(|(k, _)| map.remove(k).is_ok()) {
        *dropped.entry(DevId::from_kernel(*dev)).or_insert(0) += 1;
    }
    dropped
}

/// Per-device progress tracking from `/sys/block/<dev>/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanProgress {
    last_completed: Option<u64>,
    /// Monotonic ns of the last scan that saw progress (completions, or nothing in flight).
    last_progress_ns: u64,
}

impl ScanProgress {
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

/// An observed disk as the scanner reads it; its progress tracking is kept by the caller.
pub struct Disk<'a> {
    pub name: &'a str,
    pub dev: DevId,
    pub sysfs_dir: &'a Path,
    pub progress: &'a mut ScanProgress,
}

/// One disk's verdict.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiskVerdict {
    /// Requests in flight per sysfs.
    pub requests: u64,
    /// Requests per sysfs or bios per the bio map, whichever is more.
    pub inflight: u64,
    pub oldest_inflight: Duration,
    /// The `io_stall` detail when the disk is stalled.
    pub stall: Option<String>,
    /// sysfs completion counters summed (failed requests count too), and when (monotonic ns)
    /// they were read: the dead-device check compares them with the errors reported before.
    pub completed: u64,
    pub read_ns: u64,
}

/// What one scan of the block layer found: a verdict per observed disk whose sysfs counters
/// could be read, and the request entries pruned (per disk) because they lost their
/// completion.
#[derive(Debug, Default)]
pub struct BlockVerdict {
    pub disks: BTreeMap<String, DiskVerdict>,
    pub pruned: BTreeMap<DevId, usize>,
}

/// Scans the observed `disks` (and prunes the request map, `rq`, of every disk).
pub fn scan(
    sysfs: &Sysfs,
    disks: Vec<Disk<'_>>,
    rq: Option<&mut HashMap<MapData, u64, Request>>,
    bios: &BTreeMap<DevId, BioInflight>,
    stall_after: Duration,
    now_ns: u64,
) -> BlockVerdict {
    let by_dev = rq.as_deref().map(block_inflight).unwrap_or_default();
    // Disks with request entries but nothing in flight per sysfs, with when sysfs was read:
    // entries older than that lost their completion. Dropped in one pass over the map.
    let mut idle: BTreeMap<DevId, u64> = BTreeMap::new();
    let mut out = BlockVerdict::default();
    let observed: BTreeSet<DevId> = disks.iter().map(|d| d.dev).collect();
    for d in disks {
        let read_ns = monotonic_ns();
        let (inflight, completed) = match (sysfs.inflight(d.sysfs_dir), sysfs.stat(d.sysfs_dir)) {
            (Some((r, w)), Some(st)) => (r + w, st.completed()),
            (None, Some(st)) => (st.in_flight, st.completed()),
            _ => continue,
        };
        let no_progress = d.progress.observe(read_ns, inflight, completed);
        let map = by_dev.get(&d.dev).copied().unwrap_or_default();
        if inflight == 0 && map.requests > 0 {
            idle.insert(d.dev, read_ns);
        }
        let bio = bios.get(&d.dev).copied().unwrap_or_default();
        let mut v = judge(inflight, no_progress, map, bio, stall_after, now_ns);
        v.completed = completed;
        v.read_ns = read_ns;
        out.disks.insert(d.name.to_string(), v);
    }
    // Requests of disks outside the observed mounts: nobody judges them, but entries that
    // lost their completion (or whose disk went away, a detached loop device) would fill
    // the map for good. Same rule as above: nothing in flight per sysfs, entry leaked.
    for dev in by_dev.keys().filter(|d| !observed.contains(d)) {
        let read_ns = monotonic_ns();
        let gone_or_idle = match sysfs.block_device(*dev) {
            None => true,
            Some(b) => sysfs
                .inflight(&b.sysfs_dir)
                .map(|(r, w)| r + w == 0)
                .or_else(|| sysfs.stat(&b.sysfs_dir).map(|s| s.in_flight == 0))
                .unwrap_or(false),
        };
        if gone_or_idle {
            idle.insert(*dev, read_ns);
        }
    }
    if let Some(rq) = rq
        && !idle.is_empty()
    {
        out.pruned = forget_leaked(rq, &idle);
        for (dev, n) in &out.pruned {
            let observed = observed.contains(dev);
            debug!(%dev, entries = n, observed, "dropped request entries that lost their completion");
        }
    }
    out
}

/// The verdict of one disk from sysfs (`inflight`, and how long nothing completed), the
/// request map and the bio map.
fn judge(
    inflight: u64,
    no_progress: Duration,
    map: MapInflight,
    bio: BioInflight,
    stall_after: Duration,
    now_ns: u64,
) -> DiskVerdict {
    // The map knows when each tracked request was issued; sysfs only that nothing
    // completed since some scan. The younger of the two is the stall's age: a
    // leaked (old) map entry cannot age a device that makes progress, and a request
    // issued just after an idle scan is not aged by that scan.
    let map_age = map
        .oldest_start_ns
        .map(|s| Duration::from_nanos(now_ns.saturating_sub(s)));
    let stall_age = map_age.map_or(no_progress, |a| a.min(no_progress));
    let mut oldest_inflight = if inflight == 0 {
        Duration::ZERO
    } else {
        map_age.unwrap_or(no_progress)
    };
    let rq_stalled = inflight > 0 && stall_age >= stall_after;
    let bio_stalled = bio.stalled_for.is_some_and(|a| a >= stall_after);
    if let Some(o) = bio.oldest {
        oldest_inflight = oldest_inflight.max(o);
    }
    let stall = if rq_stalled {
        Some(format!(
            "{inflight} request(s) in flight, none completed for {:.1}s (oldest {:.1}s)",
            no_progress.as_secs_f64(),
            oldest_inflight.as_secs_f64()
        ))
    } else if bio_stalled {
        Some(format!(
            "{} bio(s) queued, none completed for {:.1}s (device-mapper queueing, e.g. suspended)",
            bio.bios,
            bio.stalled_for.unwrap_or_default().as_secs_f64()
        ))
    } else {
        None
    };
    DiskVerdict {
        requests: inflight,
        inflight: inflight.max(bio.bios),
        oldest_inflight,
        stall,
        ..DiskVerdict::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn idle_device_never_stalls() {
        let mut p = ScanProgress::default();
        assert_eq!(p.observe(0, 0, 10), Duration::ZERO);
        assert_eq!(p.observe(100 * S, 0, 10), Duration::ZERO);
        // A request appears after a long idle period: its age counts from the last scan.
        assert_eq!(p.observe(101 * S, 1, 10), Duration::from_secs(1));
    }

    #[test]
    fn no_completions_with_requests_in_flight_is_a_stall() {
        let mut p = ScanProgress::default();
        p.observe(0, 1, 5);
        assert_eq!(p.observe(2 * S, 1, 5), Duration::from_secs(2));
        assert_eq!(p.observe(4 * S, 3, 5), Duration::from_secs(4));
        // One completion: progress, even with requests still in flight.
        assert_eq!(p.observe(5 * S, 3, 6), Duration::ZERO);
    }
}
