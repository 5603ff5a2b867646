//! The incident history on disk, and the other files of the state directory.
//!
//! The whole history (bounded) is one JSON file under the state directory, replaced atomically
//! (write, fsync, rename), so a restarted agent neither repeats a finished action nor forgets an
//! incident. The state directory is on the root filesystem; writes run on a blocking thread under
//! a timeout anyway, so a sick root disk cannot stall the ladder. A write that hangs keeps its
//! thread; until it returns no other write is started (each would hang and hold one more thread,
//! and cost the ladder another timeout): saves fail at once instead. Depends on `config`,
//! `topology` (where the state directory lives), `metrics` and `incident`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::incident::Incident;
use crate::config::Config;
use crate::metrics::Metrics;

/// Incidents kept in the file (the newest); a new one beyond it pushes the oldest out, counted
/// in `bindsto_table_full_total{table="incidents"}`.
pub const HISTORY_MAX: usize = 50;
/// The incident history, in the state directory.
pub const FILE: &str = "incidents.json";
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The ECS identity, cached beside the history: the ECS agent may be gone when it is needed.
pub const ECS_CACHE: &str = "ecs-instance.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct HistoryFile {
    incidents: Vec<Incident>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {}: {source}", .dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsafe(#[from] crate::config::file_safety::UnsafeFile),
    #[error("writing {} did not finish within {timeout:?}", .path.display())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("not written: an earlier write of {} is still hanging", .path.display())]
    Hung { path: PathBuf },
}

impl StoreError {
    /// The `outcome` label of `bindsto_remediation_state_write_failures_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            StoreError::Dir { .. } | StoreError::Write { .. } | StoreError::Unsafe(_) => "error",
            StoreError::Timeout { .. } => "timeout",
            StoreError::Hung { .. } => "hung",
        }
    }
}

/// The incident history and where it is kept.
pub struct Store {
    path: PathBuf,
    pub incidents: Vec<Incident>,
    /// A write is running (possibly hung) on a blocking thread.
    writing: Arc<AtomicBool>,
    write_timeout: Duration,
}

/// What loading found, for the caller to log.
#[derive(Debug, PartialEq)]
pub enum HistoryLoad {
    Fresh,
    Read(usize),
    /// Unreadable or corrupt; moved aside to the given path.
    MovedAside(PathBuf, String),
}

impl HistoryLoad {
    /// Logs what loading the history at `path` found (and counts a file moved aside); returns
    /// the problem /status shows, if any.
    pub fn log(self, path: &Path, metrics: &Metrics) -> Option<String> {
        match self {
            HistoryLoad::Fresh => {
                info!(path = %path.display(), "no incident history yet");
                None
            }
            HistoryLoad::Read(n) => {
                info!(path = %path.display(), incidents = n, "incident history loaded");
                None
            }
            HistoryLoad::MovedAside(aside, why) => {
                metrics.state_files_moved_aside.inc();
                error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    error = %why,
                    "incident history is corrupt; moved aside, starting with an empty history"
                );
                Some(format!(
                    "corrupt incident history moved to {}: {why}",
                    aside.display()
                ))
            }
        }
    }
}

impl Store {
    /// Reads the history; a corrupt or truncated file is moved aside, never fatal.
    pub fn open(dir: &Path) -> Result<(Store, HistoryLoad), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            dir: dir.into(),
            source,
        })?;
        // A history others can write could stop the ladder (or replay it): refused.
        crate::config::file_safety::check("state directory", dir)?;
        let path = dir.join(FILE);
        crate::config::file_safety::check("incident history", &path)?;
        crate::config::file_safety::check("ECS identity cache", &dir.join(ECS_CACHE))?;
        let (incidents, loaded) = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), HistoryLoad::Fresh),
            Err(e) => (Vec::new(), move_aside(&path, e.to_string())),
            Ok(bytes) => match serde_json::from_slice::<HistoryFile>(&bytes) {
                Ok(f) => {
                    let n = f.incidents.len();
                    (f.incidents, HistoryLoad::Read(n))
                }
                Err(e) => (Vec::new(), move_aside(&path, e.to_string())),
            },
        };
        Ok((
            Store {
                path,
                incidents,
                writing: Arc::default(),
                write_timeout: WRITE_TIMEOUT,
            },
            loaded,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open incident, if any (at most one is open at a time).
    pub fn open_incident(&mut self) -> Option<&mut Incident> {
        self.incidents.iter_mut().rev().find(|i| i.phase.open())
    }

    /// Start times of the ladder runs within the hour before `now` (a clock that went back
    /// counts them as recent).
    fn recent_runs(&self, now: SystemTime) -> Vec<SystemTime> {
        self.incidents
            .iter()
            .filter_map(|i| i.ladder_started_at)
            .filter(|t| {
                now.duration_since(*t)
                    .map(|d| d < Duration::from_secs(3600))
                    .unwrap_or(true)
            })
            .collect()
    }

    /// Ladder runs started within the hour before `now`.
    pub fn runs_within_hour(&self, now: SystemTime) -> usize {
        self.recent_runs(now).len()
    }

    /// When the oldest run of the last hour leaves the window.
    pub fn next_run_allowed(&self, now: SystemTime, max: usize) -> Option<SystemTime> {
        let mut recent = self.recent_runs(now);
        if recent.len() < max {
            return None;
        }
        recent.sort();
        recent
            .get(recent.len() - max)
            .map(|t| *t + Duration::from_secs(3600))
    }

    /// Writes the history atomically, off the async threads, under a timeout.
    pub async fn save(&mut self) -> Result<(), StoreError> {
        if self.incidents.len() > HISTORY_MAX {
            let drop = self.incidents.len() - HISTORY_MAX;
            self.incidents.drain(..drop);
        }
        let body = serde_json::to_vec_pretty(&HistoryFile {
            incidents: self.incidents.clone(),
        })
        .map_err(|e| StoreError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        if self.writing.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Hung {
                path: self.path.clone(),
            });
        }
        let path = self.path.clone();
        let writing = Arc::clone(&self.writing);
        let task = tokio::task::spawn_blocking(move || {
            let r = write_atomic(&path, &body);
            writing.store(false, Ordering::SeqCst);
            r
        });
        match tokio::time::timeout(self.write_timeout, task).await {
            Ok(Ok(r)) => r.map_err(|source| StoreError::Write {
                path: self.path.clone(),
                source,
            }),
            Ok(Err(join)) => Err(StoreError::Write {
                path: self.path.clone(),
                source: std::io::Error::other(join),
            }),
            Err(_) => Err(StoreError::Timeout {
                path: self.path.clone(),
                timeout: self.write_timeout,
            }),
        }
    }
}

fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn move_aside(path: &Path, why: String) -> HistoryLoad {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let aside = path.with_extension(format!("json.corrupt-{stamp}"));
    match std::fs::rename(path, &aside) {
        Ok(()) => HistoryLoad::MovedAside(aside, why),
        Err(e) => {
            HistoryLoad::MovedAside(path.into(), format!("{why}; moving it aside failed: {e}"))
        }
    }
}

/// A JSON cache file next to the incidents (identities read at start).
pub fn read_cache<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Option<T> {
    let bytes = std::fs::read(dir.join(name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn write_cache<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    write_atomic(&dir.join(name), &body)
}

/// The history must outlive the storage the agent watches: a state dir on the same mount as a
/// critical watch is reported (the ladder still runs; its writes have timeouts).
pub fn state_dir_on_watched_storage(cfg: &Config) -> Option<String> {
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
mod tests;
