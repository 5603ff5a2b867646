//! Per-target state series for alerting, derived from each published status:
//! `bindsto_target_healthy`, `bindsto_healthy` (what /healthz answers),
//! `bindsto_target_failed` and `bindsto_target_reason{signal}`. `bindsto_target_healthy` alone
//! cannot tell degraded from failed, nor a stall from a shutdown; alert rules need both.
//! Series of targets or reasons that went away (or whose labels changed, e.g. `critical`)
//! are removed, so a cleared stall is not left at 1.

use std::collections::BTreeMap;

use crate::{
    health::State,
    metrics::series::LiveSeries,
    metrics::{Metrics, ReasonLabels, TargetLabels, target_labels},
    publish::status::TargetStatus,
};

#[derive(Default)]
pub struct TargetSeries {
    targets: LiveSeries<TargetLabels>,
    reasons: LiveSeries<ReasonLabels>,
}

impl TargetSeries {
    pub fn update(&mut self, metrics: &Metrics, healthy: bool, targets: &[TargetStatus]) {
        metrics.healthy.set(i64::from(healthy));
        let mut live = BTreeMap::new();
        let mut reasons = BTreeMap::new();
        for t in targets {
            let labels = target_labels(t.kind, &t.id, t.critical);
            metrics
                .target_healthy
                .get_or_create(&labels)
                .set(i64::from(t.state == State::Healthy));
            metrics
                .target_failed
                .get_or_create(&labels)
                .set(i64::from(t.state == State::Failed));
            for r in &t.reasons {
                let rl = ReasonLabels {
                    kind: labels.kind.clone(),
                    target: labels.target.clone(),
                    critical: labels.critical.clone(),
                    signal: r.signal.name().to_string(),
                };
                metrics.target_reason.get_or_create(&rl).set(1);
                reasons.insert(rl, ());
            }
            live.insert(labels, ());
        }
        self.targets.replace(live, |gone| {
            metrics.target_healthy.remove(gone);
            metrics.target_failed.remove(gone);
        });
        self.reasons.replace(reasons, |gone| {
            metrics.target_reason.remove(gone);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::health::{Reason, Signal};

    fn target(state: State, reasons: &[Signal]) -> TargetStatus {
        TargetStatus {
            kind: "mount",
            id: "/x".into(),
            device: None,
            fstype: None,
            critical: true,
            state,
            since: SystemTime::now(),
            reasons: reasons
                .iter()
                .map(|&signal| Reason {
                    signal,
                    detail: String::new(),
                    at: SystemTime::now(),
                })
                .collect(),
        }
    }

    #[test]
    fn reasons_appear_and_clear() {
        let m = Metrics::new();
        let mut s = TargetSeries::default();
        s.update(&m, false, &[target(State::Failed, &[Signal::IoStall])]);
        let text = m.encode();
        assert!(text.contains("bindsto_healthy 0"), "{text}");
        assert!(
            text.contains(
                "bindsto_target_failed{kind=\"mount\",target=\"/x\",critical=\"true\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("bindsto_target_reason{kind=\"mount\",target=\"/x\",critical=\"true\",signal=\"io_stall\"} 1"),
            "{text}"
        );
        s.update(&m, true, &[target(State::Healthy, &[])]);
        let text = m.encode();
        assert!(text.contains("bindsto_healthy 1"), "{text}");
        assert!(!text.contains("signal=\"io_stall\""), "{text}");
        assert!(
            text.contains(
                "bindsto_target_failed{kind=\"mount\",target=\"/x\",critical=\"true\"} 0"
            ),
            "{text}"
        );
        s.update(&m, true, &[]);
        assert!(!m.encode().contains("bindsto_target_failed{"));
    }
}
