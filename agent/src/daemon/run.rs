//! The run loop: the engine started by [`startup`], the HTTP server, the reloader and the
//! remediation task, driven by one `select!` over kernel events, scan ticks, mount checks,
//! mount table changes, reloads and shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, net::TcpListener, sync::mpsc};
use tracing::{error, info, warn};

use crate::{
    api,
    config::Config,
    daemon::mountinfo::watch_mountinfo,
    daemon::reload::{self, ConfigSource},
    daemon::service::Service,
    daemon::startup::{self, Started},
    health::engine::Engine,
    probes::{AttachedProbes, events::KernelEvent},
    publish::shared::Shared,
    remedy::Remedy,
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

/// Attaches what is missing (late modules) and detaches what is no longer needed (the bio
/// programs without dm devices); the engine learns the new probe states.
fn reattach_probes(loaded: Option<&mut AttachedProbes>, engine: &mut Engine) {
    let Some(l) = loaded else { return };
    match l.attach_missing() {
        Ok(true) => engine.set_probes(l.status()),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "re-attaching probes failed"),
    }
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
    let Started {
        shared,
        mut engine,
        mut loaded,
        mut ring,
        mut scan_maps,
        mut check_rx,
        checker,
        mut mounts,
    } = startup::start(&cfg);
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
        let sources = startup::evidence_sources(scan_maps.as_ref());
        let (cfg, shared) = (Arc::clone(&cfg), Arc::clone(&shared));
        let (changes, config, stop) = (shared.subscribe(), cfg_tx.subscribe(), stop_tx.subscribe());
        tokio::spawn(async move {
            match Remedy::open(Arc::clone(&cfg), Arc::clone(&shared), sources).await {
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
            Some(done) = check_rx.recv() => engine.on_check_done(done),
            Some(()) = topo_rx.recv() => {
                while topo_rx.try_recv().is_ok() {}
                mounts.refresh(&mut engine, &|p| checker.exists(p));
                // A new mount may be the first device-mapper device (its bio programs).
                reattach_probes(loaded.as_mut(), &mut engine);
            }
            _ = topo_timer.tick() => mounts.refresh(&mut engine, &|p| checker.exists(p)),
            _ = reattach.tick() => reattach_probes(loaded.as_mut(), &mut engine),
            Ok(()) = cfg_rx.changed() => {
                let new = Arc::clone(&cfg_rx.borrow_and_update());
                if new.detect.scan_interval != scan.period() {
                    scan = tokio::time::interval(new.detect.scan_interval);
                    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    service.progress().set_scan_interval(new.detect.scan_interval);
                }
                engine.set_config(new);
                mounts.refresh(&mut engine, &|p| checker.exists(p));
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
