//! `FaultyDisk`: a loop device over a file served by `faultyfs` (FUSE), whose reads and writes
//! can be switched between pass-through, EIO and hang at run time.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tempfile::TempDir;

use crate::proc::run_cmd;
use crate::sys::{
    BlockStat, block_inflight, block_stat, loop_backing_file, mounts_at, mounts_under,
};

/// What faultyfs does with reads, writes and fsyncs of the disk image: pass, error (every
/// request answers EIO, a force-detached EBS volume) or hang (parked until the mode goes back to
/// pass, a stalled volume; switching from hang to error fails the parked requests). The agent's
/// gameday file is what faultyfs serves, so its mode is the one type.
pub use bindsto::gameday::faultfile::Mode;

/// The answer to faultyfs' `status` command.
#[derive(Debug, Clone)]
pub struct FaultyStatus {
    pub mode: Mode,
    /// Requests parked right now (hang mode).
    pub parked: u64,
    /// Reads/writes/fsyncs served from the backing file so far.
    pub reads: u64,
    pub writes: u64,
    pub fsyncs: u64,
    /// Requests answered with EIO so far.
    pub eio: u64,
    /// Every `key=value` of the answer.
    pub fields: BTreeMap<String, String>,
}

impl FaultyStatus {
    fn parse(line: &str) -> anyhow::Result<Self> {
        let rest = line
            .strip_prefix("ok ")
            .ok_or_else(|| anyhow!("bad status answer {line:?}"))?;
        let fields: BTreeMap<String, String> = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let num = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Self {
            mode: fields
                .get("mode")
                .and_then(|m| Mode::parse(m))
                .ok_or_else(|| anyhow!("no mode in {line:?}"))?,
            parked: num("parked"),
            reads: num("reads"),
            writes: num("writes"),
            fsyncs: num("fsyncs"),
            eio: num("eio"),
            fields,
        })
    }
}

/// A loop device over `<tmp>/mnt/disk.img`, a file served by a `faultyfs` child process from
/// `<tmp>/backing/disk.img`; controlled through `<tmp>/ctl.sock`.
///
/// Drop (also during a panic): mode `pass`, `losetup -d` (only if the device still points at our
/// image), `quit` to faultyfs (it unmounts itself), `fusermount3 -u` then `-uz` if the FUSE
/// mount is still there, SIGTERM/SIGKILL of the faultyfs child by PID if it has not exited, and
/// the temp dir is removed unless something is still mounted below it. The faultyfs log is
/// printed when a test panicked.
pub struct FaultyDisk {
    dir: Option<TempDir>,
    workdir: PathBuf,
    mountpoint: PathBuf,
    image: PathBuf,
    backing: PathBuf,
    ctl: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    loop_dev: Option<PathBuf>,
    loop_name: String,
    dev_id: String,
    size: u64,
}

/// Where the faultyfs binary is: `$FAULTYFS_BIN`, else next to the running test executable
/// (`target/<profile>/faultyfs` for `target/<profile>/deps/<test>`), else
/// `<workspace>/target/debug/faultyfs`.
pub fn default_faultyfs_bin() -> anyhow::Result<PathBuf> {
    crate::find_binary(
        "faultyfs",
        "FAULTYFS_BIN",
        "cargo build -p bindsto-tests --bin faultyfs",
    )
}

impl FaultyDisk {
    /// A disk of `size_mb` MiB (sparse), with faultyfs found by [`default_faultyfs_bin`].
    /// mkfs.xfs needs at least 300 MiB.
    pub fn new(size_mb: u64) -> anyhow::Result<Self> {
        Self::with_binary(default_faultyfs_bin()?, size_mb)
    }

    /// Same with an explicit faultyfs binary, e.g. `faultyfs_bin!()` in an integration test.
    pub fn with_binary(bin: impl AsRef<Path>, size_mb: u64) -> anyhow::Result<Self> {
        let bin = bin.as_ref();
        let dir = tempfile::Builder::new()
            .prefix("bindsto-faultyfs-")
            .tempdir()
            .context("creating the faultyfs work dir")?;
        let workdir = dir.path().canonicalize()?;
        let mountpoint = workdir.join("mnt");
        let backing_dir = workdir.join("backing");
        std::fs::create_dir(&mountpoint)?;
        std::fs::create_dir(&backing_dir)?;
        let log = workdir.join("faultyfs.log");
        let mut disk = FaultyDisk {
            dir: Some(dir),
            workdir: workdir.clone(),
            image: mountpoint.join("disk.img"),
            backing: backing_dir.join("disk.img"),
            ctl: workdir.join("ctl.sock"),
            mountpoint,
            log: log.clone(),
            child: None,
            loop_dev: None,
            loop_name: String::new(),
            dev_id: String::new(),
            size: size_mb * 1024 * 1024,
        };
        // From here on, an early return drops `disk`, which undoes whatever was done.
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("--backing-dir")
            .arg(&backing_dir)
            .arg("--mountpoint")
            .arg(&disk.mountpoint)
            .arg("--control")
            .arg(&disk.ctl)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        disk.child = Some(child);
        disk.wait_ready(Duration::from_secs(15))?;

        // Size the image through FUSE (setattr), as a user of the mount would.
        OpenOptions::new()
            .write(true)
            .open(&disk.image)
            .with_context(|| format!("opening {}", disk.image.display()))?
            .set_len(disk.size)
            .context("sizing the disk image")?;

        // Buffered loop I/O (--direct-io=off): every request becomes a read/write on the FUSE
        // file, which faultyfs opens with FOPEN_DIRECT_IO so nothing is served from a cache.
        let dev = bindsto::gameday::attach_buffered_loop(&disk.image)?;
        let name = dev
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        disk.loop_dev = Some(dev.clone());
        disk.loop_name = name.clone();
        match loop_backing_file(&name) {
            Some(b) if b == disk.image => {}
            other => bail!(
                "{} attached, but sysfs says its backing file is {other:?}",
                dev.display()
            ),
        }
        disk.dev_id = std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .with_context(|| format!("reading /sys/block/{name}/dev"))?
            .trim()
            .to_string();
        Ok(disk)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(st)) = child.try_wait()
            {
                bail!("faultyfs exited early ({st}):\n{}", self.log());
            }
            if self.ctl.exists()
                && self.control("ping").is_ok()
                && mounts_at(&self.mountpoint)
                    .iter()
                    .any(|m| m.source == "faultyfs")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "faultyfs did not come up within {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/dev/loopN`.
    pub fn loop_dev(&self) -> PathBuf {
        self.loop_dev.clone().unwrap_or_default()
    }

    /// `loopN`.
    pub fn loop_name(&self) -> String {
        self.loop_name.clone()
    }

    /// `major:minor` of the loop device, e.g. `7:3`.
    pub fn dev_id(&self) -> String {
        self.dev_id.clone()
    }

    /// Size of the disk in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The disk image on the FUSE mount (the loop device's backing file).
    pub fn image_path(&self) -> &Path {
        &self.image
    }

    /// The real file behind it.
    pub fn backing_path(&self) -> &Path {
        &self.backing
    }

    /// The FUSE mount point.
    pub fn fuse_mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The temp dir holding everything (mount point, backing file, control socket, log).
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// The control socket.
    pub fn control_socket(&self) -> &Path {
        &self.ctl
    }

    /// PID of the faultyfs child (0 once reaped).
    pub fn faultyfs_pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// faultyfs' log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends one control command and returns the answer line.
    pub fn control(&self, cmd: &str) -> anyhow::Result<String> {
        self.control_timeout(cmd, Duration::from_secs(10))
    }

    fn control_timeout(&self, cmd: &str, timeout: Duration) -> anyhow::Result<String> {
        let mut s = UnixStream::connect(&self.ctl)
            .with_context(|| format!("connecting to {}", self.ctl.display()))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        writeln!(s, "{cmd}")?;
        let mut line = String::new();
        BufReader::new(&s)
            .read_line(&mut line)
            .with_context(|| format!("waiting for faultyfs to answer {cmd:?}"))?;
        let line = line.trim_end().to_string();
        if !line.starts_with("ok") {
            bail!("faultyfs answered {cmd:?} with {line:?}");
        }
        Ok(line)
    }

    /// Switches what faultyfs does with reads, writes and fsyncs. Leaving `Hang` releases the
    /// parked requests before this returns.
    pub fn set_mode(&self, mode: Mode) -> anyhow::Result<()> {
        self.control(mode.name()).map(|_| ())
    }

    pub fn status(&self) -> anyhow::Result<FaultyStatus> {
        FaultyStatus::parse(&self.control("status")?)
    }

    /// `/sys/block/<loop>/inflight`: (reads, writes).
    pub fn inflight(&self) -> anyhow::Result<(u64, u64)> {
        block_inflight(&self.loop_name)
    }

    /// `/sys/block/<loop>/stat`.
    pub fn block_stat(&self) -> anyhow::Result<BlockStat> {
        block_stat(&self.loop_name)
    }

    fn cleanup(&mut self) {
        let alive = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if alive && let Err(e) = self.set_mode(Mode::Pass) {
            eprintln!("bindsto-tests: FaultyDisk drop: set pass: {e:#}");
        }

        // 1. Detach the loop device, only if it still is ours.
        if let Some(dev) = self.loop_dev.take() {
            let name = self.loop_name.clone();
            if loop_backing_file(&name).is_some_and(|b| b == self.image) {
                let d = dev.to_string_lossy().into_owned();
                if let Err(e) = run_cmd("losetup", &["-d", &d], Duration::from_secs(30)) {
                    eprintln!("bindsto-tests: FaultyDisk drop: {e:#}");
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while loop_backing_file(&name).is_some_and(|b| b == self.image)
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if loop_backing_file(&name).is_some_and(|b| b == self.image) {
                    eprintln!(
                        "bindsto-tests: FaultyDisk drop: {d} still attached (still mounted \
                         somewhere?); it will auto-clear when released"
                    );
                }
            }
        }

        // 2. Ask faultyfs to quit: it releases parked requests and unmounts itself.
        if alive && let Err(e) = self.control_timeout("quit", Duration::from_secs(20)) {
            eprintln!("bindsto-tests: FaultyDisk drop: quit: {e:#}");
        }
        let exited = self.wait_child(Duration::from_secs(15));

        // 3. Still mounted? Unmount it ourselves, lazily as a last resort.
        let ours =
            |m: &crate::sys::MountEntry| m.source == "faultyfs" && m.fstype.starts_with("fuse");
        if mounts_at(&self.mountpoint).iter().any(ours) {
            let mp = self.mountpoint.to_string_lossy().into_owned();
            if let Err(e) = run_cmd("fusermount3", &["-u", &mp], Duration::from_secs(10)) {
                eprintln!("bindsto-tests: FaultyDisk drop: {e:#}");
                if let Err(e) = run_cmd("fusermount3", &["-u", "-z", &mp], Duration::from_secs(10))
                {
                    eprintln!("bindsto-tests: FaultyDisk drop: {e:#}");
                }
            }
        }

        // 4. End the child by PID if it has not exited.
        if !exited {
            self.kill_child();
        }

        if std::thread::panicking() {
            eprintln!(
                "----- faultyfs log ({}) -----\n{}----- end of faultyfs log -----",
                self.log.display(),
                self.log()
            );
        }

        // 5. Remove the temp dir, unless something is still mounted below it.
        if let Some(dir) = self.dir.take() {
            let left = mounts_under(&self.workdir);
            if left.is_empty() {
                if let Err(e) = dir.close() {
                    eprintln!("bindsto-tests: FaultyDisk drop: removing work dir: {e}");
                }
            } else {
                eprintln!(
                    "bindsto-tests: FaultyDisk drop: keeping {} (still mounted: {left:?})",
                    self.workdir.display()
                );
                let _ = dir.keep();
            }
        }
    }

    fn wait_child(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return true,
                Ok(None) if Instant::now() >= deadline => return false,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn kill_child(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        // Still unreaped, so the PID is still this child's.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        eprintln!("bindsto-tests: FaultyDisk drop: faultyfs (pid {pid}) still running, SIGTERM");
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if self.wait_child(Duration::from_secs(5)) {
            return;
        }
        if let Some(child) = self.child.as_mut() {
            eprintln!("bindsto-tests: FaultyDisk drop: faultyfs (pid {pid}) SIGKILL");
            let _ = child.kill();
        }
        self.wait_child(Duration::from_secs(5));
    }
}

impl Drop for FaultyDisk {
    fn drop(&mut self) {
        self.cleanup();
    }
}
