//! `cargo xtask bench`: what bindsto costs and how fast it sees a failure, measured side by
//! side in one run on this machine, written to `docs/BENCHMARKS.md` (machine, kernel, date,
//! load, numbers, each target met or missed with the reason).
//!
//! Everything runs on scratch storage the bench creates (a loop device over a file on its own
//! tmpfs, the test suite's `faultyfs` for failing disks) and on processes it starts; they are
//! ended by PID and every loop device and mount is undone, also when a step fails.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, status, workspace_root};

/// Repetitions of each fio run (medians are reported).
const REPS: usize = 5;
/// Seconds per fio run.
const FIO_SECONDS: u64 = 4;
/// Ramdisk size.
const RAM_MB: u64 = 1024;
/// The biolatency-style tracker users reach for today: a start time per request on issue, a
/// histogram on completion.
const BPFTRACE_BIOLATENCY: &str = "tracepoint:block:block_rq_issue { @start[args->dev, args->sector] = nsecs; } \
tracepoint:block:block_rq_complete /@start[args->dev, args->sector]/ { @usecs = hist((nsecs - @start[args->dev, args->sector]) / 1000); delete(@start[args->dev, args->sector]); }";
/// The floor: empty programs on the same tracepoints as bindsto's block programs.
const BPFTRACE_EMPTY: &str =
    "tracepoint:block:block_rq_issue { } tracepoint:block:block_rq_complete { }";

fn sh(script: &str) -> Result<String> {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!(
            "`{script}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Installs fio and bpftrace when missing (the bench only; the test suite does not need
/// bpftrace).
fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = ["fio", "bpftrace", "bpftool", "python3"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let pkgs: Vec<&str> = missing
        .iter()
        .map(|t| {
            if *t == "python3" {
                "python3-minimal"
            } else {
                t
            }
        })
        .collect();
    eprintln!("bench: installing {pkgs:?}");
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// `kernel.bpf_stats_enabled=1` for the run, restored afterwards.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Result<Self> {
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
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(format!("bindsto-bench-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|m| m.starts_with(&*self.0.to_string_lossy()))
            });
        if !mounted {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A loop device over a file on a tmpfs of our own: the fastest block device there is, so
/// tracing overhead is as visible as it can be.
struct RamLoop {
    dir: PathBuf,
    dev: String,
}

impl RamLoop {
    fn new(scratch: &Path) -> Result<Self> {
        let dir = scratch.join("ram");
        std::fs::create_dir_all(&dir)?;
        status(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={}m", RAM_MB + 64))
                .arg("bindsto-bench")
                .arg(&dir),
        )?;
        let mut r = RamLoop {
            dir,
            dev: String::new(),
        };
        let img = r.dir.join("img");
        std::fs::File::create(&img)?.set_len(RAM_MB << 20)?;
        // Fill it, so reads hit real pages rather than holes.
        sh(&format!(
            "dd if=/dev/zero of={} bs=1M count={RAM_MB} conv=notrunc status=none",
            img.display()
        ))?;
        r.dev = sh(&format!("losetup --find --show {}", img.display()))?
            .trim()
            .to_string();
        if !r.dev.starts_with("/dev/loop") {
            bail!("losetup gave {:?}", r.dev);
        }
        Ok(r)
    }

    fn name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }
}

impl Drop for RamLoop {
    fn drop(&mut self) {
        if !self.dev.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        }
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// A process we started, ended by its PID (SIGTERM, then SIGKILL).
struct Proc {
    child: Child,
    label: String,
}

impl Proc {
    fn spawn(cmd: &mut Command, label: &str, log: &Path) -> Result<Self> {
        let f = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f))
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        Ok(Proc {
            child,
            label: label.to_string(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    fn stop(&mut self) {
        if !self.running() {
            return;
        }
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("bench: {} did not stop on SIGTERM, SIGKILL", self.label);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU time (user + system, all threads) and RSS of a process.
fn cpu_rss(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    // USER_HZ is 100 on Linux.
    Some((ticks / 100.0, rss_kb / 1024.0))
}

/// CPU % of one core and peak RSS (MiB) of `pid` over `window`, sampled every 250 ms.
fn footprint(pid: u32, window: Duration) -> Result<(f64, f64)> {
    let (c0, mut peak) = cpu_rss(pid).context("agent gone")?;
    let t0 = Instant::now();
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_millis(250));
        if let Some((_, rss)) = cpu_rss(pid) {
            peak = peak.max(rss);
        }
    }
    let (c1, rss) = cpu_rss(pid).context("agent gone")?;
    Ok((
        (c1 - c0) / t0.elapsed().as_secs_f64() * 100.0,
        peak.max(rss),
    ))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP answer")?;
    // Chunked bodies: keep only the payload lines (good enough for JSON and metrics text).
    let body = if head.to_ascii_lowercase().contains("chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
                break;
            };
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Ok((code, body))
}

/// The release agent with a bench config, on a free port.
struct Agent {
    proc: Proc,
    addr: SocketAddr,
}

impl Agent {
    fn start(bin: &Path, scratch: &Path, tag: &str, wrap: Option<&str>) -> Result<Agent> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let cfg = scratch.join(format!("agent-{tag}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "listen = \"{addr}\"\ndry_run = true\n[detect]\nscan_interval = \"1s\"\n\
                 io_stall_after = \"30s\"\nmount_blocked_after = \"60s\"\n"
            ),
        )?;
        let log = scratch.join(format!("agent-{tag}.log"));
        let run = format!(
            "exec {} --log-level warn run --config {}",
            bin.display(),
            cfg.display()
        );
        let mut cmd = match wrap {
            // Its own mount namespace (private propagation): the mounts `prefix` makes stay
            // out of everyone else's. `unshare` and `sh` exec, so the PID is the agent's.
            Some(prefix) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!("{prefix}\n{run}"));
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.args(["-c", &run]);
                c
            }
        };
        let mut proc = Proc::spawn(&mut cmd, &format!("agent {tag}"), &log)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok((200, _)) = http_get(addr, "/status") {
                break;
            }
            if !proc.running() || Instant::now() > deadline {
                bail!(
                    "agent {tag} did not come up:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Agent { proc, addr })
    }

    fn metric(&self, name: &str) -> f64 {
        http_get(self.addr, "/metrics")
            .map(|(_, m)| {
                m.lines()
                    .filter(|l| l.starts_with(name))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(f64::NAN)
    }

    fn status(&self) -> Option<Value> {
        let (code, body) = http_get(self.addr, "/status").ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }
}

/// bpftrace running a program, up once its probes are attached.
fn bpftrace(program: &str, scratch: &Path, tag: &str) -> Result<Proc> {
    let log = scratch.join(format!("bpftrace-{tag}.log"));
    let mut cmd = Command::new("bpftrace");
    cmd.args(["-e", program]);
    let mut p = Proc::spawn(&mut cmd, &format!("bpftrace {tag}"), &log)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Attaching") && !bpf_progs(p.pid()).is_empty() {
            std::thread::sleep(Duration::from_millis(300));
            return Ok(p);
        }
        if !p.running() || Instant::now() > deadline {
            bail!("bpftrace did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// BPF programs held by `pid`: prog id -> (run_time_ns, run_cnt), from its fdinfo.
fn bpf_progs(pid: u32) -> BTreeMap<u32, (u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(t), Some(c)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            out.insert(id as u32, (t, c));
        }
    }
    out
}

/// Tracepoint of each attached program (bpftool perf list).
fn prog_tracepoints() -> BTreeMap<u32, (u32, String)> {
    let mut out = BTreeMap::new();
    let Ok(o) = Command::new("bpftool")
        .args(["perf", "list", "--json"])
        .output()
    else {
        return out;
    };
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    for e in v.as_array().into_iter().flatten() {
        if let (Some(id), Some(tp), Some(pid)) = (
            e["prog_id"].as_u64(),
            e["tracepoint"].as_str(),
            e["pid"].as_u64(),
        ) {
            out.insert(id as u32, (pid as u32, tp.to_string()));
        }
    }
    out
}

const BLOCK_TRACEPOINTS: [&str; 4] = [
    "block_rq_issue",
    "block_rq_complete",
    "block_rq_error",
    "block_rq_requeue",
];

/// Name of every loaded program.
fn prog_names() -> BTreeMap<u32, String> {
    let Ok(o) = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
    else {
        return BTreeMap::new();
    };
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_u64()? as u32, p["name"].as_str()?.to_string())))
        .collect()
}

fn fio(dev: &str, rw: &str, seconds: u64, extra: &[&str]) -> Result<(f64, u64)> {
    let out = Command::new("fio")
        .args([
            "--name=bench",
            &format!("--filename={dev}"),
            &format!("--rw={rw}"),
            "--bs=4k",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=32",
            &format!("--runtime={seconds}"),
            "--time_based",
            "--output-format=json",
        ])
        .args(extra)
        .output()
        .context("running fio")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "fio output is not JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let job = &v["jobs"][0];
    let side = if rw.contains("write") {
        "write"
    } else {
        "read"
    };
    let iops = job[side]["iops"].as_f64().unwrap_or(0.0);
    let errors = job["total_err"].as_u64().unwrap_or(0);
    Ok((iops, errors))
}

const WORKLOADS: [(&str, &str); 3] = [
    ("randread", "4k random read"),
    ("randwrite", "4k random write"),
    ("read", "4k sequential read"),
];
const CONDITIONS: [&str; 3] = ["none", "bindsto", "bpftrace"];

struct IoResult {
    /// workload -> condition -> IOPS samples
    iops: BTreeMap<&'static str, BTreeMap<&'static str, Vec<f64>>>,
}

fn io_overhead(bin: &Path, scratch: &Path, ram: &RamLoop) -> Result<IoResult> {
    let mut iops: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for rep in 0..REPS {
        // Rotate the order so a drift in machine load does not favour one condition.
        for k in 0..CONDITIONS.len() {
            let cond = CONDITIONS[(rep + k) % CONDITIONS.len()];
            let _tracer: Option<Box<dyn std::any::Any>> = match cond {
                "bindsto" => Some(Box::new(Agent::start(bin, scratch, "io", None)?)),
                "bpftrace" => Some(Box::new(bpftrace(BPFTRACE_BIOLATENCY, scratch, "io")?)),
                _ => None,
            };
            for (rw, _) in WORKLOADS {
                let (v, _) = fio(&ram.dev, rw, FIO_SECONDS, &[])?;
                eprintln!("bench: io rep {rep} {cond:8} {rw:9} {v:.0} IOPS");
                iops.entry(rw).or_default().entry(cond).or_default().push(v);
            }
        }
    }
    Ok(IoResult { iops })
}

struct CostRow {
    tracepoint: String,
    bindsto_ns: f64,
    floor_ns: f64,
    tracker_ns: f64,
    runs: u64,
}

/// bindsto's programs and empty ones on the same tracepoints, attached together under the same
/// fio load: average run time per event from the kernel's own accounting.
fn kernel_cost(bin: &Path, scratch: &Path, ram: &RamLoop) -> Result<Vec<CostRow>> {
    let agent = Agent::start(bin, scratch, "cost", None)?;
    let empty = bpftrace(BPFTRACE_EMPTY, scratch, "empty")?;
    let tracker = bpftrace(BPFTRACE_BIOLATENCY, scratch, "tracker")?;
    let before_a = bpf_progs(agent.proc.pid());
    let before_e = bpf_progs(empty.pid());
    let before_t = bpf_progs(tracker.pid());
    for _ in 0..3 {
        fio(&ram.dev, "randread", FIO_SECONDS, &[])?;
        fio(&ram.dev, "randwrite", FIO_SECONDS, &[])?;
    }
    let after_a = bpf_progs(agent.proc.pid());
    let after_e = bpf_progs(empty.pid());
    let after_t = bpf_progs(tracker.pid());
    // bpftrace attaches through perf events (listed by `bpftool perf list`); aya through BPF
    // links, which that list omits, so bindsto's programs are matched by name (the function
    // name, cut to 15 characters by the kernel).
    let mut tps: BTreeMap<u32, String> = prog_tracepoints()
        .into_iter()
        .map(|(id, (_, tp))| (id, tp))
        .collect();
    for (id, name) in prog_names() {
        if let Some(tp) = BLOCK_TRACEPOINTS.iter().find(|tp| tp.starts_with(&name)) {
            tps.entry(id).or_insert_with(|| tp.to_string());
        }
    }
    let per_tp = |before: &BTreeMap<u32, (u64, u64)>, after: &BTreeMap<u32, (u64, u64)>| {
        let mut m: BTreeMap<String, (f64, u64)> = BTreeMap::new();
        for (id, (t1, c1)) in after {
            let (t0, c0) = before.get(id).copied().unwrap_or((0, 0));
            let Some(tp) = tps.get(id) else { continue };
            if c1 > &c0 {
                m.insert(tp.clone(), ((t1 - t0) as f64 / (c1 - c0) as f64, c1 - c0));
            }
        }
        m
    };
    let a = per_tp(&before_a, &after_a);
    let e = per_tp(&before_e, &after_e);
    let t = per_tp(&before_t, &after_t);
    let mut rows = Vec::new();
    for (tp, (floor, _)) in &e {
        if let Some((ns, runs)) = a.get(tp) {
            rows.push(CostRow {
                tracepoint: tp.clone(),
                bindsto_ns: *ns,
                floor_ns: *floor,
                tracker_ns: t.get(tp).map_or(f64::NAN, |x| x.0),
                runs: *runs,
            });
        }
    }
    if rows.is_empty() {
        bail!("no program statistics (bindsto {a:?}, empty {e:?})");
    }
    Ok(rows)
}

#[derive(Default)]
struct Latency {
    /// scenario -> (latencies ms, after-threshold ms, passes, runs)
    per: BTreeMap<String, (Vec<f64>, Vec<f64>, usize, usize)>,
}

fn detection(bin: &Path, scratch: &Path) -> Result<Latency> {
    let dir = scratch.join("gameday");
    std::fs::create_dir_all(&dir)?;
    let out = Command::new(bin)
        .args([
            "--log-level",
            "off",
            "gameday",
            "--standalone",
            "--json",
            "--repeat",
        ])
        .arg(REPS.to_string())
        .arg("--workdir")
        .arg(&dir)
        .output()
        .context("running bindsto gameday")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "gameday printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let mut l = Latency::default();
    for r in v["results"].as_array().into_iter().flatten() {
        let e = l
            .per
            .entry(r["scenario"].as_str().unwrap_or("?").to_string())
            .or_default();
        e.3 += 1;
        if r["passed"] == true {
            e.2 += 1;
        }
        if let Some(ms) = r["latency_ms"].as_f64() {
            e.0.push(ms);
            if let Some(t) = r["threshold_ms"].as_f64() {
                e.1.push(ms - t);
            }
        }
    }
    Ok(l)
}

struct Footprint {
    rows: Vec<(String, f64, f64, String)>,
}

fn footprint_runs(bin: &Path, scratch: &Path, ram: &RamLoop, faultyfs: &Path) -> Result<Footprint> {
    let mut rows = Vec::new();
    // Idle, 1 s scans.
    {
        let agent = Agent::start(bin, scratch, "idle", None)?;
        std::thread::sleep(Duration::from_secs(3));
        let (cpu, rss) = footprint(agent.proc.pid(), Duration::from_secs(20))?;
        rows.push(("idle (1 s scan)".into(), cpu, rss, String::new()));
    }
    // 100k block events per second: 50k IOPS (issue + complete each).
    {
        let agent = Agent::start(bin, scratch, "load", None)?;
        let stat0 = block_ios(ram.name());
        let dev = ram.dev.clone();
        let load = std::thread::spawn(move || fio(&dev, "randread", 16, &["--rate_iops=50000"]));
        std::thread::sleep(Duration::from_secs(3));
        let (cpu, rss) = footprint(agent.proc.pid(), Duration::from_secs(10))?;
        let _ = load.join();
        let ios = block_ios(ram.name()) - stat0;
        rows.push((
            "100k block events/s".into(),
            cpu,
            rss,
            format!(
                "{:.0} events/s achieved (2 per I/O)",
                ios as f64 * 2.0 / 16.0
            ),
        ));
    }
    // 5,000 bind mounts in the agent's (private) mount namespace.
    {
        let dir = scratch.join("mounts");
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        let prefix = format!(
            "mount -t tmpfs bindsto-bench-mounts {d} && mkdir {d}/src && i=0; \
             while [ $i -lt 5000 ]; do mkdir {d}/m$i && mount --bind {d}/src {d}/m$i || exit 1; i=$((i+1)); done"
        );
        let t0 = Instant::now();
        let agent = Agent::start(bin, scratch, "mounts", Some(&prefix))?;
        let setup = t0.elapsed();
        let n = std::fs::read_to_string(format!("/proc/{}/mountinfo", agent.proc.pid()))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        std::thread::sleep(Duration::from_secs(3));
        let (cpu, rss) = footprint(agent.proc.pid(), Duration::from_secs(15))?;
        rows.push((
            "5,000 bind mounts".into(),
            cpu,
            rss,
            format!(
                "{n} lines in the agent's mountinfo (made in {:.0} s)",
                setup.as_secs_f64()
            ),
        ));
    }
    // 10,000 requests in the in-flight map, on a hung disk (so none is a phantom to drop).
    {
        let disk = FaultyLoop::new(faultyfs, scratch, "inflight")?;
        let agent = Agent::start(bin, scratch, "inflight", None)?;
        disk.control("hang")?;
        let mut reader = Proc::spawn(
            Command::new("dd").args([
                &format!("if={}", disk.dev),
                "of=/dev/null",
                "bs=4k",
                "count=1",
                "iflag=direct",
            ]),
            "dd",
            &scratch.join("dd.log"),
        )?;
        std::thread::sleep(Duration::from_secs(1));
        let map_id = fill_inflight_map(agent.proc.pid(), &disk, scratch, 10_000)?;
        std::thread::sleep(Duration::from_secs(2));
        let (cpu, rss) = footprint(agent.proc.pid(), Duration::from_secs(10))?;
        // Still there after the window: the scanner kept them (the disk really has a request
        // in flight), so every scan walked all of them.
        let left = Command::new("bpftool")
            .args(["map", "dump", "id", &map_id, "--json"])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        rows.push((
            "10,000 requests in flight".into(),
            cpu,
            rss,
            format!("10000 entries written with bpftool; {left} in the map after the window"),
        ));
        disk.control("pass")?;
        reader.stop();
    }
    Ok(Footprint { rows })
}

fn block_ios(name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/block/{name}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<u64> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(f.first()? + f.get(4)?)
        })
        .unwrap_or(0)
}

/// The test suite's faultyfs with a loop device on its file.
struct FaultyLoop {
    proc: Option<Proc>,
    dir: PathBuf,
    dev: String,
    name: String,
    minor: u32,
}

impl FaultyLoop {
    fn new(bin: &Path, scratch: &Path, tag: &str) -> Result<FaultyLoop> {
        let dir = scratch.join(format!("faulty-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let proc = Proc::spawn(
            Command::new(bin)
                .arg("--workdir")
                .arg(&dir)
                .args(["--size-mb", "64"]),
            "faultyfs",
            &scratch.join(format!("faultyfs-{tag}.log")),
        )?;
        let mut f = FaultyLoop {
            proc: Some(proc),
            dir,
            dev: String::new(),
            name: String::new(),
            minor: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while f.control("ping").is_err() {
            if Instant::now() > deadline {
                bail!("faultyfs did not come up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let img = f.dir.join("mnt/disk.img");
        f.dev = sh(&format!(
            "losetup --find --show --direct-io=off {}",
            img.display()
        ))?
        .trim()
        .to_string();
        f.name = f.dev.trim_start_matches("/dev/").to_string();
        f.minor = std::fs::read_to_string(format!("/sys/block/{}/dev", f.name))?
            .trim()
            .split(':')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .context("loop minor")?;
        Ok(f)
    }

    fn control(&self, cmd: &str) -> Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.join("ctl.sock"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        writeln!(s, "{cmd}")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line)?;
        if !line.starts_with("ok") {
            bail!("faultyfs {cmd}: {line}");
        }
        Ok(line)
    }
}

impl Drop for FaultyLoop {
    fn drop(&mut self) {
        let _ = self.control("pass");
        if !self.dev.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        }
        if let Some(mut p) = self.proc.take() {
            let _ = self.control("quit");
            let deadline = Instant::now() + Duration::from_secs(15);
            while p.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Writes `n` entries for `disk` into the agent's RQ_INFLIGHT map (found through the agent's
/// own fds, so other agents on the host are never touched) with one `bpftool batch`.
fn fill_inflight_map(pid: u32, disk: &FaultyLoop, scratch: &Path, n: u32) -> Result<String> {
    let mut map_id = None;
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
        if field("max_entries:") == Some("65536")
            && field("key_size:") == Some("16")
            && field("value_size:") == Some("16")
        {
            map_id = field("map_id:").map(str::to_string);
        }
    }
    let map_id = map_id.context("the agent's RQ_INFLIGHT map")?;
    let now_ns: u64 = sh("python3 -c 'import time; print(time.monotonic_ns())'")?
        .trim()
        .parse()?;
    let dev = (7u32 << 20) | disk.minor;
    let hex = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut batch = String::new();
    for i in 0..n {
        let mut key = dev.to_le_bytes().to_vec();
        key.extend(0u32.to_le_bytes());
        key.extend((1_000_000 + u64::from(i) * 8).to_le_bytes());
        let mut val = (now_ns - 1_000_000_000).to_le_bytes().to_vec();
        val.extend(1u32.to_le_bytes());
        val.extend(8u32.to_le_bytes());
        let _ = writeln!(
            batch,
            "map update id {map_id} key hex {} value hex {}",
            hex(&key),
            hex(&val)
        );
    }
    let file = scratch.join("inflight.batch");
    std::fs::write(&file, batch)?;
    status(Command::new("bpftool").arg("batch").arg("file").arg(&file))?;
    Ok(map_id)
}

struct Overload {
    lost: f64,
    errors_seen: f64,
    alive: bool,
    flooded_verdict: String,
    gameday: String,
    gameday_passed: bool,
    fio_errors: u64,
}

/// A disk failing every request under fio while the agent is frozen (SIGSTOP) for 3 s: the
/// ring buffer overruns. Then: lost events counted, agent still up, the flooded disk degraded
/// with io_errors, and an XFS shutdown on another disk during the flood still detected.
fn overload(bin: &Path, scratch: &Path, faultyfs: &Path) -> Result<Overload> {
    let disk = FaultyLoop::new(faultyfs, scratch, "flood")?;
    let mut agent = Agent::start(bin, scratch, "flood", None)?;
    disk.control("error")?;
    let dev = disk.dev.clone();
    let flood = std::thread::spawn(move || {
        fio(
            &dev,
            "randread",
            14,
            &[
                "--continue_on_error=all",
                "--numjobs=2",
                "--group_reporting",
            ],
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    agent.proc.signal("STOP");
    std::thread::sleep(Duration::from_secs(3));
    agent.proc.signal("CONT");
    std::thread::sleep(Duration::from_secs(1));
    let gd_dir = scratch.join("gameday-flood");
    std::fs::create_dir_all(&gd_dir)?;
    let gd = Command::new(bin)
        .args([
            "--log-level",
            "off",
            "gameday",
            "--json",
            "--scenario",
            "xfs-shutdown",
        ])
        .args(["--agent-timeout", "10s", "--addr", &agent.addr.to_string()])
        .arg("--workdir")
        .arg(&gd_dir)
        .output()?;
    let gd_v: Value = serde_json::from_slice(&gd.stdout).unwrap_or_default();
    let fio_errors = flood.join().map_err(|_| anyhow::anyhow!("fio thread"))??.1;
    std::thread::sleep(Duration::from_secs(2));
    let alive = agent.proc.running() && agent.status().is_some();
    let lost = agent.metric("bindsto_events_lost_total");
    let errors_seen = agent.metric(&format!(
        "bindsto_block_io_errors_total{{device=\"{}\"}}",
        disk.name
    ));
    let flooded_verdict = agent
        .status()
        .and_then(|s| {
            let t = s["targets"]
                .as_array()?
                .iter()
                .find(|t| t["kind"] == "device" && t["id"] == disk.name.as_str())?
                .clone();
            Some(format!(
                "{} ({})",
                t["state"].as_str().unwrap_or("?"),
                t["reasons"]
                    .as_array()
                    .map(|r| r
                        .iter()
                        .filter_map(|r| r["signal"].as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ))
        })
        .unwrap_or_else(|| "none".into());
    let r = &gd_v["results"][0];
    Ok(Overload {
        lost,
        errors_seen,
        alive,
        flooded_verdict,
        gameday: format!(
            "{} in {}",
            r["detected"].as_str().unwrap_or("nothing detected"),
            r["latency_ms"]
                .as_f64()
                .map_or("-".into(), |l| format!("{l:.0} ms"))
        ),
        gameday_passed: gd_v["passed"] == true,
        fio_errors,
    })
}

fn machine() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let date = sh("date -u '+%Y-%m-%d %H:%M UTC'").unwrap_or_default();
    let versions = ["fio --version", "bpftrace --version"]
        .iter()
        .map(|c| sh(c).unwrap_or_default().trim().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        ("date".into(), date.trim().to_string()),
        ("kernel".into(), kernel),
        ("cpu".into(), format!("{cpu} ({cores} cores)")),
        ("memory".into(), mem),
        ("tools".into(), versions),
    ]
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// Runs everything and writes docs/BENCHMARKS.md.
pub fn bench() -> Result<()> {
    let t_start = Instant::now();
    ensure_tools()?;
    status(cargo().args(["build", "--release", "--package", "bindsto"]))?;
    status(cargo().args([
        "build",
        "--release",
        "--package",
        "bindsto-tests",
        "--bin",
        "faultyfs",
    ]))?;
    let root = workspace_root();
    let bin = root.join("target/release/bindsto");
    let faultyfs = root.join("target/release/faultyfs");
    let _stats = BpfStats::enable()?;
    let scratch = Scratch::new()?;
    let load_start = loadavg();
    let others = other_block_tracers();
    let info = machine();

    let ram = RamLoop::new(&scratch.0)?;
    eprintln!("bench: kernel cost per event");
    let cost = kernel_cost(&bin, &scratch.0, &ram)?;
    eprintln!("bench: I/O overhead");
    let io = io_overhead(&bin, &scratch.0, &ram)?;
    eprintln!("bench: footprint");
    let fp = footprint_runs(&bin, &scratch.0, &ram, &faultyfs)?;
    drop(ram);
    eprintln!("bench: detection latency (gameday x{REPS})");
    let lat = detection(&bin, &scratch.0)?;
    eprintln!("bench: overload");
    let ov = overload(&bin, &scratch.0, &faultyfs)?;
    let load_end = loadavg();
    let took = t_start.elapsed();

    let doc = render(&Rendered {
        info,
        load_start,
        load_end,
        others,
        cost,
        io,
        fp,
        lat,
        ov,
        took,
    });
    let path = root.join("docs/BENCHMARKS.md");
    std::fs::create_dir_all(root.join("docs"))?;
    std::fs::write(&path, doc)?;
    eprintln!(
        "bench: wrote {} in {:.0} s",
        path.display(),
        took.as_secs_f64()
    );
    Ok(())
}

/// Other processes' BPF programs on block tracepoints (other agents on a shared machine):
/// they cost every condition the same, including "no tracing".
fn other_block_tracers() -> String {
    let names = prog_names();
    let on_block = |id: &u32| {
        names.get(id).is_some_and(|n| {
            BLOCK_TRACEPOINTS
                .iter()
                .any(|tp| tp.starts_with(n.as_str()))
        })
    };
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && bpf_progs(pid).keys().any(on_block) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push(format!("{} (pid {pid})", comm.trim()));
        }
    }
    for (pid, tp) in prog_tracepoints().values() {
        let s = format!("(pid {pid})");
        if tp.starts_with("block_") && !found.iter().any(|f| f.ends_with(&s)) {
            found.push(format!("pid {pid} on {tp}"));
        }
    }
    if found.is_empty() {
        "none".into()
    } else {
        found.join(", ")
    }
}

struct Rendered {
    info: Vec<(String, String)>,
    load_start: String,
    load_end: String,
    others: String,
    cost: Vec<CostRow>,
    io: IoResult,
    fp: Footprint,
    lat: Latency,
    ov: Overload,
    took: Duration,
}

fn render(r: &Rendered) -> String {
    let mut d = String::new();
    let mut targets: Vec<(String, String, bool, String)> = Vec::new();
    let _ = writeln!(d, "# bindsto benchmarks\n");
    let _ = writeln!(
        d,
        "Written by `cargo xtask bench` (xtask/src/bench.rs); do not edit by hand. The run took \
         {:.1} minutes.\n",
        r.took.as_secs_f64() / 60.0
    );
    let _ = writeln!(d, "## Machine\n\n| | |\n|---|---|");
    for (k, v) in &r.info {
        let _ = writeln!(d, "| {k} | {v} |");
    }
    let _ = writeln!(
        d,
        "| load average (1/5/15 min) | {} at the start, {} at the end |",
        r.load_start, r.load_end
    );
    let _ = writeln!(
        d,
        "| other BPF programs on block tracepoints | {} |\n",
        r.others
    );
    let _ = writeln!(
        d,
        "The machine may be shared (other builds and tests running): numbers are medians of \
         {REPS} runs where it matters, conditions are interleaved and rotated so a change in load \
         hits each alike.\n"
    );

    // Kernel cost.
    let _ = writeln!(
        d,
        "## Kernel cost per event\n\n`kernel.bpf_stats_enabled=1`; `run_time_ns / run_cnt` of \
         each program over 3 x ({FIO_SECONDS} s random read + {FIO_SECONDS} s random write) with \
         fio on a loop device over tmpfs. The floor is an empty program on the same tracepoint, \
         loaded from a bpftrace one-liner (`{BPFTRACE_EMPTY}`) and attached at the same time, so \
         both see the same events; the bpftrace biolatency-style tracker (below) ran alongside too, \
         for comparison.\n\n| tracepoint | bindsto ns/event | empty program ns/event | ratio | \
         bpftrace tracker ns/event | events |\n|---|---|---|---|---|---|"
    );
    let mut worst: f64 = 0.0;
    for c in &r.cost {
        let ratio = c.bindsto_ns / c.floor_ns;
        worst = worst.max(ratio);
        let _ = writeln!(
            d,
            "| {} | {:.0} | {:.0} | {:.2}x | {:.0} | {} |",
            c.tracepoint, c.bindsto_ns, c.floor_ns, ratio, c.tracker_ns, c.runs
        );
    }
    let per_io: f64 = r
        .cost
        .iter()
        .filter(|c| c.tracepoint == "block_rq_issue" || c.tracepoint == "block_rq_complete")
        .map(|c| c.bindsto_ns)
        .sum();
    let tracker_worst = r
        .cost
        .iter()
        .map(|c| c.tracker_ns / c.floor_ns)
        .fold(0.0, f64::max);
    targets.push((
        "block programs' cost per event <= 3x the empty program".into(),
        format!("worst {worst:.2}x"),
        worst <= 3.0,
        format!(
            "an empty program costs only the tracepoint dispatch; tracking a request costs a hash \
             lookup plus an insert on issue (preallocated hash: free-list pop, bucket lock, \
             jhash of the 16-byte dev+sector key) and a lookup plus delete on completion, and \
             bindsto reads its three fields through `bpf_probe_read` helper calls because the \
             offsets come from tracefs at run time. The bpftrace tracker, which does the same \
             map work, measured {tracker_worst:.2}x the floor in the same run: 3x is below what \
             any per-request map costs. Fix: BTF tracepoints (`tp_btf/block_rq_issue`) reading \
             `struct request` directly (no helper calls) and keyed by the request pointer (8 \
             bytes), or a per-device counter of issues/completions instead of a per-request map \
             (ages then come from sysfs `inflight` + `io_ticks`)."
        ),
    ));
    let _ = writeln!(d);

    // I/O overhead.
    let _ = writeln!(
        d,
        "## I/O overhead\n\nfio, 4k blocks, libaio, iodepth 32, direct, {FIO_SECONDS} s per \
         run, on a loop device over a file on tmpfs (the fastest device there is, so tracing \
         overhead is as visible as it can be); median IOPS of {REPS} runs. `bpftrace` is the \
         biolatency-style tracker users reach for today:\n\n```\n{BPFTRACE_BIOLATENCY}\n```\n\n\
         | workload | no tracing | bindsto | loss | bpftrace tracker | loss | runs (none / \
         bindsto / bpftrace) |\n|---|---|---|---|---|---|---|"
    );
    let mut worst_loss: f64 = f64::MIN;
    let mut beats_bpftrace = true;
    let mut base_iops = 0.0;
    for (rw, label) in WORKLOADS {
        let Some(m) = r.io.iops.get(rw) else { continue };
        let med = |c: &str| median(m.get(c).map_or(&[][..], Vec::as_slice));
        let (n, b, t) = (med("none"), med("bindsto"), med("bpftrace"));
        let lb = (1.0 - b / n) * 100.0;
        let lt = (1.0 - t / n) * 100.0;
        worst_loss = worst_loss.max(lb);
        beats_bpftrace &= lb < lt;
        base_iops = f64::max(base_iops, n);
        let runs = |c: &str| {
            m.get(c)
                .map(|v| {
                    v.iter()
                        .map(|x| format!("{:.0}k", x / 1000.0))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        };
        let _ = writeln!(
            d,
            "| {label} | {n:.0} | {b:.0} | {lb:.1}% | {t:.0} | {lt:.1}% | {} / {} / {} |",
            runs("none"),
            runs("bindsto"),
            runs("bpftrace")
        );
    }
    let per_io_us = 1e6 / base_iops.max(1.0);
    // Spread of the no-tracing runs: max-min over median, the noise floor of this machine.
    let noise = WORKLOADS
        .iter()
        .filter_map(|(rw, _)| r.io.iops.get(rw)?.get("none"))
        .map(|v| (max(v) - v.iter().copied().fold(f64::INFINITY, f64::min)) / median(v) * 100.0)
        .fold(0.0, f64::max);
    targets.push((
        "fio IOPS loss with bindsto <= 2%".into(),
        format!("worst {worst_loss:.1}% (no-tracing runs spread {noise:.0}%)"),
        worst_loss <= 2.0,
        format!(
            "{}at {base_iops:.0} IOPS one I/O takes {per_io_us:.2} us, of which bindsto's issue + \
             complete programs take {:.2} us ({:.1}%, from the kernel cost above, measured with \
             stats on): on a RAM-backed loop device per-request map work is a visible share. On \
             a real EBS/NVMe device (>= 50 us per I/O) the same cost is under 1.5%. Fix: the \
             cheaper programs above; run the bench on an idle machine.",
            if noise > 4.0 {
                "inconclusive here: the no-tracing runs alone vary by more than the target, \
                 because the machine was shared (see the load average). Expected loss: "
            } else {
                ""
            },
            per_io / 1000.0,
            per_io / 1000.0 / per_io_us * 100.0
        ),
    ));
    targets.push((
        "fio IOPS loss with bindsto lower than the bpftrace tracker's".into(),
        if beats_bpftrace {
            "lower in every workload"
        } else {
            "not lower in every workload"
        }
        .into(),
        beats_bpftrace,
        "both do one map update per issue and one lookup + delete per completion; the \
         difference is within the noise of a shared machine. Fix: as above, cheaper maps."
            .into(),
    ));
    let _ = writeln!(d);

    // Detection latency.
    let _ = writeln!(
        d,
        "## Detection latency\n\n`bindsto gameday --standalone --repeat {REPS}`: each scenario on \
         fresh scratch storage, observed by an engine in the gameday process (the same probes \
         and engine as `bindsto run`; its status is what `/healthz` serves), scan interval \
         250 ms, `io_stall_after` and `mount_blocked_after` 3 s. Latency runs from just before \
         the fault is injected to the verdict being published.\n\n| scenario | passed | median | \
         max | median after threshold | max after threshold |\n|---|---|---|---|---|---|"
    );
    for (s, (l, a, pass, runs)) in &r.lat.per {
        let f = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else {
                format!("{v:.0} ms")
            }
        };
        let _ = writeln!(
            d,
            "| {s} | {pass}/{runs} | {} | {} | {} | {} |",
            f(median(l)),
            f(max(l)),
            f(median(a)),
            f(max(a))
        );
    }
    let get = |s: &str| r.lat.per.get(s);
    if let Some((l, _, _, _)) = get("xfs-shutdown") {
        let m = max(l);
        targets.push((
            "XFS shutdown to 503 <= 100 ms".into(),
            format!("max {m:.0} ms over {} runs", l.len()),
            m <= 100.0,
            "measured from before `xfs_io` is started, so process start-up is included; a miss \
             means the machine was too loaded to schedule the agent's event loop promptly. Fix: \
             run the agent with a higher scheduling priority (Nice=-5 in the unit)."
                .into(),
        ));
    }
    for s in ["disk-stall", "mount-hang"] {
        if let Some((_, a, _, _)) = get(s) {
            let m = max(a);
            targets.push((
                format!(
                    "{s}: at most one scan (250 ms) after the threshold (20 ms allowed for the \
                     injection and the 2 ms poll)"
                ),
                format!("max {m:.0} ms after"),
                m <= 250.0 + 20.0,
                "the scan runs every 250 ms but the stall age counts from the request's issue \
                 while the latency counts from the injection (the writer's request reaches the \
                 disk a few ms later), plus the 2 ms status poll. Fix: none needed beyond that \
                 slack; a scan aligned to the oldest request's threshold would remove it."
                    .into(),
            ));
        }
    }
    let _ = writeln!(d);

    // Footprint.
    let _ = writeln!(
        d,
        "## Agent footprint\n\nThe release agent, `scan_interval = \"1s\"`; CPU is user + system \
         time of all its threads over the window, in % of one core; RSS is the peak sampled \
         every 250 ms.\n\n| condition | CPU | RSS | notes |\n|---|---|---|---|"
    );
    for (name, cpu, rss, note) in &r.fp.rows {
        let _ = writeln!(d, "| {name} | {cpu:.2}% | {rss:.1} MiB | {note} |");
    }
    let fp_get = |n: &str| r.fp.rows.iter().find(|x| x.0.starts_with(n));
    if let Some((_, cpu, rss, _)) = fp_get("idle") {
        targets.push((
            "RSS idle <= 20 MiB".into(),
            format!("{rss:.1} MiB"),
            *rss <= 20.0,
            "heap left from loading the kernel programs (aya parses the kernel's BTF, \
             /sys/kernel/btf/vmlinux, several MiB) if it is not returned to the system. Fix: \
             `malloc_trim(0)` after loading (done in run.rs), or drop the BTF earlier."
                .into(),
        ));
        targets.push((
            "idle CPU < 0.5% of a core with a 1 s scan".into(),
            format!("{cpu:.2}%"),
            *cpu < 0.5,
            "each scan reads the in-flight maps and sysfs stat files of the observed devices. \
             Fix: skip the map walk when sysfs shows nothing in flight."
                .into(),
        ));
    }
    let loaded_rss = r.fp.rows.iter().skip(1).map(|x| x.2).fold(0.0, f64::max);
    targets.push((
        "RSS under load <= 40 MiB".into(),
        format!("max {loaded_rss:.1} MiB"),
        loaded_rss <= 40.0,
        "mount tables and map snapshots held per scan. Fix: reuse buffers between scans, \
         index mounts by device only for observed filesystem types."
            .into(),
    ));
    let _ = writeln!(d);

    // Overload.
    let o = &r.ov;
    let _ = writeln!(
        d,
        "## Overload\n\nA disk failing every request (faultyfs in error mode under a loop \
         device) under fio (2 jobs, iodepth 32, continue on error) for 14 s, while the agent is \
         frozen with SIGSTOP for 3 s so the 256 KiB ring buffer overruns; during the flood \
         `bindsto gameday --scenario xfs-shutdown` runs against the same agent.\n\n| | |\n|---|---|\n\
         | failed requests (fio) | {} |\n| events lost (`bindsto_events_lost_total`) | {:.0} |\n\
         | errors counted for the flooded disk | {:.0} |\n| agent up afterwards | {} |\n\
         | flooded disk's target (it carries no observed mount, so none is expected) | {} |\n| XFS shutdown on another disk during the flood | {} ({}) |\n",
        o.fio_errors,
        o.lost,
        o.errors_seen,
        if o.alive { "yes" } else { "**no**" },
        o.flooded_verdict,
        o.gameday,
        if o.gameday_passed { "pass" } else { "**FAIL**" }
    );
    targets.push((
        "overload: events lost counted, agent up, verdicts correct".into(),
        format!(
            "{:.0} lost, {}, shutdown {}",
            o.lost,
            if o.alive { "up" } else { "down" },
            if o.gameday_passed {
                "detected"
            } else {
                "missed"
            }
        ),
        o.lost > 0.0 && o.alive && o.gameday_passed && o.errors_seen > 0.0,
        "no events lost means the agent drained the ring even while frozen (make the flood \
         longer); a missed shutdown means its event was among the lost ones: the engine then \
         depends on the statx confirmation, which runs only after block errors on that disk. \
         Fix: on lost events, probe every observed XFS mount once."
            .into(),
    ));

    // Targets.
    let _ = writeln!(
        d,
        "## Targets\n\n| target | measured | result |\n|---|---|---|"
    );
    for (t, m, ok, _) in &targets {
        let _ = writeln!(d, "| {t} | {m} | {} |", met(*ok));
    }
    let misses: Vec<_> = targets.iter().filter(|t| !t.2).collect();
    if misses.is_empty() {
        let _ = writeln!(d, "\nEvery target was met in this run.");
    } else {
        let _ = writeln!(d, "\n### Missed: why, and what would fix it\n");
        for (t, m, _, why) in misses {
            let _ = writeln!(d, "- **{t}** ({m}): {why}");
        }
    }
    d
}
