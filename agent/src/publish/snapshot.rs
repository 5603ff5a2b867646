//! Builds the `/status` snapshot from the engine's targets and publishes it with the
//! per-target series, so the engine hands over a plain view and this stage decides the shape.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use super::{
    shared::Shared,
    status::{BlockedCall, DeviceStatus, Status, TargetStatus, WatchStatus},
    target_metrics::TargetSeries,
};
use crate::{
    config::Config,
    health::{State, Target},
    probes::{ProbeStatus, dev::DevId},
    scan::calls::InflightCall,
};

/// An observed mount as `/status` shows it.
pub struct MountView<'a> {
    pub target: &'a Target,
    pub dev: DevId,
    pub fstype: &'a str,
}

/// An observed device as `/status` shows it.
pub struct DeviceView<'a> {
    pub name: &'a str,
    pub target: &'a Target,
    pub dev: DevId,
    pub inflight: u64,
    pub oldest_inflight: Duration,
    pub io_errors: u64,
    pub stalled: bool,
}

/// Everything one `/status` document is made of.
pub struct Snapshot<'a> {
    pub cfg: &'a Arc<Config>,
    pub started_at: SystemTime,
    pub mounts: Vec<MountView<'a>>,
    /// Watches failed for want of a mount at their path: no device, no fstype.
    pub unmounted: Vec<&'a Target>,
    pub devices: Vec<DeviceView<'a>>,
    pub subsystem: &'a Target,
    pub blocked: &'a [InflightCall],
    pub watches: &'a [WatchStatus],
    pub probes: &'a [ProbeStatus],
    pub events_lost: u64,
}

impl Snapshot<'_> {
    /// Publishes the snapshot: the per-target series, then the document.
    pub fn publish(self, shared: &Shared, series: &Mutex<TargetSeries>) {
        let status = self.build();
        if let Ok(mut series) = series.lock() {
            series.update(&shared.metrics, status.healthy, &status.targets);
        }
        shared.publish(status);
    }

    pub fn build(self) -> Status {
        let mut targets: Vec<TargetStatus> = self
            .mounts
            .iter()
            .map(|m| {
                target_status(
                    m.target,
                    Some(m.dev.to_string()),
                    Some(m.fstype.to_string()),
                )
            })
            .collect();
        targets.extend(self.unmounted.iter().map(|t| target_status(t, None, None)));
        targets.extend(
            self.devices
                .iter()
                .map(|d| target_status(d.target, Some(d.dev.to_string()), None)),
        );
        targets.push(target_status(self.subsystem, None, None));
        let devices = self
            .devices
            .iter()
            .map(|d| DeviceStatus {
                name: d.name.to_string(),
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
        Status {
            healthy,
            version: env!("CARGO_PKG_VERSION"),
            started_at: self.started_at,
            updated_at: SystemTime::now(),
            dry_run: self.cfg.dry_run,
            config: Some(Arc::clone(self.cfg)),
            targets,
            blocked_mount_calls,
            devices,
            watches: self.watches.to_vec(),
            probes: self.probes.to_vec(),
            events_lost: self.events_lost,
        }
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
