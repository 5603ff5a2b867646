//! Where each change of the ladder goes: the incident history on disk, the report in
//! `/status`, the budget's hold for `/healthz`, and the remediation metrics.

use tracing::error;

use super::fleet;
use super::incident::Incident;
use super::ladder::Ladder;
use super::report::RemediationReport;
use crate::metrics;

impl Ladder {
    pub(super) fn count(&self, action: &str, outcome_label: &str) {
        self.shared
            .metrics
            .remediations
            .get_or_create(&metrics::ActionLabels {
                action: action.to_owned(),
                outcome: outcome_label.to_owned(),
            })
            .inc();
    }

    /// Replaces the incident in the history, persists it and publishes the report.
    pub(super) async fn put(&mut self, inc: Incident) {
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

    /// Publishes the report: settings, identities, problems and the newest incidents.
    pub(super) fn publish(&self) {
        let mut problems = self.identity.problems.clone();
        problems.extend(self.placement_problem.clone());
        problems.extend(self.store_problem.clone());
        let mut report = RemediationReport::running(
            &self.cfg,
            self.store.path().display().to_string(),
            &self.identity,
            problems,
            &self.store.incidents,
        );
        report.fleet = self.budget.as_ref().map(|b| b.report().clone());
        self.shared.set_remediation(&report);
        self.publish_healthz();
    }

    /// What `/healthz` must know of the budget, and the fleet gauges.
    pub(super) fn publish_healthz(&self) {
        let m = &self.shared.metrics;
        let Some(b) = &self.budget else {
            self.shared.set_healthz_hold(None);
            return;
        };
        let r = b.report();
        m.fleet_lease_held.set(i64::from(r.lease_held));
        m.fleet_outage.set(i64::from(r.outage));
        m.fleet_unavailable
            .set(i64::from(r.state == fleet::report::FleetState::Unavailable));
        // A dry run takes no lease: /healthz answers as without a table.
        let hold = if self.cfg.dry_run {
            None
        } else {
            b.healthz_hold()
        };
        self.shared.set_healthz_hold(hold);
    }
}
