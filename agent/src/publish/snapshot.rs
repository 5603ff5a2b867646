//! Builds the `/status` snapshot from the engine's view and publishes it with the per-target
//! series: the engine hands over a plain view ([`EngineView`]) and this stage decides the shape.

use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use super::{
    shared::Shared,
    status::{BlockedCall, DeviceStatus, Status, TargetStatus},
    target_metrics::TargetSeries,
};
use crate::health::{
    State, Target,
    view::{EngineView, Publisher},
};

/// The engine's [`Publisher`]: the status document into [`Shared`], the per-target series
/// into its metrics.
pub struct StatusPublisher {
    shared: Arc<Shared>,
    /// Behind a lock because [`Publisher::publish`] takes `&self`.
    series: Mutex<TargetSeries>,
}

impl StatusPublisher {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            series: Mutex::default(),
        }
    }
}

impl Publisher for StatusPublisher {
    /// Publishes the view: the per-target series, then the document.
    fn publish(&self, view: &EngineView<'_>) {
        let status = build(view);
        if let Ok(mut series) = self.series.lock() {
            series.update(&self.shared.metrics, status.healthy, &status.targets);
        }
        self.shared.publish(status);
    }
}

pub fn build(view: &EngineView<'_>) -> Status {
    let mut targets: Vec<TargetStatus> = view
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
    targets.extend(view.unmounted.iter().map(|t| target_status(t, None, None)));
    targets.extend(
        view.devices
            .iter()
            .map(|d| target_status(d.target, Some(d.dev.to_string()), None)),
    );
    targets.push(target_status(view.subsystem, None, None));
    let devices = view
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
    let blocked_mount_calls = view
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
        started_at: view.started_at,
        updated_at: SystemTime::now(),
        dry_run: view.cfg.dry_run,
        config: Some(Arc::clone(view.cfg)),
        targets,
        blocked_mount_calls,
        devices,
        watches: view.watches.to_vec(),
        probes: view.probes.to_vec(),
        events_lost: view.events_lost,
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
