//! The AWS side of the remediation tests.
//!
//! - [`Moto`]: a real moto server (`python3 -m moto.server`) on 127.0.0.1 and a free port,
//!   stopped by PID; set up and read through `tests/aws/moto_ctl.py` (boto3).
//! - [`Imds`]: the project's own IMDSv2 + ECS introspection fixture. moto's metadata endpoint
//!   always answers `i-fake`, which is no instance of the test's Auto Scaling group, so the
//!   instance id must come from here. It enforces the IMDSv2 token dance (PUT with a TTL header,
//!   then GETs with the token) so a client that skips it fails.
//! - [`Recorder`]: an HTTP proxy in front of moto that records each AWS call (its
//!   `X-Amz-Target` or Query `Action`) with a timestamp, so tests can check order and count on
//!   the wire.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{BgProcess, agent::free_port, run_with_timeout};

/// A moto server for one test.
pub struct Moto {
    pub url: String,
    pub addr: SocketAddr,
    _proc: BgProcess,
}

impl Moto {
    pub fn start() -> anyhow::Result<Moto> {
        let port = free_port()?;
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        Self::spawn(cmd, port)
    }

    /// moto with one request at a time (`tests/aws/moto_serial.py`): DynamoDB's per-item
    /// linearizability, which moto's threaded server lacks, for the fleet-budget tests.
    pub fn start_serialized() -> anyhow::Result<Moto> {
        let port = free_port()?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aws/moto_serial.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg("127.0.0.1").arg(port.to_string());
        Self::spawn(cmd, port)
    }

    fn spawn(cmd: Command, port: u16) -> anyhow::Result<Moto> {
        let mut proc = BgProcess::spawn(cmd)
            .context("starting moto (python3 -m pip install 'moto[server]')")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(st) = proc.try_status() {
                bail!("moto exited ({st}): {}", proc.output());
            }
            if Instant::now() > deadline {
                bail!(
                    "moto did not listen on {addr} within 60 s: {}",
                    proc.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Moto {
            url: format!("http://{addr}"),
            addr,
            _proc: proc,
        })
    }

    /// Runs `moto_ctl.py` against this server and parses its JSON answer.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<Value> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aws/moto_ctl.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script).arg(&self.url).args(args);
        let out = run_with_timeout(cmd, Duration::from_secs(60))?;
        if !out.success() {
            bail!("moto_ctl {args:?} failed: {}", out.output);
        }
        // stdout and stderr come interleaved: the answer is the last line that is a JSON object.
        let line = out
            .output
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("moto_ctl {args:?} printed no JSON: {}", out.output))?;
        serde_json::from_str(line).with_context(|| format!("moto_ctl {args:?} printed {line:?}"))
    }
}

/// What moto holds after `setup`.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub instances: Vec<String>,
    pub me: String,
    pub cluster: String,
    pub arn: String,
}

impl Fleet {
    /// An Auto Scaling group of `n` instances (`n_unhealthy` of the others already marked
    /// Unhealthy) and an ECS cluster with this host's container instance registered.
    pub fn setup(moto: &Moto, n: usize, n_unhealthy: usize) -> anyhow::Result<Fleet> {
        let v = moto.ctl(&["setup", &n.to_string(), &n_unhealthy.to_string()])?;
        let s = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .context(format!("setup: no {k}: {v}"))
        };
        Ok(Fleet {
            instances: v["instances"]
                .as_array()
                .context("instances")?
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            me: s("me")?,
            cluster: s("cluster")?,
            arn: s("container_instance_arn")?,
        })
    }

    /// (container instance status, this instance's health status) as moto sees them.
    pub fn state(&self, moto: &Moto) -> anyhow::Result<(String, String)> {
        let v = moto.ctl(&["state", &self.me, &self.cluster, &self.arn])?;
        Ok((
            v["container_status"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            v["health"].as_str().unwrap_or_default().to_owned(),
        ))
    }
}

/// A tiny HTTP server on a free port, one thread, requests answered by `route`.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    head: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request; `None` at a clean end of the connection.
fn read_request(r: &mut BufReader<TcpStream>) -> anyhow::Result<Option<Request>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default().to_owned();
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(Request {
        method,
        path,
        headers,
        body,
        head,
    }))
}

impl Server {
    fn start<F>(handle: F) -> anyhow::Result<Server>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Server::start_on("127.0.0.1:0", handle)
    }

    fn start_on<F>(addr: &str, handle: F) -> anyhow::Result<Server>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = Arc::new(handle);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                        let h = Arc::clone(&handle);
                        std::thread::spawn(move || h(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(s: &mut TcpStream, code: u16, body: &str) {
    let reason = if code == 200 { "OK" } else { "Error" };
    let _ = write!(
        s,
        "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

const TOKEN: &str = "fixture-imds-token";

/// IMDSv2 for one instance plus the ECS agent's introspection API.
pub struct Imds {
    server: Server,
    /// Requests seen, as "METHOD PATH".
    pub requests: Arc<Mutex<Vec<String>>>,
    /// When false, /v1/metadata answers 503 (the ECS agent is stopped).
    pub ecs_up: Arc<AtomicBool>,
}

impl Imds {
    pub fn start(
        instance_id: &str,
        region: &str,
        cluster: &str,
        arn: &str,
    ) -> anyhow::Result<Imds> {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let ecs_up = Arc::new(AtomicBool::new(true));
        let (id, region) = (instance_id.to_owned(), region.to_owned());
        let metadata = serde_json::json!({
            "Cluster": cluster,
            "ContainerInstanceArn": arn,
            "Version": "Amazon ECS Agent - v1.0.0 (bindsto test fixture)",
        })
        .to_string();
        let (log, up) = (Arc::clone(&requests), Arc::clone(&ecs_up));
        let server = Server::start(move |mut s| {
            let Ok(clone) = s.try_clone() else { return };
            let mut r = BufReader::new(clone);
            let Ok(Some(req)) = read_request(&mut r) else {
                return;
            };
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{} {}", req.method, req.path));
            let token_ok = req.header("x-aws-ec2-metadata-token") == Some(TOKEN);
            match (req.method.as_str(), req.path.as_str()) {
                ("PUT", "/latest/api/token") => {
                    if req.header("x-aws-ec2-metadata-token-ttl-seconds").is_some() {
                        respond(&mut s, 200, TOKEN);
                    } else {
                        respond(&mut s, 400, "missing X-aws-ec2-metadata-token-ttl-seconds");
                    }
                }
                ("GET", p) if p.starts_with("/latest/") && !token_ok => respond(&mut s, 401, ""),
                ("GET", "/latest/meta-data/instance-id") => respond(&mut s, 200, &id),
                ("GET", "/latest/meta-data/placement/region") => respond(&mut s, 200, &region),
                ("GET", "/v1/metadata") if up.load(Ordering::SeqCst) => {
                    respond(&mut s, 200, &metadata);
                }
                ("GET", "/v1/metadata") => respond(&mut s, 503, "agent stopped"),
                _ => respond(&mut s, 404, "not found"),
            }
        })?;
        Ok(Imds {
            server,
            requests,
            ecs_up,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }
}

/// One AWS call seen by the [`Recorder`].
#[derive(Debug, Clone)]
pub struct Call {
    pub name: String,
    pub at: Instant,
}

/// Forwards to moto and records every call.
pub struct Recorder {
    server: Server,
    pub calls: Arc<Mutex<Vec<Call>>>,
    /// Calls (by name) whose answer is held back this long after moto has acted on them: the
    /// call takes effect but the caller does not learn it in time (an agent killed meanwhile).
    pub delays: Arc<Mutex<Vec<(String, Duration)>>>,
    /// While true, every DynamoDB call is answered `ThrottlingException` (HTTP 400) without
    /// reaching moto, as DynamoDB answers when a table's capacity is exceeded.
    pub throttle_dynamodb: Arc<AtomicBool>,
}

fn call_name(req: &Request) -> String {
    if let Some(t) = req.header("x-amz-target") {
        return t.rsplit('.').next().unwrap_or(t).to_owned();
    }
    let body = String::from_utf8_lossy(&req.body);
    body.split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{} {}", req.method, req.path))
}

impl Recorder {
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Recorder> {
        Recorder::start_on("127.0.0.1:0", upstream)
    }

    /// A recorder on a given address: DynamoDB "comes back" at an endpoint that refused
    /// connections until now.
    pub fn start_on(addr: &str, upstream: SocketAddr) -> anyhow::Result<Recorder> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&calls);
        let delays: Arc<Mutex<Vec<(String, Duration)>>> = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::clone(&delays);
        let throttle_dynamodb = Arc::new(AtomicBool::new(false));
        let throttle = Arc::clone(&throttle_dynamodb);
        let server = Server::start_on(addr, move |mut client| {
            let Ok(clone) = client.try_clone() else {
                return;
            };
            let mut r = BufReader::new(clone);
            // One request per connection: the answer says `Connection: close`.
            let Ok(Some(req)) = read_request(&mut r) else {
                return;
            };
            log.lock().unwrap_or_else(|e| e.into_inner()).push(Call {
                name: call_name(&req),
                at: Instant::now(),
            });
            let dynamodb = req
                .header("x-amz-target")
                .is_some_and(|t| t.starts_with("DynamoDB_20120810."));
            if dynamodb && throttle.load(Ordering::SeqCst) {
                let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#;
                let _ = write!(
                    client,
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-ErrorType: ThrottlingException\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                return;
            }
            let head: String = req
                .head
                .lines()
                .filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty())
                .map(|l| format!("{l}\r\n"))
                .collect();
            let forwarded = (|| -> std::io::Result<Vec<u8>> {
                let mut up = TcpStream::connect(upstream)?;
                up.set_read_timeout(Some(Duration::from_secs(30)))?;
                up.write_all(head.as_bytes())?;
                up.write_all(b"Connection: close\r\n\r\n")?;
                up.write_all(&req.body)?;
                let mut resp = Vec::new();
                up.read_to_end(&mut resp)?;
                Ok(resp)
            })();
            let delay = held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(n, _)| *n == call_name(&req))
                .map(|(_, d)| *d);
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            match forwarded {
                Ok(resp) => {
                    let text = String::from_utf8_lossy(&resp);
                    let (h, b) = match text.find("\r\n\r\n") {
                        Some(i) => (&resp[..i], &resp[i + 4..]),
                        None => (&resp[..], &b""[..]),
                    };
                    let h = String::from_utf8_lossy(h);
                    let mut out: String = h
                        .lines()
                        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                        .map(|l| format!("{l}\r\n"))
                        .collect();
                    out.push_str("Connection: close\r\n\r\n");
                    let _ = client.write_all(out.as_bytes());
                    let _ = client.write_all(b);
                }
                Err(e) => respond(&mut client, 502, &e.to_string()),
            }
        })?;
        Ok(Recorder {
            server,
            calls,
            delays,
            throttle_dynamodb,
        })
    }

    /// Holds back the answer to every `name` call by `d` (moto has acted on it by then).
    pub fn delay_answer(&self, name: &str, d: Duration) {
        self.delays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_owned(), d));
    }

    /// How many `name` calls reached moto.
    pub fn count(&self, name: &str) -> usize {
        self.names().iter().filter(|n| *n == name).count()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn names(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    pub fn first(&self, name: &str) -> Option<Instant> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.at)
    }
}
