//! The engine: owns every target's state and is the only writer of it.
//!
//! It runs as one task that reacts to kernel events (as soon as they arrive, [`super::rules`]),
//! scanner ticks, results of off-thread mount checks ([`super::checks`]) and mount table
//! changes, then publishes an immutable [`Status`](crate::publish::status::Status) that the
//! HTTP handlers serve without doing any work themselves. Deciding is left to the stages it
//! calls: `topology::reconcile` says what to observe, the `scan` scanners what is stalled;
//! the engine applies their verdicts to targets.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    health::{Kind, Signal, Target, Transition},
    probes::{ProbeStatus, ScanMaps, dev::DevId},
    publish::{
        limits::{self, BoundedTable},
        metrics::{self, Metrics},
        series::DeviceSeries,
        shared::Shared,
        snapshot::{DeviceView, MountView, Snapshot},
        status::WatchStatus,
        target_metrics::TargetSeries,
    },
    scan::{
        self,
        block::{Disk, ScanProgress},
        calls::InflightCall,
        check::CheckDone,
        stats::{self, KernelStats},
    },
    topology::{self, MountEntry, Sysfs, reconcile},
};

#[cfg(test)]
mod tests;

/// Mount checks (threads) outstanding at most, hung ones included. One per mount is the rule;
/// this bounds what hung mounts that go away and come back (each a new mount id, e.g. an
/// automounted share of a dead server) can leave behind. Above it checks wait, counted as
/// `bindsto_confirm_probes_total{outcome="skipped"}`.
const CHECKS_OUTSTANDING_MAX: usize = 256;

pub(super) struct Observed {
    pub(super) entry: MountEntry,
    pub(super) target: Target,
    /// Names of the block devices under this mount: its own device and the disks below it.
    pub(super) devices: Vec<String>,
    pub(super) check_since: Option<Instant>,
    pub(super) check_timeout_reported: bool,
    /// Monotonic start (ns) of the last check that answered: the mount's server answered
    /// after then (RPC entries older than that are not this mount's stall).
    pub(super) check_started_ns: u64,
    pub(super) answered_since_ns: Option<u64>,
}

impl Observed {
    pub(super) fn is_nfs(&self) -> bool {
        self.entry.fstype.starts_with("nfs")
    }
}

pub(super) struct Device {
    pub(super) dev: DevId,
    pub(super) block: topology::BlockDevice,
    pub(super) target: Target,
    pub(super) io_errors: u64,
    pub(super) last_error: Option<Instant>,
    pub(super) last_error_detail: String,
    progress: ScanProgress,
    inflight: u64,
    pub(super) oldest_inflight: Duration,
    pub(super) stalled: bool,
}

pub struct Engine {
    pub(super) cfg: Arc<Config>,
    pub(super) sysfs: Sysfs,
    shared: Arc<Shared>,
    pub(super) metrics: Metrics,
    started_at: SystemTime,
    pub(super) mounts: BTreeMap<PathBuf, Observed>,
    pub(super) devices: BTreeMap<String, Device>,
    subsystem: Target,
    watches: Vec<WatchStatus>,
    blocked: Vec<InflightCall>,
    probes: Vec<ProbeStatus>,
    pub(super) check_tx: mpsc::UnboundedSender<CheckDone>,
    /// Checks started and not answered yet (a stale answer of a gone mount included).
    pub(super) checks_outstanding: usize,
    pub(super) checks_max: usize,
    kernel_stats: KernelStats,
    /// Names of disks outside the observed mounts that reported errors.
    pub(super) other_names: BTreeMap<DevId, String>,
    /// Per-device series, removed when they stop applying.
    pub(super) series_devices: DeviceSeries,
    /// Mounts and devices the last refresh left out at their limit (logged when it changes).
    left_out: (usize, usize),
    events_lost: u64,
    /// Behind a lock because `publish` takes `&self`.
    target_series: Mutex<TargetSeries>,
}

impl Engine {
    pub fn new(
        cfg: Arc<Config>,
        sysfs: Sysfs,
        shared: Arc<Shared>,
        check_tx: mpsc::UnboundedSender<CheckDone>,
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
            check_tx,
            checks_outstanding: 0,
            checks_max: CHECKS_OUTSTANDING_MAX,
            kernel_stats: KernelStats::default(),
            other_names: BTreeMap::new(),
            series_devices: DeviceSeries::default(),
            left_out: (0, 0),
            events_lost: 0,
            target_series: Mutex::default(),
        }
    }

    /// Applies a reloaded config. The caller refreshes the topology next, which re-resolves
    /// the watches and re-marks critical mounts and devices.
    pub fn set_config(&mut self, cfg: Arc<Config>) {
        self.subsystem.critical = cfg.detect.mount_calls_critical;
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
        for (mp, (entry, critical)) in diff.kept {
            if let Some(o) = self.mounts.get_mut(&mp) {
                o.target.critical = critical;
                o.entry = entry;
            }
        }
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
                },
            );
        }
        self.refresh_devices(now);
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
        for (name, (block, critical)) in diff.kept {
            if let Some(d) = self.devices.get_mut(&name) {
                d.target.critical = critical;
                d.block = block;
            }
        }
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

    // === the scanner ===

    /// One scanner pass: block devices, mount calls, mount checks, kernel counters.
    pub fn scan(&mut self, maps: Option<&mut ScanMaps>) {
        let started = Instant::now();
        let now = SystemTime::now();
        let cfg = Arc::clone(&self.cfg);
        let now_ns = scan::monotonic_ns();
        let mut maps = maps;
        // Bios of dm devices (a suspended dm device queues them before any request exists).
        let sysfs = &self.sysfs;
        let exists = |d: DevId| sysfs.block_device(d).is_some();
        let bios = maps
            .as_deref_mut()
            .map(|m| {
                scan::bio::scan(
                    &mut m.bio_inflight,
                    &mut m.bio_done,
                    now_ns,
                    cfg.detect.io_stall_after,
                    &exists,
                )
            })
            .unwrap_or_default();
        // RPC tasks (sunrpc): the oldest in flight on the host.
        let rpc = maps
            .as_deref()
            .map(|m| scan::rpc::oldest(&m.rpc_inflight, now_ns))
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

        self.apply_block(rq, &bios.devices, now_ns, now);
        let calls_in_flight = calls.is_some_and(|c| self.apply_calls(c, now));
        self.follow_mounts(rpc, now);

        // RPC entries that lost their end event.
        if let Some(rpc_map) = rpc_map
            && rpc.tasks > 0
        {
            let nfs = self.mounts.values().filter(|o| o.is_nfs());
            let answered = scan::rpc::answered_since(
                nfs.map(|o| o.answered_since_ns),
                calls_in_flight,
                now_ns,
            );
            let n = scan::rpc::forget_leaked(rpc_map, answered, now_ns, cfg.detect.nfs_stall_after);
            if n > 0 {
                debug!(
                    entries = n,
                    "dropped RPC task entries that lost their end event"
                );
            }
        }

        // Kernel-side drop counters.
        if let Some(stats) = stats {
            self.apply_kernel_stats(stats);
        }
        self.metrics.scans.inc();
        self.metrics
            .scan_duration
            .set(started.elapsed().as_secs_f64());
    }

    /// Applies the block scanner's verdicts to the observed devices.
    fn apply_block(
        &mut self,
        rq: Option<
            &mut aya::maps::HashMap<aya::maps::MapData, agent_ebpf::RqKey, agent_ebpf::RqVal>,
        >,
        bios: &BTreeMap<DevId, scan::bio::BioInflight>,
        now_ns: u64,
        now: SystemTime,
    ) {
        let disks = self
            .devices
            .iter_mut()
            .map(|(name, d)| Disk {
                name,
                dev: d.dev,
                sysfs_dir: &d.block.sysfs_dir,
                progress: &mut d.progress,
            })
            .collect();
        let stall_after = self.cfg.detect.io_stall_after;
        let verdict = scan::block::scan(&self.sysfs, disks, rq, bios, stall_after, now_ns);
        let errors_window = self.cfg.detect.io_errors_window;
        for (name, v) in verdict.disks {
            let Some(d) = self.devices.get_mut(&name) else {
                continue;
            };
            d.inflight = v.inflight;
            d.oldest_inflight = v.oldest_inflight;
            d.stalled = v.stall.is_some();
            let mut ts = Vec::new();
            let detail = v.stall.unwrap_or_default();
            ts.extend(d.target.set(Signal::IoStall, d.stalled, || detail, now));
            let recent_errors = d.last_error.is_some_and(|t| t.elapsed() < errors_window);
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
                .set(i64::try_from(v.requests).unwrap_or(i64::MAX));
        }
    }

    /// Applies the mount-call scanner's verdict to the mount subsystem; returns whether any
    /// call is in flight.
    fn apply_calls(
        &mut self,
        map: &mut aya::maps::HashMap<aya::maps::MapData, u64, agent_ebpf::MountCall>,
        now: SystemTime,
    ) -> bool {
        let v = scan::calls::scan(
            map,
            scan::monotonic_ns(),
            self.cfg.detect.mount_blocked_after,
            limits::BLOCKED_CALLS_MAX,
        );
        self.metrics
            .mount_call_oldest_blocked
            .set(v.oldest.as_secs_f64());
        self.metrics
            .mount_calls_blocked
            .set(i64::try_from(v.blocked_total).unwrap_or(i64::MAX));
        self.metrics
            .count_full(BoundedTable::BlockedMountCalls, v.left_out);
        let detail = v.detail();
        let blocked = detail.is_some();
        if let Some(t) = self.subsystem.set(
            Signal::MountBlocked,
            blocked,
            || detail.unwrap_or_default(),
            now,
        ) {
            log_transition(&self.subsystem, &t);
        }
        self.blocked = v.blocked;
        v.in_flight
    }

    /// Mounts follow the verdicts of their devices.
    fn follow_devices(&mut self, mp: &Path, now: SystemTime) {
        let Some(o) = self.mounts.get_mut(mp) else {
            return;
        };
        let devices = &self.devices;
        let stalled = o
            .devices
            .iter()
            .find(|n| devices.get(*n).is_some_and(|d| d.stalled));
        let erroring = o.devices.iter().any(|n| {
            devices
                .get(n)
                .is_some_and(|d| d.target.has(Signal::IoErrors))
        });
        let mut ts = Vec::new();
        let stall_detail = || {
            let n = stalled.map_or("", String::as_str);
            let age = devices
                .get(n)
                .map_or(0.0, |d| d.oldest_inflight.as_secs_f64());
            format!("device {n} stalled: oldest request in flight {age:.1}s")
        };
        ts.extend(
            o.target
                .set(Signal::IoStall, stalled.is_some(), stall_detail, now),
        );
        if !erroring {
            ts.extend(o.target.clear(Signal::IoErrors, now));
        }
        for t in ts {
            log_transition(&o.target, &t);
        }
    }

    fn follow_mounts(&mut self, rpc: scan::rpc::RpcInflight, now: SystemTime) {
        let mps: Vec<PathBuf> = self.mounts.keys().cloned().collect();
        for mp in mps {
            self.follow_devices(&mp, now);
            self.follow_check(&mp, rpc, now);
        }
    }

    fn apply_kernel_stats(&mut self, stats: &aya::maps::PerCpuArray<aya::maps::MapData, u64>) {
        for (stat, delta) in self.kernel_stats.read(stats) {
            match stats::full_map(stat) {
                None => {
                    self.events_lost += delta;
                    self.metrics.events_lost.inc_by(delta);
                    warn!(lost = delta, "kernel events lost: ring buffer full");
                }
                Some(map) => {
                    self.metrics
                        .map_full
                        .get_or_create(&metrics::MapLabels { map: map.into() })
                        .inc_by(delta);
                    warn!(map, dropped = delta, "kernel map full");
                }
            }
        }
    }

    // === publishing ===

    pub fn publish(&self) {
        let snapshot = Snapshot {
            cfg: &self.cfg,
            started_at: self.started_at,
            mounts: self
                .mounts
                .values()
                .map(|o| MountView {
                    target: &o.target,
                    dev: o.entry.dev,
                    fstype: &o.entry.fstype,
                })
                .collect(),
            devices: self
                .devices
                .iter()
                .map(|(name, d)| DeviceView {
                    name,
                    target: &d.target,
                    dev: d.dev,
                    inflight: d.inflight,
                    oldest_inflight: d.oldest_inflight,
                    io_errors: d.io_errors,
                    stalled: d.stalled,
                })
                .collect(),
            subsystem: &self.subsystem,
            blocked: &self.blocked,
            watches: &self.watches,
            probes: &self.probes,
            events_lost: self.events_lost,
        };
        snapshot.publish(&self.shared, &self.target_series);
    }

    /// Names of every mount point currently observed (for tests and `check`).
    pub fn observed(&self) -> BTreeSet<PathBuf> {
        self.mounts.keys().cloned().collect()
    }
}

pub(super) fn log_transition(t: &Target, tr: &Transition) {
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
