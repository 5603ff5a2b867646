//! Where GameDay reads verdicts from: a running agent's `/status`, or an engine started in this
//! process (the same probes and engine as `bindsto run`, without HTTP) when none runs.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;

use super::{GamedayError, interrupted};
use crate::{
    api, config::Config, daemon::in_process, daemon::run, metrics::Metrics, publish::shared::Shared,
};

/// The in-process engine's thresholds: short, so a GameDay takes seconds, not minutes.
pub const SCAN: Duration = Duration::from_millis(250);
pub const STALL_AFTER: Duration = Duration::from_secs(3);
pub const BLOCKED_AFTER: Duration = Duration::from_secs(3);
pub const DEAD_AFTER: Duration = Duration::from_secs(2);
/// The canary interval, where a scenario turns the canary on.
pub const CANARY_EVERY: Duration = Duration::from_secs(1);
/// The mount check's timeout, which the canary shares.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a scenario keeps its fault for the agent's evidence capture.
const EVIDENCE_WAIT: Duration = Duration::from_secs(5);

/// True if an agent answers `/status` at `addr`.
pub fn agent_at(addr: SocketAddr) -> bool {
    matches!(
        api::client::get(addr, "/status", Duration::from_secs(1)),
        Ok((200, _))
    )
}

pub enum Observer {
    Agent(SocketAddr),
    InProcess(InProcess),
}

impl Observer {
    pub fn status(&self) -> Result<Value, GamedayError> {
        match self {
            Observer::Agent(addr) => {
                let (code, body) = api::client::get(*addr, "/status", Duration::from_secs(2))
                    .map_err(|e| GamedayError::Agent(format!("{addr}: {e}")))?;
                if code != 200 {
                    return Err(GamedayError::Agent(format!("{addr} answered HTTP {code}")));
                }
                serde_json::from_str(&body)
                    .map_err(|e| GamedayError::Agent(format!("{addr}: /status is not JSON: {e}")))
            }
            Observer::InProcess(p) => serde_json::to_value(&*p.shared.status())
                .map_err(|e| GamedayError::Agent(format!("in-process status: {e}"))),
        }
    }

    /// Whether thresholds are known (ours) or the running agent's own.
    pub fn thresholds_known(&self) -> bool {
        matches!(self, Observer::InProcess(_))
    }

    pub fn poll_interval(&self) -> Duration {
        match self {
            // A status read is an Arc clone: poll finely for precise latencies.
            Observer::InProcess(_) => Duration::from_millis(2),
            Observer::Agent(_) => Duration::from_millis(10),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Observer::Agent(a) => format!("running agent at {a}"),
            Observer::InProcess(_) => "in-process engine".to_string(),
        }
    }

    /// Polls until `pred` holds; returns when the status that satisfied it was read, and that
    /// status, or `None` after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Option<(Instant, Value)>, GamedayError> {
        let t0 = Instant::now();
        loop {
            if interrupted() {
                return Err(GamedayError::Interrupted);
            }
            // A transient HTTP error from a busy agent is not a verdict: keep polling.
            if let Ok(s) = self.status()
                && pred(&s)
            {
                return Ok(Some((Instant::now(), s)));
            }
            if t0.elapsed() >= timeout {
                return Ok(None);
            }
            std::thread::sleep(self.poll_interval());
        }
    }
}

impl Observer {
    /// Before a scenario releases its fault: waits, up to [`EVIDENCE_WAIT`], until the agent
    /// has written the evidence of an incident opened since `since`, so the bundle shows the
    /// fault (the hung task's stack, the parked requests) and not its recovery. Returns at
    /// once when the agent runs no remedy task; an agent that opens no incident (the target is
    /// not critical) costs the wait.
    pub fn await_evidence(&self, since: SystemTime) -> Result<(), GamedayError> {
        let since_ms = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut absent = false;
        self.wait_for(EVIDENCE_WAIT, |s| {
            let Some(incidents) = s["remediation"]["incidents"].as_array() else {
                absent = true;
                return true;
            };
            incidents.iter().any(|i| {
                let opened_ms = i["id"]
                    .as_str()
                    .and_then(|id| id.split('-').next())
                    .and_then(|ms| ms.parse::<u128>().ok());
                opened_ms.is_some_and(|ms| ms >= since_ms)
                    && i["closed_at"].is_null()
                    && i["evidence"].is_string()
            })
        })?;
        if absent {
            tracing::debug!("no remediation report; the fault is released without waiting");
        }
        Ok(())
    }
}

/// The engine running on the GameDay's runtime until dropped.
pub struct InProcess {
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), run::RunError>>>,
    rt: tokio::runtime::Handle,
}

impl InProcess {
    /// Starts an engine watching `watch` as critical, with a write canary every
    /// [`CANARY_EVERY`] if `canary`; `layouts` hides tracepoints (see [`in_process::run`]).
    pub fn start(
        rt: &tokio::runtime::Handle,
        watch: &Path,
        layouts: Option<PathBuf>,
        canary: bool,
    ) -> Result<InProcess, GamedayError> {
        let canary = if canary {
            format!("canary = \"{}s\"\n", CANARY_EVERY.as_secs())
        } else {
            String::new()
        };
        let toml = format!(
            "listen = \"127.0.0.1:0\"\ndry_run = true\n[detect]\nscan_interval = \"{}ms\"\n\
             io_stall_after = \"{}s\"\nmount_blocked_after = \"{}s\"\nio_dead_after = \"{}s\"\n\
             probe_timeout = \"{}s\"\nfstypes = [\"xfs\", \"ext4\"]\n[[watch]]\npath = {}\n\
             critical = true\nrequire_mountpoint = true\n{canary}",
            SCAN.as_millis(),
            STALL_AFTER.as_secs(),
            BLOCKED_AFTER.as_secs(),
            DEAD_AFTER.as_secs(),
            PROBE_TIMEOUT.as_secs(),
            Value::String(watch.display().to_string()),
        );
        let cfg = Config::from_toml(&toml, "gameday")
            .map_err(|e| GamedayError::Agent(format!("in-process config: {e}")))?;
        let shared = Arc::new(Shared::new(Metrics::new(), SystemTime::now(), true));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = rt.spawn(in_process::run(cfg, Arc::clone(&shared), layouts, async {
            let _ = rx.await;
        }));
        Ok(InProcess {
            shared,
            stop: Some(tx),
            task: Some(task),
            rt: rt.clone(),
        })
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let r = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await });
            match r {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "in-process engine"),
                Ok(Err(e)) => tracing::warn!(error = %e, "in-process engine task"),
                Err(_) => tracing::warn!("in-process engine did not stop within 10 s"),
            }
        }
    }
}

/// A copy of tracefs's layout files for the xfs, block and syscalls events without
/// `xfs_force_shutdown`, so the engine reading it sees a kernel that lacks it (the
/// `disk-errors` scenario must be caught by the log-error path alone).
pub fn layouts_without_shutdown(into: &Path) -> Result<PathBuf, GamedayError> {
    let err = |detail: String| GamedayError::Scratch {
        what: "copying tracepoint layouts".into(),
        detail,
    };
    let real = crate::probes::format::tracefs_root()
        .ok_or_else(|| err("tracefs is not mounted".into()))?
        .join("events");
    for sys in ["xfs", "block", "syscalls"] {
        let entries = std::fs::read_dir(real.join(sys)).map_err(|e| err(e.to_string()))?;
        for e in entries.flatten() {
            let name = e.file_name();
            if sys == "xfs" && name == "xfs_force_shutdown" {
                continue;
            }
            let format = e.path().join("format");
            if !format.exists() {
                continue;
            }
            let to = into.join("events").join(sys).join(&name);
            std::fs::create_dir_all(&to).map_err(|e| err(e.to_string()))?;
            std::fs::copy(&format, to.join("format")).map_err(|e| err(e.to_string()))?;
        }
    }
    Ok(into.to_path_buf())
}
