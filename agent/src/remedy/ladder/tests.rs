//! The ladder's tests: the incident state machine and its rails, on synthetic statuses and a
//! real state dir. The only action is `exec` (a real process); the AWS and systemd actions are
//! exercised by tests/tests/remediate.rs (moto) and the systemd client's tests.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::{
    config::Action,
    health::{Reason, Signal},
    metrics::{self, Metrics},
    publish::status::TargetStatus,
};

pub(in crate::remedy) fn config(
    state: &Path,
    out: &Path,
    hold_down: &str,
    max_per_hour: u32,
) -> Arc<Config> {
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

pub(in crate::remedy) struct Bed {
    pub dir: tempfile::TempDir,
    pub shared: Arc<Shared>,
}

impl Bed {
    pub fn new() -> Bed {
        Bed {
            dir: tempfile::tempdir().unwrap(),
            shared: Arc::new(Shared::new(Metrics::new(), SystemTime::now(), false)),
        }
    }
    pub fn out(&self) -> std::path::PathBuf {
        self.dir.path().join("exec.out")
    }
    fn remedy(&self, hold_down: &str, max: u32) -> Ladder {
        let cfg = config(&self.dir.path().join("state"), &self.out(), hold_down, max);
        Ladder::open(cfg, Arc::clone(&self.shared)).unwrap()
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

fn phase(r: &mut Ladder) -> Phase {
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
            outcome: StepOutcome::Started,
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
    assert_eq!(step.outcome, StepOutcome::Done);
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
    let mut r = Ladder::open(Arc::new(cfg), Arc::clone(&bed.shared)).unwrap();
    let t0 = SystemTime::now();
    r.evaluate(&status(&bed.shared, true), t0).await;
    r.evaluate(&status(&bed.shared, true), t0 + S).await;
    assert_eq!(phase(&mut r), Phase::Done);
    assert_eq!(r.store.incidents[0].steps[0].outcome, StepOutcome::DryRun);
    assert!(r.store.incidents[0].dry_run);
    assert_eq!(bed.runs(), 0);
    assert_eq!(bed.metric("exec", "dry_run"), 1);
}
