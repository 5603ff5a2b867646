//! What the engine shows of its state when it publishes, and the seam it publishes through:
//! the engine hands a borrowed [`EngineView`] to a [`Publisher`] and never learns what is made
//! of it (`publish` builds the `/status` document and the per-target series from it).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::Target;
use crate::{
    config::Config,
    probes::{ProbeStatus, dev::DevId},
    scan::calls::InflightCall,
    topology::reconcile::WatchStatus,
};

/// Where the engine's state goes after every change. `publish` implements it; tests may too.
pub trait Publisher: Send + Sync {
    fn publish(&self, view: &EngineView<'_>);
}

/// An observed mount.
pub struct MountView<'a> {
    pub target: &'a Target,
    pub dev: DevId,
    pub fstype: &'a str,
}

/// An observed device.
pub struct DeviceView<'a> {
    pub name: &'a str,
    pub target: &'a Target,
    pub dev: DevId,
    pub inflight: u64,
    pub oldest_inflight: Duration,
    pub io_errors: u64,
    pub stalled: bool,
}

/// The engine's state at one moment: everything one `/status` document is made of.
pub struct EngineView<'a> {
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
