//! The agent's runtime: wires the kernel programs, the engine, the mount table watcher and
//! the HTTP server together and drives them until shutdown.

use std::{
    future::Future,
    os::fd::AsFd,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, net::TcpListener, sync::mpsc};
use tracing::{error, info, warn};

use crate::{
    api,
    config::Config,
    daemon::reload::{self, ConfigSource},
    daemon::service::Service,
    probes::events::KernelEvent,
    probes::{Loaded, ProbeState, ProbeStatus, ScanMaps, format, spec::PROGRAMS},
    publish::metrics::Metrics,
    remedy::Remedy,
    scan::pathcheck::PathChecker,
    topology::Sysfs,
    {health::engine::Engine, publish::shared::Shared},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How often tracepoints that were missing are looked for again (modules load late).
const REATTACH_EVERY: Duration = Duration::from_secs(10);
/// Mount table re-read even without a change notification, as a safety net.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(30);

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
pub fn load_probes() -> (
    Option<Loaded>,
    Option<crate::probes::Maps>,
    Vec<ProbeStatus>,
) {
    load_probes_from(None)
}

/// [`load_probes`], reading tracepoint layouts from `layouts` when given (see [`TRACEFS_ENV`]).
fn load_probes_from(
    layouts: Option<PathBuf>,
) -> (
    Option<Loaded>,
    Option<crate::probes::Maps>,
    Vec<ProbeStatus>,
) {
    let Some(tracefs) = layouts.or_else(tracefs) else {
        return (
            None,
            None,
            all_probes(ProbeState::Failed, "tracefs not available"),
        );
    };
    match Loaded::load(&tracefs) {
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

type Probes = (
    Option<Loaded>,
    Option<crate::probes::Maps>,
    Vec<ProbeStatus>,
);

/// Probes loaded by [`preload_probes_and_drop_privileges`] for the next [`run_service`].
static PRELOADED: std::sync::Mutex<Option<Probes>> = std::sync::Mutex::new(None);

/// `bindsto run`: loads and attaches the kernel programs while the process is single-threaded
/// (before the async runtime exists), then drops the capabilities the agent no longer needs,
/// so every thread started later runs with the reduced set (see [`crate::daemon::privileges`]).
pub fn preload_probes_and_drop_privileges() {
    let probes = load_probes();
    crate::daemon::privileges::drop_after_attach();
    *PRELOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(probes);
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
            p.tracepoints.iter().map(move |t| ProbeStatus {
                probe: t.probe_name(),
                program: p.program,
                state,
                detail: detail.to_string(),
            })
        })
        .collect()
}

/// Notifies on every mount table change (mountinfo signals POLLPRI), from its own thread.
/// The channel holds one notice: a full channel already means "re-read", so mount churn
/// never queues more than that however fast it goes.
fn watch_mountinfo(tx: mpsc::Sender<()>) {
    let spawn = std::thread::Builder::new()
        .name("mountinfo".into())
        .spawn(move || {
            let file = match std::fs::File::open("/proc/self/mountinfo") {
                Ok(f) => f,
                Err(e) => {
                    warn!(error = %e, "cannot watch /proc/self/mountinfo; relying on periodic refresh");
                    return;
                }
            };
            loop {
                let mut fds = [nix::poll::PollFd::new(
                    file.as_fd(),
                    nix::poll::PollFlags::POLLPRI,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                    Ok(_) => match tx.try_send(()) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                        Err(mpsc::error::TrySendError::Closed(())) => return,
                    },
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        warn!(error = %e, "mountinfo poll failed; relying on periodic refresh");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawn {
        warn!(error = %e, "cannot start the mountinfo watcher");
    }
}

fn read_mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

async fn ring_readable(
    ring: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> Option<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match ring {
        Some(fd) => fd.readable_mut().await.ok(),
        None => std::future::pending().await,
    }
}

/// Runs the agent, serving HTTP on the configured address, until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_service(cfg, None, shutdown).await
}

/// Like [`run`], as a service: talks to systemd when started by it (READY, WATCHDOG,
/// STATUS) and, given the config's source, reloads it on SIGHUP.
pub async fn run_service(
    cfg: Config,
    reload: Option<ConfigSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: cfg.listen,
            source,
        })?;
    drive(
        cfg,
        Some(listener),
        Service::from_env(),
        reload,
        shutdown,
        true,
    )
    .await
    .map(|_| ())
}

/// One-shot verdict for `bindsto check`: the engine runs for `duration` (no HTTP), then its
/// status is returned.
pub async fn check(
    cfg: Config,
    duration: Duration,
) -> Result<Arc<crate::publish::status::Status>, RunError> {
    let shared = drive(
        cfg,
        None,
        Service::default(),
        None,
        tokio::time::sleep(duration),
        false,
    )
    .await?;
    Ok(shared.status())
}

async fn drive(
    cfg: Config,
    listener: Option<TcpListener>,
    service: Service,
    reload_from: Option<ConfigSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    remediate: bool,
) -> Result<Arc<Shared>, RunError> {
    let cfg = Arc::new(cfg);
    // The running config: SIGHUP publishes a new one here; components that need the current
    // config subscribe (`cfg_tx.subscribe()`).
    let (cfg_tx, mut cfg_rx) = tokio::sync::watch::channel(Arc::clone(&cfg));
    let cfg_tx: reload::ConfigTx = Arc::new(cfg_tx);
    info!(listen = %cfg.listen, dry_run = cfg.dry_run, "bindsto starting");
    let metrics = Metrics::new();
    let shared = in_process::shared()
        .unwrap_or_else(|| Arc::new(Shared::new(metrics, SystemTime::now(), cfg.dry_run)));

    let (mut loaded, maps, probe_status) =
        take_preloaded().unwrap_or_else(|| load_probes_from(in_process::layouts()));
    // Loading parses the kernel's BTF (megabytes); hand the freed heap back to the system so
    // the resident size reflects what the agent keeps, not what loading once needed.
    // SAFETY: glibc's malloc_trim only releases free memory; no pointers are involved.
    unsafe { libc::malloc_trim(0) };
    let (mut ring, mut scan_maps): (Option<AsyncFd<RingBuf<MapData>>>, Option<ScanMaps>) =
        match maps {
            // SAFETY: the ring buffer's fd is owned by the value moved into the AsyncFd and
            // is closed only when the AsyncFd (and its registration) is dropped.
            Some(m) => (unsafe { AsyncFd::register(m.events) }.ok(), Some(m.scan)),
            None => (None, None),
        };

    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
    let mut engine = Engine::new(
        Arc::clone(&cfg),
        Sysfs::new("/sys"),
        Arc::clone(&shared),
        probe_tx,
    );
    engine.set_probes(&probe_status);
    let checker = PathChecker::default();
    engine.refresh_topology(&read_mountinfo(), &|p| checker.exists(p));
    engine.scan(scan_maps.as_mut());
    engine.publish();

    let (topo_tx, mut topo_rx) = mpsc::channel(1);
    watch_mountinfo(topo_tx);

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server_stop = {
        let mut rx = stop_tx.subscribe();
        async move {
            let _ = rx.changed().await;
        }
    };
    // Listening for SIGHUP before the server answers: a reload requested by anyone who saw
    // the agent up is never lost.
    let reloader = reload_from.and_then(|source| {
        reload::spawn_on_sighup(
            source,
            Arc::clone(&cfg_tx),
            Arc::clone(&shared),
            service.clone(),
        )
    });
    let server = listener.map(|l| tokio::spawn(api::serve(l, Arc::clone(&shared), server_stop)));
    // The ladder runs on its own task: a step waiting on AWS or systemd never delays detection,
    // and neither does opening its state directory (it may sit on storage that hangs).
    let remedy = remediate.then(|| {
        let (cfg, shared) = (Arc::clone(&cfg), Arc::clone(&shared));
        let (changes, config, stop) = (shared.subscribe(), cfg_tx.subscribe(), stop_tx.subscribe());
        tokio::spawn(async move {
            match Remedy::open(Arc::clone(&cfg), Arc::clone(&shared)).await {
                Ok(remedy) => remedy.run(changes, config, stop).await,
                // Detection and /healthz go on without the ladder; /status says why.
                Err(problem) => {
                    error!(%problem, "remediation unavailable");
                    shared.set_remediation(&Remedy::unavailable(&cfg, problem));
                }
            }
        })
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let mut scan = tokio::time::interval(cfg.detect.scan_interval);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reattach = tokio::time::interval(REATTACH_EVERY);
    reattach.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut topo_timer = tokio::time::interval(TOPOLOGY_EVERY);
    info!("bindsto running");
    // Probes are attached (or reported missing) and the listener is bound: ready.
    service.ready(&shared.status());
    let pinger = service.spawn(Arc::clone(&shared), cfg.detect.scan_interval);
    loop {
        tokio::select! {
            guard = ring_readable(&mut ring) => {
                match guard {
                    Some(mut guard) => {
                        let rb = guard.get_inner_mut();
                        while let Some(item) = rb.next() {
                            match KernelEvent::decode(&item) {
                                Ok(ev) => engine.on_event(&ev),
                                Err(e) => engine.decode_error(&e),
                            }
                        }
                        guard.clear_ready();
                    }
                    None => {
                        error!("ring buffer polling failed; continuing without kernel events");
                        ring = None;
                    }
                }
            }
            _ = scan.tick() => {
                engine.scan(scan_maps.as_mut());
                service.progress().mark();
            }
            Some(done) = probe_rx.recv() => engine.on_check_done(done),
            Some(()) = topo_rx.recv() => {
                while topo_rx.try_recv().is_ok() {}
                engine.refresh_topology(&read_mountinfo(), &|p| checker.exists(p));
            }
            _ = topo_timer.tick() => engine.refresh_topology(&read_mountinfo(), &|p| checker.exists(p)),
            _ = reattach.tick() => {
                if let Some(l) = loaded.as_mut() {
                    match l.attach_missing() {
                        Ok(changed) => {
                            if changed {
                                engine.set_probes(l.status());
                            }
                        }
                        Err(e) => warn!(error = %e, "re-attaching probes failed"),
                    }
                }
            }
            Ok(()) = cfg_rx.changed() => {
                let new = Arc::clone(&cfg_rx.borrow_and_update());
                if new.detect.scan_interval != scan.period() {
                    scan = tokio::time::interval(new.detect.scan_interval);
                    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    service.progress().set_scan_interval(new.detect.scan_interval);
                }
                engine.set_config(new);
                engine.refresh_topology(&read_mountinfo(), &|p| checker.exists(p));
            }
            _ = stop_rx.changed() => break,
        }
        engine.publish();
    }
    info!("bindsto stopping");
    service.stopping();
    // A ladder step in progress is abandoned; it is recorded as started and resumes after a
    // restart.
    for task in [pinger, reloader, remedy].into_iter().flatten() {
        task.abort();
    }
    match server {
        None => Ok(shared),
        Some(server) => match server.await {
            Ok(Ok(())) => Ok(shared),
            Ok(Err(e)) => Err(RunError::Serve(e)),
            Err(e) => Err(RunError::Io(std::io::Error::other(e))),
        },
    }
}

/// The engine in this process, without HTTP, for `bindsto gameday` when no agent runs: it
/// publishes into a `Shared` the caller reads while it runs, and can read tracepoint layouts
/// from elsewhere (as [`TRACEFS_ENV`] does) to hide tracepoints from this engine only. It is
/// `check` running until `stop`, with both handed in through a task-local so `drive` keeps
/// its signature.
pub mod in_process {
    use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

    use super::{RunError, check};
    use crate::{config::Config, publish::shared::Shared};

    #[derive(Clone)]
    struct Injected {
        shared: Arc<Shared>,
        layouts: Option<PathBuf>,
    }

    tokio::task_local! {
        static INJECTED: Injected;
    }

    pub(super) fn shared() -> Option<Arc<Shared>> {
        INJECTED.try_with(|i| Arc::clone(&i.shared)).ok()
    }

    pub(super) fn layouts() -> Option<PathBuf> {
        INJECTED.try_with(|i| i.layouts.clone()).ok().flatten()
    }

    /// Runs the engine until `stop` resolves.
    pub async fn run(
        cfg: Config,
        shared: Arc<Shared>,
        layouts: Option<PathBuf>,
        stop: impl Future<Output = ()>,
    ) -> Result<(), RunError> {
        // A year: `stop` ends it; dropping the engine detaches its programs.
        let engine = check(cfg, Duration::from_secs(365 * 24 * 3600));
        INJECTED
            .scope(Injected { shared, layouts }, async {
                tokio::select! {
                    r = engine => r.map(|_| ()),
                    () = stop => Ok(()),
                }
            })
            .await
    }
}
