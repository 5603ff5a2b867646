//! The ladder's side of the fleet gate: asking it before any out-of-service step, holding every
//! step while it says wait, and keeping the budget's failure record and lease up to date while
//! the incident is open. Depends on the remedy's `ladder`, `fleet` and `incident`.

use std::time::SystemTime;

use tracing::{info, warn};

use super::fleet::{Gate, breaker};
use super::incident::{Incident, Phase, Step, StepOutcome};
use super::ladder::Ladder;

impl Ladder {
    /// May this host go out of service now? The budget with a table, the breaker without.
    pub(super) async fn gate(&mut self, inc: &Incident) -> Gate {
        let now = SystemTime::now();
        let dry = inc.dry_run;
        let rem = self.cfg.remediate.clone();
        let gate = match self.budget.as_mut() {
            Some(b) => {
                let reason = first_reason(inc);
                b.acquire(&rem, &mut self.identity, &reason, dry, now).await
            }
            None if rem.actions.is_empty() => Gate::Go(String::new()),
            None => breaker::check(&rem, &mut self.identity, dry, now).await,
        };
        if let Gate::Go(detail) = &gate
            && !detail.is_empty()
            && inc.phase != Phase::Done
        {
            info!(incident = %inc.id, gate = %detail, "fleet gate: this host may go out of service");
        }
        gate
    }

    /// Holds every step not settled yet until `retry_at`; one log line when the reason
    /// changes, a metric per step and try.
    pub(super) async fn hold(&mut self, mut inc: Incident, detail: &str, retry_at: SystemTime) {
        let outcome = if self.budget.is_some() {
            StepOutcome::HeldByBudget
        } else {
            StepOutcome::HeldByBreaker
        };
        let now = SystemTime::now();
        let changed = !inc
            .steps
            .iter()
            .any(|s| s.outcome == outcome && s.detail == detail);
        for action in self.cfg.remediate.actions.clone() {
            let prior = inc.step(action).map(|s| (s.outcome, s.attempts));
            if prior.is_some_and(|(o, _)| o.settled()) {
                continue;
            }
            let step = Step {
                action,
                outcome,
                detail: detail.to_owned(),
                attempts: prior.map_or(0, |(_, a)| a) + 1,
                started_at: now,
                finished_at: Some(now),
                retry_at: Some(retry_at),
            };
            match inc.step_mut(action) {
                Some(s) => *s = step,
                None => inc.steps.push(step),
            }
            self.count(action.name(), outcome.name());
        }
        if changed {
            warn!(
                incident = %inc.id,
                outcome = outcome.name(),
                detail = %detail,
                retry_at = %crate::health::timestamp::format_time(retry_at),
                "remediation held back by the fleet: no out-of-service step runs until it allows"
            );
        }
        inc.phase = Phase::Held;
        self.put(inc).await;
    }

    /// While the incident is open: the budget's record of this host's failure, and its lease,
    /// stay renewed.
    pub(super) async fn keep_failing(&mut self, inc: &Incident, now: SystemTime) {
        let rem = self.cfg.remediate.clone();
        let Some(b) = self.budget.as_mut() else {
            return;
        };
        let (signal, target) = inc
            .targets
            .first()
            .map(|t| {
                let signal = t
                    .reasons
                    .first()
                    .and_then(|r| r.split(':').next())
                    .unwrap_or_default();
                (signal.to_owned(), t.id.clone())
            })
            .unwrap_or_default();
        let before = b.report().clone();
        b.keep_failing(
            &rem,
            &mut self.identity,
            (signal, target, inc.opened_at),
            inc.dry_run,
            now,
        )
        .await;
        if *b.report() != before {
            self.publish();
        }
    }

    /// The host is healthy and its incident closed: the lease and record go back.
    pub(super) async fn give_back(&mut self, now: SystemTime) {
        let rem = self.cfg.remediate.clone();
        let dry = self.cfg.dry_run;
        let Some(b) = self.budget.as_mut() else {
            return;
        };
        if !b.owes_release() {
            return;
        }
        b.release(&rem, &mut self.identity, dry, now).await;
        self.publish();
    }
}

/// What failed, in a line the budget's holder list shows.
fn first_reason(inc: &Incident) -> String {
    inc.targets
        .first()
        .map(|t| {
            let r = t.reasons.first().map(String::as_str).unwrap_or_default();
            format!("{}: {r}", t.id)
        })
        .unwrap_or_default()
}
