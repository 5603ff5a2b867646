//! Startup: loading and attaching the kernel programs (before the runtime exists, then
//! dropping privileges), and the engine wired to what was attached, with a first view of the
//! mount table and a first scan published before the agent says it is ready.

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{error, info, warn};

use crate::{
    config::Config,
    daemon::{in_process, mountinfo::MountTable},
    health::engine::Engine,
    metrics::Metrics,
    probes::{AttachedProbes, Maps, ProbeState, ProbeStatus, ScanMaps, format, spec::PROGRAMS},
    publish::{shared::Shared, snapshot::StatusPublisher},
    scan::check::CheckDone,
    scan::pathcheck::PathChecker,
    topology::Sysfs,
};

/// Overrides where tracepoint layouts are read from (a copy of tracefs with some events
/// removed shows how the agent degrades on a kernel that lacks them). Attaching still uses
/// the kernel's own tracefs.
pub const TRACEFS_ENV: &str = "BINDSTO_TRACEFS";

/// Finds (or mounts) tracefs.
pub fn tracefs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(TRACEFS_ENV) {
        let p = PathBuf::from(p);
        warn!(path = %p.display(), "reading tracepoint layouts from {TRACEFS_ENV}");
        return Some(p);
    }
    if let Some(p) = format::tracefs_root() {
        return Some(p);
    }
    match format::mount_tracefs() {
        Ok(p) => {
            info!(path = %p.display(), "mounted tracefs");
            Some(p)
        }
        Err(e) => {
            warn!(error = %e, "tracefs is not available");
            None
        }
    }
}

/// Loads and attaches the kernel programs; on failure the agent runs on sysfs and probes
/// alone, and every probe is reported as failed.
pub fn load_probes() -> Probes {
    load_probes_from(None)
}

/// [`load_probes`], reading tracepoint layouts from `layouts` when given (see [`TRACEFS_ENV`]).
fn load_probes_from(layouts: Option<PathBuf>) -> Probes {
    let Some(tracefs) = layouts.or_else(tracefs) else {
        return (
            None,
            None,
            all_probes(ProbeState::Failed, "tracefs not available"),
        );
    };
    match AttachedProbes::load(&tracefs) {
        Ok((loaded, maps)) => {
            let status = loaded.status().to_vec();
            (Some(loaded), Some(maps), status)
        }
        Err(e) => {
            error!(error = %e, "cannot load the kernel programs; running on sysfs and mount probes only");
            (None, None, all_probes(ProbeState::Failed, &e.to_string()))
        }
    }
}

/// What loading gave: the attached programs and their maps (none when loading failed), and
/// the state of every probe.
pub type Probes = (Option<AttachedProbes>, Option<Maps>, Vec<ProbeStatus>);

/// Probes loaded by [`preload_probes_and_drop_privileges`] for the next [`run_service`].
static PRELOADED: std::sync::Mutex<Option<Probes>> = std::sync::Mutex::new(None);

/// `bindsto run`: loads and attaches the kernel programs while the process is single-threaded
/// (before the async runtime exists), then drops the capabilities the agent no longer needs,
/// so every thread started later runs with the reduced set (see [`crate::daemon::privileges`]).
pub fn preload_probes_and_drop_privileges() {
    let probes = load_probes();
    // Before the drop: the helper keeps what it needs of what the agent holds now.
    let helper = crate::evidence::client::Helper::spawn()
        .map_err(|e| format!("the privileged reader did not start: {e}"));
    match &helper {
        Ok(h) => info!(
            pid = h.pid(),
            "started the evidence reader (kernel stacks, kernel log)"
        ),
        Err(e) => warn!(error = %e, "incident evidence will lack kernel stacks and the kernel log"),
    }
    *HELPER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(helper);
    crate::daemon::privileges::drop_after_attach();
    *PRELOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(probes);
}

/// The evidence reader started by [`preload_probes_and_drop_privileges`] (or why not).
type HelperSlot = Option<Result<crate::evidence::client::Helper, String>>;
static HELPER: std::sync::Mutex<HelperSlot> = std::sync::Mutex::new(None);

/// What the incident evidence reads: the reader started before the capability drop (one per
/// process: the first run takes it) and second handles on the in-flight maps.
pub(super) fn evidence_sources(scan_maps: Option<&ScanMaps>) -> crate::evidence::Sources {
    let mut src = crate::evidence::Sources::default();
    match HELPER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        Some(Ok(h)) => src.helper = Some(Arc::new(std::sync::Mutex::new(h))),
        Some(Err(e)) => src.helper_missing = Some(e),
        None => {
            src.helper_missing = Some(
                "no privileged reader: the agent was not started by `bindsto run` (or this is a restarted engine)"
                    .into(),
            );
        }
    }
    match scan_maps.map(ScanMaps::inflight) {
        Some(Ok(m)) => src.maps = Some(Arc::new(m)),
        Some(Err(e)) => src.maps_missing = Some(e.to_string()),
        None => src.maps_missing = Some("the kernel programs are not loaded".into()),
    }
    src
}

fn take_preloaded() -> Option<Probes> {
    PRELOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

fn all_probes(state: ProbeState, detail: &str) -> Vec<ProbeStatus> {
    PROGRAMS
        .iter()
        .flat_map(|p| {
            p.tracepoints.iter().map(move |t| {
                ProbeStatus::new(t.probe_name(), p.program, state, detail.to_string())
            })
        })
        .collect()
}

/// The engine and what feeds it, ready for the run loop.
pub(super) struct Started {
    pub shared: Arc<Shared>,
    pub engine: Engine,
    pub loaded: Option<AttachedProbes>,
    pub ring: Option<AsyncFd<RingBuf<MapData>>>,
    pub scan_maps: Option<ScanMaps>,
    pub check_rx: mpsc::UnboundedReceiver<CheckDone>,
    pub checker: PathChecker,
    pub mounts: MountTable,
}

/// Builds the engine over the preloaded programs (or loads them now), reads the mount table
/// and publishes a first verdict.
pub(super) fn start(cfg: &Arc<Config>) -> Started {
    let metrics = Metrics::new();
    let shared = in_process::shared()
        .unwrap_or_else(|| Arc::new(Shared::new(metrics, SystemTime::now(), cfg.dry_run)));

    let (loaded, maps, probe_status) =
        take_preloaded().unwrap_or_else(|| load_probes_from(in_process::layouts()));
    // Loading parses the kernel's BTF (megabytes); hand the freed heap back to the system so
    // the resident size reflects what the agent keeps, not what loading once needed.
    // SAFETY: glibc's malloc_trim only releases free memory; no pointers are involved.
    unsafe { libc::malloc_trim(0) };
    let (ring, mut scan_maps): (Option<AsyncFd<RingBuf<MapData>>>, Option<ScanMaps>) = match maps {
        // SAFETY: the ring buffer's fd is owned by the value moved into the AsyncFd and
        // is closed only when the AsyncFd (and its registration) is dropped.
        Some(m) => (unsafe { AsyncFd::register(m.events) }.ok(), Some(m.scan)),
        None => (None, None),
    };

    let (check_tx, check_rx) = mpsc::unbounded_channel();
    let mut engine = Engine::new(
        Arc::clone(cfg),
        Sysfs::new("/sys"),
        shared.metrics.clone(),
        Arc::new(StatusPublisher::new(Arc::clone(&shared))),
        check_tx,
    );
    engine.set_probes(&probe_status);
    let checker = PathChecker::default();
    let mut mounts = MountTable::new(crate::daemon::mountinfo::proc_self(), &shared.metrics);
    mounts.refresh(&mut engine, &|p| checker.exists(p));
    engine.scan(scan_maps.as_mut());
    engine.publish();
    Started {
        shared,
        engine,
        loaded,
        ring,
        scan_maps,
        check_rx,
        checker,
        mounts,
    }
}
