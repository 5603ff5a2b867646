//! Scratch storage for GameDay: a fresh directory holding a backing file, the fault-injecting
//! FUSE file over it, a loop device over that, and XFS (or ext4) mounts of the loop device. Everything
//! is undone on drop, in the order that cannot hang: release parked I/O, end our child
//! processes, unmount our mounts, detach our loop device, unmount FUSE, remove the directory.
//! Nothing outside the directory is ever mounted, formatted or removed.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::topology::{MountEntry, read_mountinfo};

use super::{
    GamedayError,
    faultfile::{FaultFile, FaultOptions, Mode},
    interrupted,
};

/// mkfs.xfs (xfsprogs >= 5.19) refuses to make a filesystem smaller than 300 MiB.
pub const DISK_MB: u64 = 300;

/// Runs `program args` with a timeout (the child is killed by its PID on timeout or Ctrl-C);
/// returns its stdout.
pub fn run(program: &str, args: &[&str], timeout: Duration) -> Result<String, GamedayError> {
    run_inner(program, args, timeout, true)
}

/// [`run`] for cleanup steps, which must finish even after Ctrl-C.
fn run_to_end(program: &str, args: &[&str], timeout: Duration) -> Result<String, GamedayError> {
    run_inner(program, args, timeout, false)
}

fn run_inner(
    program: &str,
    args: &[&str],
    timeout: Duration,
    interruptible: bool,
) -> Result<String, GamedayError> {
    let stop = || interruptible && interrupted();
    let what = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| GamedayError::Command {
            what: what.clone(),
            detail: e.to_string(),
        })?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => {
                return Err(GamedayError::Command {
                    what,
                    detail: e.to_string(),
                });
            }
        }
        if stop() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            if stop() {
                return Err(GamedayError::Interrupted);
            }
            return Err(GamedayError::Command {
                what,
                detail: format!("no answer within {timeout:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child
        .wait_with_output()
        .map_err(|e| GamedayError::Command {
            what: what.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(GamedayError::Command {
            what,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A background command (a writer into the failing disk, a mount that hangs). Dropping it
/// kills it by its PID and reaps it.
pub struct Bg {
    child: Option<Child>,
}

impl Bg {
    pub fn sh(script: &str) -> Result<Bg, GamedayError> {
        Self::spawn(Command::new("sh").args(["-c", script]))
    }

    pub fn spawn(cmd: &mut Command) -> Result<Bg, GamedayError> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| GamedayError::Command {
                what: format!("{cmd:?}"),
                detail: e.to_string(),
            })?;
        Ok(Bg { child: Some(child) })
    }

    /// Waits up to `timeout` for the command to end; true if it did.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) | Err(_) = child.try_wait() {
                self.child = None;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Still unreaped, so the PID is still this child's.
            let _ = child.kill();
        }
        // A writer in D state dies once its I/O is released (the disk is back to pass first).
        if !self.wait(Duration::from_secs(15)) {
            tracing::warn!("a gameday child process did not exit after SIGKILL");
        }
    }
}

/// This process's mount table (empty if unreadable: callers then assume nothing is mounted
/// by them, and the scratch directory is left in place).
pub fn mount_points() -> Vec<MountEntry> {
    read_mountinfo().unwrap_or_default()
}

fn is_mounted(path: &Path, source: &str) -> bool {
    mount_points()
        .iter()
        .any(|m| m.mount_point == path && m.source == source)
}

/// The scratch disk and everything built on it.
pub struct Scratch {
    top: PathBuf,
    fault: Option<FaultFile>,
    loop_dev: Option<String>,
    loop_name: String,
    /// The filesystem `mkfs` makes and the mounts mount: `xfs` unless [`Scratch::mkfs_as`].
    fstype: &'static str,
    /// Mount points we mounted the loop device at (unmounted on drop).
    mounts: Vec<PathBuf>,
    children: Vec<Bg>,
}

impl Scratch {
    /// Creates `<workdir>/bindsto-gameday-XXXXXX` with the fault file and a loop device on it.
    pub fn new(workdir: &Path) -> Result<Scratch, GamedayError> {
        let template = workdir.join("bindsto-gameday-XXXXXX");
        let top = nix::unistd::mkdtemp(&template).map_err(|e| GamedayError::Scratch {
            what: format!("creating a directory in {}", workdir.display()),
            detail: e.to_string(),
        })?;
        let mut s = Scratch {
            top,
            fault: None,
            loop_dev: None,
            loop_name: String::new(),
            fstype: "xfs",
            mounts: Vec::new(),
            children: Vec::new(),
        };
        // From here on an early return drops `s`, which undoes what was done.
        for d in ["backing", "fuse", "mnt"] {
            std::fs::create_dir(s.top.join(d)).map_err(|e| GamedayError::Scratch {
                what: format!("creating {}", s.top.join(d).display()),
                detail: e.to_string(),
            })?;
        }
        let fault = FaultFile::mount(
            &s.top.join("backing/disk.img"),
            &s.top.join("fuse"),
            FaultOptions::default(),
        )
        .map_err(|e| GamedayError::Scratch {
            what: "serving the fault file".into(),
            detail: e.to_string(),
        })?;
        let image = fault.image();
        s.fault = Some(fault);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .and_then(|f| f.set_len(DISK_MB << 20))
            .map_err(|e| GamedayError::Scratch {
                what: format!("sizing {}", image.display()),
                detail: e.to_string(),
            })?;
        let dev = attach_buffered_loop(&image)?.to_string_lossy().into_owned();
        s.loop_name = dev.trim_start_matches("/dev/").to_string();
        s.loop_dev = Some(dev);
        // Never touch a device that is not backed by our own file.
        let backing =
            std::fs::read_to_string(format!("/sys/block/{}/loop/backing_file", s.loop_name))
                .unwrap_or_default();
        if Path::new(backing.trim()) != image {
            return Err(GamedayError::Scratch {
                what: format!("checking {}", s.loop_name),
                detail: format!("its backing file is {:?}, not ours", backing.trim()),
            });
        }
        Ok(s)
    }

    pub fn top(&self) -> &Path {
        &self.top
    }

    /// Where the filesystem is mounted.
    pub fn mnt(&self) -> PathBuf {
        self.top.join("mnt")
    }

    pub fn loop_dev(&self) -> &str {
        self.loop_dev.as_deref().unwrap_or_default()
    }

    pub fn loop_name(&self) -> &str {
        &self.loop_name
    }

    pub fn set_mode(&self, mode: Mode) {
        if let Some(f) = &self.fault {
            f.set_mode(mode);
        }
    }

    pub fn mkfs(&mut self) -> Result<(), GamedayError> {
        self.mkfs_as("xfs")
    }

    /// Makes `fstype` (`xfs` or `ext4`) on the loop device; later mounts mount it.
    pub fn mkfs_as(&mut self, fstype: &'static str) -> Result<(), GamedayError> {
        self.fstype = fstype;
        let dev = self.loop_dev().to_string();
        // No discard: it would go through the fault file to the backing file for nothing.
        let (program, args): (&str, Vec<&str>) = match fstype {
            "ext4" => ("mkfs.ext4", vec!["-F", "-q", "-E", "nodiscard", &dev]),
            _ => ("mkfs.xfs", vec!["-f", "-K", "-q", &dev]),
        };
        run(program, &args, Duration::from_secs(120)).map(|_| ())
    }

    /// Mounts the filesystem at `at` (a directory inside the scratch directory).
    pub fn mount_at(&mut self, at: &Path) -> Result<(), GamedayError> {
        self.mounts.push(at.to_path_buf());
        let at_s = at.to_string_lossy().into_owned();
        let dev = self.loop_dev().to_string();
        run(
            "mount",
            &["-t", self.fstype, &dev, &at_s],
            Duration::from_secs(60),
        )
        .map(|_| ())
    }

    /// Starts `mount -t <fstype>` of the loop device at `at` in the background (it may hang).
    pub fn mount_in_background(&mut self, at: &Path) -> Result<(), GamedayError> {
        self.mounts.push(at.to_path_buf());
        let dev = self.loop_dev().to_string();
        let bg = Bg::spawn(
            Command::new("mount")
                .args(["-t", self.fstype, &dev])
                .arg(at),
        )?;
        self.children.push(bg);
        Ok(())
    }

    /// Runs a shell script in the background; it is ended and reaped at cleanup.
    pub fn background(&mut self, script: &str) -> Result<(), GamedayError> {
        let bg = Bg::sh(script)?;
        self.children.push(bg);
        Ok(())
    }

    /// Waits for the background commands to end by themselves (at most `timeout`).
    pub fn wait_background(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for c in &mut self.children {
            c.wait(deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// Unmounts everything this scratch mounted (lazily when busy or shut down).
    pub fn unmount_all(&mut self) {
        let dev = self.loop_dev().to_string();
        for mp in std::mem::take(&mut self.mounts) {
            let mut tries = 0;
            while is_mounted(&mp, &dev) && tries < 20 {
                tries += 1;
                if nix::mount::umount2(&mp, nix::mount::MntFlags::empty()).is_err() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if is_mounted(&mp, &dev) {
                let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }

    fn cleanup(&mut self) {
        self.set_mode(Mode::Pass);
        self.children.clear();
        self.unmount_all();
        if let Some(dev) = self.loop_dev.take() {
            // Detach only if it is still ours (it may have been reused after an autoclear).
            let backing =
                std::fs::read_to_string(format!("/sys/block/{}/loop/backing_file", self.loop_name))
                    .unwrap_or_default();
            let ours = self
                .fault
                .as_ref()
                .is_some_and(|f| Path::new(backing.trim()) == f.image());
            if ours && let Err(e) = run_to_end("losetup", &["-d", &dev], Duration::from_secs(30)) {
                tracing::warn!(error = %e, "detaching {dev}");
            }
        }
        if let Some(mut f) = self.fault.take() {
            f.unmount(Duration::from_secs(10));
        }
        // Never remove across a mount point: anything still mounted below stays, with its dir.
        let busy = match read_mountinfo() {
            Ok(ms) => ms.iter().any(|m| m.mount_point.starts_with(&self.top)),
            Err(_) => true,
        };
        if busy {
            tracing::warn!(dir = %self.top.display(), "something is still mounted below; leaving the directory");
        } else if let Err(e) = std::fs::remove_dir_all(&self.top) {
            tracing::warn!(dir = %self.top.display(), error = %e, "removing the scratch directory");
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Attaches `image` to a free loop device with buffered I/O (`--direct-io=off`), so every
/// request becomes a read or write of the file (a FUSE fault file sees each one). Returns the
/// device path; the caller owns it from then on (detach it on every path).
pub fn attach_buffered_loop(image: &Path) -> Result<PathBuf, GamedayError> {
    let image_s = image.to_string_lossy().into_owned();
    let out = run(
        "losetup",
        &["--find", "--show", "--direct-io=off", &image_s],
        Duration::from_secs(30),
    )?;
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with("/dev/loop"))
        .map(PathBuf::from)
        .ok_or_else(|| GamedayError::Scratch {
            what: "attaching a loop device".into(),
            detail: format!("losetup printed no device: {out:?}"),
        })
}
