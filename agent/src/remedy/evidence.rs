//! The incident's evidence: the ladder asks for a bundle when an incident opens, and again when
//! its ladder runs if the failure changed since. The capture and the write run on a blocking
//! thread; the ladder does not wait for the first, and waits at most [`LADDER_WAIT`] for the
//! second. While one is still running (a hung state disk), no other starts.
//! Depends on `evidence` and the remedy's `ladder` and `incident`.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tracing::{info, warn};

use super::incident::{FailedTarget, Incident};
use super::ladder::Ladder;
use crate::evidence::{self, Sources, files};

/// How long the ladder waits for a recapture before its steps run (the capture's budget and
/// a second for the write); the opening capture is never waited for.
const LADDER_WAIT: Duration = Duration::from_secs(3);

/// What the ladder keeps about evidence.
pub struct Keeper {
    sources: Sources,
    dir: PathBuf,
    busy: Arc<AtomicBool>,
    /// The incident and failure the last bundle was captured for.
    last: Option<(String, Vec<String>)>,
}

impl Keeper {
    pub fn new(sources: Sources, state_dir: &std::path::Path) -> Keeper {
        Keeper {
            sources,
            dir: files::dir(state_dir),
            busy: Arc::new(AtomicBool::new(false)),
            last: None,
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// What identifies a failure: each target with the signals of its reasons.
fn signature(targets: &[FailedTarget]) -> Vec<String> {
    let mut sig: Vec<String> = targets
        .iter()
        .map(|t| {
            let mut signals: Vec<&str> = t
                .reasons
                .iter()
                .map(|r| r.split(':').next().unwrap_or_default())
                .collect();
            signals.sort_unstable();
            format!("{} {} {}", t.kind, t.id, signals.join(","))
        })
        .collect();
    sig.sort();
    sig
}

impl Ladder {
    /// Captures the incident's evidence (`trigger`: `opened` or `ladder`) and records the
    /// bundle's path in it. A `ladder` capture is skipped when the failure has not changed.
    pub(super) async fn capture_evidence(&mut self, inc: &mut Incident, trigger: &'static str) {
        let sig = signature(&inc.targets);
        let seen = self.evidence.last.as_ref() == Some(&(inc.id.clone(), sig.clone()));
        // After a restart the first capture is known from the incident itself.
        let restored = self.evidence.last.is_none() && inc.evidence.is_some();
        if trigger == "ladder" && (seen || restored) {
            return;
        }
        if self.evidence.busy.swap(true, Ordering::SeqCst) {
            warn!(incident = %inc.id, "incident evidence not captured: an earlier capture has not finished (state directory hanging?)");
            return;
        }
        self.evidence.last = Some((inc.id.clone(), sig));
        let req = evidence::Request {
            incident: inc.id.clone(),
            trigger,
            status: self.status(),
            config: Arc::clone(&self.cfg),
            failed: inc
                .targets
                .iter()
                .map(|t| (t.kind.clone(), t.id.clone()))
                .collect(),
            hostname: self.hostname.clone(),
            identity: serde_json::json!({
                "instance": self.identity.instance,
                "ecs": self.identity.ecs,
            }),
            earlier: None,
        };
        let sources = self.evidence.sources.clone();
        let dir = self.evidence.dir.clone();
        let busy = Arc::clone(&self.evidence.busy);
        let shared = Arc::clone(&self.shared);
        let add_to_earlier = inc.evidence.is_some();
        let path = match files::path(&dir, &inc.id) {
            Ok(p) => p,
            Err(e) => {
                busy.store(false, Ordering::SeqCst);
                warn!(incident = %inc.id, error = %e, "incident evidence not kept");
                count(&self.shared, "failed");
                return;
            }
        };
        let id = inc.id.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut req = req;
            if add_to_earlier {
                req.earlier = files::read(&dir, &req.incident).ok();
            }
            let r = evidence::capture_and_write(&sources, req, &dir);
            busy.store(false, Ordering::SeqCst);
            let outcome = match &r {
                Ok((b, path, size)) => {
                    let c = b.captures.last();
                    info!(
                        incident = %id,
                        bundle = %path.display(),
                        bytes = size,
                        trigger,
                        capture_ms = c.map_or(0, |c| c.capture_ms),
                        tasks = c.map_or(0, |c| c.tasks.len()),
                        unreadable = ?c.map(|c| c.unreadable.iter().map(|u| u.source.as_str()).collect::<Vec<_>>()),
                        "incident evidence captured"
                    );
                    "captured"
                }
                Err(e) => {
                    warn!(incident = %id, error = %e, "incident evidence not kept");
                    "failed"
                }
            };
            count(&shared, outcome);
            r.is_ok()
        });
        // Where the bundle goes is known before it is written: the incident names it now.
        inc.evidence = Some(path.display().to_string());
        if trigger != "ladder" {
            // The opening capture never delays the ladder (its disk may hang).
            return;
        }
        // Before the steps run: `exec` gets the bundle's path, so it should be there.
        if tokio::time::timeout(LADDER_WAIT, task).await.is_err() {
            warn!(incident = %inc.id, timeout = ?LADDER_WAIT, "incident evidence still being written; the ladder goes on");
            count(&self.shared, "timeout");
        }
    }
}

fn count(shared: &crate::publish::shared::Shared, outcome: &str) {
    shared
        .metrics
        .evidence_captures
        .get_or_create(&crate::metrics::OutcomeLabels {
            outcome: outcome.to_owned(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, reasons: &[&str]) -> FailedTarget {
        FailedTarget {
            kind: "mount".into(),
            id: id.into(),
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn a_failure_changes_with_its_targets_and_signals_not_their_details() {
        let a = signature(&[t("/data", &["io_stall: 3 requests for 31s"])]);
        let same = signature(&[t("/data", &["io_stall: 3 requests for 45s"])]);
        let more = signature(&[t("/data", &["io_stall: x", "fs_shutdown: y"])]);
        let other = signature(&[t("/data", &["io_stall: x"]), t("/b", &["io_stall: x"])]);
        assert_eq!(a, same);
        assert_ne!(a, more);
        assert_ne!(a, other);
    }
}
