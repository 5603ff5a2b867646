//! Agent footprint: CPU and peak RSS of the release agent idle, under 100k block events per
//! second, with 10,000 bind mounts and with 64,000 requests in its in-flight map.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use crate::fixtures::{BenchAgent, RamLoop, faulty_disk};
use crate::tools::fio;
use anyhow::{Context, Result};
use bindsto_tests::{
    BgProcess, FaultyDisk, Mode,
    bpfmap::{self, BpfMap},
    sys::block_stat,
};

pub struct Footprint {
    pub rows: Vec<(String, f64, f64, String)>,
}

pub fn footprint_runs(
    bin: &Path,
    scratch: &Path,
    ram: &RamLoop,
    faultyfs: &Path,
) -> Result<Footprint> {
    let mut rows = Vec::new();
    // Idle, 1 s scans.
    {
        let t0 = Instant::now();
        let agent = BenchAgent::start(bin, scratch, "idle", None)?;
        let ready = t0.elapsed();
        // The start-up peak: the kernel's high-water mark of each process since exec.
        let pid = agent.pid();
        let helper = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok());
        let helper_note = match helper.and_then(vm_hwm) {
            Some(h) => format!(
                "agent process only; its evidence reader (pid {}) peaked at {h:.1} MiB, at another moment",
                helper.unwrap_or(0)
            ),
            None => "agent process only; no evidence reader found".into(),
        };
        rows.push((
            "ready".into(),
            f64::NAN,
            f64::NAN,
            format!(
                "{:.0} ms from exec to /healthz answering (programs attached)",
                ready.as_secs_f64() * 1000.0
            ),
        ));
        rows.push((
            "peak at start (VmHWM)".into(),
            f64::NAN,
            vm_hwm(pid).unwrap_or(f64::NAN),
            helper_note,
        ));
        std::thread::sleep(Duration::from_secs(3));
        let (cpu, rss) = footprint(pid, Duration::from_secs(20))?;
        rows.push(("idle (1 s scan)".into(), cpu, rss, String::new()));
    }
    // 100k block events per second: 50k IOPS (issue + complete each).
    {
        let agent = BenchAgent::start(bin, scratch, "load", None)?;
        let stat0 = block_ios(ram.name());
        let dev = ram.dev.clone();
        let load = std::thread::spawn(move || fio(&dev, "randread", 16, &["--rate_iops=50000"]));
        std::thread::sleep(Duration::from_secs(3));
        let (cpu, rss) = footprint(agent.pid(), Duration::from_secs(10))?;
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
    // 10,000 bind mounts (an EFS-heavy host) in the agent's (private) mount namespace.
    {
        let dir = scratch.join("mounts");
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        let prefix = format!(
            "mount -t tmpfs bindsto-bench-mounts {d} && mkdir {d}/src && i=0; \
             while [ $i -lt 10000 ]; do mkdir {d}/m$i && mount --bind {d}/src {d}/m$i || exit 1; i=$((i+1)); done"
        );
        let t0 = Instant::now();
        let agent = BenchAgent::start(bin, scratch, "mounts", Some(&prefix))?;
        let setup = t0.elapsed();
        let n = std::fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid()))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        std::thread::sleep(Duration::from_secs(3));
        let (cpu, rss) = footprint(agent.pid(), Duration::from_secs(15))?;
        rows.push((
            "10,000 bind mounts".into(),
            cpu,
            rss,
            format!(
                "{n} lines in the agent's mountinfo (made in {:.0} s); scan {}",
                setup.as_secs_f64(),
                scan_ms(&agent)
            ),
        ));
    }
    // 64,000 requests in the in-flight map, on a hung disk (so none is a phantom to drop).
    {
        let disk = faulty_disk(faultyfs)?;
        let agent = BenchAgent::start(bin, scratch, "inflight", None)?;
        disk.set_mode(Mode::Hang)?;
        let mut dd = Command::new("dd");
        dd.args([
            &format!("if={}", disk.loop_dev().display()),
            "of=/dev/null",
            "bs=4k",
            "count=1",
            "iflag=direct",
        ]);
        let reader = BgProcess::spawn(dd)?;
        std::thread::sleep(Duration::from_secs(1));
        let map = fill_inflight_map(agent.pid(), &disk, INFLIGHT)?;
        std::thread::sleep(Duration::from_secs(2));
        let (cpu, rss) = footprint(agent.pid(), Duration::from_secs(10))?;
        // Still there after the window: the scanner kept them (the disk really has a request
        // in flight), so every scan walked all of them.
        let left = map.len().unwrap_or(0);
        rows.push((
            "64,000 requests in flight".into(),
            cpu,
            rss,
            format!(
                "{INFLIGHT} entries written through bpf(2); {left} in the map after the window; scan {}",
                scan_ms(&agent)
            ),
        ));
        disk.set_mode(Mode::Pass)?;
        drop(reader);
    }
    Ok(Footprint { rows })
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

/// Entries written into the request map (its capacity is 65,536).
const INFLIGHT: u32 = 64_000;

/// The agent's last scan, as its own gauge says.
fn scan_ms(agent: &BenchAgent) -> String {
    format!(
        "{:.2} ms",
        agent.metric("bindsto_scan_duration_seconds") * 1000.0
    )
}

/// The highest RSS the process ever had (MiB), as the kernel counts it.
fn vm_hwm(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
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

/// Writes `n` entries for `disk` into the agent's RQ_INFLIGHT map (found through the agent's
/// own fds, so other agents on the host are never touched).
fn fill_inflight_map(pid: u32, disk: &FaultyDisk, n: u32) -> Result<BpfMap> {
    let map = BpfMap::of_process(pid, "RQ_INFLIGHT")?;
    let (major, minor) = disk
        .dev_id()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .context("the disk's major:minor")?;
    let start = bpfmap::monotonic_ns() - 1_000_000_000;
    for i in 0..u64::from(n) {
        // Ids no kernel pointer has; sectors 8 apart.
        let sector = 1_000_000 + i * 8;
        map.update(
            &bpfmap::request_key((1 << 40) | i),
            &bpfmap::request(start, bpfmap::kernel_dev(major, minor), sector, 1, 8),
            0,
        )?;
    }
    Ok(map)
}

/// Reads and writes completed on `name` so far (sysfs stat).
fn block_ios(name: &str) -> u64 {
    block_stat(name).map_or(0, |s| s.read_ios + s.write_ios)
}
