//! `bindsto gameday`: chaos experiments on scratch storage this command creates itself (a loop
//! device over its own fault-injecting FUSE file, in a fresh temporary directory), observed
//! through a running agent's `/status` or, when none answers, an engine in this process. Each
//! scenario injects a failure, measures how long the verdict takes, restores and cleans up.
//! Ctrl-C (SIGINT) and SIGTERM stop the run and still clean up everything.

pub mod faultfile;
mod observe;
mod scenarios;
mod scratch;
mod status_doc;

use std::{
    net::SocketAddr,
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use serde::Serialize;

pub use scenarios::SCENARIOS;
pub use scratch::attach_buffered_loop;

#[derive(Debug, thiserror::Error)]
pub enum GamedayError {
    #[error(
        "refusing {path}: {why}; gameday only runs against scratch storage it creates itself \
         (pass --workdir a plain directory, e.g. /tmp)"
    )]
    Refused { path: PathBuf, why: String },
    #[error("unknown scenario {0:?} (one of: {all}, or all)", all = SCENARIOS.join(", "))]
    UnknownScenario(String),
    #[error("gameday needs root (loop devices, FUSE, mount(2), BPF)")]
    NotRoot,
    #[error("{what}: {detail}")]
    Command { what: String, detail: String },
    #[error("scratch storage: {what}: {detail}")]
    Scratch { what: String, detail: String },
    #[error("observing: {0}")]
    Agent(String),
    #[error("interrupted; everything gameday created has been cleaned up")]
    Interrupted,
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// True once SIGINT or SIGTERM arrived: every wait in gameday checks it and unwinds, so the
/// scratch storage is cleaned up by the usual drops.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            tracing::warn!(signal = %sig, error = %e, "cannot install the cleanup handler");
        }
    }
}

/// What to run and against what.
#[derive(Clone, Debug)]
pub struct GamedayOptions {
    /// Scenario names; empty means all.
    pub scenarios: Vec<String>,
    /// The directory in which a fresh scratch directory is created.
    pub workdir: PathBuf,
    /// The agent to observe; when it does not answer (and `standalone` is false), an engine
    /// runs in this process.
    pub agent: SocketAddr,
    /// Never use a running agent.
    pub standalone: bool,
    /// Each scenario this many times.
    pub repeat: u32,
    /// How long to wait for a verdict from a running agent (whose thresholds are unknown).
    pub agent_timeout: std::time::Duration,
}

/// One scenario run.
#[derive(Clone, Debug, Serialize)]
pub struct ExperimentOutcome {
    pub scenario: &'static str,
    pub repetition: u32,
    pub expected: String,
    pub detected: Option<String>,
    /// From the injection to the verdict being served.
    pub latency_ms: Option<f64>,
    /// The threshold the detection must wait for (stalls, blocked mounts), when known.
    pub threshold_ms: Option<f64>,
    pub passed: bool,
    pub note: String,
}

#[derive(Debug, Serialize)]
pub struct GamedayReport {
    pub observer: String,
    pub kernel: String,
    pub passed: bool,
    pub results: Vec<ExperimentOutcome>,
}

/// Checks that `workdir` is a plain directory, not a device or someone's mounted storage.
fn check_workdir(workdir: &Path) -> Result<PathBuf, GamedayError> {
    let refuse = |why: String| GamedayError::Refused {
        path: workdir.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(workdir).map_err(|e| refuse(e.to_string()))?;
    let ft = meta.file_type();
    if ft.is_block_device() || ft.is_char_device() {
        return Err(refuse("it is a device, not a directory".into()));
    }
    if !ft.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    let dir = workdir.canonicalize().map_err(|e| refuse(e.to_string()))?;
    let mounts = crate::topology::read_mountinfo().map_err(|e| refuse(e.to_string()))?;
    // An existing mount is someone's storage, except for the memory-backed temp dirs.
    if let Some(m) = mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == dir && !["tmpfs", "ramfs"].contains(&m.fstype.as_str()))
    {
        return Err(refuse(format!(
            "it is an existing mount ({} from {})",
            m.fstype, m.source
        )));
    }
    Ok(dir)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Runs the selected scenarios and reports each; an `Err` is a run that could not be done
/// (refused, not root, interrupted), not a missed detection.
pub fn run(opts: &GamedayOptions) -> Result<GamedayReport, GamedayError> {
    let selected = scenarios::select(&opts.scenarios)?;
    let workdir = check_workdir(&opts.workdir)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(GamedayError::NotRoot);
    }
    install_signal_handlers();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bindsto-gameday")
        .build()
        .map_err(GamedayError::Runtime)?;
    let agent = (!opts.standalone && observe::agent_at(opts.agent)).then_some(opts.agent);
    let ctx = scenarios::Ctx {
        workdir,
        agent,
        rt: rt.handle().clone(),
        agent_timeout: opts.agent_timeout,
    };
    let mut results = Vec::new();
    for rep in 1..=opts.repeat.max(1) {
        for s in &selected {
            tracing::info!(scenario = s, repetition = rep, "gameday scenario");
            let mut o = scenarios::run(&ctx, s)?;
            // A signal during a scenario's cleanup still ends the run (after that cleanup).
            if interrupted() {
                return Err(GamedayError::Interrupted);
            }
            o.repetition = rep;
            results.push(o);
        }
    }
    let observer = match agent {
        Some(a) => format!("running agent at {a}"),
        None => "in-process engine".to_string(),
    };
    Ok(GamedayReport {
        observer,
        kernel: kernel(),
        passed: results.iter().all(|o| o.passed),
        results,
    })
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 1000.0 => format!("{:.2} s", v / 1000.0),
        Some(v) => format!("{v:.0} ms"),
        None => "-".into(),
    }
}

/// The report as a table: scenario, expected signal, detected signal, latency, pass/fail.
pub fn render(report: &GamedayReport) -> String {
    let mut rows = vec![[
        "SCENARIO".to_string(),
        "EXPECTED".to_string(),
        "DETECTED".to_string(),
        "LATENCY".to_string(),
        "RESULT".to_string(),
    ]];
    for o in &report.results {
        let latency = match (o.latency_ms, o.threshold_ms) {
            (Some(l), Some(t)) => format!("{} ({} after threshold)", ms(Some(l)), ms(Some(l - t))),
            (l, _) => ms(l),
        };
        let mut result = if o.passed { "pass" } else { "FAIL" }.to_string();
        if !o.note.is_empty() {
            result = format!("{result}: {}", o.note);
        }
        rows.push([
            o.scenario.to_string(),
            o.expected.clone(),
            o.detected.clone().unwrap_or_else(|| "-".into()),
            latency,
            result,
        ]);
    }
    let mut width = [0usize; 4];
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!(
        "gameday on kernel {} against the {}\n",
        report.kernel, report.observer
    );
    for r in &rows {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(if report.passed {
        "all scenarios passed\n"
    } else {
        "some scenarios FAILED\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_selection() {
        assert_eq!(scenarios::select(&[]).unwrap().len(), 10);
        assert_eq!(scenarios::select(&["all".into()]).unwrap().len(), 10);
        assert_eq!(
            scenarios::select(&["disk-stall".into(), "recovery".into()]).unwrap(),
            vec!["disk-stall", "recovery"]
        );
        let e = scenarios::select(&["meteor".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown scenario \"meteor\"") && e.contains("xfs-shutdown"),
            "{e}"
        );
    }

    #[test]
    fn workdir_must_be_a_plain_directory() {
        let e = check_workdir(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("refusing /dev/null: it is a device"), "{e}");
        // `/` is always a mount, and never tmpfs on a real host.
        let root_fs = crate::topology::read_mountinfo()
            .unwrap()
            .into_iter()
            .rfind(|m| m.mount_point == Path::new("/"))
            .unwrap();
        if root_fs.fstype != "tmpfs" {
            let e = check_workdir(Path::new("/")).unwrap_err().to_string();
            assert!(e.contains("it is an existing mount"), "{e}");
        }
        let e = check_workdir(Path::new("/nonexistent-bindsto")).unwrap_err();
        assert!(e.to_string().starts_with("refusing /nonexistent-bindsto"));
        let dir = tempfile::tempdir().unwrap();
        assert!(check_workdir(dir.path()).is_ok());
    }

    #[test]
    fn table_has_one_row_per_run_and_a_verdict() {
        let report = GamedayReport {
            observer: "in-process engine".into(),
            kernel: "6.18".into(),
            passed: false,
            results: vec![
                ExperimentOutcome {
                    scenario: "disk-stall",
                    repetition: 1,
                    expected: "device failed: io_stall".into(),
                    detected: Some("device failed: io_stall".into()),
                    latency_ms: Some(3250.0),
                    threshold_ms: Some(3000.0),
                    passed: true,
                    note: String::new(),
                },
                ExperimentOutcome {
                    scenario: "xfs-shutdown",
                    repetition: 1,
                    expected: "mount failed: xfs_shutdown".into(),
                    detected: None,
                    latency_ms: None,
                    threshold_ms: None,
                    passed: false,
                    note: "no verdict within 5 s".into(),
                },
            ],
        };
        let t = render(&report);
        assert!(t.contains("SCENARIO"), "{t}");
        assert!(t.contains("3.25 s (250 ms after threshold)"), "{t}");
        assert!(t.contains("FAIL: no verdict within 5 s"), "{t}");
        assert!(t.ends_with("some scenarios FAILED\n"), "{t}");
    }
}
