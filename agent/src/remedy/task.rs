//! The remedy task: opens the ladder, then feeds it until the agent stops.
//!
//! It wakes on every published status, every config reload and a one-second tick (hold_down and
//! breaker retries are due by the clock), and refreshes the identities on their own schedule.
//! Depends on `config`, `publish` (the status it follows) and the remedy's `ladder`.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::watch;
use tracing::info;

use super::identity::{IDENTITY_REFRESH, IDENTITY_RETRY};
use super::ladder::Ladder;
use super::report::RemediationReport;
use super::store::{self, StoreError};
use crate::{config::Config, publish::shared::Shared};

/// How often the task looks at the clock without a status change (hold_down, retries).
const TICK: Duration = Duration::from_secs(1);
const STATE_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the remedy task could not start (shown in /status as "remediation unavailable: ...").
#[derive(Debug, thiserror::Error)]
pub enum RemedyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    #[error("state directory {} did not answer within {timeout:?}", .dir.display())]
    Timeout { dir: PathBuf, timeout: Duration },
}

pub struct Remedy {
    ladder: Ladder,
}

impl Remedy {
    /// Opens the state directory (see [`Ladder::open`]).
    pub fn new(
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        sources: crate::evidence::Sources,
    ) -> Result<Self, StoreError> {
        Ok(Remedy {
            ladder: Ladder::open_with(cfg, shared, sources)?,
        })
    }

    /// [`Remedy::new`] on a blocking thread under a timeout: opening the state directory must
    /// not hang the agent's start if the disk under it hangs.
    pub async fn open(
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        sources: crate::evidence::Sources,
    ) -> Result<Self, RemedyError> {
        let dir = cfg.remediate.state_dir.clone();
        let task = tokio::task::spawn_blocking(move || Remedy::new(cfg, shared, sources));
        match tokio::time::timeout(STATE_OPEN_TIMEOUT, task).await {
            Ok(r) => Ok(r??),
            Err(_) => Err(RemedyError::Timeout {
                dir,
                timeout: STATE_OPEN_TIMEOUT,
            }),
        }
    }

    /// What /status shows when the remediation task could not start.
    pub fn unavailable(cfg: &Config, problem: impl std::fmt::Display) -> RemediationReport {
        RemediationReport::settings(
            cfg,
            cfg.remediate
                .state_dir
                .join(store::FILE)
                .display()
                .to_string(),
            vec![format!("remediation unavailable: {problem}")],
        )
    }

    /// Runs until `stop` turns true, re-evaluating on every published status and every tick.
    pub async fn run(
        mut self,
        mut changes: watch::Receiver<u64>,
        mut config: watch::Receiver<Arc<Config>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let ladder = &mut self.ladder;
        if ladder.rem().actions.is_empty() {
            info!("remediation disabled (remediate.actions is empty)");
        }
        ladder.refresh_identity().await;
        ladder.publish();
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
                    if !ladder.identity_known() || last_refresh.elapsed() >= IDENTITY_REFRESH {
                        ladder.refresh_identity().await;
                        last_refresh = tokio::time::Instant::now();
                        ladder.publish();
                    }
                }
                r = config.changed() => {
                    if r.is_ok() {
                        let new = Arc::clone(&config.borrow_and_update());
                        ladder.reconfigure(new);
                    }
                }
                _ = stop.changed() => break,
            }
            let status = ladder.status();
            ladder.evaluate(&status, SystemTime::now()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remedy::ladder::tests::{Bed, config};

    #[tokio::test]
    async fn an_unusable_state_dir_is_reported_not_fatal() {
        let bed = Bed::new();
        let file = bed.dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let cfg = config(&file.join("state"), &bed.out(), "1s", 2);
        let Err(e) = Remedy::open(
            Arc::clone(&cfg),
            Arc::clone(&bed.shared),
            Default::default(),
        )
        .await
        else {
            panic!("a state dir under a file opened")
        };
        let e = e.to_string();
        assert!(e.contains("state directory"), "{e}");
        let report = Remedy::unavailable(&cfg, e);
        assert!(
            report.problems[0].starts_with("remediation unavailable"),
            "{:?}",
            report.problems
        );
    }
}
