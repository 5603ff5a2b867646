//! Life under a service manager: READY once the agent can do its job, a STATUS line, and a
//! watchdog fed only while the agent's own main loop makes progress, so a loop that is stuck
//! (on a lock, a blocking call, a watched filesystem) stops the pings and systemd restarts it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    daemon::sdnotify::Notifier, health::State, probes::ProbeState, publish::shared::Shared,
    publish::status::Status,
};

/// Marks of progress from the drive loop: the time of the last completed scan tick, and the
/// scan interval in effect (a reload may change it), which bounds how old a mark may be.
#[derive(Debug)]
pub struct LoopProgress {
    origin: Instant,
    last_ms: AtomicU64,
    scan_interval_ms: AtomicU64,
}

impl Default for LoopProgress {
    fn default() -> Self {
        LoopProgress {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            scan_interval_ms: AtomicU64::new(1000),
        }
    }
}

impl LoopProgress {
    /// The scan interval in effect; called at start and after a reload.
    pub fn set_scan_interval(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.scan_interval_ms.store(ms, Ordering::Relaxed);
    }

    fn scan_interval(&self) -> Duration {
        Duration::from_millis(self.scan_interval_ms.load(Ordering::Relaxed))
    }

    /// Called by the drive loop after each scan: the loop is alive and the scanner ran.
    pub fn mark(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last mark.
    pub fn age(&self) -> Duration {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The agent's side of the service manager; inert when not started by one.
#[derive(Clone, Debug, Default)]
pub struct Service {
    notifier: Option<Arc<Notifier>>,
    progress: Arc<LoopProgress>,
}

impl Service {
    /// Reads `NOTIFY_SOCKET`; a malformed one is logged and ignored (the agent still works,
    /// systemd will time out the start and say why).
    pub fn from_env() -> Service {
        let notifier = match Notifier::from_env() {
            Ok(n) => n.map(Arc::new),
            Err(e) => {
                warn!(error = %e, "ignoring NOTIFY_SOCKET");
                None
            }
        };
        Service {
            notifier,
            progress: Arc::default(),
        }
    }

    /// A service for an explicit notifier (tests).
    pub fn with_notifier(notifier: Notifier) -> Service {
        Service {
            notifier: Some(Arc::new(notifier)),
            progress: Arc::default(),
        }
    }

    pub fn progress(&self) -> &LoopProgress {
        &self.progress
    }

    fn send(
        &self,
        what: &str,
        f: impl FnOnce(&Notifier) -> Result<(), crate::daemon::sdnotify::NotifyError>,
    ) {
        if let Some(n) = &self.notifier
            && let Err(e) = f(n)
        {
            warn!(error = %e, "sd_notify {what} failed");
        }
    }

    /// READY=1: programs attached (or reported missing) and the HTTP server listening.
    pub fn ready(&self, status: &Status) {
        self.progress.mark();
        self.send("READY", |n| n.ready(&summary(status)));
    }

    pub fn reloading(&self) {
        self.send("RELOADING", Notifier::reloading);
    }

    pub fn reloaded(&self, status: &Status) {
        self.send("READY", |n| n.ready(&summary(status)));
    }

    pub fn stopping(&self) {
        self.send("STOPPING", Notifier::stopping);
    }

    /// Starts the watchdog pinger (when systemd asked for one) and the STATUS updater.
    /// `scan_interval` bounds how often the drive loop marks progress (see
    /// [`LoopProgress::set_scan_interval`] for reloads).
    pub fn spawn(
        &self,
        shared: Arc<Shared>,
        scan_interval: Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let notifier = Arc::clone(self.notifier.as_ref()?);
        let progress = Arc::clone(&self.progress);
        progress.set_scan_interval(scan_interval);
        let watchdog = notifier.watchdog();
        // Ping three times per watchdog interval, and at least every 5 s for STATUS updates.
        let period = watchdog.map_or(Duration::from_secs(5), |w| {
            (w / 3).min(Duration::from_secs(5))
        });
        if let Some(w) = watchdog {
            info!(watchdog = ?w, ping_every = ?period, "systemd watchdog enabled");
        }
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_status = String::new();
            let mut warned = false;
            let mut slow_warned = None;
            loop {
                tick.tick().await;
                if let Some(w) = watchdog {
                    // A mark must be younger than two scan periods (a scan can take a while
                    // on a busy host) plus one ping period.
                    let scan = progress.scan_interval();
                    let stale_after = scan * 2 + period;
                    if stale_after >= w && slow_warned != Some(scan) {
                        slow_warned = Some(scan);
                        warn!(
                            watchdog = ?w, scan_interval = ?scan,
                            "detect.scan_interval is long for WatchdogSec=: a stuck main loop is noticed only after {stale_after:?}"
                        );
                    }
                    let age = progress.age();
                    if age < stale_after {
                        warned = false;
                        if let Err(e) = notifier.watchdog_ping() {
                            warn!(error = %e, "sd_notify WATCHDOG failed");
                        }
                    } else if !warned {
                        warned = true;
                        warn!(since = ?age, "the main loop made no progress; withholding watchdog pings");
                    }
                }
                let s = summary(&shared.status());
                if s != last_status {
                    if let Err(e) = notifier.status(&s) {
                        warn!(error = %e, "sd_notify STATUS failed");
                    }
                    last_status = s;
                }
            }
        }))
    }
}

/// One line for `systemctl status`: the verdict, what is watched, and probe coverage.
pub fn summary(s: &Status) -> String {
    let failed: Vec<&str> = s
        .targets
        .iter()
        .filter(|t| t.state == State::Failed)
        .map(|t| t.id.as_str())
        .collect();
    let degraded = s
        .targets
        .iter()
        .filter(|t| t.state == State::Degraded)
        .count();
    let attached = s
        .probes
        .iter()
        .filter(|p| p.state == ProbeState::Attached)
        .count();
    let verdict = if s.healthy { "healthy" } else { "UNHEALTHY" };
    let mut out = format!(
        "{verdict}; {} targets ({} failed, {degraded} degraded); {attached}/{} probes attached",
        s.targets.len(),
        failed.len(),
        s.probes.len()
    );
    if !failed.is_empty() {
        out.push_str("; failed: ");
        out.push_str(&failed.join(", "));
    }
    if s.dry_run {
        out.push_str("; dry run");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_ages_and_resets() {
        let p = LoopProgress::default();
        p.mark();
        assert!(p.age() < Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(120));
        assert!(p.age() >= Duration::from_millis(100));
        p.mark();
        assert!(p.age() < Duration::from_millis(100));
    }

    /// A real datagram socket standing in for systemd: pings flow while the loop marks
    /// progress, stop when it stalls, and resume when it moves again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchdog_pings_only_while_the_loop_progresses() {
        use std::os::unix::net::UnixDatagram;

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).expect("bind");
        server.set_nonblocking(true).expect("nonblocking");
        let notifier = Notifier::connect(
            path.to_str().expect("utf8"),
            Some(Duration::from_millis(900)),
        )
        .expect("connect");
        let service = Service::with_notifier(notifier);
        let shared = Arc::new(Shared::new(
            crate::metrics::Metrics::new(),
            std::time::SystemTime::now(),
            true,
        ));
        service.ready(&shared.status());
        let task = service
            .spawn(Arc::clone(&shared), Duration::from_millis(50))
            .expect("pinger");

        let drain = || {
            let mut msgs = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = server.recv(&mut buf) {
                msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            msgs
        };
        let pings = |m: &[String]| m.iter().filter(|s| s.as_str() == "WATCHDOG=1").count();

        // Progressing: marks every 50 ms for 1.2 s -> about four pings (every 300 ms).
        for _ in 0..24 {
            service.progress().mark();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let first = drain();
        assert!(
            first[0].starts_with("READY=1\nSTATUS=healthy; 0 targets"),
            "{first:?}"
        );
        assert!(first.iter().any(|m| m.starts_with("STATUS=")), "{first:?}");
        assert!(pings(&first) >= 3, "{first:?}");

        // Stuck: no marks. Allow one ping in flight, then none for 1.5 s.
        tokio::time::sleep(Duration::from_millis(500)).await;
        drain();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let stuck = drain();
        assert_eq!(pings(&stuck), 0, "{stuck:?}");

        // Moving again: pings resume.
        for _ in 0..16 {
            service.progress().mark();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(pings(&drain()) >= 2);

        // A reload to a slower scan interval: marks every 900 ms still count as progress.
        service
            .progress()
            .set_scan_interval(Duration::from_millis(900));
        drain();
        for _ in 0..3 {
            service.progress().mark();
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
        let slow = drain();
        assert!(pings(&slow) >= 6, "{slow:?}");
        task.abort();
    }
}
