//! A one-file FUSE filesystem that injects faults: it serves `disk.img`, whose bytes live in a
//! real backing file, and passes its reads and writes through, fails them with `EIO`, or parks
//! them until the mode changes. A loop device over that file is a disk that can be made to fail
//! or hang on demand. `bindsto gameday` runs it in-process; the test suite's `faultyfs` binary
//! wraps it with a control socket.
//!
//! Metadata operations (lookup, getattr, setattr, open, flush, release, statfs, readdir) always
//! pass, so `losetup` can attach and detach the file in every mode. The FUSE loop is never
//! blocked: a parked request is a closure owning the reply object, run when the mode changes.

mod fs;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{BackgroundSession, Config, INodeNo, MountOption, Session, SessionACL};

use fs::FaultyFs;

/// The name of the one file served.
pub const FILE_NAME: &str = "disk.img";
const FILE_INO: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FaultFileError {
    #[error("opening the backing file {path}: {source}")]
    Backing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting the fault-injecting FUSE file system at {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What happens to data requests (read, write, fsync, fallocate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Served against the backing file.
    Pass,
    /// Answered with `EIO`.
    Error,
    /// Parked until the mode changes.
    Hang,
    /// Every second request answered with `EIO`, the others served: a device that fails
    /// often but is not dead.
    Flaky,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pass => "pass",
            Mode::Error => "error",
            Mode::Hang => "hang",
            Mode::Flaky => "flaky",
        }
    }

    /// The mode a control command or status line names ([`Mode::name`] backwards).
    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Pass, Mode::Error, Mode::Hang, Mode::Flaky]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// What to do with a data request: serve it against the backing file or fail it with EIO.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Disposition {
    Serve,
    Fail,
}

/// A data request with its reply object, runnable now or later (when parked).
type Job = Box<dyn FnOnce(&FaultShared, Disposition) + Send>;

struct FaultState {
    mode: Mode,
    parked: VecDeque<Job>,
    /// Flips per request in `Flaky`: the next one fails when true.
    flaky_turn: bool,
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    fsyncs: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    eio: AtomicU64,
    parked_total: AtomicU64,
}

/// The state shared by the FUSE threads and whoever switches modes.
pub struct FaultShared {
    backing: File,
    state: Mutex<FaultState>,
    counters: Counters,
    direct_io: bool,
    verbose: bool,
}

impl FaultShared {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `job` now (pass/error) or parks it (hang). Parking happens under the state lock,
    /// so a concurrent mode switch never loses a request.
    fn submit(&self, what: &str, job: Job) {
        let mut st = self.lock();
        match st.mode {
            Mode::Pass => {
                drop(st);
                job(self, Disposition::Serve);
            }
            Mode::Error => {
                drop(st);
                job(self, Disposition::Fail);
            }
            Mode::Flaky => {
                st.flaky_turn = !st.flaky_turn;
                let d = if st.flaky_turn {
                    Disposition::Fail
                } else {
                    Disposition::Serve
                };
                drop(st);
                job(self, d);
            }
            Mode::Hang => {
                if self.verbose {
                    eprintln!("faultyfs: parking {what}");
                }
                self.counters.parked_total.fetch_add(1, Ordering::Relaxed);
                st.parked.push_back(job);
            }
        }
    }

    /// Switches mode and returns how many parked requests were released. Leaving `hang` runs
    /// the parked jobs while still holding the lock, so a request arriving after the switch is
    /// served only after every parked one.
    /// Whether this file logs its own mode changes and parked requests.
    pub fn verbose(&self) -> bool {
        self.verbose
    }

    pub fn set_mode(&self, mode: Mode) -> usize {
        let mut st = self.lock();
        let old = st.mode;
        st.mode = mode;
        let mut released = 0;
        if mode != Mode::Hang {
            let disposition = if mode == Mode::Pass {
                Disposition::Serve
            } else {
                Disposition::Fail
            };
            while let Some(job) = st.parked.pop_front() {
                job(self, disposition);
                released += 1;
            }
        }
        drop(st);
        if self.verbose {
            log_mode_change(old, mode, released);
        }
        released
    }

    pub fn mode(&self) -> Mode {
        self.lock().mode
    }

    /// One line: `ok mode=.. parked=.. reads=.. writes=.. ...`.
    pub fn status_line(&self) -> String {
        let st = self.lock();
        let c = &self.counters;
        let size = self.backing.metadata().map(|m| m.len()).unwrap_or(0);
        format!(
            "ok mode={} parked={} parked_total={} reads={} writes={} fsyncs={} read_bytes={} \
             written_bytes={} eio={} size={} direct_io={}",
            st.mode.name(),
            st.parked.len(),
            c.parked_total.load(Ordering::Relaxed),
            c.reads.load(Ordering::Relaxed),
            c.writes.load(Ordering::Relaxed),
            c.fsyncs.load(Ordering::Relaxed),
            c.read_bytes.load(Ordering::Relaxed),
            c.written_bytes.load(Ordering::Relaxed),
            c.eio.load(Ordering::Relaxed),
            size,
            self.direct_io,
        )
    }
}

/// Seconds.milliseconds since the epoch, for log lines that are compared with other logs.
pub fn timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// How the file is served.
#[derive(Clone, Copy, Debug)]
pub struct FaultOptions {
    /// `FOPEN_DIRECT_IO`: every read and write of the loop driver reaches the server (no FUSE
    /// page cache serving reads behind its back).
    pub direct_io: bool,
    /// Log every request and mode switch on stderr.
    pub verbose: bool,
}

impl Default for FaultOptions {
    fn default() -> Self {
        FaultOptions {
            direct_io: true,
            verbose: false,
        }
    }
}

/// A mounted fault file: `<mountpoint>/disk.img` backed by `<backing>`, served by FUSE threads
/// of this process. Dropping it unmounts (lazily when a loop device still holds the file).
pub struct FaultFile {
    shared: Arc<FaultShared>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl FaultFile {
    /// Opens (creates) `backing`, mounts the file system at `mountpoint` (an existing empty
    /// directory) and serves it from background threads, in `pass` mode.
    pub fn mount(
        backing: &Path,
        mountpoint: &Path,
        opts: FaultOptions,
    ) -> Result<FaultFile, FaultFileError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(backing)
            .map_err(|source| FaultFileError::Backing {
                path: backing.to_path_buf(),
                source,
            })?;
        let shared = Arc::new(FaultShared {
            backing: file,
            state: Mutex::new(FaultState {
                mode: Mode::Pass,
                flaky_turn: false,
                parked: VecDeque::new(),
            }),
            counters: Counters::default(),
            direct_io: opts.direct_io,
            verbose: opts.verbose,
        });
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("faultyfs".into()),
            MountOption::Subtype("faultyfs".into()),
            MountOption::NoSuid,
            MountOption::NoDev,
        ];
        config.acl = SessionACL::All;
        config.n_threads = Some(2);
        let mount_err = |source| FaultFileError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        };
        let session = Session::new(
            FaultyFs {
                shared: Arc::clone(&shared),
            },
            mountpoint,
            &config,
        )
        .map_err(mount_err)?;
        let session = session.spawn().map_err(mount_err)?;
        Ok(FaultFile {
            shared,
            session: Some(session),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// The served file (what `losetup` attaches).
    pub fn image(&self) -> PathBuf {
        self.mountpoint.join(FILE_NAME)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The mode switch and counters, shareable with other threads.
    pub fn shared(&self) -> Arc<FaultShared> {
        Arc::clone(&self.shared)
    }

    pub fn set_mode(&self, mode: Mode) -> usize {
        self.shared.set_mode(mode)
    }

    /// True once the FUSE session has ended (someone unmounted it).
    pub fn session_ended(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Releases parked requests, unmounts and waits (at most `grace`) for the FUSE threads. A
    /// file still held (a loop device not yet detached) is unmounted lazily: the connection
    /// lives on until its last user goes away, and the threads are left to finish then.
    pub fn unmount(&mut self, grace: Duration) {
        self.shared.set_mode(Mode::Pass);
        let Some(session) = self.session.take() else {
            return;
        };
        if nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::empty()).is_err() {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(session.join());
        });
        if rx.recv_timeout(grace).is_err() {
            eprintln!(
                "faultyfs: {} still referenced after {grace:?}; leaving its threads",
                self.mountpoint.display()
            );
        }
    }
}

impl Drop for FaultFile {
    fn drop(&mut self) {
        self.unmount(Duration::from_secs(10));
    }
}

/// The line a mode change prints on stderr (faultyfs always prints it; the gameday when verbose).
pub fn log_mode_change(old: Mode, new: Mode, released: usize) {
    eprintln!(
        "faultyfs: {} mode {} -> {} (released {released})",
        timestamp(),
        old.name(),
        new.name()
    );
}
