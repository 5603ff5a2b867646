//! Child processes a test can abandon: writes and syncs against a hanging disk block in D state,
//! so they run as children, never on the test thread.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process with stdout and stderr captured (interleaved) into an unnamed temp file.
///
/// It runs in its own process group. Drop: if it still runs, SIGKILL to its process group (by
/// its PID, while it is unreaped); it is reaped right away if it dies within half a
/// second, otherwise (a process in D state dies only when its I/O completes, e.g. when the disk
/// goes back to `pass` in a later fixture's Drop) a detached thread reaps it later.
pub struct BgProcess {
    label: String,
    child: Option<Child>,
    out: File,
    started: Instant,
    status: Option<ExitStatus>,
}

impl BgProcess {
    /// Spawns `cmd` with stdin from /dev/null and stdout+stderr captured.
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        let label = format!("{cmd:?}");
        let out = tempfile::tempfile().context("creating an output file")?;
        // Its own process group, so Drop can also end what a `sh -c` script started.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out.try_clone()?))
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("spawning {label}"))?;
        Ok(Self {
            label,
            child: Some(child),
            out,
            started: Instant::now(),
            status: None,
        })
    }

    /// Spawns `sh -c script`.
    pub fn sh(script: &str) -> anyhow::Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        Self::spawn(cmd)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Time since the spawn.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The exit status if it has exited (reaps it), `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(st)) = child.try_wait()
        {
            self.status = Some(st);
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut off = 0u64;
        while let Ok(n) = self.out.read_at(&mut chunk, off) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            off += n as u64;
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Process state letter from /proc (`D` = uninterruptible sleep), `None` once exited.
    pub fn proc_state(&mut self) -> Option<char> {
        if !self.is_running() {
            return None;
        }
        crate::sys::proc_state(self.pid())
    }

    /// Kernel function it sleeps in (`/proc/PID/wchan`), `None` once exited.
    pub fn wchan(&mut self) -> Option<String> {
        if !self.is_running() {
            return None;
        }
        crate::sys::proc_wchan(self.pid())
    }

    /// Sends `signal` to the child's process group (the child and whatever it started), only
    /// while the child is unreaped, so the group id is still ours.
    pub fn signal_group(&mut self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        if !self.is_running() {
            bail!("{} already exited", self.label);
        }
        let pgid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::killpg(pgid, signal).context("killpg")?;
        Ok(())
    }

    /// Sends `signal` by PID, only while the child is still ours and unreaped.
    pub fn signal(&mut self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        if !self.is_running() {
            bail!("{} already exited", self.label);
        }
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).context("kill")?;
        Ok(())
    }
}

impl Drop for BgProcess {
    fn drop(&mut self) {
        if !self.is_running() {
            return;
        }
        let _ = self.signal_group(nix::sys::signal::Signal::SIGKILL);
        if self.wait_timeout(Duration::from_millis(500)).is_some() {
            return;
        }
        if let Some(mut child) = self.child.take() {
            eprintln!(
                "bindsto-tests: {} (pid {}) did not die yet (D state?); reaping it in the \
                 background",
                self.label,
                child.id()
            );
            let _ = std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || {
                    let _ = child.wait();
                });
        }
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub status: ExitStatus,
    /// stdout and stderr, interleaved.
    pub output: String,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Runs `cmd` as a child and waits at most `timeout`. On timeout the child is abandoned
/// (SIGKILL, reaped in the background) and an error is returned: the caller's thread never
/// blocks longer than `timeout`, even if the command hangs in D state.
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> anyhow::Result<CmdOutput> {
    let mut p = BgProcess::spawn(cmd)?;
    match p.wait_timeout(timeout) {
        Some(status) => Ok(CmdOutput {
            status,
            output: p.output(),
            elapsed: p.elapsed(),
        }),
        None => {
            let (state, wchan) = (p.proc_state(), p.wchan());
            bail!(
                "{} did not finish within {timeout:?} (state {state:?}, wchan {wchan:?}); \
                 output so far:\n{}",
                p.label(),
                p.output()
            )
        }
    }
}

/// Runs `program args...` with a timeout and fails unless it exits 0. Returns its output.
pub fn run_cmd(program: &str, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_with_timeout(cmd, timeout)?;
    if !out.success() {
        bail!(
            "`{program} {}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            out.output
        );
    }
    Ok(out.output)
}
