//! Fleet safety: whether this host may take itself out of service now.
//!
//! With `[remediate.fleet] table`, a shared budget in DynamoDB: before the first ladder step the
//! host must hold a lease of its Auto Scaling group's budget (at most
//! `max(1, floor(max_out_of_service_percent × size))` at once), it records its failure so a
//! fleet-wide outage (more than `outage_percent` failing) holds every new host back, and it
//! renews both while its incident is open and gives them back when it resolves. Without a
//! table, the Auto Scaling breaker (`breaker`) gates the ladder, best effort. Whatever the
//! table answers wrong (unreachable, throttled, denied, missing, malformed), the host does not
//! act and says why. Depends on `config`, the remedy's `identity` and `steps::aws`.

pub mod breaker;
pub mod ledger;
pub mod report;
pub mod table;

use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use self::ledger::{Failure, Ledger, Limits, Verdict};
use self::report::{FleetReport, FleetState};
use self::table::{Item, Table};
use super::identity::{Identity, Instance};
use super::steps::aws;
use crate::config::Remediate;

/// Errors back off from `retry` up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The gate's answer for the ladder.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// Go on with the steps; the detail says on what grounds.
    Go(String),
    /// Hold every step until `retry_at`.
    Wait {
        detail: String,
        retry_at: SystemTime,
    },
}

/// A time in `[base/2, 3·base/2]`, so held hosts do not all ask again at once.
pub fn jittered(now: SystemTime, base: Duration) -> SystemTime {
    let ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(2);
    now + Duration::from_millis(ms / 2 + fastrand::u64(0..=ms))
}

pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// The shared budget as this host uses it.
pub struct Budget {
    report: FleetReport,
    /// The group's name and size as last looked up.
    group: Option<(String, usize)>,
    /// When the failure record and lease were last written; `None`: not recorded.
    renewed_at: Option<SystemTime>,
    /// After an error, nothing is tried before this.
    not_before: Option<SystemTime>,
    errors: u32,
}

impl Budget {
    /// `None` when no table is configured.
    pub fn new(rem: &Remediate) -> Option<Budget> {
        rem.fleet.enabled().then(|| Budget {
            report: FleetReport::new(&rem.fleet.table),
            group: None,
            renewed_at: None,
            not_before: None,
            errors: 0,
        })
    }

    pub fn report(&self) -> &FleetReport {
        &self.report
    }

    /// Why `/healthz` must not answer 503 while this host is failing: it holds no lease.
    pub fn healthz_hold(&self) -> Option<String> {
        (!self.report.lease_held).then(|| {
            let d = &self.report.detail;
            if d.is_empty() {
                format!("no out-of-service lease held (table {})", self.report.table)
            } else {
                format!("no out-of-service lease held: {d}")
            }
        })
    }

    fn backing_off(&self, now: SystemTime) -> bool {
        self.not_before.is_some_and(|t| now < t)
    }

    /// Records a failure of the machinery: state `unavailable`, backoff, one log line per
    /// different problem.
    fn unavailable(&mut self, rem: &Remediate, problem: String, now: SystemTime) -> SystemTime {
        self.errors = self.errors.saturating_add(1);
        let base = rem
            .fleet
            .retry
            .saturating_mul(1 << self.errors.min(8))
            .min(MAX_BACKOFF);
        let at = jittered(now, base);
        self.not_before = Some(at);
        if self.report.problem.as_deref() != Some(problem.as_str()) {
            warn!(problem = %problem, "fleet budget unavailable: this host does not act until it answers");
        }
        self.report.problem = Some(problem.clone());
        self.set_state(FleetState::Unavailable, problem);
        at
    }

    fn set_state(&mut self, state: FleetState, detail: String) {
        if state != self.report.state {
            info!(from = self.report.state.name(), to = state.name(), detail = %detail, "fleet budget state changed");
        }
        self.report.state = state;
        self.report.detail = detail;
    }

    fn ok(&mut self) {
        self.errors = 0;
        self.not_before = None;
        self.report.problem = None;
    }

    /// [`Budget::whoami`], reusing the group already looked up: renewals and the release do
    /// not ask Auto Scaling again (acquire does, since the group's size sets the budget).
    async fn known_whoami(
        &mut self,
        rem: &Remediate,
        identity: &mut Identity,
    ) -> Result<(Instance, String, usize), String> {
        match (identity.instance.clone(), self.group.clone()) {
            (Some(me), Some((group, size))) => Ok((me, group, size)),
            _ => self.whoami(rem, identity).await,
        }
    }

    /// This host's identity and group, or why they are unknown.
    async fn whoami(
        &mut self,
        rem: &Remediate,
        identity: &mut Identity,
    ) -> Result<(Instance, String, usize), String> {
        if identity.instance.is_none() {
            identity.refresh(rem).await;
        }
        let Some(me) = identity.instance.clone() else {
            return Err(format!(
                "instance identity unknown ({})",
                identity.problems.join("; ")
            ));
        };
        let region = rem
            .asg_unhealthy
            .region
            .clone()
            .unwrap_or_else(|| me.region.clone());
        let asg = aws::AutoScaling::new(rem, &region).await;
        let looked = tokio::time::timeout(rem.asg_unhealthy.timeout, asg.fleet(&me)).await;
        let (group, size) = match looked {
            Ok(Ok(Some(f))) => (f.group, f.total.max(1)),
            // A host in no group is a group of one.
            Ok(Ok(None)) => (format!("instance/{}", me.instance_id), 1),
            Ok(Err(e)) => return Err(format!("the group is unknown: {e}")),
            Err(_) => {
                return Err(format!(
                    "the group is unknown: Auto Scaling did not answer within {:?}",
                    rem.asg_unhealthy.timeout
                ));
            }
        };
        self.group = Some((group.clone(), size));
        self.report.group = Some(group.clone());
        self.report.group_size = Some(size);
        self.report.budget = Some(rem.fleet.budget(size));
        Ok((me, group, size))
    }

    fn limits(rem: &Remediate, size: usize) -> Limits {
        Limits {
            size,
            budget: rem.fleet.budget(size),
            outage_percent: rem.fleet.outage_percent,
            lease_ms: u64::try_from(rem.fleet.lease.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Refreshes what /status shows from an item as read or written.
    fn view(&mut self, rem: &Remediate, me: &str, item: &Item, size: usize, now: SystemTime) {
        let live = item.ledger.live(millis(now));
        let lim = Self::limits(rem, size);
        let failing_percent = lim.failing_percent(live.failing.len());
        self.report.show(
            &live,
            me,
            failing_percent,
            failing_percent > lim.outage_percent,
            now,
        );
    }

    /// Records this host's failure, and renews its lease if it holds one, every `lease/3`
    /// while the incident is open. Not in a dry run (which writes nothing).
    pub async fn keep_failing(
        &mut self,
        rem: &Remediate,
        identity: &mut Identity,
        (signal, target, since): (String, String, SystemTime),
        dry: bool,
        now: SystemTime,
    ) {
        let due = self
            .renewed_at
            .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= rem.fleet.lease / 3);
        if dry || !due || self.backing_off(now) {
            return;
        }
        let (me, group, size) = match self.known_whoami(rem, identity).await {
            Ok(w) => w,
            Err(e) => {
                self.unavailable(rem, e, now);
                return;
            }
        };
        let table = Table::new(rem, &me.region).await;
        let failure = Failure {
            signal,
            target,
            since_ms: millis(since),
            expires_ms: 0,
        };
        let lease_ms = Self::limits(rem, size).lease_ms;
        let now_ms = millis(now);
        let r = table
            .update(&group, |seen| {
                let (holds, next) =
                    seen.ledger
                        .record(&me.instance_id, failure.clone(), now_ms, lease_ms);
                (holds, Some(next))
            })
            .await;
        match r {
            Ok((holds, item)) => {
                self.ok();
                if self.renewed_at.is_none() {
                    info!(group = %group, table = %rem.fleet.table, "failure recorded in the fleet budget");
                }
                self.renewed_at = Some(now);
                self.view(rem, &me.instance_id, &item, size, now);
                if holds {
                    self.set_state(FleetState::Holding, "holds an out-of-service lease".into());
                } else if self.report.state == FleetState::Unavailable
                    || self.report.state == FleetState::Idle
                {
                    self.set_state(
                        FleetState::Failing,
                        "failure recorded; no lease asked yet".into(),
                    );
                }
            }
            Err(e) => {
                self.unavailable(rem, e.to_string(), now);
            }
        }
    }

    /// Asks for a lease before the ladder's first out-of-service step.
    pub async fn acquire(
        &mut self,
        rem: &Remediate,
        identity: &mut Identity,
        reason: &str,
        dry: bool,
        now: SystemTime,
    ) -> Gate {
        if let Some(at) = self.not_before.filter(|t| now < *t) {
            let detail = self.report.problem.clone().unwrap_or_default();
            return Gate::Wait {
                detail: format!("fleet budget unavailable: {detail}"),
                retry_at: at,
            };
        }
        let (me, group, size) = match self.whoami(rem, identity).await {
            Ok(w) => w,
            Err(e) => {
                let at = self.unavailable(rem, e.clone(), now);
                return Gate::Wait {
                    detail: format!("fleet budget unavailable: {e}"),
                    retry_at: at,
                };
            }
        };
        let table = Table::new(rem, &me.region).await;
        let lim = Self::limits(rem, size);
        let now_ms = millis(now);
        let r = if dry {
            table.read(&group).await.map(|item| {
                let (v, _) = item.ledger.acquire(&me.instance_id, reason, now_ms, lim);
                (v, item)
            })
        } else {
            table
                .update(&group, |seen| {
                    seen.ledger.acquire(&me.instance_id, reason, now_ms, lim)
                })
                .await
        };
        let (verdict, item) = match r {
            Ok(v) => v,
            Err(e) => {
                let at = self.unavailable(rem, e.to_string(), now);
                return Gate::Wait {
                    detail: format!("fleet budget unavailable: {e}"),
                    retry_at: at,
                };
            }
        };
        self.ok();
        self.view(rem, &me.instance_id, &item, size, now);
        let live = item.ledger.live(now_ms);
        let detail = describe(&verdict, &live, lim, &group);
        let would = if dry { "dry run: would go on: " } else { "" };
        match verdict {
            Verdict::Granted { kept } => {
                if !dry {
                    self.renewed_at = Some(now);
                    self.set_state(FleetState::Holding, detail.clone());
                    if !kept {
                        warn!(group = %group, table = %rem.fleet.table, "out-of-service lease acquired: this host goes out of service");
                    }
                }
                Gate::Go(format!("{would}{detail}"))
            }
            Verdict::Full { .. } | Verdict::Outage { .. } => {
                let state = if matches!(verdict, Verdict::Outage { .. }) {
                    FleetState::Outage
                } else {
                    FleetState::Held
                };
                self.set_state(state, detail.clone());
                if dry {
                    return Gate::Go(format!("dry run: would be held: {detail}"));
                }
                Gate::Wait {
                    detail,
                    retry_at: jittered(now, rem.fleet.retry),
                }
            }
        }
    }

    /// Gives the lease and the failure record back: the host's storage recovered.
    pub async fn release(
        &mut self,
        rem: &Remediate,
        identity: &mut Identity,
        dry: bool,
        now: SystemTime,
    ) {
        if dry || !self.owes_release() {
            self.set_state(FleetState::Idle, String::new());
            return;
        }
        if self.backing_off(now) {
            return;
        }
        let (me, group, size) = match self.known_whoami(rem, identity).await {
            Ok(w) => w,
            Err(e) => {
                // The lease expires on its own after `lease`.
                self.unavailable(rem, format!("cannot give the lease back: {e}"), now);
                return;
            }
        };
        let table = Table::new(rem, &me.region).await;
        let now_ms = millis(now);
        match table
            .update(&group, |seen| {
                ((), Some(seen.ledger.release(&me.instance_id, now_ms)))
            })
            .await
        {
            Ok(((), item)) => {
                self.ok();
                self.renewed_at = None;
                self.view(rem, &me.instance_id, &item, size, now);
                info!(group = %group, "storage recovered: out-of-service lease and failure record given back");
                self.set_state(FleetState::Idle, String::new());
            }
            Err(e) => {
                self.unavailable(rem, format!("cannot give the lease back: {e}"), now);
            }
        }
    }

    /// Still owes the table a release (a lease or failure record written and not given back).
    pub fn owes_release(&self) -> bool {
        self.renewed_at.is_some() || self.report.lease_held
    }
}

/// Why this host may or may not go out, in one line.
fn describe(v: &Verdict, live: &Ledger, lim: Limits, group: &str) -> String {
    let held = live.holders.len();
    match v {
        Verdict::Granted { kept: true } => {
            format!(
                "holds its lease of group {group} (kept from before; {held} of {} slots held)",
                lim.budget
            )
        }
        Verdict::Granted { kept: false } => {
            format!(
                "lease granted: {held} of {} slots of group {group} held",
                lim.budget
            )
        }
        Verdict::Full { holders } => format!(
            "held by the budget: {held} of {} slots of group {group} (size {}) held by {}",
            lim.budget,
            lim.size,
            holders.join(", ")
        ),
        Verdict::Outage { failing } => format!(
            "fleet_outage: {failing} of {} instances of group {group} failing ({:.0}% > outage_percent {}%): replacing hosts would not fix it, no new host goes out",
            lim.size,
            lim.failing_percent(*failing),
            lim.outage_percent
        ),
    }
}
