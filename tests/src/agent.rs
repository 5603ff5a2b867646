//! `Agent`: runs the `bindsto` binary with a test config on a free loopback port and talks to
//! its HTTP API with the agent's own blocking HTTP/1.1 client.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

/// How long one HTTP request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the agent binary is: `$BINDSTO_BIN`, else `bindsto` next to the running test's
/// profile dir (`target/<profile>/bindsto`), else `<workspace>/target/debug/bindsto`.
pub fn default_agent_bin() -> anyhow::Result<PathBuf> {
    crate::find_binary("bindsto", "BINDSTO_BIN", "cargo build -p bindsto")
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Returns `config` with its top-level `listen` key replaced by (or set to) `addr`. Only lines
/// before the first table header are top-level keys; the new key is put first.
pub fn set_listen(config: &str, addr: SocketAddr) -> String {
    let mut out = format!("listen = \"{addr}\"\n");
    let mut top_level = true;
    for line in config.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            top_level = false;
        }
        let is_listen = t
            .strip_prefix("listen")
            .is_some_and(|r| r.trim_start().starts_with('='));
        if top_level && is_listen {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A running `bindsto run --config <file>`, listening on a free 127.0.0.1 port.
///
/// Its stdout and stderr go to a log file, printed when the test panics (in Drop). Drop:
/// SIGTERM by PID, up to 5 s to exit, then SIGKILL.
pub struct Agent {
    child: Option<Child>,
    dir: TempDir,
    addr: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    bin: PathBuf,
}

impl Agent {
    /// Starts the agent found by [`default_agent_bin`] with `config_toml` (its `listen` is
    /// replaced by a free loopback port) and waits until `GET /healthz` answers (30 s).
    /// Panics with the agent's log if it does not come up.
    pub fn start(config_toml: &str) -> Agent {
        match Self::try_start(config_toml, &[]) {
            Ok(a) => a,
            Err(e) => panic!("starting the agent failed: {e:#}"),
        }
    }

    /// Like [`Agent::start`], with extra arguments after `run --config FILE` (e.g.
    /// `--dry-run`), returning an error instead of panicking.
    pub fn try_start(config_toml: &str, extra_args: &[&str]) -> anyhow::Result<Agent> {
        Self::start_with(default_agent_bin()?, config_toml, extra_args)
    }

    pub fn start_with(
        bin: impl AsRef<Path>,
        config_toml: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Agent> {
        Self::start_with_env(bin, config_toml, extra_args, &[])
    }

    /// Like [`Agent::start_with`], with extra environment variables for the agent.
    pub fn start_with_env(
        bin: impl AsRef<Path>,
        config_toml: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Agent> {
        Self::start_within(bin, config_toml, extra_args, env, Duration::from_secs(30))
    }

    /// Like [`Agent::start_with_env`], waiting up to `ready_within` for `/healthz` (a `bin`
    /// that first builds a large mount table needs longer than the usual 30 s).
    pub fn start_within(
        bin: impl AsRef<Path>,
        config_toml: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        ready_within: Duration,
    ) -> anyhow::Result<Agent> {
        let bin = bin.as_ref().to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("bindsto-agent-")
            .tempdir()
            .context("creating the agent's temp dir")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config_path = dir.path().join("bindsto.toml");
        std::fs::write(&config_path, set_listen(config_toml, addr))?;
        let log_path = dir.path().join("agent.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(extra_args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut agent = Agent {
            child: Some(child),
            dir,
            addr,
            config_path,
            log_path,
            bin,
        };
        // On error `agent` is dropped: the process is stopped and (if panicking) logged.
        agent.wait_healthz(ready_within)?;
        Ok(agent)
    }

    fn wait_healthz(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exit_status() {
                bail!(
                    "{} exited ({st}) before /healthz answered; log:\n{}",
                    self.bin.display(),
                    self.log()
                );
            }
            let err = match self.try_get("/healthz") {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "GET /healthz on {} did not answer within {timeout:?} (last error: {err:#}); \
                     log:\n{}",
                    self.addr,
                    self.log()
                );
            }
            // Fine-grained: the bench reads the time to ready from here.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PID of the agent process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The config file it runs with (with the substituted `listen`).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temp dir holding the config and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the agent printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The exit status if the agent has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// `GET path` -> (status code, body), errors as errors.
    pub fn try_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.addr, path, HTTP_TIMEOUT)
    }

    /// `GET path` -> (status code, body). Panics (pointing at the agent log, printed by Drop)
    /// if the request fails.
    pub fn get(&self, path: &str) -> (u16, String) {
        match self.try_get(path) {
            Ok(r) => r,
            Err(e) => panic!(
                "GET {path} on the agent at {} failed: {e:#} (agent log is printed below)",
                self.addr
            ),
        }
    }

    /// `GET /status` parsed as JSON.
    pub fn try_status(&self) -> anyhow::Result<serde_json::Value> {
        let (code, body) = self.try_get("/status")?;
        if code != 200 {
            bail!("GET /status answered {code}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET /status is not JSON: {body}"))
    }

    /// `GET /status` parsed as JSON; panics on failure.
    pub fn status(&self) -> serde_json::Value {
        match self.try_status() {
            Ok(v) => v,
            Err(e) => panic!("{e:#} (agent log is printed below)"),
        }
    }

    /// `GET /healthz` -> (code, body).
    pub fn healthz(&self) -> (u16, String) {
        self.get("/healthz")
    }

    /// `GET /metrics` body; panics unless it answers 200.
    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "GET /metrics answered {code}: {body}");
        body
    }

    /// Polls `GET /status` every `poll` until `pred` holds, for at most `timeout`. Returns how
    /// long it took, or an error naming the last status seen (failed polls are retried; an
    /// agent that exits ends the wait at once).
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        poll: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let last = match self.try_status() {
                Ok(v) => {
                    if pred(&v) {
                        return Ok(start.elapsed());
                    }
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                }
                Err(e) => format!("error: {e:#}"),
            };
            if let Some(st) = self.exit_status() {
                return Err(format!(
                    "the agent exited ({st}) after {:?}; last status: {last}",
                    start.elapsed()
                ));
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "condition not met within {timeout:?}; last status: {last}"
                ));
            }
            std::thread::sleep(poll);
        }
    }

    /// Sends `signal` by PID (e.g. SIGSTOP to freeze it), only while it is our unreaped child.
    pub fn signal(&mut self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        if !self.is_running() {
            bail!("the agent already exited");
        }
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).context("kill")?;
        Ok(())
    }

    /// `kill -9` by PID (no chance to clean up, as in a crash or an OOM kill) and reaps it.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        // Unreaped, so the PID is still our child's.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        child.wait().ok()
    }

    /// Stops the agent (SIGTERM, 5 s, SIGKILL) and returns how it exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        // Unreaped, so the PID is still our child's.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bindsto-tests: agent (pid {pid}) ignored SIGTERM for 5 s, SIGKILL");
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() || std::env::var_os("BINDSTO_TEST_SHOW_LOGS").is_some() {
            eprintln!(
                "----- agent log ({}) -----\n{}----- end of agent log -----",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// Blocking `GET path` -> (status code, body), through the agent's own client
/// ([`bindsto::api::client::get`]): a fresh socket per request, nothing pooled, so latencies
/// measured with it are the server's.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    bindsto::api::client::get(addr, path, timeout).with_context(|| format!("GET {path} on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_is_replaced_at_top_level_only() {
        let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let cfg = "# c\nlisten = \"0.0.0.0:9842\"\ndry_run = true\n[detect]\nlisten = 1\n";
        let out = set_listen(cfg, addr);
        assert_eq!(
            out,
            "listen = \"127.0.0.1:4242\"\n# c\ndry_run = true\n[detect]\nlisten = 1\n"
        );
        let out = set_listen("[[watch]]\npath = \"/x\"\n", addr);
        assert!(
            out.starts_with("listen = \"127.0.0.1:4242\"\n[[watch]]"),
            "{out}"
        );
    }
}
