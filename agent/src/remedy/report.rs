//! What /status shows under `remediation`: the ladder's settings, the identities, the problems of
//! the remediation machinery and the newest incidents. The remedy publishes it as JSON through
//! `Shared::set_remediation`, so `publish` needs none of these types. Depends on `config` and the
//! remedy's `identity` and `incident`.

use std::time::Duration;

use serde::Serialize;

use super::fleet::report::FleetReport;
use super::identity::{EcsInstance, Identity, Instance};
use super::incident::Incident;
use crate::config::Config;

/// Incidents shown in /status.
const REPORT_INCIDENTS: usize = 10;

/// What /status shows under `remediation`.
#[derive(Debug, Clone, Serialize)]
pub struct RemediationReport {
    pub dry_run: bool,
    pub actions: Vec<&'static str>,
    #[serde(serialize_with = "humantime_secs")]
    pub hold_down: Duration,
    pub max_per_hour: u32,
    pub state_file: String,
    pub instance: Option<Instance>,
    pub ecs: Option<EcsInstance>,
    /// Problems of the remediation machinery itself (state dir, identity lookups).
    pub problems: Vec<String>,
    /// Newest last.
    pub incidents: Vec<Incident>,
    /// The shared out-of-service budget, when a table is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetReport>,
}

fn humantime_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

impl RemediationReport {
    /// The settings of `cfg`, and nothing known yet.
    pub fn settings(cfg: &Config, state_file: String, problems: Vec<String>) -> Self {
        RemediationReport {
            dry_run: cfg.dry_run,
            actions: cfg.remediate.actions.iter().map(|a| a.name()).collect(),
            hold_down: cfg.remediate.hold_down,
            max_per_hour: cfg.remediate.max_per_hour,
            state_file,
            instance: None,
            ecs: None,
            problems,
            incidents: Vec::new(),
            fleet: None,
        }
    }

    /// The running ladder's view: identities and the last `REPORT_INCIDENTS` of `history`.
    pub fn running(
        cfg: &Config,
        state_file: String,
        identity: &Identity,
        problems: Vec<String>,
        history: &[Incident],
    ) -> Self {
        let skip = history.len().saturating_sub(REPORT_INCIDENTS);
        RemediationReport {
            instance: identity.instance.clone(),
            ecs: identity.ecs.clone(),
            incidents: history[skip..].to_vec(),
            ..Self::settings(cfg, state_file, problems)
        }
    }
}
