//! Remediation: turns a failed critical target into a host taken out of service.
//!
//! The remedy task follows the engine's published status. When a critical target fails it opens
//! an incident; once the failure has lasted `hold_down` it runs the ladder (`actions`, in order)
//! exactly once for that incident, within the safety rails: `dry_run`, `max_per_hour`, the fleet
//! breaker before `asg-unhealthy`, and a persisted history so a restart neither repeats nor
//! forgets a run. Recovery before the ladder runs cancels the incident.
//!
//! The ladder never touches the failed filesystem: it talks to HTTP endpoints, D-Bus and AWS,
//! and writes only under the state directory on the root filesystem (under a timeout).

pub mod aws;
pub mod exec;
pub mod identity;
pub mod incident;
pub mod systemd;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{
    config::{Action, Config, Remediate},
    health::State,
    publish::metrics,
    publish::shared::Shared,
    publish::status::Status,
};
use identity::{EcsInstance, Instance};
use incident::{FailedTarget, Incident, Loaded, Outcome, Phase, Step, Store};

/// How often the task looks at the clock without a status change (hold_down, retries).
const TICK: Duration = Duration::from_secs(1);
/// Identity endpoints are asked with this timeout, at start and while unknown every
/// `IDENTITY_RETRY`; known identities are refreshed every `IDENTITY_REFRESH`.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(2);
const IDENTITY_RETRY: Duration = Duration::from_secs(30);
const IDENTITY_REFRESH: Duration = Duration::from_secs(300);
const ECS_CACHE: &str = "ecs-instance.json";
const STATE_OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Incidents shown in /status.
const REPORT_INCIDENTS: usize = 10;

/// What /status shows under `remediation`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
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
}

fn humantime_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

pub struct Remedy {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    store: Store,
    /// Incidents read from disk at start: their "recovered" needs hold_down of health observed
    /// by this process, since a fresh engine has not seen everything yet.
    restored: HashSet<String>,
    healthy_since: Option<SystemTime>,
    instance: Option<Instance>,
    ecs: Option<EcsInstance>,
    identity_problems: Vec<String>,
    store_problem: Option<String>,
    /// The state dir shares a mount with a critical watch (stays as long as the config does).
    placement_problem: Option<String>,
    hostname: String,
}

impl Remedy {
    /// Opens the state directory. Failing to create it is an error: without it the agent could
    /// repeat a ladder after a restart.
    pub fn new(cfg: Arc<Config>, shared: Arc<Shared>) -> Result<Self, incident::StoreError> {
        let r = &cfg.remediate;
        // Before opening: if the directory hangs, the warning still says why.
        let on_watched = state_dir_on_watched_storage(&cfg);
        let (store, loaded) = Store::open(&r.state_dir)?;
        match &loaded {
            Loaded::Fresh => info!(path = %store.path().display(), "no incident history yet"),
            Loaded::Read(n) => {
                info!(path = %store.path().display(), incidents = n, "incident history loaded");
            }
            Loaded::MovedAside(aside, why) => {
                shared.metrics.state_files_moved_aside.inc();
                error!(
                path = %store.path().display(),
                moved_to = %aside.display(),
                error = %why,
                "incident history is corrupt; moved aside, starting with an empty history"
                );
            }
        }
        let store_problem = match loaded {
            Loaded::MovedAside(aside, why) => Some(format!(
                "corrupt incident history moved to {}: {why}",
                aside.display()
            )),
            _ => None,
        };
        let restored = store
            .incidents
            .iter()
            .filter(|i| i.phase.open())
            .map(|i| i.id.clone())
            .collect();
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ecs = incident::read_cache(&r.state_dir, ECS_CACHE);
        Ok(Remedy {
            cfg,
            shared,
            store,
            restored,
            healthy_since: None,
            instance: None,
            ecs,
            identity_problems: Vec::new(),
            store_problem,
            placement_problem: on_watched,
            hostname,
        })
    }

    /// [`Remedy::new`] on a blocking thread under a timeout: opening the state directory must
    /// not hang the agent's start if the disk under it hangs.
    pub async fn open(cfg: Arc<Config>, shared: Arc<Shared>) -> Result<Self, String> {
        let dir = cfg.remediate.state_dir.clone();
        let task = tokio::task::spawn_blocking(move || Remedy::new(cfg, shared));
        match tokio::time::timeout(STATE_OPEN_TIMEOUT, task).await {
            Ok(Ok(Ok(r))) => Ok(r),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "state directory {} did not answer within {STATE_OPEN_TIMEOUT:?}",
                dir.display()
            )),
        }
    }

    /// What /status shows when the remediation task could not start.
    pub fn unavailable(cfg: &Config, problem: String) -> Report {
        Report {
            dry_run: cfg.dry_run,
            actions: cfg.remediate.actions.iter().map(|a| a.name()).collect(),
            hold_down: cfg.remediate.hold_down,
            max_per_hour: cfg.remediate.max_per_hour,
            state_file: cfg
                .remediate
                .state_dir
                .join("incidents.json")
                .display()
                .to_string(),
            instance: None,
            ecs: None,
            problems: vec![format!("remediation unavailable: {problem}")],
            incidents: Vec::new(),
        }
    }

    fn rem(&self) -> &Remediate {
        &self.cfg.remediate
    }

    fn wants(&self, a: Action) -> bool {
        self.rem().actions.contains(&a)
    }

    /// Runs until `stop` turns true, re-evaluating on every published status and every tick.
    pub async fn run(
        mut self,
        mut changes: watch::Receiver<u64>,
        mut config: watch::Receiver<Arc<Config>>,
        mut stop: watch::Receiver<bool>,
    ) {
        if self.rem().actions.is_empty() {
            info!("remediation disabled (remediate.actions is empty)");
        }
        self.refresh_identity().await;
        self.publish();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut identity =
            tokio::time::interval_at(tokio::time::Instant::now() + IDENTITY_RETRY, IDENTITY_RETRY);
        let mut last_refresh = tokio::time::Instant::now();
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = tick.tick() => {}
                _ = identity.tick() => {
                    let known = (!self.wants(Action::EcsDrain) || self.ecs.is_some())
                        && (!self.wants(Action::AsgUnhealthy) || self.instance.is_some());
                    if !known || last_refresh.elapsed() >= IDENTITY_REFRESH {
                        self.refresh_identity().await;
                        last_refresh = tokio::time::Instant::now();
                        self.publish();
                    }
                }
                r = config.changed() => {
                    if r.is_ok() {
                        let new = Arc::clone(&config.borrow_and_update());
                        self.reconfigure(new);
                    }
                }
                _ = stop.changed() => break,
            }
            let status = self.shared.status();
            self.evaluate(&status, SystemTime::now()).await;
        }
    }

    /// A reloaded config applies to the next step; the history stays where it was opened.
    fn reconfigure(&mut self, new: Arc<Config>) {
        if new.remediate.state_dir != self.rem().state_dir {
            warn!(
                running = %self.rem().state_dir.display(),
                new = %new.remediate.state_dir.display(),
                "remediate.state_dir changed; restart bindsto to apply it (keeping the incident history where it is)"
            );
        }
        self.cfg = new;
        self.publish();
    }

    /// Reads the identities the enabled actions need; keeps the last known ones on failure
    /// (the ECS agent is gone once stop-units has run).
    async fn refresh_identity(&mut self) {
        let mut problems = Vec::new();
        if self.wants(Action::EcsDrain) {
            let url = self.rem().ecs_drain.introspection_url.clone();
            match identity::ecs_instance(&url, IDENTITY_TIMEOUT).await {
                Ok(ecs) => {
                    if self.ecs.as_ref() != Some(&ecs) {
                        info!(cluster = %ecs.cluster, container_instance = %ecs.container_instance_arn, "ECS container instance identified");
                        let dir = self.rem().state_dir.clone();
                        let value = ecs.clone();
                        let write = tokio::task::spawn_blocking(move || {
                            incident::write_cache(&dir, ECS_CACHE, &value)
                        });
                        if let Ok(Ok(Err(e))) = tokio::time::timeout(IDENTITY_TIMEOUT, write).await
                        {
                            warn!(error = %e, "cannot cache the ECS identity");
                        }
                        self.ecs = Some(ecs);
                    }
                }
                Err(e) => {
                    let cached = if self.ecs.is_some() {
                        " (using the cached identity)"
                    } else {
                        ""
                    };
                    problems.push(format!("ECS introspection: {e}{cached}"));
                }
            }
        }
        if self.wants(Action::AsgUnhealthy) || self.wants(Action::EcsDrain) {
            let url = self.rem().asg_unhealthy.imds_url.clone();
            match identity::instance(&url, IDENTITY_TIMEOUT).await {
                Ok(i) => {
                    if self.instance.as_ref() != Some(&i) {
                        info!(instance_id = %i.instance_id, region = %i.region, "EC2 instance identified");
                        self.instance = Some(i);
                    }
                }
                Err(e) if self.wants(Action::AsgUnhealthy) => problems.push(format!("IMDS: {e}")),
                Err(_) => {}
            }
        }
        if problems != self.identity_problems {
            for p in &problems {
                warn!(problem = %p, "remediation identity lookup failed; retrying every {IDENTITY_RETRY:?}");
            }
            self.identity_problems = problems;
        }
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
            if !failed.is_empty() && !self.rem().actions.is_empty() {
                self.open_incident(failed, now).await;
            }
            return;
        };
        if failed.is_empty() {
            self.on_healthy(inc, now).await;
            return;
        }
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
                let due = inc.steps.iter().any(|s| {
                    s.outcome == Outcome::HeldByBreaker && s.retry_at.is_none_or(|t| t <= now)
                });
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
        if self.store.incidents.len() >= incident::HISTORY_MAX {
            self.shared
                .metrics
                .count_full(crate::publish::limits::BoundedTable::Incidents, 1);
        }
        let ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let inc = Incident {
            id: format!("{ms}-{}", self.hostname),
            phase: Phase::Pending,
            dry_run: self.cfg.dry_run,
            opened_at: now,
            ladder_started_at: None,
            closed_at: None,
            hostname: self.hostname.clone(),
            targets: failed,
            steps: Vec::new(),
        };
        warn!(
            incident = %inc.id,
            targets = ?inc.targets.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            hold_down = ?self.rem().hold_down,
            dry_run = inc.dry_run,
            "incident opened: critical storage failed; the ladder runs if it lasts hold_down"
        );
        self.store.incidents.push(inc.clone());
        self.put(inc).await;
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
    }

    async fn start_ladder(&mut self, mut inc: Incident, now: SystemTime) {
        let max = self.rem().max_per_hour as usize;
        if self.store.runs_within_hour(now) >= max {
            if inc.phase != Phase::RateLimited {
                let next = self.store.next_run_allowed(now, max);
                warn!(
                    incident = %inc.id,
                    max_per_hour = max,
                    next_allowed = ?next.map(crate::publish::status::format_time),
                    "ladder held back: max_per_hour reached"
                );
                self.count("ladder", "rate_limited");
                inc.phase = Phase::RateLimited;
                self.put(inc).await;
            }
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
        let actions = self.rem().actions.clone();
        for action in actions {
            let prior = inc.step(action).map(|s| s.outcome);
            let run = match prior {
                None | Some(Outcome::Started) => !retry_held,
                Some(Outcome::HeldByBreaker) => true,
                Some(_) => false,
            };
            if !run {
                continue;
            }
            let started_at = SystemTime::now();
            let attempts = inc.step(action).map(|s| s.attempts).unwrap_or(0) + 1;
            let step = Step {
                action,
                outcome: Outcome::Started,
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
            let resumed = prior == Some(Outcome::Started);
            if resumed {
                warn!(incident = %inc.id, action = action.name(), attempts, "a step was in flight when the agent stopped; checking whether it took effect before acting again");
            }
            let (outcome, detail, retry_at) = self.execute(action, &inc, resumed).await;
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
                Outcome::Failed => {
                    error!(incident = %inc.id, action = action.name(), outcome = outcome.name(), attempts, took_ms, detail = %detail, "remediation step failed; continuing with the next");
                }
                Outcome::HeldByBreaker => {
                    warn!(incident = %inc.id, action = action.name(), outcome = outcome.name(), attempts, took_ms, detail = %detail, retry_at = ?retry_at.map(crate::publish::status::format_time), "remediation step held back by the fleet breaker");
                }
                _ => {
                    info!(incident = %inc.id, action = action.name(), outcome = outcome.name(), attempts, took_ms, detail = %detail, "remediation step");
                }
            }
            self.put(inc.clone()).await;
        }
        let held = inc
            .steps
            .iter()
            .any(|s| s.outcome == Outcome::HeldByBreaker);
        inc.phase = if held { Phase::Held } else { Phase::Done };
        if !held {
            info!(incident = %inc.id, "remediation ladder finished");
        }
        self.put(inc).await;
    }

    fn count(&self, action: &str, outcome_label: &str) {
        self.shared
            .metrics
            .remediations
            .get_or_create(&metrics::ActionLabels {
                action: action.to_owned(),
                outcome: outcome_label.to_owned(),
            })
            .inc();
    }

    async fn execute(
        &mut self,
        action: Action,
        inc: &Incident,
        resumed: bool,
    ) -> (Outcome, String, Option<SystemTime>) {
        let dry = self.cfg.dry_run;
        match action {
            Action::EcsDrain => self.ecs_drain(dry, resumed).await,
            Action::StopUnits => self.stop_units(dry).await,
            Action::AsgUnhealthy => self.asg_unhealthy(dry).await,
            Action::Exec => self.exec(dry, inc).await,
        }
    }

    /// A step that cannot know whom to act on: failed (or, in a dry run, reported as such).
    fn unknown(&self, dry: bool, what: &str) -> (Outcome, String, Option<SystemTime>) {
        let outcome = if dry {
            Outcome::DryRun
        } else {
            Outcome::Failed
        };
        let why = self.identity_problems.join("; ");
        (outcome, format!("{what} ({why})"), None)
    }

    async fn ecs_drain(
        &mut self,
        dry: bool,
        resumed: bool,
    ) -> (Outcome, String, Option<SystemTime>) {
        if self.ecs.is_none() {
            self.refresh_identity().await;
        }
        let Some(ecs) = self.ecs.clone() else {
            return self.unknown(
                dry,
                "container instance unknown: the ECS introspection API never answered",
            );
        };
        let region = ecs
            .region()
            .map(str::to_owned)
            .or_else(|| self.rem().asg_unhealthy.region.clone())
            .or_else(|| self.instance.as_ref().map(|i| i.region.clone()));
        let Some(region) = region else {
            return (
                Outcome::Failed,
                "no region: not in the ARN, not configured, no IMDS".into(),
                None,
            );
        };
        if dry {
            return (
                Outcome::DryRun,
                format!(
                    "would set container instance {} in cluster {} to DRAINING",
                    ecs.container_instance_arn, ecs.cluster
                ),
                None,
            );
        }
        let budget = self.rem().ecs_drain.timeout;
        // An interrupted drain may have reached ECS before the agent died: look before acting,
        // so the call is made once. A failed look falls through to the (idempotent) drain.
        if resumed {
            match tokio::time::timeout(budget, aws::ecs_status(self.rem(), &ecs, &region)).await {
                Ok(Ok(Some(status))) if status == "DRAINING" => {
                    return (
                        Outcome::Done,
                        format!(
                            "container instance {} in cluster {} is already DRAINING (the interrupted call reached ECS; not sent again)",
                            ecs.container_instance_arn, ecs.cluster
                        ),
                        None,
                    );
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot read the container instance's status; draining again");
                }
                Err(_) => {
                    warn!("reading the container instance's status timed out; draining again");
                }
            }
        }
        match tokio::time::timeout(budget, aws::ecs_drain(self.rem(), &ecs, &region)).await {
            Ok(Ok(detail)) => (Outcome::Done, detail, None),
            Ok(Err(e)) => (Outcome::Failed, e.to_string(), None),
            Err(_) => (Outcome::Failed, format!("timed out after {budget:?}"), None),
        }
    }

    async fn stop_units(&self, dry: bool) -> (Outcome, String, Option<SystemTime>) {
        let s = &self.rem().stop_units;
        if dry {
            let mask = if s.mask_units {
                " and mask (runtime)"
            } else {
                ""
            };
            return (
                Outcome::DryRun,
                format!("would stop{mask} {}", s.units.join(", ")),
                None,
            );
        }
        let budget = s.timeout + Duration::from_secs(15);
        let work = async {
            let systemd = systemd::Systemd::system().await?;
            let mut done = Vec::new();
            let mut failed = Vec::new();
            for unit in &s.units {
                match systemd.stop(unit, s.mask_units, s.timeout).await {
                    Ok(r) => done.push(r.to_string()),
                    Err(e) => failed.push(format!("{unit}: {e}")),
                }
            }
            Ok::<_, systemd::SystemdError>((done, failed))
        };
        match tokio::time::timeout(budget * s.units.len().max(1) as u32, work).await {
            Ok(Ok((done, failed))) if failed.is_empty() => (Outcome::Done, done.join("; "), None),
            Ok(Ok((done, failed))) => (
                Outcome::Failed,
                failed
                    .into_iter()
                    .chain(done)
                    .collect::<Vec<_>>()
                    .join("; "),
                None,
            ),
            Ok(Err(e)) => (Outcome::Failed, e.to_string(), None),
            Err(_) => (
                Outcome::Failed,
                format!("timed out after {budget:?} per unit"),
                None,
            ),
        }
    }

    async fn asg_unhealthy(&mut self, dry: bool) -> (Outcome, String, Option<SystemTime>) {
        if self.instance.is_none() {
            self.refresh_identity().await;
        }
        let Some(me) = self.instance.clone() else {
            return self.unknown(dry, "instance id unknown: IMDS never answered");
        };
        let a = self.rem().asg_unhealthy.clone();
        let region = a.region.clone().unwrap_or_else(|| me.region.clone());
        let work = async {
            let asg = aws::AutoScaling::new(self.rem(), &region).await;
            let Some(fleet) = asg.fleet(&me).await? else {
                return Ok((
                    Outcome::Skipped,
                    format!("instance {} is in no Auto Scaling group", me.instance_id),
                    None,
                ));
            };
            let view = format!(
                "group {}: {} of {} other instances unhealthy or not InService ({:.0}%, limit {}%)",
                fleet.group,
                fleet.out_of_service,
                fleet.total.saturating_sub(1),
                fleet.percent_out(),
                a.fleet_max_unhealthy_percent
            );
            if fleet.me_unhealthy && !dry {
                return Ok((
                    Outcome::Done,
                    format!(
                        "instance {} is already Unhealthy (not sent again); {view}",
                        me.instance_id
                    ),
                    None,
                ));
            }
            let hold = fleet.percent_out() > a.fleet_max_unhealthy_percent;
            if dry {
                let verdict = if hold {
                    "the fleet breaker would hold back"
                } else {
                    "would set"
                };
                return Ok((
                    Outcome::DryRun,
                    format!("{verdict} instance {} Unhealthy; {view}", me.instance_id),
                    None,
                ));
            }
            if hold {
                return Ok((
                    Outcome::HeldByBreaker,
                    format!("not setting instance {} Unhealthy; {view}", me.instance_id),
                    Some(SystemTime::now() + a.breaker_retry),
                ));
            }
            asg.set_unhealthy(&me, a.respect_grace_period).await?;
            Ok::<_, aws::AwsError>((
                Outcome::Done,
                format!("instance {} set Unhealthy; {view}", me.instance_id),
                None,
            ))
        };
        match tokio::time::timeout(a.timeout, work).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => (Outcome::Failed, e.to_string(), None),
            Err(_) => (
                Outcome::Failed,
                format!("timed out after {:?}", a.timeout),
                None,
            ),
        }
    }

    async fn exec(&self, dry: bool, inc: &Incident) -> (Outcome, String, Option<SystemTime>) {
        let x = &self.rem().exec;
        if dry {
            return (
                Outcome::DryRun,
                format!("would run {:?} with the incident on stdin", x.command),
                None,
            );
        }
        let input = serde_json::to_vec(inc).unwrap_or_default();
        match exec::run(&x.command, &input, x.timeout).await {
            Ok(out) => (
                Outcome::Done,
                format!("{:?} succeeded: {out}", x.command),
                None,
            ),
            Err(e) => (Outcome::Failed, e.to_string(), None),
        }
    }

    /// Replaces the incident in the history, persists it and publishes the report.
    async fn put(&mut self, inc: Incident) {
        match self.store.incidents.iter_mut().find(|i| i.id == inc.id) {
            Some(slot) => *slot = inc,
            None => self.store.incidents.push(inc),
        }
        match self.store.save().await {
            Ok(()) => self.store_problem = None,
            Err(e) => {
                // The ladder goes on from memory; /status and the metric say it is not kept.
                error!(error = %e, "cannot persist the incident history; the ladder goes on without it");
                self.shared
                    .metrics
                    .remediation_state_write_failures
                    .get_or_create(&metrics::OutcomeLabels {
                        outcome: e.outcome().to_owned(),
                    })
                    .inc();
                self.store_problem = Some(format!("incident history not persisted: {e}"));
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let mut problems = self.identity_problems.clone();
        problems.extend(self.placement_problem.clone());
        problems.extend(self.store_problem.clone());
        let skip = self.store.incidents.len().saturating_sub(REPORT_INCIDENTS);
        let report = Report {
            dry_run: self.cfg.dry_run,
            actions: self.rem().actions.iter().map(|a| a.name()).collect(),
            hold_down: self.rem().hold_down,
            max_per_hour: self.rem().max_per_hour,
            state_file: self.store.path().display().to_string(),
            instance: self.instance.clone(),
            ecs: self.ecs.clone(),
            problems,
            incidents: self.store.incidents[skip..].to_vec(),
        };
        self.shared.set_remediation(&report);
    }
}

/// The history must outlive the storage the agent watches: a state dir on the same mount as a
/// critical watch is reported (the ladder still runs; its writes have timeouts).
fn state_dir_on_watched_storage(cfg: &Config) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounts = crate::topology::parse_mountinfo(&text).ok()?;
    let dir = &cfg.remediate.state_dir;
    let state = crate::topology::mount_for_path(&mounts, dir)?;
    let watch = cfg.watch.iter().filter(|w| w.critical).find(|w| {
        crate::topology::mount_for_path(&mounts, &w.path).is_some_and(|m| {
            m.mount_id == state.mount_id && m.mount_point != std::path::Path::new("/")
        })
    })?;
    let problem = format!(
        "remediate.state_dir {} is on the watched mount {} (critical watch {}); put it on the root filesystem",
        dir.display(),
        state.mount_point.display(),
        watch.path.display()
    );
    warn!("{problem}");
    Some(problem)
}

#[cfg(test)]
mod tests {
    //! The incident state machine and its rails, on synthetic statuses and a real state dir.
    //! The only action is `exec` (a real process); the AWS and systemd actions are exercised by
    //! tests/tests/remediate.rs (moto) and the systemd client's tests.

    use std::path::Path;

    use super::*;
    use crate::{
        health::{Reason, Signal},
        publish::metrics::Metrics,
        publish::status::TargetStatus,
    };

    fn config(state: &Path, out: &Path, hold_down: &str, max_per_hour: u32) -> Arc<Config> {
        let text = format!(
            r#"dry_run = false
[remediate]
actions = ["exec"]
hold_down = "{hold_down}"
max_per_hour = {max_per_hour}
state_dir = "{}"
[remediate.exec]
command = ["/bin/sh", "-c", "cat >> {}"]
"#,
            state.display(),
            out.display()
        );
        Arc::new(Config::from_toml(&text, "test").expect("config"))
    }

    fn status(shared: &Shared, failed: bool) -> Status {
        let mut s = (*shared.status()).clone();
        s.targets = vec![TargetStatus {
            kind: "mount",
            id: "/var/lib/docker".into(),
            device: Some("259:1".into()),
            fstype: Some("xfs".into()),
            critical: true,
            state: if failed {
                State::Failed
            } else {
                State::Healthy
            },
            since: SystemTime::now(),
            reasons: if failed {
                vec![Reason {
                    signal: Signal::XfsShutdown,
                    detail: "test".into(),
                    at: SystemTime::now(),
                }]
            } else {
                Vec::new()
            },
        }];
        s
    }

    struct Bed {
        dir: tempfile::TempDir,
        shared: Arc<Shared>,
    }

    impl Bed {
        fn new() -> Bed {
            Bed {
                dir: tempfile::tempdir().unwrap(),
                shared: Arc::new(Shared::new(Metrics::new(), SystemTime::now(), false)),
            }
        }
        fn out(&self) -> std::path::PathBuf {
            self.dir.path().join("exec.out")
        }
        fn remedy(&self, hold_down: &str, max: u32) -> Remedy {
            let cfg = config(&self.dir.path().join("state"), &self.out(), hold_down, max);
            Remedy::new(cfg, Arc::clone(&self.shared)).unwrap()
        }
        fn runs(&self) -> usize {
            std::fs::read_to_string(self.out())
                .unwrap_or_default()
                .matches("\"hostname\"")
                .count()
        }
        fn metric(&self, action: &str, outcome: &str) -> u64 {
            self.shared
                .metrics
                .remediations
                .get_or_create(&metrics::ActionLabels {
                    action: action.into(),
                    outcome: outcome.into(),
                })
                .get()
        }
    }

    fn phase(r: &mut Remedy) -> Phase {
        r.store
            .incidents
            .last()
            .map(|i| i.phase)
            .expect("an incident")
    }

    const S: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn recovery_before_hold_down_cancels_the_incident() {
        let bed = Bed::new();
        let mut r = bed.remedy("10s", 2);
        let t0 = SystemTime::now();
        r.evaluate(&status(&bed.shared, true), t0).await;
        assert_eq!(phase(&mut r), Phase::Pending);
        r.evaluate(&status(&bed.shared, true), t0 + 5 * S).await;
        assert_eq!(phase(&mut r), Phase::Pending);
        r.evaluate(&status(&bed.shared, false), t0 + 6 * S).await;
        assert_eq!(phase(&mut r), Phase::Cancelled);
        assert_eq!(bed.runs(), 0);
        // Still failed later: a new incident, not the cancelled one.
        r.evaluate(&status(&bed.shared, true), t0 + 7 * S).await;
        assert_eq!(r.store.incidents.len(), 2);
    }

    #[tokio::test]
    async fn the_ladder_runs_once_per_incident() {
        let bed = Bed::new();
        let mut r = bed.remedy("1s", 2);
        let t0 = SystemTime::now();
        r.evaluate(&status(&bed.shared, true), t0).await;
        assert_eq!(bed.runs(), 0);
        r.evaluate(&status(&bed.shared, true), t0 + 2 * S).await;
        assert_eq!(phase(&mut r), Phase::Done);
        assert_eq!(bed.runs(), 1);
        for i in 3..10 {
            r.evaluate(&status(&bed.shared, true), t0 + i * S).await;
        }
        assert_eq!(bed.runs(), 1);
        assert_eq!(bed.metric("exec", "done"), 1);
        let report = bed.shared.remediation().unwrap();
        assert_eq!(report["incidents"].as_array().unwrap().len(), 1);
        assert_eq!(report["incidents"][0]["steps"][0]["outcome"], "done");
    }

    #[tokio::test]
    async fn max_per_hour_holds_the_next_incident() {
        let bed = Bed::new();
        let mut r = bed.remedy("1s", 1);
        let t0 = SystemTime::now();
        r.evaluate(&status(&bed.shared, true), t0).await;
        r.evaluate(&status(&bed.shared, true), t0 + 2 * S).await;
        assert_eq!(bed.runs(), 1);
        // Healthy for hold_down: resolved.
        r.evaluate(&status(&bed.shared, false), t0 + 3 * S).await;
        r.evaluate(&status(&bed.shared, false), t0 + 5 * S).await;
        assert_eq!(phase(&mut r), Phase::Resolved);
        // A second incident within the hour waits.
        r.evaluate(&status(&bed.shared, true), t0 + 6 * S).await;
        r.evaluate(&status(&bed.shared, true), t0 + 8 * S).await;
        assert_eq!(phase(&mut r), Phase::RateLimited);
        assert_eq!(bed.runs(), 1);
        assert_eq!(bed.metric("ladder", "rate_limited"), 1);
    }

    #[tokio::test]
    async fn a_restart_neither_repeats_nor_forgets() {
        let bed = Bed::new();
        let t0 = SystemTime::now();
        {
            let mut r = bed.remedy("1s", 2);
            r.evaluate(&status(&bed.shared, true), t0).await;
            r.evaluate(&status(&bed.shared, true), t0 + 2 * S).await;
            assert_eq!(bed.runs(), 1);
        }
        let mut r = bed.remedy("1s", 2);
        assert_eq!(phase(&mut r), Phase::Done);
        // A fresh engine may look healthy before it has seen the failure again: not resolved yet.
        r.evaluate(&status(&bed.shared, false), t0 + 3 * S).await;
        assert_eq!(phase(&mut r), Phase::Done);
        r.evaluate(&status(&bed.shared, true), t0 + 4 * S).await;
        r.evaluate(&status(&bed.shared, true), t0 + 9 * S).await;
        assert_eq!(phase(&mut r), Phase::Done);
        assert_eq!(bed.runs(), 1);
        assert_eq!(r.store.incidents.len(), 1);
    }

    #[tokio::test]
    async fn a_step_interrupted_by_a_crash_resumes_once() {
        let bed = Bed::new();
        let t0 = SystemTime::now();
        {
            let mut r = bed.remedy("1s", 2);
            r.evaluate(&status(&bed.shared, true), t0).await;
            // What a crash in the middle of the exec step leaves behind.
            let mut inc = r.store.open_incident().cloned().unwrap();
            inc.phase = Phase::Running;
            inc.ladder_started_at = Some(t0 + S);
            inc.steps.push(Step {
                action: Action::Exec,
                outcome: Outcome::Started,
                detail: String::new(),
                attempts: 1,
                started_at: t0 + S,
                finished_at: None,
                retry_at: None,
            });
            r.put(inc).await;
        }
        let mut r = bed.remedy("1s", 2);
        r.evaluate(&status(&bed.shared, true), t0 + 3 * S).await;
        assert_eq!(phase(&mut r), Phase::Done);
        let step = r.store.incidents[0].step(Action::Exec).unwrap().clone();
        assert_eq!(step.outcome, Outcome::Done);
        assert_eq!(step.attempts, 2);
        assert_eq!(bed.runs(), 1);
        // The rerun can tell: its stdin shows the step started before, attempt 2.
        let stdin = std::fs::read_to_string(bed.out()).unwrap();
        assert!(
            stdin.contains(r#""action":"exec","outcome":"started","detail":"","attempts":2"#),
            "{stdin}"
        );
    }

    #[tokio::test]
    async fn dry_run_records_and_acts_on_nothing() {
        let bed = Bed::new();
        let mut cfg = (*config(&bed.dir.path().join("state"), &bed.out(), "0s", 2)).clone();
        cfg.dry_run = true;
        let mut r = Remedy::new(Arc::new(cfg), Arc::clone(&bed.shared)).unwrap();
        let t0 = SystemTime::now();
        r.evaluate(&status(&bed.shared, true), t0).await;
        r.evaluate(&status(&bed.shared, true), t0 + S).await;
        assert_eq!(phase(&mut r), Phase::Done);
        assert_eq!(r.store.incidents[0].steps[0].outcome, Outcome::DryRun);
        assert!(r.store.incidents[0].dry_run);
        assert_eq!(bed.runs(), 0);
        assert_eq!(bed.metric("exec", "dry_run"), 1);
    }

    #[tokio::test]
    async fn an_unusable_state_dir_is_reported_not_fatal() {
        let bed = Bed::new();
        let file = bed.dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let cfg = config(&file.join("state"), &bed.out(), "1s", 2);
        let Err(e) = Remedy::open(Arc::clone(&cfg), Arc::clone(&bed.shared)).await else {
            panic!("a state dir under a file opened")
        };
        assert!(e.contains("state directory"), "{e}");
        let report = Remedy::unavailable(&cfg, e);
        assert!(
            report.problems[0].starts_with("remediation unavailable"),
            "{:?}",
            report.problems
        );
    }
}
