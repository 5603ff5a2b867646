//! The engine: owns every target's state and is the only writer of it.
//!
//! It runs as one task that reacts to kernel events (as soon as they arrive, [`super::rules`]),
//! scanner ticks, results of off-thread mount checks ([`super::checks`]) and mount table
//! changes, then hands a view of its state ([`EngineView`]) to its [`Publisher`], which makes
//! the immutable status the HTTP handlers serve without doing any work themselves. Deciding is left to the stages it
//! calls: `topology::reconcile` says what to observe, the `scan` scanners what is stalled;
//! the engine applies their verdicts to targets.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    config::Config,
    health::{
        Kind, Target, Transition,
        once::ShutdownLedger,
        view::{DeviceView, EngineView, MountView, Publisher},
    },
    metrics::{self, Metrics, series::DeviceSeries},
    probes::{ProbeStatus, dev::DevId},
    scan::{block::ScanProgress, calls::InflightCall, check::CheckDone, stats::KernelStats},
    topology::{self, MountEntry, Sysfs, reconcile::WatchStatus},
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
    pub(super) ext4: super::ext4::Ext4Follow,
    pub(super) canary: super::canary::CanaryFollow,
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
    pub(super) progress: ScanProgress,
    pub(super) inflight: u64,
    pub(super) oldest_inflight: Duration,
    pub(super) stalled: bool,
    /// Whether its failing requests leave any success (`detect.io_dead_after`).
    pub(super) liveness: super::liveness::Liveness,
    /// How long every request has failed, once that reached `io_dead_after`.
    pub(super) dead_for: Option<Duration>,
}

pub struct Engine {
    pub(super) cfg: Arc<Config>,
    pub(super) sysfs: Sysfs,
    publisher: Arc<dyn Publisher>,
    pub(super) metrics: Metrics,
    started_at: SystemTime,
    pub(super) mounts: BTreeMap<PathBuf, Observed>,
    /// Targets of watches with no mount at their path (`not_mounted`), by path: they fail
    /// the host until a mount appears there, which gets a fresh target of its own.
    pub(super) unmounted: BTreeMap<PathBuf, Target>,
    pub(super) devices: BTreeMap<String, Device>,
    pub(super) subsystem: Target,
    pub(super) watches: Vec<WatchStatus>,
    pub(super) blocked: Vec<InflightCall>,
    probes: Vec<ProbeStatus>,
    pub(super) check_tx: mpsc::UnboundedSender<CheckDone>,
    /// Checks started and not answered yet (a stale answer of a gone mount included).
    pub(super) checks_outstanding: usize,
    pub(super) checks_max: usize,
    pub(super) kernel_stats: KernelStats,
    /// Names of disks outside the observed mounts that reported errors.
    pub(super) other_names: BTreeMap<DevId, String>,
    /// Which XFS shutdowns were counted, so two paths to one count once.
    pub(super) shutdowns: ShutdownLedger,
    /// Per-device series, removed when they stop applying.
    pub(super) series_devices: DeviceSeries,
    /// Mounts and devices the last refresh left out at their limit (logged when it changes).
    pub(super) left_out: (usize, usize),
    pub(super) events_lost: u64,
}

impl Engine {
    pub fn new(
        cfg: Arc<Config>,
        sysfs: Sysfs,
        metrics: Metrics,
        publisher: Arc<dyn Publisher>,
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
            metrics,
            cfg,
            sysfs,
            publisher,
            started_at: now,
            mounts: BTreeMap::new(),
            unmounted: BTreeMap::new(),
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
            shutdowns: ShutdownLedger::default(),
            series_devices: DeviceSeries::default(),
            left_out: (0, 0),
            events_lost: 0,
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
            let labels = metrics::ProbeLabels {
                probe: p.probe.clone(),
            };
            self.metrics
                .probe_attached
                .get_or_create(&labels)
                .set(attached);
            if crate::probes::btf_block::has_btf_program(&p.probe) {
                let btf = i64::from(p.via == crate::probes::Via::TpBtf);
                self.metrics.probe_btf.get_or_create(&labels).set(btf);
            }
        }
        self.probes = probes.to_vec();
    }

    // === publishing ===

    pub fn publish(&self) {
        let view = EngineView {
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
            unmounted: self.unmounted.values().collect(),
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
        self.publisher.publish(&view);
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
