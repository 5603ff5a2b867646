//! The ladder's steps: one action each (`ecs-drain`, `stop-units`, `asg-unhealthy`, `exec`),
//! all ending in one [`StepResult`] that the ladder records. A step never touches the watched
//! storage: it talks to AWS, D-Bus or a child process, each under its own timeout. Depends on
//! `config`, the remedy's `identity` and `incident`.

pub mod asg_unhealthy;
pub mod aws;
pub mod ecs_drain;
pub mod exec;
pub mod systemd;

use std::time::SystemTime;

use super::identity::Identity;
use super::incident::{Incident, StepOutcome};
use crate::config::{Action, Config};

/// How a step ended, as its record in the incident shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub outcome: StepOutcome,
    pub detail: String,
    /// When a step held back by the breaker is tried again.
    pub retry_at: Option<SystemTime>,
}

impl StepResult {
    pub fn new(outcome: StepOutcome, detail: impl Into<String>) -> Self {
        StepResult {
            outcome,
            detail: detail.into(),
            retry_at: None,
        }
    }

    pub fn done(detail: impl Into<String>) -> Self {
        Self::new(StepOutcome::Done, detail)
    }

    pub fn failed(detail: impl Into<String>) -> Self {
        Self::new(StepOutcome::Failed, detail)
    }

    pub fn dry_run(detail: impl Into<String>) -> Self {
        Self::new(StepOutcome::DryRun, detail)
    }

    /// A step that cannot know whom to act on: failed (or, in a dry run, reported as such).
    fn unknown(dry: bool, what: &str, identity: &Identity) -> Self {
        let outcome = if dry {
            StepOutcome::DryRun
        } else {
            StepOutcome::Failed
        };
        let why = identity.problems.join("; ");
        Self::new(outcome, format!("{what} ({why})"))
    }
}

/// Runs `action` for `inc`. `resumed`: the step was in flight when the agent stopped.
pub async fn run(
    action: Action,
    cfg: &Config,
    identity: &mut Identity,
    inc: &Incident,
    resumed: bool,
) -> StepResult {
    let (rem, dry) = (&cfg.remediate, cfg.dry_run);
    match action {
        Action::EcsDrain => ecs_drain::drain(rem, dry, identity, resumed).await,
        Action::StopUnits => systemd::stop_units(&rem.stop_units, dry).await,
        Action::AsgUnhealthy => asg_unhealthy::mark_unhealthy(rem, dry, identity).await,
        Action::Exec => exec::run_step(&rem.exec, dry, inc).await,
    }
}
