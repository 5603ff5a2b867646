//! Event rules: which signal a kernel event raises on which targets, and which mounts it
//! sends a check to (the tracepoints that do not prove a failure on their own).

use std::{
    path::{Path, PathBuf},
    time::{Instant, SystemTime},
};

use prometheus_client::metrics::{counter::Counter, family::Family};
use tracing::{debug, warn};

use super::{
    Signal,
    engine::{Engine, log_transition},
};
use crate::{
    metrics::{
        self, DeviceLabels, Metrics,
        limits::{self, BoundedTable},
    },
    probes::{
        dev::DevId,
        events::{self, CorruptWhat, KernelEvent},
    },
};

impl Engine {
    pub fn on_event(&mut self, ev: &KernelEvent) {
        let now = SystemTime::now();
        match ev {
            KernelEvent::XfsShutdown {
                dev, ptag, flags, ..
            } => {
                let detail = format!(
                    "xfs_force_shutdown on {dev}: {} (ptag {ptag:#x})",
                    events::shutdown_flags(*flags)
                );
                warn!(%dev, flags = %events::shutdown_flags(*flags), ptag, "XFS shutdown");
                // The kernel fires this once per filesystem: it always counts (see `once`).
                let ids: Vec<u32> = (self.mounts.values())
                    .filter(|o| o.entry.dev == *dev)
                    .map(|o| o.entry.mount_id)
                    .collect();
                self.shutdowns.event(*dev, &ids);
                self.count_shutdown(*dev);
                for mp in self.mounts_on_fs(*dev) {
                    self.raise_mount(&mp, Signal::XfsShutdown, detail.clone(), now);
                }
            }
            KernelEvent::XfsShutdownSomewhere { .. } => {
                // The kprobe fallback knows no device: statx tells which XFS mount it was.
                warn!("xfs_do_force_shutdown returned; probing every XFS mount");
                let xfs: Vec<PathBuf> = self
                    .mounts
                    .iter()
                    .filter(|(_, o)| o.entry.fstype == "xfs")
                    .map(|(mp, _)| mp.clone())
                    .collect();
                self.check_now(xfs);
            }
            KernelEvent::XfsBufIoError { dev, error, .. } => {
                debug!(%dev, error = %events::errno_name(*error), "xfs buffer I/O error");
                self.check_now(self.mounts_on_fs(*dev));
            }
            KernelEvent::XfsAilAbort { dev, .. } => {
                debug!(%dev, "xfs log item aborted");
                self.check_now(self.mounts_on_fs(*dev));
            }
            KernelEvent::XfsCorrupt {
                dev, what, flags, ..
            } => {
                let what = match what {
                    CorruptWhat::Fs => "filesystem".to_string(),
                    CorruptWhat::Inode(ino) => format!("inode {ino}"),
                    CorruptWhat::Group => "allocation group".to_string(),
                };
                warn!(%dev, what, flags, "XFS marked metadata corrupt");
                self.check_now(self.mounts_on_fs(*dev));
            }
            KernelEvent::Ext4Shutdown { dev, flags, .. } => {
                self.on_ext4_shutdown(*dev, *flags, now);
            }
            KernelEvent::Ext4Error { dev, line, .. } => self.on_ext4_error(*dev, *line, now),
            KernelEvent::BlockError {
                dev,
                error,
                sector,
                ts_ns,
            } => self.on_block_error(*dev, *error, *sector, *ts_ns, now),
        }
    }

    /// A failed request degrades its disk and the mounts on it, and checks those mounts.
    fn on_block_error(&mut self, dev: DevId, error: i32, sector: u64, ts_ns: u64, now: SystemTime) {
        let name = self.count_on_device(dev, |m| &m.block_io_errors);
        let mut detail = format!("I/O error {} at sector {sector}", events::errno_name(error));
        if let Some(d) = self.devices.get_mut(&name) {
            d.io_errors += 1;
            d.last_error = Some(Instant::now());
            d.liveness.on_error(ts_ns);
            let counted = format!("{} errors; last: {detail}", d.io_errors);
            d.last_error_detail.clone_from(&counted);
            // A dead device keeps saying so while its errors refresh the detail.
            let mut shown = counted;
            if let Some(dead) = d.dead_for.map(super::verdicts::dead_detail) {
                detail = format!("{detail}; {dead}");
                shown = format!("{shown}; {dead}");
            }
            if let Some(t) = d.target.raise(Signal::IoErrors, shown, now) {
                log_transition(&d.target, &t);
            }
        }
        let mps: Vec<PathBuf> = self
            .mounts
            .iter()
            .filter(|(_, o)| o.devices.contains(&name))
            .map(|(mp, _)| mp.clone())
            .collect();
        for mp in &mps {
            self.raise_mount(mp, Signal::IoErrors, format!("{name}: {detail}"), now);
        }
        self.check_now(mps);
    }

    pub(super) fn count_shutdown(&mut self, dev: DevId) {
        self.count_on_device(dev, |m| &m.xfs_shutdowns);
    }

    /// Counts one in a per-device counter, if the disk may have its own series (observed
    /// devices always, other disks up to `DEVICE_SERIES_MAX`); returns the disk's name.
    fn count_on_device(
        &mut self,
        dev: DevId,
        family: impl Fn(&Metrics) -> &Family<DeviceLabels, Counter>,
    ) -> String {
        let name = self.device_name(dev);
        let observed = self.devices.contains_key(&name);
        if self
            .series_devices
            .admit(&self.metrics, &self.sysfs, &name, dev, observed)
        {
            family(&self.metrics)
                .get_or_create(&metrics::device_labels(&name))
                .inc();
        }
        name
    }

    /// Name of a disk for labels. Called per error event, so a disk outside the observed
    /// mounts is looked up in sysfs once and remembered (cleared on topology refresh, and
    /// bounded, since device numbers can be reused).
    fn device_name(&mut self, dev: DevId) -> String {
        if let Some((name, _)) = self.devices.iter().find(|(_, d)| d.dev == dev) {
            return name.clone();
        }
        if let Some(name) = self.other_names.get(&dev) {
            return name.clone();
        }
        let name = self
            .sysfs
            .block_device(dev)
            .map_or_else(|| dev.to_string(), |b| b.name);
        if self.other_names.len() < limits::DEVICE_NAMES_MAX {
            self.other_names.insert(dev, name.clone());
        } else {
            self.metrics.count_full(BoundedTable::DeviceNames, 1);
        }
        name
    }

    /// Mounts whose superblock device is `dev` (XFS and ext4 events carry `sb->s_dev`).
    pub(super) fn mounts_on_fs(&self, dev: DevId) -> Vec<PathBuf> {
        self.mounts
            .iter()
            .filter(|(_, o)| o.entry.dev == dev)
            .map(|(mp, _)| mp.clone())
            .collect()
    }

    pub(super) fn raise_mount(
        &mut self,
        mp: &Path,
        signal: Signal,
        detail: String,
        now: SystemTime,
    ) {
        if let Some(o) = self.mounts.get_mut(mp)
            && let Some(t) = o.target.raise(signal, detail, now)
        {
            log_transition(&o.target, &t);
        }
    }

    /// Counts a record the event reader could not decode.
    pub fn decode_error(&mut self, e: &events::DecodeError) {
        self.metrics.events_decode_errors.inc();
        warn!(error = %e, "undecodable kernel event");
    }
}
