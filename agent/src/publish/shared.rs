//! The one place the pipeline's output lives: the last published status, the remediation
//! report beside it, and the metrics registry. HTTP handlers and the remedy task read it.

use std::{
    sync::{Arc, RwLock},
    time::SystemTime,
};

use super::status::Status;
use crate::metrics::Metrics;

/// What the HTTP side reads: the last published status and the metrics registry.
pub struct Shared {
    status: RwLock<Arc<Status>>,
    /// The remediation report (`/status` → `remediation`), written by the remedy task.
    remediation: RwLock<Option<Arc<serde_json::Value>>>,
    /// With a budget table: why a failing host must not answer 503 (it holds no lease).
    healthz_hold: RwLock<Option<String>>,
    /// Where the incident evidence bundles are (`/incidents/<id>`), once the remedy opened.
    evidence_dir: RwLock<Option<std::path::PathBuf>>,
    /// Bumped on every publish, so the remedy task reacts at once instead of polling.
    changes: tokio::sync::watch::Sender<u64>,
    pub metrics: Metrics,
}

impl Shared {
    pub fn new(metrics: Metrics, started_at: SystemTime, dry_run: bool) -> Self {
        let status = Status {
            healthy: true,
            version: env!("CARGO_PKG_VERSION"),
            started_at,
            updated_at: started_at,
            dry_run,
            targets: Vec::new(),
            blocked_mount_calls: Vec::new(),
            devices: Vec::new(),
            watches: Vec::new(),
            probes: Vec::new(),
            events_lost: 0,
            config: None,
        };
        Self {
            status: RwLock::new(Arc::new(status)),
            remediation: RwLock::new(None),
            healthz_hold: RwLock::new(None),
            evidence_dir: RwLock::new(None),
            changes: tokio::sync::watch::Sender::new(0),
            metrics,
        }
    }

    pub fn evidence_dir(&self) -> Option<std::path::PathBuf> {
        match self.evidence_dir.read() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_evidence_dir(&self, dir: std::path::PathBuf) {
        match self.evidence_dir.write() {
            Ok(mut d) => *d = Some(dir),
            Err(poisoned) => *poisoned.into_inner() = Some(dir),
        }
    }

    /// Notified after every published status.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The remediation report as the remedy task last published it (JSON: this stage does not
    /// know the remedy's types, which depend on it).
    pub fn remediation(&self) -> Option<Arc<serde_json::Value>> {
        match self.remediation.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_remediation(&self, report: &impl serde::Serialize) {
        let r = match serde_json::to_value(report) {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => Some(Arc::new(serde_json::json!({ "problems": [e.to_string()] }))),
        };
        match self.remediation.write() {
            Ok(mut g) => *g = r,
            Err(poisoned) => *poisoned.into_inner() = r,
        }
    }

    /// `Some(why)`: a budget table is configured and this host holds no out-of-service lease,
    /// so `/healthz` must not ask a load balancer to replace it.
    pub fn healthz_hold(&self) -> Option<String> {
        match self.healthz_hold.read() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_healthz_hold(&self, hold: Option<String>) {
        match self.healthz_hold.write() {
            Ok(mut g) => *g = hold,
            Err(poisoned) => *poisoned.into_inner() = hold,
        }
    }

    pub fn status(&self) -> Arc<Status> {
        match self.status.read() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn publish(&self, s: Status) {
        let s = Arc::new(s);
        match self.status.write() {
            Ok(mut g) => *g = s,
            Err(poisoned) => *poisoned.into_inner() = s,
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}
