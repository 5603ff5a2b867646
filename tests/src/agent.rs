//! `Agent`: runs the `bindsto` binary with a test config on a free loopback port and talks to
//! its HTTP API with a tiny blocking HTTP/1.1 client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
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
        agent.wait_healthz(Duration::from_secs(30))?;
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
            std::thread::sleep(Duration::from_millis(100));
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

/// A minimal blocking `GET` over HTTP/1.1 with `Connection: close`. Handles `Content-Length`,
/// chunked and read-to-EOF bodies.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: bindsto-tests\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        // A reset after a complete answer (server closed with unread input) is still an answer.
        return parse_response(&raw)
            .map_err(|_| anyhow::Error::new(e))
            .with_context(|| format!("reading the answer to GET {path}"));
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for h in lines {
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        if body.len() < n {
            bail!("body shorter ({}) than Content-Length {n}", body.len());
        }
        body[..n].to_vec()
    } else {
        body.to_vec()
    };
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk size"))?;
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size_str = size_str.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16)
            .with_context(|| format!("bad chunk size {size_str:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
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

    #[test]
    fn parses_responses() {
        let (c, b) =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA").unwrap();
        assert_eq!((c, b.as_str()), (200, "ok"));
        let (c, b) = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\n{\"a\r\n2;x=y\r\n\":\r\n1\r\n1\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((c, b.as_str()), (503, "{\"a\":1"));
        let (c, b) = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nnope").unwrap();
        assert_eq!((c, b.as_str()), (404, "nope"));
    }

    #[test]
    fn get_against_a_local_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8_lossy(&req).into_owned();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong")
                .unwrap();
            req
        });
        let (code, body) = http_get(addr, "/healthz", Duration::from_secs(5)).unwrap();
        assert_eq!((code, body.as_str()), (200, "pong"));
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Connection: close"), "{req}");
    }
}
