//! The mount table as the daemon reads it: a watcher thread that notices changes, and the
//! read itself, through a seam so a failing read can be injected. A read that fails is never
//! an empty table: that would make every mount look gone, a failed critical one with it, and
//! turn /healthz 200.

use std::{os::fd::AsFd, path::Path, sync::Arc};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{health::engine::Engine, metrics::Metrics};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Reads the text of the mount table.
pub type ReadMountinfo = Arc<dyn Fn() -> std::io::Result<String> + Send + Sync>;

/// The real reader: `/proc/self/mountinfo`.
pub fn proc_self() -> ReadMountinfo {
    Arc::new(|| std::fs::read_to_string(MOUNTINFO))
}

/// Hands the mount table to the engine, keeping its last view while reads fail.
pub struct MountTable {
    read: ReadMountinfo,
    failures: Counter,
    /// In a streak of failed reads: warned once, at its start.
    failing: bool,
}

impl MountTable {
    pub fn new(read: ReadMountinfo, metrics: &Metrics) -> Self {
        MountTable {
            read,
            failures: metrics.mountinfo_read_failures.clone(),
            failing: false,
        }
    }

    /// Reads the table and refreshes the engine's topology; a failed read is counted and
    /// leaves the topology as it was.
    pub fn refresh(&mut self, engine: &mut Engine, path_exists: &dyn Fn(&Path) -> Option<bool>) {
        match (self.read)() {
            Ok(text) => {
                if std::mem::take(&mut self.failing) {
                    info!("{MOUNTINFO} is readable again");
                }
                engine.refresh_topology(&text, path_exists);
            }
            Err(e) => {
                self.failures.inc();
                if !std::mem::replace(&mut self.failing, true) {
                    warn!(error = %e, "cannot read {MOUNTINFO}; keeping the last mount table");
                }
            }
        }
    }
}

/// Notifies on every mount table change (mountinfo signals POLLPRI), from its own thread.
/// The channel holds one notice: a full channel already means "re-read", so mount churn
/// never queues more than that however fast it goes.
pub(super) fn watch_mountinfo(tx: mpsc::Sender<()>) {
    let spawn = std::thread::Builder::new()
        .name("mountinfo".into())
        .spawn(move || {
            let file = match std::fs::File::open(MOUNTINFO) {
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

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicBool, Ordering},
        time::SystemTime,
    };

    use super::*;
    use crate::{
        config::{Config, Watch},
        health::State,
        probes::events::KernelEvent,
        publish::{shared::Shared, snapshot::StatusPublisher},
        topology::{Sysfs, parse_mountinfo},
    };

    const TABLE: &str = "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
                         30 22 7:0 / /mnt/data rw - xfs /dev/loop0 rw\n";

    #[test]
    fn a_failed_read_keeps_a_failed_critical_mount_failed() {
        let sys = tempfile::tempdir().unwrap();
        let cfg = Config {
            watch: vec![Watch {
                path: "/mnt/data".into(),
                critical: true,
                require_mountpoint: false,
                must_be_mounted: false,
                read_only_ok: false,
                canary: std::time::Duration::ZERO,
            }],
            ..Config::default()
        };
        let shared = Arc::new(Shared::new(Metrics::new(), SystemTime::now(), true));
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut engine = Engine::new(
            Arc::new(cfg),
            Sysfs::new(sys.path()),
            shared.metrics.clone(),
            Arc::new(StatusPublisher::new(Arc::clone(&shared))),
            tx,
        );
        let broken = Arc::new(AtomicBool::new(false));
        let read: ReadMountinfo = {
            let broken = Arc::clone(&broken);
            Arc::new(move || {
                if broken.load(Ordering::SeqCst) {
                    Err(std::io::Error::other("injected"))
                } else {
                    Ok(TABLE.to_string())
                }
            })
        };
        let mut table = MountTable::new(read, &shared.metrics);
        table.refresh(&mut engine, &|_| Some(true));
        let dev = parse_mountinfo(TABLE).unwrap()[1].dev;
        engine.on_event(&KernelEvent::XfsShutdown {
            dev,
            ptag: 0x40,
            flags: 0x6,
            ts_ns: 0,
        });
        engine.publish();
        assert!(!shared.status().healthy);

        broken.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            table.refresh(&mut engine, &|_| Some(true));
            engine.publish();
        }
        let s = shared.status();
        let data = s
            .targets
            .iter()
            .find(|t| t.kind == "mount" && t.id == "/mnt/data")
            .unwrap_or_else(|| panic!("/mnt/data vanished: {:?}", s.targets));
        assert_eq!(data.state, State::Failed);
        assert!(data.critical);
        assert!(!s.healthy);
        assert_eq!(shared.metrics.mountinfo_read_failures.get(), 3);
    }
}
