//! The one way stale metric series go: a [`LiveSeries`] remembers the label sets that have
//! series, and whatever leaves it has its series removed, so `/metrics` neither keeps a cleared
//! value at its last reading nor grows with every target and disk the host ever had.
//!
//! Users: per-target series (`publish::target_metrics::TargetSeries`, replaced at
//! every publish) and per-device series ([`DeviceSeries`], at every topology refresh).

use std::collections::BTreeMap;

use super::{
    DeviceLabels, Metrics, device_labels,
    limits::{self, BoundedTable},
};
use crate::{
    probes::dev::DevId,
    topology::{BlockDevice, Sysfs},
};

/// Keys with live series (and a value remembered with each).
#[derive(Debug)]
pub struct LiveSeries<K, V = ()> {
    live: BTreeMap<K, V>,
}

impl<K, V> Default for LiveSeries<K, V> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, V> LiveSeries<K, V> {
    pub fn contains(&self, k: &K) -> bool {
        self.live.contains_key(k)
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.live.keys()
    }

    pub fn insert(&mut self, k: K, v: V) {
        self.live.insert(k, v);
    }

    /// Keeps the keys `keep` accepts; `remove` drops the series of every other one.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool, mut remove: impl FnMut(&K)) {
        self.live.retain(|k, v| {
            let kept = keep(k, v);
            if !kept {
                remove(k);
            }
            kept
        });
    }

    /// Makes `now` the live set; `remove` drops the series of every key not in it.
    pub fn replace(&mut self, now: BTreeMap<K, V>, remove: impl FnMut(&K)) {
        self.retain(|k, _| now.contains_key(k), remove);
        self.live = now;
    }
}

/// Per-device series. The gauges (`bindsto_block_inflight_*`) live while the device is
/// observed. The counters (`bindsto_block_io_errors_total`, `bindsto_xfs_shutdowns_total`)
/// live while the disk exists, observed or not (it may come back); disks outside the
/// observed set get them only up to `DEVICE_SERIES_MAX`.
#[derive(Debug, Default)]
pub struct DeviceSeries {
    gauges: LiveSeries<String>,
    /// With the disk's `diskseq`, which a loop device reattached under the same name changes.
    counters: LiveSeries<String, (DevId, Option<u64>)>,
    /// Counter series of disks that are not observed (what the limit bounds).
    others: usize,
}

impl DeviceSeries {
    /// Whether the disk `name` may have its own counter series; counted when the limit says no.
    pub fn admit(
        &mut self,
        metrics: &Metrics,
        sysfs: &Sysfs,
        name: &str,
        dev: DevId,
        observed: bool,
    ) -> bool {
        if self.counters.contains(&name.to_string()) {
            return true;
        }
        if !observed {
            if self.others >= limits::DEVICE_SERIES_MAX {
                metrics.count_full(BoundedTable::DeviceSeries, 1);
                return false;
            }
            self.others += 1;
        }
        let seq = sysfs.block_device(dev).and_then(|b| diskseq(&b));
        self.counters.insert(name.to_string(), (dev, seq));
        true
    }

    /// At every topology refresh (a mount table change, at the latest every 30 s): the gauges
    /// of devices no longer observed go, and so do the counters of disks that are neither
    /// observed nor present in sysfs any more (a detached or reattached loop device, a removed
    /// volume).
    pub fn refresh(
        &mut self,
        metrics: &Metrics,
        sysfs: &Sysfs,
        observed: &BTreeMap<String, DevId>,
    ) {
        let now = observed.keys().map(|n| (n.clone(), ())).collect();
        self.gauges.replace(now, |name| {
            let l = device_labels(name);
            metrics.inflight_oldest.remove(&l);
            metrics.inflight_requests.remove(&l);
        });
        let present = |name: &String, (dev, seq): &(DevId, Option<u64>)| {
            sysfs.block_device(*dev).is_some_and(|b| {
                // A detached loop device keeps its sysfs entry, with no size; one attached
                // again (another disk under the same name) has a new diskseq.
                &b.name == name
                    && !std::fs::read_to_string(b.sysfs_dir.join("size"))
                        .is_ok_and(|s| s.trim() == "0")
                    && diskseq(&b) == *seq
            })
        };
        self.counters.retain(
            |name, v| observed.contains_key(name) || present(name, v),
            |name| {
                let l: DeviceLabels = device_labels(name);
                metrics.block_io_errors.remove(&l);
                metrics.xfs_shutdowns.remove(&l);
            },
        );
        self.others = self
            .counters
            .keys()
            .filter(|n| !observed.contains_key(*n))
            .count();
    }

    /// No disk outside the observed set has counter series.
    pub fn is_empty(&self) -> bool {
        self.others == 0
    }
}

/// The kernel's sequence number of the disk (`diskseq`, 5.15+), new at every loop attach.
fn diskseq(b: &BlockDevice) -> Option<u64> {
    let text = std::fs::read_to_string(b.sysfs_dir.join("diskseq")).ok()?;
    text.trim().parse().ok()
}
