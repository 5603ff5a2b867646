//! The `/status` document and the `/healthz` verdict, built from the engine's view after every
//! change ([`super::snapshot`]) and served as-is, so HTTP handlers never compute anything or touch a filesystem.

use std::time::SystemTime;

use serde::{Serialize, Serializer};

use crate::{
    health::{Reason, State, timestamp::rfc3339},
    probes::ProbeStatus,
    topology::reconcile::WatchStatus,
};

fn shared_config<S: Serializer>(
    c: &Option<std::sync::Arc<crate::config::Config>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    c.as_deref().serialize(s)
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub healthy: bool,
    pub version: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: SystemTime,
    pub dry_run: bool,
    pub targets: Vec<TargetStatus>,
    pub blocked_mount_calls: Vec<BlockedCall>,
    pub devices: Vec<DeviceStatus>,
    pub watches: Vec<WatchStatus>,
    pub probes: Vec<ProbeStatus>,
    pub events_lost: u64,
    /// The config in effect (after reloads), so operators and tests see what applies.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "shared_config"
    )]
    pub config: Option<std::sync::Arc<crate::config::Config>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetStatus {
    pub kind: &'static str,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    pub critical: bool,
    pub state: State,
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
    pub reasons: Vec<Reason>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlockedCall {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub syscall: &'static str,
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub blocked_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceStatus {
    pub name: String,
    pub dev: String,
    pub inflight: u64,
    pub oldest_inflight_seconds: f64,
    pub io_errors: u64,
    pub stalled: bool,
}

impl Status {
    /// Failed critical targets: what `/healthz` reports and acts on.
    pub fn failed_critical(&self) -> impl Iterator<Item = &TargetStatus> {
        self.targets
            .iter()
            .filter(|t| t.critical && t.state == State::Failed)
    }
}

/// The `/healthz` 503 body.
#[derive(Debug, Serialize)]
pub struct Unhealthy<'a> {
    pub healthy: bool,
    pub failed: Vec<&'a TargetStatus>,
}
