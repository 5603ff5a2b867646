//! Which targets exist: the engine applies the topology's diff (`topology::reconcile`) to its
//! mounts and devices. Targets still there keep their state; new or remounted ones start
//! fresh.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tracing::{info, warn};

use super::{
    Kind, Signal, Target,
    engine::{Device, Engine, Observed, log_transition},
};
use crate::{
    metrics::limits::{self, BoundedTable},
    scan::block::ScanProgress,
    topology::{self, reconcile},
};

impl Engine {
    /// Re-reads the mount table and the devices under the observed mounts. Targets of mounts
    /// that are still there keep their state; a remount (new mount id) starts fresh.
    pub fn refresh_topology(
        &mut self,
        mountinfo: &str,
        path_exists: &dyn Fn(&Path) -> Option<bool>,
    ) {
        let entries = match topology::parse_mountinfo(mountinfo) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "cannot parse mountinfo; keeping the previous view");
                return;
            }
        };
        let now = SystemTime::now();
        let plan = reconcile::plan_mounts(
            &entries,
            &self.cfg,
            &self.watches,
            path_exists,
            limits::MOUNTS_MAX,
            self.left_out.0,
        );
        self.watches = plan.watches;
        self.left_out.0 = plan.left_out;
        self.metrics.count_full(BoundedTable::Mounts, plan.left_out);
        (self.shutdowns).retain(&entries.iter().map(|e| (e.mount_id, e.dev)).collect());
        let current = self
            .mounts
            .iter()
            .map(|(mp, o)| (mp.clone(), o.entry.mount_id))
            .collect();
        let diff = reconcile::diff(plan.mounts, &current, |(e, _)| e.mount_id);
        for mp in diff.gone {
            info!(mount = %mp.display(), "mount gone; no longer observed");
            self.mounts.remove(&mp);
        }
        keep(&mut self.mounts, diff.kept, |o, entry, critical| {
            o.target.critical = critical;
            o.entry = entry;
        });
        for (mp, (entry, critical)) in diff.added {
            info!(mount = %mp.display(), fstype = %entry.fstype, dev = %entry.dev, critical, "observing mount");
            let target = Target::new(Kind::Mount, mp.display().to_string(), critical, now);
            self.mounts.insert(
                mp,
                Observed {
                    devices: Vec::new(),
                    target,
                    entry,
                    check_since: None,
                    check_timeout_reported: false,
                    check_started_ns: 0,
                    answered_since_ns: None,
                    ext4: Default::default(),
                    canary: Default::default(),
                },
            );
        }
        self.refresh_unmounted(now);
        self.refresh_read_only(now);
        self.refresh_devices(now);
    }

    /// A watch with no mount at its path keeps a failed target under the path, so /healthz
    /// answers 503 and /status says why; a mount there again replaces it.
    fn refresh_unmounted(&mut self, now: SystemTime) {
        let mut wanted = BTreeMap::new();
        for ws in &self.watches {
            if let Some(detail) = &ws.not_mounted {
                wanted.insert(PathBuf::from(&ws.path), (detail.clone(), ws.critical));
            }
        }
        self.unmounted.retain(|p, _| wanted.contains_key(p));
        for (path, (detail, critical)) in wanted {
            let t = self.unmounted.entry(path.clone()).or_insert_with(|| {
                Target::new(Kind::Mount, path.display().to_string(), critical, now)
            });
            t.critical = critical;
            if let Some(tr) = t.raise(Signal::NotMounted, detail, now) {
                log_transition(t, &tr);
            }
        }
    }

    /// `read_only` on the mounts of critical watches that do not allow it: a critical mount
    /// that cannot be written is as good as gone for the runtime. A remount changes the mount
    /// table, so both directions are seen as soon as the table is re-read.
    fn refresh_read_only(&mut self, now: SystemTime) {
        let must_write: BTreeSet<PathBuf> = self
            .cfg
            .watch
            .iter()
            .zip(&self.watches)
            .filter(|(w, _)| w.critical && !w.read_only_ok)
            .filter_map(|(_, ws)| ws.mount.as_ref().map(PathBuf::from))
            .collect();
        for (mp, o) in &mut self.mounts {
            let ro = must_write
                .contains(mp)
                .then(|| o.entry.read_only())
                .flatten();
            let tr = o.target.set(
                Signal::ReadOnly,
                ro.is_some(),
                || ro.unwrap_or_default().into(),
                now,
            );
            if let Some(tr) = tr {
                log_transition(&o.target, &tr);
            }
        }
    }

    fn refresh_devices(&mut self, now: SystemTime) {
        self.other_names.clear();
        let plan = reconcile::plan_devices(
            &self.sysfs,
            self.mounts
                .values()
                .map(|o| (o.entry.dev, o.target.critical)),
            limits::DEVICES_MAX,
            self.left_out.1,
        );
        for (o, names) in self.mounts.values_mut().zip(plan.per_mount) {
            o.devices = names;
        }
        self.left_out.1 = plan.left_out;
        self.metrics
            .count_full(BoundedTable::Devices, plan.left_out);
        let current = self
            .devices
            .iter()
            .map(|(name, d)| (name.clone(), d.dev))
            .collect();
        let diff = reconcile::diff(plan.devices, &current, |(b, _)| b.dev);
        for name in diff.gone {
            self.devices.remove(&name);
        }
        keep(&mut self.devices, diff.kept, |d, block, critical| {
            d.target.critical = critical;
            d.block = block;
        });
        for (name, (block, critical)) in diff.added {
            let target = Target::new(Kind::Device, name.clone(), critical, now);
            self.devices.insert(
                name,
                Device {
                    dev: block.dev,
                    block,
                    target,
                    io_errors: 0,
                    last_error: None,
                    last_error_detail: String::new(),
                    progress: ScanProgress::default(),
                    inflight: 0,
                    oldest_inflight: Duration::ZERO,
                    stalled: false,
                    liveness: Default::default(),
                    dead_for: None,
                },
            );
        }
        let observed = self
            .devices
            .iter()
            .map(|(name, d)| (name.clone(), d.dev))
            .collect();
        self.series_devices
            .refresh(&self.metrics, &self.sysfs, &observed);
    }
}

/// Updates the targets that stay (same identity): their criticality and what `refresh` takes.
fn keep<K: Ord, T, V>(
    map: &mut BTreeMap<K, T>,
    kept: Vec<(K, (V, bool))>,
    refresh: impl Fn(&mut T, V, bool),
) {
    for (k, (v, critical)) in kept {
        if let Some(t) = map.get_mut(&k) {
            refresh(t, v, critical);
        }
    }
}
