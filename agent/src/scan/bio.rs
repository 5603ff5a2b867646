//! Bios of device-mapper devices in flight (`bio_inflight`, `bio_done`): the stall verdict
//! per device, with leaked entries pruned.
//!
//! A suspended dm device queues bios before request accounting, so neither the request map
//! nor `/sys/block/dm-*/inflight` shows them. Keys are (dev, sector) as for requests; an entry
//! whose bio completed under another key (dm split it) would leak, so entries that started
//! before the device's last completion and are older than the threshold are dropped: they
//! cannot be a stall, because the device completed bios after they started.

use std::{collections::BTreeMap, time::Duration};

use agent_ebpf::{BioDone, RqKey, RqVal};
use aya::maps::{HashMap, MapData};

use crate::probes::{batch, dev::DevId};

/// What the bio map says about one device after dropping leaked entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BioInflight {
    pub bios: u64,
    /// Age of the oldest bio that started after the device's last completion: the time the
    /// device has gone without completing anything while it had work.
    pub stalled_for: Option<Duration>,
    pub oldest: Option<Duration>,
}

/// Decides per device from (key, value) pairs and the per-device completions. Returns the
/// verdicts and the keys to drop.
pub fn assess(
    entries: &[(RqKey, RqVal)],
    done: &BTreeMap<u32, BioDone>,
    now_ns: u64,
    leak_after: Duration,
) -> (BTreeMap<DevId, BioInflight>, Vec<RqKey>) {
    let mut out: BTreeMap<DevId, BioInflight> = BTreeMap::new();
    let mut drop = Vec::new();
    for (k, v) in entries {
        let age = Duration::from_nanos(now_ns.saturating_sub(v.start_ns));
        let last_done = done.get(&k.dev).map_or(0, |d| d.last_ns);
        if v.start_ns < last_done {
            // Completions happened after this bio started: not a stall. Old enough, it lost
            // its completion.
            if age >= leak_after {
                drop.push(*k);
            }
            continue;
        }
        let e = out.entry(DevId::from_kernel(k.dev)).or_default();
        e.bios += u64::from(v.count.max(1));
        e.stalled_for = Some(e.stalled_for.map_or(age, |a| a.max(age)));
        e.oldest = Some(e.oldest.map_or(age, |a| a.max(age)));
    }
    (out, drop)
}

type Entries = Vec<(RqKey, RqVal)>;

/// Splits entries into those of devices that exist and those of devices that went away.
fn split_gone(entries: Entries, exists: &dyn Fn(DevId) -> bool) -> (Entries, Entries) {
    entries
        .into_iter()
        .partition(|(k, _)| exists(DevId::from_kernel(k.dev)))
}

/// The bio verdict of one scan.
#[derive(Debug, Default)]
pub struct BioVerdict {
    pub devices: BTreeMap<DevId, BioInflight>,
    /// Entries dropped from both maps (leaked, or of a device that went away).
    pub pruned: usize,
}

/// Reads the maps, drops leaked entries and returns the per-device verdicts. Entries of devices
/// that no longer exist (`exists` is false: a removed dm device) are dropped from both maps, or
/// they would stay for good and fill them.
pub fn scan(
    inflight: &mut HashMap<MapData, RqKey, RqVal>,
    done: &mut HashMap<MapData, u32, BioDone>,
    now_ns: u64,
    leak_after: Duration,
    exists: &dyn Fn(DevId) -> bool,
) -> BioVerdict {
    // One sysfs lookup per device and scan, not per bio (thousands queue on a suspended dm).
    let known = std::cell::RefCell::new(BTreeMap::<DevId, bool>::new());
    let cached = |d: DevId| *known.borrow_mut().entry(d).or_insert_with(|| exists(d));
    let done_all: Vec<(u32, BioDone)> = done.iter().flatten().collect();
    let gone_done: Vec<u32> = done_all
        .iter()
        .map(|(d, _)| *d)
        .filter(|d| !cached(DevId::from_kernel(*d)))
        .collect();
    let mut pruned = gone_done.iter().filter(|d| done.remove(d).is_ok()).count();
    let entries: Vec<(RqKey, RqVal)> = batch::collect(inflight);
    if entries.is_empty() {
        return BioVerdict {
            devices: BTreeMap::new(),
            pruned,
        };
    }
    let (entries, gone) = split_gone(entries, &cached);
    let done: BTreeMap<u32, BioDone> = done_all
        .into_iter()
        .filter(|(d, _)| !gone_done.contains(d))
        .collect();
    let (devices, leaked) = assess(&entries, &done, now_ns, leak_after);
    pruned += leaked
        .iter()
        .chain(gone.iter().map(|(k, _)| k))
        .filter(|k| inflight.remove(k).is_ok())
        .count();
    BioVerdict { devices, pruned }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn entry(dev: u32, sector: u64, start: u64) -> (RqKey, RqVal) {
        (
            RqKey {
                dev,
                _pad: 0,
                sector,
            },
            RqVal {
                start_ns: start,
                count: 1,
                nr_sector: 0,
                op: [0; agent_ebpf::OP_LEN],
            },
        )
    }

    #[test]
    fn entries_of_a_device_that_went_away_are_split_off() {
        let here = 253 << 20;
        let gone = (253 << 20) | 7;
        let (kept, dropped) = split_gone(
            vec![entry(here, 8, S), entry(gone, 8, S), entry(gone, 16, S)],
            &|d| d == DevId::from_kernel(here),
        );
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0.dev, here);
        assert_eq!(dropped.len(), 2);
        assert!(dropped.iter().all(|(k, _)| k.dev == gone));
    }

    #[test]
    fn bios_queued_after_the_last_completion_age_into_a_stall() {
        let dev = 253 << 20;
        let done = BTreeMap::from([(
            dev,
            BioDone {
                last_ns: 10 * S,
                completed: 5,
            },
        )]);
        let (v, drop) = assess(
            &[entry(dev, 8, 11 * S), entry(dev, 16, 12 * S)],
            &done,
            15 * S,
            Duration::from_secs(3),
        );
        let d = v[&DevId::from_kernel(dev)];
        assert_eq!(d.bios, 2);
        assert_eq!(d.stalled_for, Some(Duration::from_secs(4)));
        assert!(drop.is_empty());
    }

    #[test]
    fn an_entry_older_than_a_completion_is_never_a_stall_and_is_dropped_when_old() {
        let dev = (253 << 20) | 1;
        let done = BTreeMap::from([(
            dev,
            BioDone {
                last_ns: 10 * S,
                completed: 5,
            },
        )]);
        let (v, drop) = assess(
            &[entry(dev, 8, 9 * S)],
            &done,
            11 * S,
            Duration::from_secs(3),
        );
        assert!(v.is_empty());
        assert!(drop.is_empty(), "young: kept, it may still complete");
        let (v, drop) = assess(
            &[entry(dev, 8, 9 * S)],
            &done,
            100 * S,
            Duration::from_secs(3),
        );
        assert!(v.is_empty());
        assert_eq!(drop.len(), 1);
    }
}
