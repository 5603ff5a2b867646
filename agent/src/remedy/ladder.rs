//! The ladder: the incident state machine and its safety rails.
//!
//! On every look at the engine's status it opens, advances or closes the one open incident.
//! Once a critical target has failed for `hold_down` it runs the configured steps, in order,
//! exactly once for that incident, within `max_per_hour`, once the `fleet` gate lets it (a
//! lease of the group's budget, or the breaker without a table); held steps are retried at
//! their jittered time. Every change is persisted before it takes effect, so a restarted
//! agent resumes an interrupted ladder instead of repeating or forgetting it. After each change
//! it records it (`record`). Depends on `config`, `health` (target states), `publish` (status in,
//! report and metrics out) and the remedy's `store`, `identity`, `report` and `steps`.

use std::{collections::HashSet, sync::Arc, time::SystemTime};

use tracing::{error, info, warn};

use super::fleet::{Budget, Gate};
use super::identity::Identity;
use super::incident::{FailedTarget, Incident, Phase, Step, StepOutcome};
use super::steps::{self, StepResult};
use super::store::{self, Store, StoreError};
use crate::{
    config::{Config, Remediate},
    health::State,
    publish::shared::Shared,
    publish::status::Status,
};

/// The incident history, what the steps need to know, and where the report goes.
pub struct Ladder {
    pub(super) cfg: Arc<Config>,
    pub(super) shared: Arc<Shared>,
    pub(super) store: Store,
    pub(super) identity: Identity,
    /// Incidents read from disk at start: their "recovered" needs hold_down of health observed
    /// by this process, since a fresh engine has not seen everything yet.
    pub(super) restored: HashSet<String>,
    pub(super) healthy_since: Option<SystemTime>,
    pub(super) store_problem: Option<String>,
    /// The state dir shares a mount with a critical watch (stays as long as the config does).
    pub(super) placement_problem: Option<String>,
    pub(super) hostname: String,
    /// The shared out-of-service budget, when a table is configured.
    pub(super) budget: Option<Budget>,
    /// Where the incident evidence comes from and goes.
    pub(super) evidence: super::evidence::Keeper,
}

impl Ladder {
    /// Opens the state directory. Failing to create it is an error: without it the agent could
    /// repeat a ladder after a restart.
    pub fn open(cfg: Arc<Config>, shared: Arc<Shared>) -> Result<Self, StoreError> {
        Ladder::open_with(cfg, shared, crate::evidence::Sources::default())
    }

    /// [`Ladder::open`] with the sources of the incident evidence.
    pub fn open_with(
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        sources: crate::evidence::Sources,
    ) -> Result<Self, StoreError> {
        let r = &cfg.remediate;
        // Before opening: if the directory hangs, the warning still says why.
        let on_watched = store::state_dir_on_watched_storage(&cfg);
        let (store, loaded) = Store::open(&r.state_dir)?;
        let store_problem = loaded.log(store.path(), &shared.metrics);
        let restored = store
            .incidents
            .iter()
            .filter(|i| i.phase.open())
            .map(|i| i.id.clone())
            .collect();
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let identity = Identity::cached(&r.state_dir);
        let cfg_budget = r.clone();
        let evidence = super::evidence::Keeper::new(sources, &r.state_dir);
        shared.set_evidence_dir(evidence.dir().to_path_buf());
        Ok(Ladder {
            cfg,
            shared,
            store,
            identity,
            restored,
            healthy_since: None,
            store_problem,
            placement_problem: on_watched,
            hostname,
            budget: Budget::new(&cfg_budget),
            evidence,
        })
        .inspect(Ladder::publish_healthz)
    }

    pub(super) fn rem(&self) -> &Remediate {
        &self.cfg.remediate
    }

    /// Every identity the enabled actions need is known.
    pub(super) fn identity_known(&self) -> bool {
        self.identity.known(self.rem())
    }

    /// The engine's status as last published.
    pub(super) fn status(&self) -> Arc<Status> {
        self.shared.status()
    }

    pub(super) async fn refresh_identity(&mut self) {
        self.identity.refresh(&self.cfg.remediate).await;
    }

    /// A reloaded config applies to the next step; the history stays where it was opened.
    pub(super) fn reconfigure(&mut self, new: Arc<Config>) {
        if new.remediate.state_dir != self.rem().state_dir {
            warn!(
                running = %self.rem().state_dir.display(),
                new = %new.remediate.state_dir.display(),
                "remediate.state_dir changed; restart bindsto to apply it (keeping the incident history where it is)"
            );
        }
        if new.remediate.fleet.table != self.rem().fleet.table {
            // A held lease expires on its own after `lease`.
            self.budget = Budget::new(&new.remediate);
        }
        self.cfg = new;
        self.publish();
    }

    /// One look at the status: open, advance or close the incident.
    pub async fn evaluate(&mut self, status: &Status, now: SystemTime) {
        let failed: Vec<FailedTarget> = status
            .targets
            .iter()
            .filter(|t| t.critical && t.state == State::Failed)
            .map(|t| FailedTarget {
                kind: t.kind.to_owned(),
                id: t.id.clone(),
                reasons: t
                    .reasons
                    .iter()
                    .map(|r| format!("{}: {}", r.signal.name(), r.detail))
                    .collect(),
            })
            .collect();
        if failed.is_empty() {
            self.healthy_since.get_or_insert(now);
        } else {
            self.healthy_since = None;
        }
        let Some(mut inc) = self.store.open_incident().cloned() else {
            // Opened whatever the actions: the evidence is kept even where nothing acts.
            if !failed.is_empty() {
                self.open_incident(failed, now).await;
            } else if failed.is_empty() {
                self.give_back(now).await;
            }
            return;
        };
        if failed.is_empty() {
            self.on_healthy(inc, now).await;
            return;
        }
        self.keep_failing(&inc, now).await;
        let mut changed = false;
        for t in failed {
            if !inc.targets.iter().any(|x| x.kind == t.kind && x.id == t.id) {
                info!(incident = %inc.id, target = %t.id, "another critical target failed during the incident");
                inc.targets.push(t);
                changed = true;
            }
        }
        match inc.phase {
            Phase::Pending | Phase::RateLimited => {
                let held_for = now.duration_since(inc.opened_at).unwrap_or_default();
                if held_for >= self.rem().hold_down {
                    self.start_ladder(inc, now).await;
                    return;
                }
            }
            // The agent died during the ladder: finish it (steps done are not repeated).
            Phase::Running => {
                warn!(incident = %inc.id, "resuming a ladder interrupted by a restart");
                self.ladder(inc, false).await;
                return;
            }
            Phase::Held => {
                let due = inc
                    .steps
                    .iter()
                    .any(|s| s.outcome.held() && s.retry_at.is_none_or(|t| t <= now))
                    // No steps (a budget for /healthz only): the gate is asked again each look.
                    || inc.steps.is_empty();
                if due {
                    self.ladder(inc, true).await;
                    return;
                }
            }
            Phase::Done | Phase::Cancelled | Phase::Resolved => {}
        }
        if changed {
            self.put(inc).await;
        }
    }

    async fn open_incident(&mut self, failed: Vec<FailedTarget>, now: SystemTime) {
        if self.store.incidents.len() >= store::HISTORY_MAX {
            self.shared
                .metrics
                .count_full(crate::metrics::limits::BoundedTable::Incidents, 1);
        }
        let ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let inc = Incident {
            id: format!("{ms}-{}", crate::evidence::files::id_host(&self.hostname)),
            phase: Phase::Pending,
            dry_run: self.cfg.dry_run,
            opened_at: now,
            ladder_started_at: None,
            closed_at: None,
            hostname: self.hostname.clone(),
            targets: failed,
            steps: Vec::new(),
            evidence: None,
        };
        warn!(
            incident = %inc.id,
            targets = ?inc.targets.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            hold_down = ?self.rem().hold_down,
            dry_run = inc.dry_run,
            "incident opened: critical storage failed; the ladder runs if it lasts hold_down"
        );
        self.store.incidents.push(inc.clone());
        let mut inc = inc;
        self.put(inc.clone()).await;
        self.capture_evidence(&mut inc, "opened").await;
        if inc.evidence.is_some() {
            self.put(inc).await;
        }
        // (The bundle is written in the background; its path is in the incident already.)
    }

    async fn on_healthy(&mut self, mut inc: Incident, now: SystemTime) {
        let healthy_for = self
            .healthy_since
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        // A restarted engine has not seen everything yet: wait hold_down before believing it.
        let settled = !self.restored.contains(&inc.id) || healthy_for >= self.rem().hold_down;
        let next = match inc.phase {
            Phase::Pending | Phase::RateLimited if settled => Phase::Cancelled,
            Phase::Held | Phase::Done | Phase::Running if healthy_for >= self.rem().hold_down => {
                Phase::Resolved
            }
            _ => return,
        };
        inc.phase = next;
        inc.closed_at = Some(now);
        match next {
            Phase::Cancelled => {
                info!(incident = %inc.id, "storage recovered before the ladder ran; incident cancelled");
            }
            _ => {
                info!(incident = %inc.id, "storage healthy again after the ladder; incident resolved");
            }
        }
        self.put(inc).await;
        self.give_back(now).await;
    }

    async fn start_ladder(&mut self, mut inc: Incident, now: SystemTime) {
        let max = self.rem().max_per_hour as usize;
        if self.store.runs_within_hour(now) >= max {
            if inc.phase != Phase::RateLimited {
                let next = self.store.next_run_allowed(now, max);
                warn!(
                    incident = %inc.id,
                    max_per_hour = max,
                    next_allowed = ?next.map(crate::health::timestamp::format_time),
                    "ladder held back: max_per_hour reached"
                );
                self.count("ladder", "rate_limited");
                inc.phase = Phase::RateLimited;
                self.put(inc).await;
            }
            return;
        }
        self.capture_evidence(&mut inc, "ladder").await;
        if self.rem().actions.is_empty() && self.budget.is_none() {
            // Nothing to run: the incident stays for its evidence and does not count as a run.
            info!(incident = %inc.id, "no remediation actions configured; the incident is kept for its evidence");
            inc.phase = Phase::Done;
            self.put(inc).await;
            return;
        }
        inc.phase = Phase::Running;
        inc.ladder_started_at.get_or_insert(now);
        info!(incident = %inc.id, dry_run = inc.dry_run, actions = ?self.rem().actions.iter().map(|a| a.name()).collect::<Vec<_>>(), "running the remediation ladder");
        self.put(inc.clone()).await;
        self.ladder(inc, false).await;
    }

    /// Runs every step not settled yet, in ladder order. `retry_held` runs only steps held by
    /// the breaker.
    async fn ladder(&mut self, mut inc: Incident, retry_held: bool) {
        if let Gate::Wait { detail, retry_at } = self.gate(&inc).await {
            self.hold(inc, &detail, retry_at).await;
            return;
        }
        let actions = self.rem().actions.clone();
        for action in actions {
            let prior = inc.step(action).map(|s| s.outcome);
            let run = match prior {
                None | Some(StepOutcome::Started) => !retry_held,
                Some(o) if o.held() => true,
                Some(_) => false,
            };
            if !run {
                continue;
            }
            let started_at = SystemTime::now();
            let attempts = inc.step(action).map(|s| s.attempts).unwrap_or(0) + 1;
            let step = Step {
                action,
                outcome: StepOutcome::Started,
                detail: String::new(),
                attempts,
                started_at,
                finished_at: None,
                retry_at: None,
            };
            match inc.step_mut(action) {
                Some(s) => *s = step,
                None => inc.steps.push(step),
            }
            // Recorded before acting, so a crash mid-step is visible and the step resumes.
            inc.phase = Phase::Running;
            self.put(inc.clone()).await;

            let clock = std::time::Instant::now();
            let resumed = prior == Some(StepOutcome::Started);
            if resumed {
                warn!(incident = %inc.id, action = action.name(), attempts, "a step was in flight when the agent stopped; checking whether it took effect before acting again");
            }
            let StepResult {
                outcome,
                detail,
                retry_at,
            } = steps::run(action, &self.cfg, &mut self.identity, &inc, resumed).await;
            let took = clock.elapsed();
            if let Some(s) = inc.step_mut(action) {
                s.outcome = outcome;
                s.detail = detail.clone();
                s.finished_at = Some(SystemTime::now());
                s.retry_at = retry_at;
            }
            self.count(action.name(), outcome.name());
            let took_ms = took.as_millis() as u64;
            match outcome {
                StepOutcome::Failed => {
                    error!(incident = %inc.id, action = action.name(), outcome = outcome.name(), attempts, took_ms, detail = %detail, "remediation step failed; continuing with the next");
                }
                StepOutcome::HeldByBreaker => {
                    warn!(incident = %inc.id, action = action.name(), outcome = outcome.name(), attempts, took_ms, detail = %detail, retry_at = ?retry_at.map(crate::health::timestamp::format_time), "remediation step held back by the fleet breaker");
                }
                _ => {
                    info!(incident = %inc.id, action = action.name(), outcome = outcome.name(), attempts, took_ms, detail = %detail, "remediation step");
                }
            }
            self.put(inc.clone()).await;
        }
        let held = inc.steps.iter().any(|s| s.outcome.held());
        inc.phase = if held { Phase::Held } else { Phase::Done };
        if !held {
            info!(incident = %inc.id, "remediation ladder finished");
        }
        self.put(inc).await;
    }
}

#[cfg(test)]
pub(super) mod tests;
