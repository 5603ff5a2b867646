//! Incidents: what the ladder records about one failure of the host's critical storage.
//!
//! One incident spans the time the host has a failed critical target; the ladder runs at most
//! once per incident, and each action it runs leaves a [`Step`]. These types are the JSON of
//! `incidents.json` (see `store`) and of `/status` → `remediation.incidents`. Depends on `config`
//! and `publish::status` (the time format) only.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::Action;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Failed, waiting for hold_down.
    Pending,
    /// hold_down passed, but max_per_hour ladder runs already happened in the last hour.
    RateLimited,
    /// The ladder is running.
    Running,
    /// Steps held back by the fleet (breaker or budget) wait for their retry.
    Held,
    /// The ladder ran to its end; the incident stays open until the host recovers.
    Done,
    /// Recovered before the ladder ran.
    Cancelled,
    /// Recovered after the ladder ran.
    Resolved,
}

impl Phase {
    pub fn open(self) -> bool {
        !matches!(self, Phase::Cancelled | Phase::Resolved)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// Started and not finished: the agent died during it, so it runs again, after checking
    /// AWS for a call that already took effect (`ecs-drain`: the instance is DRAINING,
    /// `asg-unhealthy`: it is Unhealthy), so that call is not sent twice.
    Started,
    Done,
    Failed,
    DryRun,
    HeldByBreaker,
    /// Waiting for a lease of the group's out-of-service budget.
    HeldByBudget,
    Skipped,
}

impl StepOutcome {
    pub fn name(self) -> &'static str {
        match self {
            StepOutcome::Started => "started",
            StepOutcome::Done => "done",
            StepOutcome::Failed => "failed",
            StepOutcome::DryRun => "dry_run",
            StepOutcome::HeldByBreaker => "held_by_breaker",
            StepOutcome::HeldByBudget => "held_by_budget",
            StepOutcome::Skipped => "skipped",
        }
    }

    /// Waiting for the fleet (breaker or budget) before it runs.
    pub fn held(self) -> bool {
        matches!(self, StepOutcome::HeldByBreaker | StepOutcome::HeldByBudget)
    }

    /// Final: the step is not run again in this incident.
    pub fn settled(self) -> bool {
        !matches!(
            self,
            StepOutcome::Started | StepOutcome::HeldByBreaker | StepOutcome::HeldByBudget
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub action: Action,
    pub outcome: StepOutcome,
    pub detail: String,
    pub attempts: u32,
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "rfc3339_opt", default)]
    pub finished_at: Option<SystemTime>,
    #[serde(with = "rfc3339_opt", default)]
    pub retry_at: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedTarget {
    pub kind: String,
    pub id: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub phase: Phase,
    pub dry_run: bool,
    #[serde(with = "rfc3339")]
    pub opened_at: SystemTime,
    #[serde(with = "rfc3339_opt", default)]
    pub ladder_started_at: Option<SystemTime>,
    #[serde(with = "rfc3339_opt", default)]
    pub closed_at: Option<SystemTime>,
    pub hostname: String,
    pub targets: Vec<FailedTarget>,
    pub steps: Vec<Step>,
    /// The incident's evidence bundle (`state_dir/evidence/<id>.json`), once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

impl Incident {
    pub fn step(&self, action: Action) -> Option<&Step> {
        self.steps.iter().find(|s| s.action == action)
    }

    pub fn step_mut(&mut self, action: Action) -> Option<&mut Step> {
        self.steps.iter_mut().find(|s| s.action == action)
    }
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        crate::health::timestamp::rfc3339(t, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<SystemTime, TimeError> {
        let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|source| TimeError::Invalid {
            text: text.to_owned(),
            source,
        })?;
        let nanos = t.unix_timestamp_nanos();
        let nanos = u64::try_from(nanos).map_err(|_| TimeError::Before1970 {
            text: text.to_owned(),
        })?;
        Ok(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos))
    }

    /// A time in the history that cannot be read back.
    #[derive(Debug, thiserror::Error)]
    pub enum TimeError {
        #[error("invalid time {text:?}: {source}")]
        Invalid {
            text: String,
            source: time::error::Parse,
        },
        #[error("time {text:?} before 1970")]
        Before1970 { text: String },
    }
}

mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::rfc3339::parse(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}
