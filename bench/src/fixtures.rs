//! What the measurements run on: the bench's own directory, a RAM-backed loop device, kernel
//! BPF statistics switched on for the run, and the release agent with the bench's config. The
//! agent harness, failing disks and child processes are the test suite's fixtures
//! (`bindsto_tests`), which end what they started by PID and undo every loop device and mount.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use bindsto_tests::{Agent, FaultyDisk, run_cmd};
use serde_json::Value;

/// Ramdisk size.
const RAM_MB: u64 = 1024;
/// How long the agent may take to come up (10,000 bind mounts are made before it starts).
const AGENT_READY: Duration = Duration::from_secs(120);

/// `sh -c script` -> its output; fails unless it exits 0 within `timeout`.
pub fn sh(script: &str, timeout: Duration) -> Result<String> {
    run_cmd("sh", &["-c", script], timeout)
}

/// `kernel.bpf_stats_enabled=1` for the run, restored afterwards.
pub struct BpfStats(String);

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let p = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(p)?.trim().to_string();
        std::fs::write(p, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats(old))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// A directory the bench owns; removed at the end unless something is still mounted in it.
pub struct BenchDir(PathBuf);

impl BenchDir {
    pub fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(format!("bindsto-bench-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(BenchDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        if bindsto_tests::sys::mounts_under(&self.0).is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A loop device over a file on a tmpfs of our own: the fastest block device there is, so
/// tracing overhead is as visible as it can be.
pub struct RamLoop {
    dir: PathBuf,
    pub dev: String,
    tmpfs: bool,
}

impl RamLoop {
    pub fn new(scratch: &Path) -> Result<Self> {
        Self::make(scratch, true)
    }

    /// The same over a file on the disk the scratch directory is on (direct I/O to it, so
    /// the page cache does not turn it into a RAM disk again).
    pub fn on_disk(scratch: &Path) -> Result<Self> {
        Self::make(scratch, false)
    }

    fn make(scratch: &Path, tmpfs: bool) -> Result<Self> {
        let dir = scratch.join(if tmpfs { "ram" } else { "disk" });
        std::fs::create_dir_all(&dir)?;
        if tmpfs {
            let size = format!("size={}m", RAM_MB + 64);
            let d = dir.to_string_lossy().into_owned();
            run_cmd(
                "mount",
                &["-t", "tmpfs", "-o", &size, "bindsto-bench", &d],
                Duration::from_secs(30),
            )?;
        }
        let mut r = RamLoop {
            dir,
            dev: String::new(),
            tmpfs,
        };
        let img = r.dir.join("img");
        std::fs::File::create(&img)?.set_len(RAM_MB << 20)?;
        // Fill it, so reads hit real pages rather than holes.
        sh(
            &format!(
                "dd if=/dev/zero of={} bs=1M count={RAM_MB} conv=notrunc status=none",
                img.display()
            ),
            Duration::from_secs(300),
        )?;
        let out = sh(
            &format!(
                "losetup --find --show {} {}",
                if tmpfs { "" } else { "--direct-io=on" },
                img.display()
            ),
            Duration::from_secs(30),
        )?;
        r.dev = out
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("/dev/loop"))
            .unwrap_or_default()
            .to_string();
        if r.dev.is_empty() {
            bail!("losetup gave {out:?}");
        }
        Ok(r)
    }

    pub fn name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }
}

impl Drop for RamLoop {
    fn drop(&mut self) {
        if !self.dev.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        }
        if self.tmpfs {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A failing disk for the footprint and overload runs: the test suite's faultyfs under a loop
/// device, small (no filesystem goes on it).
pub fn faulty_disk(faultyfs: &Path) -> Result<FaultyDisk> {
    FaultyDisk::with_binary(faultyfs, 64)
}

/// The release agent with the bench config (dry run, 1 s scans, thresholds no run reaches),
/// on a free port, logging warnings only.
pub struct BenchAgent(pub Agent);

impl BenchAgent {
    /// Starts it; with `wrap`, in its own mount namespace (private propagation) after the shell
    /// commands `wrap`, so the mounts they make stay out of everyone else's. The wrapper execs
    /// into the agent, so the PID is the agent's.
    pub fn start(bin: &Path, scratch: &Path, tag: &str, wrap: Option<&str>) -> Result<Self> {
        Self::start_env(bin, scratch, tag, wrap, &[])
    }

    /// As [`Self::start`], with extra environment variables for the agent.
    pub fn start_env(
        bin: &Path,
        scratch: &Path,
        tag: &str,
        wrap: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let config = "dry_run = true\n[detect]\nscan_interval = \"1s\"\n\
                      io_stall_after = \"30s\"\nmount_blocked_after = \"60s\"\n";
        let program = match wrap {
            Some(prefix) => {
                let script = scratch.join(format!("agent-{tag}.sh"));
                std::fs::write(
                    &script,
                    format!(
                        "#!/bin/sh\nexec unshare --mount --propagation private sh -c '{prefix}\n\
                         exec \"$0\" \"$@\"' '{}' \"$@\"\n",
                        bin.display()
                    ),
                )?;
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
                script
            }
            None => bin.to_path_buf(),
        };
        let agent =
            Agent::start_within(&program, config, &["--log-level", "warn"], env, AGENT_READY)
                .with_context(|| format!("agent {tag} did not come up"))?;
        Ok(BenchAgent(agent))
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Sum of every sample of the metric lines starting with `name`; NaN if unreadable.
    pub fn metric(&self, name: &str) -> f64 {
        self.0
            .try_get("/metrics")
            .map(|(_, m)| {
                m.lines()
                    .filter(|l| l.starts_with(name))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(f64::NAN)
    }

    pub fn status(&self) -> Option<Value> {
        self.0.try_status().ok()
    }
}
