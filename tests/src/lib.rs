//! Privileged test fixtures for bindsto: a FUSE-backed faulty disk under a loop device, an XFS
//! on it, background commands that may block in D state, and a harness for the agent binary.
//!
//! Everything here needs root, loop devices, FUSE and mount(2). Tests in this crate must run one
//! at a time:
//!
//! ```text
//! cargo build -p bindsto            # the agent tests run target/debug/bindsto (or $BINDSTO_BIN)
//! cargo test -p bindsto-tests -- --test-threads=1
//! ```
//!
//! Each test also takes [`serial()`] first, so a forgotten `--test-threads=1` cannot make two
//! tests fight over the same loop devices, mounts or probes.
//!
//! Every fixture cleans up in `Drop`, also while a test panics: it touches only the loop
//! devices, mounts and processes it created itself, and ends processes by PID (never by name).
//! Typical use:
//!
//! ```no_run
//! use bindsto_tests::{FaultyDisk, Mode, XfsMount, require_root, serial};
//! # fn main() -> anyhow::Result<()> {
//! require_root();
//! let _serial = serial();
//! let disk = FaultyDisk::new(300)?; // 300 MiB: mkfs.xfs refuses smaller
//! let xfs = XfsMount::new(&disk)?;
//! std::fs::write(xfs.path().join("f"), b"data")?;
//! disk.set_mode(Mode::Error)?;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod aws;
pub mod bpfmap;
pub mod churn;
pub mod faulty;
pub mod fleet;
pub mod ladder;
pub mod proc;
pub mod status;
pub mod sys;
pub mod unit;
pub mod xfs;

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

pub use agent::{Agent, http_get};
pub use faulty::{FaultyDisk, FaultyStatus, Mode};
pub use proc::{BgProcess, CmdOutput, run_cmd, run_with_timeout};
pub use sys::{BlockStat, MountEntry, block_inflight, block_stat, loop_devices_backed_by};
pub use xfs::XfsMount;

/// Panics with a clear message unless the test runs as root. Privileged tests must fail, not
/// skip silently, when run without the privileges they need.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (loop devices, FUSE, mount(2), BPF): run \
             `cargo test -p bindsto-tests -- --test-threads=1` as root"
        );
    }
}

/// Finds a binary of this workspace: `$<env>`, else next to the running test executable
/// (`target/<profile>/<name>` for `target/<profile>/deps/<test>`), else
/// `<workspace>/target/debug/<name>`.
pub fn find_binary(name: &str, env: &str, build_hint: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join(name));
        if let Some(parent) = dir.parent() {
            candidates.push(parent.join(name));
        }
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug")
            .join(name),
    );
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{name} binary not found (tried {candidates:?}); build it with `{build_hint}` \
                 or set {env}"
            )
        })
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Held for the whole run of one privileged test: the in-process mutex keeps the harness's
/// threads apart, the file lock keeps test runs from other checkouts apart (their agents would
/// see each other's faults, since every agent observes every XFS mount of the host).
pub struct Serial {
    _lock: MutexGuard<'static, ()>,
    _file: Option<std::fs::File>,
}

/// A lock every privileged test holds for its whole run, so tests never overlap, even across
/// test processes. A panicking test poisons nothing here; the file lock ends with the process.
pub fn serial() -> Serial {
    let lock = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/bindsto-tests.lock")
        .ok()
        .filter(|f| f.lock().is_ok());
    Serial {
        _lock: lock,
        _file: file,
    }
}

/// `require_root()` + `serial()`: the usual first line of a privileged test.
pub fn privileged() -> Serial {
    require_root();
    serial()
}

/// Expands to the path of the `faultyfs` binary as Cargo built it for this package's
/// integration tests (`env!("CARGO_BIN_EXE_faultyfs")`).
#[macro_export]
macro_rules! faultyfs_bin {
    () => {
        env!("CARGO_BIN_EXE_faultyfs")
    };
}
