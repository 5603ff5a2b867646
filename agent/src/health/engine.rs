//! The engine: owns every target's state and is the only writer of it.
//!
//! It runs as one task that reacts to kernel events (as soon as they arrive), scanner ticks,
//! results of off-thread mount probes and mount table changes, then publishes an immutable
//! [`Status`] that the HTTP handlers serve without doing any work themselves.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agent_ebpf::{STAT_COUNT, Stat};
use nix::errno::Errno;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    health::{Kind, Signal, State, Target, Transition},
    probes::events::{self, CorruptWhat, KernelEvent},
    probes::{ProbeStatus, ScanMaps},
    publish::limits::{self, Table},
    publish::metrics::{self, Metrics},
    publish::shared::Shared,
    publish::status::{BlockedCall, DeviceStatus, Status, TargetStatus, WatchStatus},
    scan::check as confirm,
    scan::{self, InflightCall, Progress},
    topology::{self, DevId, MountEntry, Sysfs},
};

/// Mount probes (threads) outstanding at most, hung ones included. One per mount is the rule;
/// this bounds what hung mounts that go away and come back (each a new mount id, e.g. an
/// automounted share of a dead server) can leave behind. Above it probes wait, counted as
/// `bindsto_confirm_probes_total{outcome="skipped"}`.
const PROBES_OUTSTANDING_MAX: usize = 256;

/// Result of a finished off-thread mount probe.
#[derive(Debug)]
pub struct ProbeDone {
    pub mount_point: PathBuf,
    pub mount_id: u32,
    pub outcome: confirm::Outcome,
}

struct Observed {
    entry: MountEntry,
    target: Target,
    /// Names of the block devices under this mount: its own device and the disks below it.
    devices: Vec<String>,
    probe_since: Option<Instant>,
    probe_timeout_reported: bool,
    /// Monotonic start (ns) of the last probe that answered: the mount's server answered
    /// after then (RPC entries older than that are not this mount's stall).
    probe_started_ns: u64,
    answered_since_ns: Option<u64>,
}

impl Observed {
    fn is_nfs(&self) -> bool {
        self.entry.fstype.starts_with("nfs")
    }
}

struct Device {
    dev: DevId,
    block: topology::BlockDevice,
    target: Target,
    io_errors: u64,
    last_error: Option<Instant>,
    last_error_detail: String,
    progress: Progress,
    inflight: u64,
    oldest_inflight: Duration,
    stalled: bool,
    /// It has series in the per-device counters (kept after it stops being observed, until
    /// the disk goes away).
    series: bool,
}

pub struct Engine {
    cfg: Arc<Config>,
    sysfs: Sysfs,
    shared: Arc<Shared>,
    metrics: Metrics,
    started_at: SystemTime,
    mounts: BTreeMap<PathBuf, Observed>,
    devices: BTreeMap<String, Device>,
    subsystem: Target,
    watches: Vec<WatchStatus>,
    blocked: Vec<InflightCall>,
    probes: Vec<ProbeStatus>,
    probe_tx: mpsc::UnboundedSender<ProbeDone>,
    /// Probes started and not answered yet (a stale answer of a gone mount included).
    probes_outstanding: usize,
    probes_max: usize,
    kernel_stats_seen: [u64; STAT_COUNT as usize],
    /// Names of disks outside the observed mounts that reported errors.
    other_names: BTreeMap<DevId, String>,
    /// Disks outside the observed mounts that have per-device counter series (bounded by
    /// `limits::DEVICE_SERIES_MAX`; removed when the disk goes away).
    series_devices: BTreeMap<String, DevId>,
    /// Mounts and devices the last refresh left out at their limit (logged when it changes).
    left_out: (usize, usize),
    events_lost: u64,
    /// Behind a lock because `publish` takes `&self`.
    target_series: std::sync::Mutex<crate::publish::target_metrics::TargetSeries>,
}

impl Engine {
    pub fn new(
        cfg: Arc<Config>,
        sysfs: Sysfs,
        shared: Arc<Shared>,
        probe_tx: mpsc::UnboundedSender<ProbeDone>,
    ) -> Self {
        let now = SystemTime::now();
        let subsystem = Target::new(
            Kind::Subsystem,
            "mount",
            cfg.detect.mount_calls_critical,
            now,
        );
        Self {
            metrics: shared.metrics.clone(),
            cfg,
            sysfs,
            shared,
            started_at: now,
            mounts: BTreeMap::new(),
            devices: BTreeMap::new(),
            subsystem,
            watches: Vec::new(),
            blocked: Vec::new(),
            probes: Vec::new(),
            probe_tx,
            probes_outstanding: 0,
            probes_max: PROBES_OUTSTANDING_MAX,
            kernel_stats_seen: [0; STAT_COUNT as usize],
            other_names: BTreeMap::new(),
            series_devices: BTreeMap::new(),
            left_out: (0, 0),
            events_lost: 0,
            target_series: Default::default(),
        }
    }

    /// Applies a reloaded config. The caller refreshes the topology next, which re-resolves
    /// the watches and re-marks critical mounts and devices.
    pub fn set_config(&mut self, cfg: Arc<Config>) {
        if self.subsystem.critical != cfg.detect.mount_calls_critical {
            self.forget_target_metric(Kind::Subsystem, &self.subsystem.id, self.subsystem.critical);
            self.subsystem.critical = cfg.detect.mount_calls_critical;
        }
        self.cfg = cfg;
    }

    pub fn set_probes(&mut self, probes: &[ProbeStatus]) {
        for p in probes {
            let attached = i64::from(p.state == crate::probes::ProbeState::Attached);
            self.metrics
                .probe_attached
                .get_or_create(&metrics::ProbeLabels {
                    probe: p.probe.clone(),
                })
                .set(attached);
        }
        self.probes = probes.to_vec();
    }

    // === topology ===

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
        // Mount point -> (entry, critical). Later entries win: the top of a stack of mounts.
        let mut desired: BTreeMap<PathBuf, (MountEntry, bool)> = BTreeMap::new();
        let observed = |e: &MountEntry| self.cfg.detect.fstypes.contains(&e.fstype);
        for e in entries.iter().filter(|e| observed(e)) {
            // A bind mount of a directory of a filesystem that is observed at its root adds
            // only a duplicate target (systemd's StateDirectory= under ProtectSystem=strict
            // makes one of /var/lib/bindsto in the agent's own mount namespace). A watch on
            // such a path still resolves to it below.
            let duplicate = e.root != "/"
                && entries
                    .iter()
                    .any(|o| o.dev == e.dev && o.root == "/" && observed(o));
            if !duplicate {
                desired.insert(e.mount_point.clone(), (e.clone(), false));
            }
        }
        let mut watches = Vec::new();
        for w in &self.cfg.watch {
            let mut ws = WatchStatus {
                path: w.path.display().to_string(),
                critical: w.critical,
                mount: None,
                problem: None,
            };
            match topology::mount_for_path(&entries, &w.path) {
                Some(m) if w.require_mountpoint && m.mount_point != w.path => {
                    ws.problem = Some(format!(
                        "not a mount point (it is on {}); require_mountpoint is set",
                        m.mount_point.display()
                    ));
                }
                Some(m) => {
                    let exists = if m.mount_point == w.path {
                        Some(true)
                    } else {
                        path_exists(&w.path)
                    };
                    match exists {
                        Some(false) => ws.problem = Some("path does not exist".into()),
                        None => ws.problem = Some("could not check the path (timed out)".into()),
                        Some(true) => {}
                    }
                    if exists != Some(false) {
                        ws.mount = Some(m.mount_point.display().to_string());
                        let slot = desired
                            .entry(m.mount_point.clone())
                            .or_insert_with(|| (m.clone(), false));
                        slot.1 |= w.critical;
                    }
                }
                None => ws.problem = Some("no mount contains this path".into()),
            }
            if let Some(p) = &ws.problem {
                let known = self
                    .watches
                    .iter()
                    .any(|o| o.path == ws.path && o.problem.as_ref() == Some(p));
                if !known {
                    warn!(path = %ws.path, problem = %p, "watch does not apply");
                }
            }
            watches.push(ws);
        }
        self.watches = watches;
        let desired = self.cap_mounts(desired);

        let mut old = std::mem::take(&mut self.mounts);
        for (mp, (entry, critical)) in desired {
            let kept = old
                .remove(&mp)
                .filter(|o| o.entry.mount_id == entry.mount_id);
            let obs = match kept {
                Some(mut o) => {
                    if o.target.critical != critical {
                        self.forget_target_metric(Kind::Mount, &o.target.id, o.target.critical);
                        o.target.critical = critical;
                    }
                    o.entry = entry;
                    o
                }
                None => {
                    info!(mount = %mp.display(), fstype = %entry.fstype, dev = %entry.dev, critical, "observing mount");
                    Observed {
                        devices: Vec::new(),
                        target: Target::new(Kind::Mount, mp.display().to_string(), critical, now),
                        entry,
                        probe_since: None,
                        probe_timeout_reported: false,
                        probe_started_ns: 0,
                        answered_since_ns: None,
                    }
                }
            };
            self.mounts.insert(mp, obs);
        }
        for (mp, o) in old {
            info!(mount = %mp.display(), "mount gone; no longer observed");
            self.forget_target_metric(Kind::Mount, &o.target.id, o.target.critical);
        }
        self.refresh_devices(now);
    }

    /// At most `MOUNTS_MAX` mounts: watched ones (critical first) before the others.
    fn cap_mounts(
        &mut self,
        desired: BTreeMap<PathBuf, (MountEntry, bool)>,
    ) -> BTreeMap<PathBuf, (MountEntry, bool)> {
        if desired.len() <= limits::MOUNTS_MAX {
            self.left_out.0 = 0;
            return desired;
        }
        let watched: BTreeSet<&str> = self
            .watches
            .iter()
            .filter_map(|w| w.mount.as_deref())
            .collect();
        let mut items: Vec<_> = desired.into_iter().collect();
        // Critical first, then other watched mounts, then the rest in mount point order.
        items.sort_by_key(|(mp, (_, critical))| {
            (!*critical, !watched.contains(mp.to_string_lossy().as_ref()))
        });
        let (kept, dropped) = limits::cap_by(items, limits::MOUNTS_MAX, |_| true);
        if dropped != self.left_out.0 {
            warn!(
                observed = limits::MOUNTS_MAX,
                left_out = dropped,
                "more mounts than the observed-mount limit; the rest are not observed"
            );
            self.left_out.0 = dropped;
        }
        limits::count_full(&self.metrics, Table::Mounts, dropped);
        kept.into_iter().collect()
    }

    fn refresh_devices(&mut self, now: SystemTime) {
        self.other_names.clear();
        let mut wanted: BTreeMap<String, (topology::BlockDevice, bool)> = BTreeMap::new();
        for o in self.mounts.values_mut() {
            let mut names = Vec::new();
            let own = self.sysfs.block_device(o.entry.dev);
            let below = self.sysfs.disks_for(o.entry.dev);
            for bd in own.into_iter().chain(below) {
                if !names.contains(&bd.name) {
                    names.push(bd.name.clone());
                }
                let slot = wanted.entry(bd.name.clone()).or_insert((bd, false));
                slot.1 |= o.target.critical;
            }
            o.devices = names;
        }
        let (wanted, dropped) = limits::cap_by(
            wanted.into_iter().collect(),
            limits::DEVICES_MAX,
            |(_, (_, critical))| *critical,
        );
        if dropped != self.left_out.1 {
            warn!(
                observed = limits::DEVICES_MAX,
                left_out = dropped,
                "more devices than the device limit; the rest are not observed"
            );
            self.left_out.1 = dropped;
        }
        limits::count_full(&self.metrics, Table::Devices, dropped);
        let mut old = std::mem::take(&mut self.devices);
        for (name, (block, critical)) in wanted {
            let dev = block.dev;
            let d = match old.remove(&name).filter(|d| d.dev == dev) {
                Some(mut d) => {
                    if d.target.critical != critical {
                        self.forget_target_metric(Kind::Device, &name, d.target.critical);
                        d.target.critical = critical;
                    }
                    d.block = block;
                    d
                }
                None => Device {
                    dev,
                    block,
                    target: Target::new(Kind::Device, name.clone(), critical, now),
                    io_errors: 0,
                    last_error: None,
                    last_error_detail: String::new(),
                    progress: Progress::default(),
                    inflight: 0,
                    oldest_inflight: Duration::ZERO,
                    stalled: false,
                    series: false,
                },
            };
            self.devices.insert(name, d);
        }
        for (name, d) in old {
            self.forget_target_metric(Kind::Device, &name, d.target.critical);
            let l = metrics::device_labels(&name);
            self.metrics.inflight_oldest.remove(&l);
            self.metrics.inflight_requests.remove(&l);
            // Its counters stay while the disk exists (it may come back); see below.
            if d.series {
                self.series_devices.entry(name).or_insert(d.dev);
            }
        }
        self.forget_gone_device_series();
    }

    /// Removes the per-device counter series of disks that are neither observed nor present
    /// in sysfs any more (a detached loop device, a removed volume), so `/metrics` does not
    /// grow with every disk the host ever had.
    fn forget_gone_device_series(&mut self) {
        let gone: Vec<String> = self
            .series_devices
            .iter()
            .filter(|(name, dev)| {
                !self.devices.contains_key(*name)
                    && self.sysfs.block_device(**dev).is_none_or(|b| {
                        // A detached loop device keeps its sysfs entry, with no size.
                        &b.name != *name
                            || std::fs::read_to_string(b.sysfs_dir.join("size"))
                                .is_ok_and(|s| s.trim() == "0")
                    })
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let l = metrics::device_labels(&name);
            self.metrics.block_io_errors.remove(&l);
            self.metrics.xfs_shutdowns.remove(&l);
            self.series_devices.remove(&name);
        }
        // Observed devices are bounded (and tracked) by `devices`.
        self.series_devices
            .retain(|name, _| !self.devices.contains_key(name));
    }

    /// Whether `name` may have its own series in the per-device counters: observed devices
    /// always, other disks up to `DEVICE_SERIES_MAX` (counted when full).
    fn device_series(&mut self, name: &str, dev: DevId) -> bool {
        if let Some(d) = self.devices.get_mut(name) {
            d.series = true;
            return true;
        }
        if self.series_devices.contains_key(name) {
            return true;
        }
        if self.series_devices.len() >= limits::DEVICE_SERIES_MAX {
            limits::count_full(&self.metrics, Table::DeviceSeries, 1);
            return false;
        }
        self.series_devices.insert(name.to_string(), dev);
        true
    }

    fn forget_target_metric(&self, kind: Kind, id: &str, critical: bool) {
        self.metrics
            .target_healthy
            .remove(&metrics::target_labels(kind.name(), id, critical));
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
            limits::count_full(&self.metrics, Table::DeviceNames, 1);
        }
        name
    }

    // === kernel events ===

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
                self.count_shutdown(*dev);
                let mps: Vec<PathBuf> = self.mounts_on_fs(*dev);
                for mp in mps {
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
                self.probe_now(xfs);
            }
            KernelEvent::XfsBufIoError { dev, error, .. } => {
                debug!(%dev, error = %events::errno_name(*error), "xfs buffer I/O error");
                self.probe_now(self.mounts_on_fs(*dev));
            }
            KernelEvent::XfsAilAbort { dev, .. } => {
                debug!(%dev, "xfs log item aborted");
                self.probe_now(self.mounts_on_fs(*dev));
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
                self.probe_now(self.mounts_on_fs(*dev));
            }
            KernelEvent::BlockError {
                dev, error, sector, ..
            } => {
                let name = self.device_name(*dev);
                if self.device_series(&name, *dev) {
                    self.metrics
                        .block_io_errors
                        .get_or_create(&metrics::device_labels(&name))
                        .inc();
                }
                let detail = format!(
                    "I/O error {} at sector {sector}",
                    events::errno_name(*error)
                );
                if let Some(d) = self.devices.get_mut(&name) {
                    d.io_errors += 1;
                    d.last_error = Some(Instant::now());
                    let detail = format!("{} errors; last: {detail}", d.io_errors);
                    d.last_error_detail.clone_from(&detail);
                    if let Some(t) = d.target.raise(Signal::IoErrors, detail, now) {
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
                self.probe_now(mps);
            }
        }
    }

    fn count_shutdown(&mut self, dev: DevId) {
        let name = self.device_name(dev);
        if self.device_series(&name, dev) {
            self.metrics
                .xfs_shutdowns
                .get_or_create(&metrics::device_labels(&name))
                .inc();
        }
    }

    /// Mounts whose superblock device is `dev` (XFS events carry `sb->s_dev`).
    fn mounts_on_fs(&self, dev: DevId) -> Vec<PathBuf> {
        self.mounts
            .iter()
            .filter(|(_, o)| o.entry.dev == dev)
            .map(|(mp, _)| mp.clone())
            .collect()
    }

    fn raise_mount(&mut self, mp: &Path, signal: Signal, detail: String, now: SystemTime) {
        if let Some(o) = self.mounts.get_mut(mp)
            && let Some(t) = o.target.raise(signal, detail, now)
        {
            log_transition(&o.target, &t);
        }
    }

    // === mount probes ===

    fn probe_now(&mut self, mps: Vec<PathBuf>) {
        for mp in mps {
            self.spawn_probe(&mp);
        }
    }

    /// Starts a probe of the mount unless one is still outstanding (a hung one stays
    /// outstanding: one blocked thread per mount at most).
    fn spawn_probe(&mut self, mp: &Path) {
        let Some(o) = self.mounts.get_mut(mp) else {
            return;
        };
        if o.probe_since.is_some() {
            return;
        }
        if self.probes_outstanding >= self.probes_max {
            if self.probes_outstanding == self.probes_max {
                warn!(
                    outstanding = self.probes_outstanding,
                    "too many mount probes unanswered; new ones wait"
                );
            }
            self.metrics
                .confirm_probes
                .get_or_create(&metrics::OutcomeLabels {
                    outcome: "skipped".into(),
                })
                .inc();
            return;
        }
        self.probes_outstanding += 1;
        o.probe_since = Some(Instant::now());
        o.probe_started_ns = scan::monotonic_ns();
        o.probe_timeout_reported = false;
        let tx = self.probe_tx.clone();
        let mount_point = mp.to_path_buf();
        let mount_id = o.entry.mount_id;
        tokio::task::spawn_blocking(move || {
            let outcome = confirm::probe(&mount_point);
            let _ = tx.send(ProbeDone {
                mount_point,
                mount_id,
                outcome,
            });
        });
    }

    pub fn on_probe(&mut self, done: ProbeDone) {
        self.probes_outstanding = self.probes_outstanding.saturating_sub(1);
        let now = SystemTime::now();
        let cfg = Arc::clone(&self.cfg);
        let Some(o) = self.mounts.get_mut(&done.mount_point) else {
            return;
        };
        if o.entry.mount_id != done.mount_id {
            return;
        }
        o.probe_since = None;
        let outcome = &done.outcome;
        let label = match outcome.statx {
            Ok(()) => "ok",
            Err(_) => "error",
        };
        self.metrics
            .confirm_probes
            .get_or_create(&metrics::OutcomeLabels {
                outcome: label.into(),
            })
            .inc();
        let mut transitions = Vec::new();
        let mut shutdown_dev = None;
        match outcome.statx {
            // Already known (from the tracepoint): keep that more precise reason.
            Err(Errno::EIO) if o.entry.fstype == "xfs" && !o.target.has(Signal::XfsShutdown) => {
                let detail = "statx of the mount root fails with EIO: the filesystem is shut down"
                    .to_string();
                transitions.extend(o.target.raise(Signal::XfsShutdown, detail, now));
                warn!(mount = %done.mount_point.display(), "XFS shutdown confirmed by statx (EIO)");
                shutdown_dev = Some(o.entry.dev);
            }
            Err(e) if o.is_nfs() && matches!(e, Errno::EIO | Errno::ETIMEDOUT | Errno::ESTALE) => {
                transitions.extend(o.target.raise(
                    Signal::NfsStall,
                    format!("statx of the mount root fails: {e}"),
                    now,
                ));
            }
            Err(e) => debug!(mount = %done.mount_point.display(), error = %e, "probe failed"),
            Ok(()) => {
                // statfs went to the server (statx may have come from the attribute cache).
                if outcome.usage.is_some() {
                    o.answered_since_ns = Some(o.probe_started_ns);
                }
                transitions.extend(o.target.clear(Signal::NfsStall, now));
            }
        }
        if let Some(u) = outcome.usage {
            let space = cfg.detect.fs_full_percent > 0.0
                && u.space_used_percent >= cfg.detect.fs_full_percent;
            let inodes = cfg.detect.inodes_full_percent > 0.0
                && u.inodes_used_percent
                    .is_some_and(|p| p >= cfg.detect.inodes_full_percent);
            transitions.extend(o.target.set(
                Signal::FsFull,
                space || inodes,
                || {
                    format!(
                        "space {:.1}% used, inodes {} used",
                        u.space_used_percent,
                        u.inodes_used_percent
                            .map_or_else(|| "n/a".to_string(), |p| format!("{p:.1}%"))
                    )
                },
                now,
            ));
        }
        for t in transitions {
            log_transition(&o.target, &t);
        }
        if let Some(dev) = shutdown_dev {
            self.count_shutdown(dev);
        }
    }

    // === the scanner ===

    /// One scanner pass: block devices, mount calls, mount probes, kernel counters.
    pub fn scan(&mut self, maps: Option<&mut ScanMaps>) {
        let started = Instant::now();
        let now = SystemTime::now();
        let cfg = Arc::clone(&self.cfg);
        let now_ns = scan::monotonic_ns();
        // Bios of dm devices (a suspended dm device queues them before any request exists).
        let mut maps = maps;
        let sysfs = &self.sysfs;
        let exists = |d: DevId| sysfs.block_device(d).is_some();
        let bios = match maps.as_deref_mut() {
            Some(m) => Some(crate::scan::bio::scan(
                &mut m.bio_inflight,
                &mut m.bio_done,
                now_ns,
                cfg.detect.io_stall_after,
                &exists,
            )),
            None => None,
        }
        .unwrap_or_default();
        // RPC tasks (sunrpc): the oldest in flight on the host.
        let rpc = maps
            .as_deref()
            .map(|m| crate::scan::rpc::oldest(&m.rpc_inflight, now_ns))
            .unwrap_or_default();
        self.metrics.rpc_inflight.set(rpc.tasks as i64);
        self.metrics
            .rpc_oldest
            .set(rpc.oldest.map_or(0.0, |(_, a)| a.as_secs_f64()));
        let (rq, calls, stats, rpc_map) = match maps {
            Some(m) => (
                Some(&mut m.rq_inflight),
                Some(&mut m.mount_calls),
                Some(&m.stats),
                Some(&mut m.rpc_inflight),
            ),
            None => (None, None, None, None),
        };

        // Block devices.
        let by_dev = rq.as_deref().map(scan::block_inflight).unwrap_or_default();
        // Disks with request entries but nothing in flight per sysfs, with when sysfs was read:
        // entries older than that lost their completion. Dropped in one pass over the map.
        let mut idle: BTreeMap<DevId, u64> = BTreeMap::new();
        let names: Vec<String> = self.devices.keys().cloned().collect();
        for name in names {
            let Some(d) = self.devices.get_mut(&name) else {
                continue;
            };
            let read_ns = scan::monotonic_ns();
            let (inflight, completed) = match (
                self.sysfs.inflight(&d.block.sysfs_dir),
                self.sysfs.stat(&d.block.sysfs_dir),
            ) {
                (Some((r, w)), Some(st)) => (r + w, st.completed()),
                (None, Some(st)) => (st.in_flight, st.completed()),
                _ => continue,
            };
            let no_progress = d.progress.observe(read_ns, inflight, completed);
            let map = by_dev.get(&d.dev).copied().unwrap_or_default();
            if inflight == 0 && map.requests > 0 {
                idle.insert(d.dev, read_ns);
            }
            d.inflight = inflight;
            // The map knows when each tracked request was issued; sysfs only that nothing
            // completed since some scan. The younger of the two is the stall's age: a
            // leaked (old) map entry cannot age a device that makes progress, and a request
            // issued just after an idle scan is not aged by that scan.
            let map_age = map
                .oldest_start_ns
                .map(|s| Duration::from_nanos(now_ns.saturating_sub(s)));
            let stall_age = map_age.map_or(no_progress, |a| a.min(no_progress));
            d.oldest_inflight = if inflight == 0 {
                Duration::ZERO
            } else {
                map_age.unwrap_or(no_progress)
            };
            let rq_stalled = inflight > 0 && stall_age >= cfg.detect.io_stall_after;
            let bio = bios.get(&d.dev).copied().unwrap_or_default();
            let bio_stalled = bio
                .stalled_for
                .is_some_and(|a| a >= cfg.detect.io_stall_after);
            if let Some(o) = bio.oldest {
                d.oldest_inflight = d.oldest_inflight.max(o);
            }
            d.inflight = inflight.max(bio.bios);
            d.stalled = rq_stalled || bio_stalled;
            let detail = || {
                if rq_stalled {
                    format!(
                        "{inflight} request(s) in flight, none completed for {:.1}s (oldest {:.1}s)",
                        no_progress.as_secs_f64(),
                        d.oldest_inflight.as_secs_f64()
                    )
                } else {
                    format!(
                        "{} bio(s) queued, none completed for {:.1}s (device-mapper queueing, e.g. suspended)",
                        bio.bios,
                        bio.stalled_for.unwrap_or_default().as_secs_f64()
                    )
                }
            };
            let mut ts = Vec::new();
            ts.extend(d.target.set(Signal::IoStall, d.stalled, detail, now));
            let recent_errors = d
                .last_error
                .is_some_and(|t| t.elapsed() < cfg.detect.io_errors_window);
            let err_detail = d.last_error_detail.clone();
            ts.extend(
                d.target
                    .set(Signal::IoErrors, recent_errors, || err_detail, now),
            );
            for t in ts {
                log_transition(&d.target, &t);
            }
            let l = metrics::device_labels(&name);
            self.metrics
                .inflight_oldest
                .get_or_create(&l)
                .set(d.oldest_inflight.as_secs_f64());
            self.metrics
                .inflight_requests
                .get_or_create(&l)
                .set(i64::try_from(inflight).unwrap_or(i64::MAX));
        }

        // Requests of disks outside the observed mounts: nobody judges them, but entries that
        // lost their completion (or whose disk went away, a detached loop device) would fill
        // the map for good. Same rule as above: nothing in flight per sysfs, entry leaked.
        let observed: BTreeSet<DevId> = self.devices.values().map(|d| d.dev).collect();
        for dev in by_dev.keys().filter(|d| !observed.contains(d)) {
            let read_ns = scan::monotonic_ns();
            let gone_or_idle = match self.sysfs.block_device(*dev) {
                None => true,
                Some(b) => self
                    .sysfs
                    .inflight(&b.sysfs_dir)
                    .map(|(r, w)| r + w == 0)
                    .or_else(|| self.sysfs.stat(&b.sysfs_dir).map(|s| s.in_flight == 0))
                    .unwrap_or(false),
            };
            if gone_or_idle {
                idle.insert(*dev, read_ns);
            }
        }
        if let Some(rq) = rq
            && !idle.is_empty()
        {
            for (dev, n) in scan::forget_leaked(rq, &idle) {
                let observed = observed.contains(&dev);
                debug!(%dev, entries = n, observed, "dropped request entries that lost their completion");
            }
        }

        // Mount-family calls.
        let mut calls_in_flight = false;
        if let Some(calls_map) = calls {
            let all = scan::mount_calls(calls_map, scan::monotonic_ns());
            calls_in_flight = !all.is_empty();
            let oldest = all.first().map_or(0.0, |c| c.age.as_secs_f64());
            self.metrics.mount_call_oldest_blocked.set(oldest);
            let mut blocked: Vec<InflightCall> = all
                .into_iter()
                .filter(|c| c.age >= cfg.detect.mount_blocked_after)
                .collect();
            self.metrics
                .mount_calls_blocked
                .set(i64::try_from(blocked.len()).unwrap_or(i64::MAX));
            // Oldest first: the ones listed are the ones that matter most.
            if blocked.len() > limits::BLOCKED_CALLS_MAX {
                let left_out = blocked.len() - limits::BLOCKED_CALLS_MAX;
                blocked.truncate(limits::BLOCKED_CALLS_MAX);
                limits::count_full(&self.metrics, Table::BlockedMountCalls, left_out);
            }
            self.blocked = blocked;
            let blocked = &self.blocked;
            let detail = || {
                let first = &blocked[0];
                format!(
                    "{} mount call(s) blocked; oldest: {} {} {} -> {} ({}) for {:.0}s",
                    blocked.len(),
                    first.comm,
                    first.syscall,
                    first.source,
                    first.target,
                    first.fstype,
                    first.age.as_secs_f64()
                )
            };
            if let Some(t) =
                self.subsystem
                    .set(Signal::MountBlocked, !blocked.is_empty(), detail, now)
            {
                log_transition(&self.subsystem, &t);
            }
        }

        // Mounts: follow their devices, probe them.
        let mps: Vec<PathBuf> = self.mounts.keys().cloned().collect();
        for mp in mps {
            let Some(o) = self.mounts.get_mut(&mp) else {
                continue;
            };
            let stalled: Vec<&String> = o
                .devices
                .iter()
                .filter(|n| self.devices.get(*n).is_some_and(|d| d.stalled))
                .collect();
            let erroring: Vec<&String> = o
                .devices
                .iter()
                .filter(|n| {
                    self.devices
                        .get(*n)
                        .is_some_and(|d| d.target.has(Signal::IoErrors))
                })
                .collect();
            let mut ts = Vec::new();
            let stall_detail = || {
                let n = stalled[0];
                let age = self
                    .devices
                    .get(n)
                    .map_or(0.0, |d| d.oldest_inflight.as_secs_f64());
                format!("device {n} stalled: oldest request in flight {age:.1}s")
            };
            ts.extend(
                o.target
                    .set(Signal::IoStall, !stalled.is_empty(), stall_detail, now),
            );
            if erroring.is_empty() {
                ts.extend(o.target.clear(Signal::IoErrors, now));
            }
            for t in ts {
                log_transition(&o.target, &t);
            }
            match o.probe_since {
                Some(since) => {
                    let waited = since.elapsed();
                    if waited >= cfg.detect.probe_timeout && !o.probe_timeout_reported {
                        o.probe_timeout_reported = true;
                        warn!(mount = %mp.display(), waited_s = waited.as_secs_f64(), "mount probe timed out");
                        self.metrics
                            .confirm_probes
                            .get_or_create(&metrics::OutcomeLabels {
                                outcome: "timeout".into(),
                            })
                            .inc();
                    }
                    // The sunrpc view names the stuck RPC; without it (tracepoints missing,
                    // or no task old enough yet) the unanswered probe alone decides.
                    let rpc_detail = o
                        .is_nfs()
                        .then(|| {
                            crate::scan::rpc::stall_detail(
                                rpc,
                                waited,
                                &o.entry.source,
                                &cfg.detect,
                            )
                        })
                        .flatten();
                    let detail = rpc_detail.or_else(|| {
                        (o.is_nfs() && waited >= cfg.detect.nfs_stall_after).then(|| {
                            format!(
                                "statx of the mount root unanswered for {:.0}s",
                                waited.as_secs_f64()
                            )
                        })
                    });
                    if let Some(detail) = detail
                        && let Some(t) = o.target.raise(Signal::NfsStall, detail, now)
                    {
                        log_transition(&o.target, &t);
                    }
                }
                None => self.spawn_probe(&mp),
            }
        }

        // RPC entries that lost their end event. A mount call in flight may be an NFS mount
        // that is not in mountinfo yet, whose tasks are exactly the ones that matter.
        if let Some(rpc_map) = rpc_map
            && rpc.tasks > 0
        {
            let answered = if calls_in_flight {
                None
            } else {
                self.mounts
                    .values()
                    .filter(|o| o.is_nfs())
                    .try_fold(now_ns, |min, o| o.answered_since_ns.map(|a| min.min(a)))
            };
            let n = crate::scan::rpc::forget_leaked(
                rpc_map,
                answered,
                now_ns,
                cfg.detect.nfs_stall_after,
            );
            if n > 0 {
                debug!(
                    entries = n,
                    "dropped RPC task entries that lost their end event"
                );
            }
        }

        // Kernel-side drop counters.
        if let Some(stats) = stats {
            self.read_kernel_stats(stats);
        }
        self.metrics.scans.inc();
        self.metrics
            .scan_duration
            .set(started.elapsed().as_secs_f64());
    }

    fn read_kernel_stats(&mut self, stats: &aya::maps::PerCpuArray<aya::maps::MapData, u64>) {
        let idx = [
            Stat::EventsLost,
            Stat::RqMapFull,
            Stat::MountMapFull,
            Stat::BioMapFull,
            Stat::RpcMapFull,
            Stat::BioDoneFull,
        ];
        for (i, stat) in idx.iter().enumerate() {
            let Ok(values) = stats.get(&(*stat as u32), 0) else {
                continue;
            };
            let total: u64 = values.iter().sum();
            let delta = total.saturating_sub(self.kernel_stats_seen[i]);
            self.kernel_stats_seen[i] = total;
            if delta == 0 {
                continue;
            }
            match stat {
                Stat::EventsLost => {
                    self.events_lost += delta;
                    self.metrics.events_lost.inc_by(delta);
                    warn!(lost = delta, "kernel events lost: ring buffer full");
                }
                Stat::RqMapFull
                | Stat::MountMapFull
                | Stat::BioMapFull
                | Stat::RpcMapFull
                | Stat::BioDoneFull => {
                    let map = match stat {
                        Stat::RqMapFull => "rq_inflight",
                        Stat::BioMapFull => "bio_inflight",
                        Stat::RpcMapFull => "rpc_inflight",
                        Stat::BioDoneFull => "bio_done",
                        _ => "mount_calls",
                    };
                    self.metrics
                        .map_full
                        .get_or_create(&metrics::MapLabels { map: map.into() })
                        .inc_by(delta);
                    warn!(map, dropped = delta, "kernel map full");
                }
            }
        }
    }

    /// Counts a record the event reader could not decode.
    pub fn decode_error(&mut self, e: &events::DecodeError) {
        self.metrics.events_decode_errors.inc();
        warn!(error = %e, "undecodable kernel event");
    }

    // === publishing ===

    pub fn publish(&self) {
        let mut targets = Vec::new();
        for o in self.mounts.values() {
            targets.push(target_status(
                &o.target,
                Some(o.entry.dev.to_string()),
                Some(o.entry.fstype.clone()),
            ));
        }
        for d in self.devices.values() {
            targets.push(target_status(&d.target, Some(d.dev.to_string()), None));
        }
        targets.push(target_status(&self.subsystem, None, None));
        for t in &targets {
            let healthy = i64::from(t.state == State::Healthy);
            self.metrics
                .target_healthy
                .get_or_create(&metrics::target_labels(t.kind, &t.id, t.critical))
                .set(healthy);
        }
        let devices = self
            .devices
            .iter()
            .map(|(name, d)| DeviceStatus {
                name: name.clone(),
                dev: d.dev.to_string(),
                inflight: d.inflight,
                oldest_inflight_seconds: round3(d.oldest_inflight.as_secs_f64()),
                io_errors: d.io_errors,
                stalled: d.stalled,
            })
            .collect();
        let blocked_mount_calls = self
            .blocked
            .iter()
            .map(|c| BlockedCall {
                pid: c.tgid,
                tid: c.tid,
                comm: c.comm.clone(),
                syscall: c.syscall,
                source: c.source.clone(),
                target: c.target.clone(),
                fstype: c.fstype.clone(),
                blocked_seconds: round3(c.age.as_secs_f64()),
            })
            .collect();
        let healthy = !targets
            .iter()
            .any(|t| t.critical && t.state == State::Failed);
        if let Ok(mut series) = self.target_series.lock() {
            series.update(&self.metrics, healthy, &targets);
        }
        self.shared.publish(Status {
            healthy,
            version: env!("CARGO_PKG_VERSION"),
            started_at: self.started_at,
            updated_at: SystemTime::now(),
            dry_run: self.cfg.dry_run,
            config: Some(Arc::clone(&self.cfg)),
            targets,
            blocked_mount_calls,
            devices,
            watches: self.watches.clone(),
            probes: self.probes.clone(),
            events_lost: self.events_lost,
        });
    }

    /// Names of every mount point currently observed (for tests and `check`).
    pub fn observed(&self) -> BTreeSet<PathBuf> {
        self.mounts.keys().cloned().collect()
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn target_status(t: &Target, device: Option<String>, fstype: Option<String>) -> TargetStatus {
    TargetStatus {
        kind: t.kind.name(),
        id: t.id.clone(),
        device,
        fstype,
        critical: t.critical,
        state: t.state(),
        since: t.since(),
        reasons: t.reasons().cloned().collect(),
    }
}

fn log_transition(t: &Target, tr: &Transition) {
    let reasons: Vec<String> = t
        .reasons()
        .map(|r| format!("{}: {}", r.signal.name(), r.detail))
        .collect();
    let reasons = reasons.join("; ");
    if tr.to > tr.from {
        warn!(kind = t.kind.name(), target = %t.id, critical = t.critical, from = tr.from.name(), to = tr.to.name(), %reasons, "target state changed");
    } else {
        info!(kind = t.kind.name(), target = %t.id, critical = t.critical, from = tr.from.name(), to = tr.to.name(), %reasons, "target state changed");
    }
}

#[cfg(test)]
mod tests {
    //! The engine against fixture mountinfo and sysfs trees and synthetic kernel events (no
    //! BPF): what each signal does to mounts and devices, and how state follows remounts.

    use std::{fs, os::unix::fs::symlink};

    use super::*;
    use crate::config::Watch;

    struct Fixture {
        _dir: tempfile::TempDir,
        engine: Engine,
        sysfs_root: PathBuf,
        _probes: mpsc::UnboundedReceiver<ProbeDone>,
    }

    const LOOP0: DevId = DevId { major: 7, minor: 0 };

    fn mountinfo(mount_id: u32) -> String {
        format!(
            "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
             {mount_id} 22 7:0 / /mnt/data rw - xfs /dev/loop0 rw\n\
             31 22 0:40 / /mnt/nfs rw - nfs4 srv:/x rw\n"
        )
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys");
        let dev_dir = root.join("devices/virtual/block/loop0");
        fs::create_dir_all(&dev_dir).unwrap();
        fs::write(dev_dir.join("dev"), "7:0\n").unwrap();
        fs::write(dev_dir.join("inflight"), "0 0\n").unwrap();
        fs::write(dev_dir.join("stat"), "1 0 8 0 1 0 8 0 0 0 0 0 0 0 0 0 0\n").unwrap();
        fs::create_dir_all(root.join("dev/block")).unwrap();
        symlink(
            "../../devices/virtual/block/loop0",
            root.join("dev/block/7:0"),
        )
        .unwrap();
        let cfg = Config {
            watch: vec![Watch {
                path: "/mnt/data".into(),
                critical: true,
                require_mountpoint: false,
            }],
            ..Config::default()
        };
        let metrics = Metrics::new();
        let shared = Arc::new(Shared::new(metrics, SystemTime::now(), true));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut engine = Engine::new(Arc::new(cfg), Sysfs::new(&root), shared, tx);
        engine.refresh_topology(&mountinfo(30), &|_| Some(true));
        Fixture {
            _dir: dir,
            engine,
            sysfs_root: root,
            _probes: rx,
        }
    }

    fn target<'a>(s: &'a Status, kind: &str, id: &str) -> &'a TargetStatus {
        s.targets
            .iter()
            .find(|t| t.kind == kind && t.id == id)
            .unwrap_or_else(|| panic!("no {kind} {id} in {:?}", s.targets))
    }

    fn status(f: &Fixture) -> Arc<Status> {
        f.engine.publish();
        f.engine.shared.status()
    }

    #[test]
    fn subdirectory_bind_mounts_of_observed_filesystems_are_not_targets() {
        let mut f = fixture();
        let with_binds = format!(
            "{}40 22 254:0 /var/lib/bindsto /var/lib/bindsto rw - ext4 /dev/vda rw\n\
             41 22 7:1 /sub /mnt/only-bind rw - xfs /dev/loop1 rw\n",
            mountinfo(30)
        );
        f.engine.refresh_topology(&with_binds, &|_| Some(true));
        let s = status(&f);
        assert!(
            !s.targets.iter().any(|t| t.id == "/var/lib/bindsto"),
            "{:?}",
            s.targets
        );
        // A filesystem seen only through a bind mount is still observed.
        target(&s, "mount", "/mnt/only-bind");
        target(&s, "mount", "/");
    }

    #[test]
    fn observes_configured_fstypes_and_the_devices_below() {
        let f = fixture();
        let s = status(&f);
        assert!(target(&s, "mount", "/mnt/data").critical);
        assert!(!target(&s, "mount", "/").critical);
        assert_eq!(
            target(&s, "mount", "/mnt/nfs").fstype.as_deref(),
            Some("nfs4")
        );
        assert!(
            target(&s, "device", "loop0").critical,
            "a critical mount's disk is critical"
        );
        assert_eq!(s.devices.len(), 1);
        assert!(s.healthy);
    }

    #[test]
    fn shutdown_event_fails_only_its_mount() {
        let mut f = fixture();
        f.engine.on_event(&KernelEvent::XfsShutdown {
            dev: LOOP0,
            ptag: 0x40,
            flags: 0x6,
            ts_ns: 0,
        });
        let s = status(&f);
        let t = target(&s, "mount", "/mnt/data");
        assert_eq!(t.state, State::Failed);
        assert_eq!(t.reasons[0].signal, Signal::XfsShutdown);
        assert!(t.reasons[0].detail.contains("log_io|force_umount"));
        assert_eq!(target(&s, "mount", "/").state, State::Healthy);
        assert!(!s.healthy);
        assert_eq!(s.failed_critical().count(), 1);
    }

    // Errors start a probe of the mounts on the disk, which needs a runtime.
    #[tokio::test]
    async fn block_errors_degrade_disk_and_mounts_on_it() {
        let mut f = fixture();
        f.engine.on_event(&KernelEvent::BlockError {
            dev: LOOP0,
            error: -5,
            sector: 8,
            ts_ns: 0,
        });
        let s = status(&f);
        assert_eq!(target(&s, "device", "loop0").state, State::Degraded);
        assert_eq!(target(&s, "mount", "/mnt/data").state, State::Degraded);
        assert_eq!(s.devices[0].io_errors, 1);
        assert!(s.healthy, "errors alone degrade, they do not fail");
    }

    fn probe_of(
        mount_id: u32,
        statx: Result<(), Errno>,
        usage: Option<confirm::Usage>,
    ) -> ProbeDone {
        ProbeDone {
            mount_point: "/mnt/data".into(),
            mount_id,
            outcome: confirm::Outcome {
                statx,
                usage,
                elapsed: Duration::ZERO,
            },
        }
    }

    #[test]
    fn statx_eio_confirms_a_shutdown_and_remount_starts_fresh() {
        let mut f = fixture();
        f.engine.on_probe(probe_of(30, Err(Errno::EIO), None));
        assert_eq!(
            target(&status(&f), "mount", "/mnt/data").state,
            State::Failed
        );
        // A result for an older mount at the same place is ignored.
        f.engine.refresh_topology(&mountinfo(40), &|_| Some(true));
        f.engine.on_probe(probe_of(30, Err(Errno::EIO), None));
        let s = status(&f);
        assert_eq!(target(&s, "mount", "/mnt/data").state, State::Healthy);
        assert!(s.healthy);
    }

    #[test]
    fn full_filesystem_degrades_and_clears() {
        let mut f = fixture();
        let probe = |space: f64| {
            let usage = confirm::Usage {
                space_used_percent: space,
                inodes_used_percent: Some(1.0),
            };
            probe_of(30, Ok(()), Some(usage))
        };
        f.engine.on_probe(probe(97.0));
        assert_eq!(
            target(&status(&f), "mount", "/mnt/data").state,
            State::Degraded
        );
        f.engine.on_probe(probe(50.0));
        assert_eq!(
            target(&status(&f), "mount", "/mnt/data").state,
            State::Healthy
        );
    }

    /// Probe results are never read here, so every probe stays outstanding, as hung ones do.
    #[tokio::test]
    async fn outstanding_probes_are_one_per_mount_and_capped_across_remounts() {
        let mut f = fixture();
        let skipped = |f: &Fixture| {
            f.engine
                .metrics
                .confirm_probes
                .get_or_create(&metrics::OutcomeLabels {
                    outcome: "skipped".into(),
                })
                .get()
        };
        // Three mounts (/, /mnt/data, /mnt/nfs): one probe each, however many scans.
        for _ in 0..5 {
            f.engine.scan(None);
        }
        assert_eq!(f.engine.probes_outstanding, 3);
        assert_eq!(skipped(&f), 0);
        // /mnt/data comes back as a new mount while its probe hangs: a second one starts for
        // the new mount, up to the cap; past it, probes wait and are counted.
        f.engine.probes_max = 4;
        f.engine.refresh_topology(&mountinfo(40), &|_| Some(true));
        f.engine.scan(None);
        assert_eq!(f.engine.probes_outstanding, 4);
        f.engine.refresh_topology(&mountinfo(50), &|_| Some(true));
        f.engine.scan(None);
        f.engine.scan(None);
        assert_eq!(f.engine.probes_outstanding, 4);
        assert_eq!(skipped(&f), 2);
        // An answer, even a stale one, frees a slot: the waiting mount is probed.
        f.engine.on_probe(probe_of(30, Ok(()), None));
        f.engine.scan(None);
        assert_eq!(f.engine.probes_outstanding, 4);
        assert_eq!(skipped(&f), 2);
        assert!(
            f.engine.mounts[Path::new("/mnt/data")]
                .probe_since
                .is_some()
        );
    }

    #[tokio::test]
    async fn sysfs_inflight_without_progress_is_a_stall_only_after_the_threshold() {
        let mut f = fixture();
        let dir = f.sysfs_root.join("devices/virtual/block/loop0");
        fs::write(dir.join("inflight"), "0 1\n").unwrap();
        f.engine.scan(None);
        assert_eq!(target(&status(&f), "device", "loop0").state, State::Healthy);
        // Pretend the threshold passed: the same counters, still in flight.
        let mut cfg = (*f.engine.cfg).clone();
        cfg.detect.io_stall_after = Duration::from_millis(1);
        f.engine.cfg = Arc::new(cfg);
        std::thread::sleep(Duration::from_millis(5));
        f.engine.scan(None);
        let s = status(&f);
        assert_eq!(target(&s, "device", "loop0").state, State::Failed);
        assert_eq!(target(&s, "mount", "/mnt/data").state, State::Failed);
        assert!(s.devices[0].stalled);
        // A completion is progress: the stall clears.
        fs::write(dir.join("stat"), "2 0 16 0 1 0 8 0 1 0 0 0 0 0 0 0 0\n").unwrap();
        f.engine.scan(None);
        let s = status(&f);
        assert_eq!(target(&s, "device", "loop0").state, State::Healthy);
        assert_eq!(target(&s, "mount", "/mnt/data").state, State::Healthy);
    }

    fn table_full(f: &Fixture, table: &str) -> u64 {
        let text = f.engine.metrics.encode();
        let needle = format!("bindsto_table_full_total{{table=\"{table}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(needle.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
    }

    #[test]
    fn more_mounts_than_the_limit_keeps_the_watched_ones_and_counts_the_rest() {
        let mut f = fixture();
        let mut text = mountinfo(30);
        let extra = limits::MOUNTS_MAX + 50;
        for i in 0..extra {
            text.push_str(&format!(
                "{} 22 0:{} / /a/m{i:05} rw - xfs /dev/fake{i} rw\n",
                1000 + i,
                100 + i
            ));
        }
        f.engine.refresh_topology(&text, &|_| Some(true));
        let s = status(&f);
        let mounts = s.targets.iter().filter(|t| t.kind == "mount").count();
        assert_eq!(mounts, limits::MOUNTS_MAX);
        assert!(target(&s, "mount", "/mnt/data").critical, "the watch stays");
        // 3 fixture mounts + `extra`, MOUNTS_MAX kept.
        let left_out = (extra + 3 - limits::MOUNTS_MAX) as u64;
        assert_eq!(table_full(&f, "mounts"), left_out);
        // Mounts gone: the table and the per-target series shrink back.
        f.engine.refresh_topology(&mountinfo(30), &|_| Some(true));
        let s = status(&f);
        assert_eq!(s.targets.iter().filter(|t| t.kind == "mount").count(), 3);
        let text = f.engine.metrics.encode();
        assert!(!text.contains("/a/m0"), "series of gone mounts removed");
        assert_eq!(table_full(&f, "mounts"), left_out, "nothing more left out");
    }

    #[tokio::test]
    async fn error_series_of_unknown_disks_are_bounded_and_removed_when_they_go() {
        let mut f = fixture();
        let n = limits::DEVICE_SERIES_MAX + 20;
        for minor in 0..n as u32 {
            f.engine.on_event(&KernelEvent::BlockError {
                dev: DevId::new(240, minor),
                error: -5,
                sector: 0,
                ts_ns: 0,
            });
        }
        // The observed disk always gets its series, even with the table full.
        f.engine.on_event(&KernelEvent::BlockError {
            dev: LOOP0,
            error: -5,
            sector: 0,
            ts_ns: 0,
        });
        let text = f.engine.metrics.encode();
        let series = |t: &str| t.matches("bindsto_block_io_errors_total{").count();
        assert_eq!(series(&text), limits::DEVICE_SERIES_MAX + 1, "{text}");
        assert!(text.contains("bindsto_block_io_errors_total{device=\"loop0\"} 1"));
        assert_eq!(table_full(&f, "device_series"), 20);
        // None of the 240:* disks exists in sysfs: their series go at the next refresh.
        f.engine.refresh_topology(&mountinfo(30), &|_| Some(true));
        let text = f.engine.metrics.encode();
        assert_eq!(series(&text), 1, "{text}");
        assert!(f.engine.series_devices.is_empty());
        // The observed disk's series outlives its mount while the disk exists...
        let without_data = "22 1 254:0 / / rw - ext4 /dev/vda rw\n";
        f.engine.refresh_topology(without_data, &|_| Some(true));
        assert_eq!(series(&f.engine.metrics.encode()), 1);
        // ...and goes with it (a detached loop device keeps its directory with size 0).
        let dir = f.sysfs_root.join("devices/virtual/block/loop0");
        fs::write(dir.join("size"), "0\n").unwrap();
        f.engine.refresh_topology(without_data, &|_| Some(true));
        assert_eq!(series(&f.engine.metrics.encode()), 0);
        assert!(f.engine.series_devices.is_empty());
    }

    #[test]
    fn the_limit_counters_start_at_zero() {
        let f = fixture();
        for t in limits::Table::ALL {
            assert_eq!(table_full(&f, t.name()), 0);
        }
    }
}
