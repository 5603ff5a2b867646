//! Soak: an hour of a busy host compressed into a few minutes, against the real agent. Its
//! memory must end where it was after warm-up (within 10%), its tables and `/metrics` must stay
//! bounded, and its limit counters must count what a flood pushed past them.
//!
//! What one hour of a busy ECS host means, and what the test does instead (at least as much):
//!
//! | in one busy hour | count | the test |
//! |---|---|---|
//! | volumes mounted and unmounted (tasks with EBS/EFS volumes come and go) | ~60 | `CYCLES` x `IMAGES` x `MOUNTS_PER_IMAGE` (+ warm-up and map fills) = 257 XFS loop mounts attached, mounted, written, unmounted, detached; a watch with `require_mountpoint` goes watched/unwatched with them |
//! | XFS shutdowns | a few | one `xfs_io -x -c shutdown` per cycle (21) |
//! | block requests in flight at a time | thousands | 10,000 request-map entries per cycle (210,000 in all), plus the map filled to capacity (65,536) five times |
//! | I/O error storm of a dying disk | ~100k events | a FaultyDisk in error mode under fio every cycle, the agent frozen (SIGSTOP) during some so the ring buffer overruns |
//! | lost RPC task ends (NFS) | rare | 1,000 stale RPC entries per cycle |
//! | scrapes (Prometheus 15 s, load balancer 5 s) | ~1,000 | `/metrics`, `/status`, `/healthz` back to back the whole time (several thousand) |
//!
//! Real parked I/O cannot reach 10,000 requests in flight on a loop device, so those entries
//! are written into the agent's own `RQ_INFLIGHT` map through the `bpf(2)` syscall (like
//! `detect::leaked_map_entry_is_no_phantom_stall` does with bpftool), as a busy host's
//! tracepoints would; likewise stale `RPC_INFLIGHT` entries (the host has no NFS client).
//!
//! Needs root. Run: `cargo build -p bindsto && cargo test -p bindsto-tests --test soak --
//! --nocapture` (`BINDSTO_SOAK_CYCLES=200` for a longer soak, not in CI). Prints `SOAK ...`
//! lines with the memory figures.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bindsto_tests::{
    Agent, BgProcess, FaultyDisk, Mode, XfsMount,
    bpfmap::{self, BpfMap},
    churn::{LoopXfs, XfsImage},
    faultyfs_bin, http_get, privileged,
};

/// Churn cycles after warm-up; `BINDSTO_SOAK_CYCLES` runs a longer soak (about 9 s a cycle).
const CYCLES: usize = 20;

fn cycles() -> usize {
    std::env::var("BINDSTO_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= CYCLES)
        .unwrap_or(CYCLES)
}
/// Images mounted in turn in each cycle.
const IMAGES: usize = 3;
/// Mount/unmount rounds of each image per cycle.
const MOUNTS_PER_IMAGE: usize = 4;
/// Request-map entries written per cycle (the issue's 10,000 in flight).
const INFLIGHT_ENTRIES: u64 = 10_000;
/// Stale RPC entries per cycle.
const RPC_ENTRIES: u32 = 1_000;
/// Capacity of `RQ_INFLIGHT` (agent_ebpf::RQ_MAP_ENTRIES).
const RQ_MAP_ENTRIES: usize = 65_536;
/// A dev_t no block device has (major 240 is for local/experimental use): a disk gone away.
const VANISHED_MAJOR: u32 = 240;

fn config(churn_dir: &Path, faulty_mount: &Path, state_dir: &Path) -> String {
    format!(
        r#"listen = "127.0.0.1:9842"
dry_run = true

[detect]
scan_interval = "250ms"
io_stall_after = "60s"
mount_blocked_after = "30s"
probe_timeout = "2s"
nfs_stall_after = "3s"
fstypes = ["xfs"]

[[watch]]
path = "{}"
critical = false
require_mountpoint = true

[[watch]]
path = "{}"
critical = true

[remediate]
actions = []
state_dir = "{}"
"#,
        churn_dir.join("m0").display(),
        faulty_mount.display(),
        state_dir.display()
    )
}

#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss_kib: u64,
    anon_kib: u64,
}

fn mem(pid: u32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
    }
}

fn threads(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// The value of the sample `name` (full series text, labels included) in OpenMetrics text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// HTTP scrapes from a thread for the whole test; also samples the agent's memory.
struct Scraper {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    max_metrics_bytes: Arc<AtomicU64>,
    peak: Arc<Mutex<Mem>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Scraper {
    fn start(agent: &Agent) -> Scraper {
        let addr = agent.addr();
        let pid = agent.pid();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let max_metrics_bytes = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(Mutex::new(Mem::default()));
        let handle = {
            let (stop, requests, failures, max_bytes, peak) = (
                Arc::clone(&stop),
                Arc::clone(&requests),
                Arc::clone(&failures),
                Arc::clone(&max_metrics_bytes),
                Arc::clone(&peak),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for path in ["/metrics", "/status", "/healthz"] {
                        match http_get(addr, path, Duration::from_secs(5)) {
                            Ok((_, body)) => {
                                if path == "/metrics" {
                                    max_bytes.fetch_max(body.len() as u64, Ordering::SeqCst);
                                }
                            }
                            // While the agent is frozen (SIGSTOP) requests time out.
                            Err(_) => {
                                failures.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        requests.fetch_add(1, Ordering::SeqCst);
                    }
                    let m = mem(pid);
                    if let Ok(mut p) = peak.lock() {
                        p.rss_kib = p.rss_kib.max(m.rss_kib);
                        p.anon_kib = p.anon_kib.max(m.anon_kib);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Scraper {
            stop,
            requests,
            failures,
            max_metrics_bytes,
            peak,
            handle: Some(handle),
        }
    }

    fn peak(&self) -> Mem {
        *self.peak.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Soak<'a> {
    agent: Agent,
    churn_dir: PathBuf,
    images: &'a [XfsImage],
    faulty: &'a FaultyDisk,
    rq: BpfMap,
    rpc: BpfMap,
    mounts: u64,
    shutdowns: u64,
    entries: u64,
    rpc_entries: u64,
    freezes: u64,
}

impl Soak<'_> {
    /// Every image mounted `MOUNTS_PER_IMAGE` times (written to, one shut down), and while the
    /// first is mounted, 10,000 request entries on its disk and a vanished one.
    fn churn(&mut self, cycle: usize) {
        for round in 0..MOUNTS_PER_IMAGE {
            for (i, image) in self.images.iter().enumerate() {
                let mp = self.churn_dir.join(format!("m{i}"));
                let m = LoopXfs::mount(image, &mp).expect("mount a churn image");
                self.mounts += 1;
                write_synced(&mp.join(format!("f{round}")), 64 << 10);
                if i == 0 && round == 0 {
                    self.inflight_flood(&m, cycle);
                }
                if i == 1 && round == MOUNTS_PER_IMAGE - 1 {
                    let p = mp.to_string_lossy().into_owned();
                    bindsto_tests::run_cmd(
                        "xfs_io",
                        &["-x", "-c", "shutdown", &p],
                        Duration::from_secs(30),
                    )
                    .expect("xfs_io shutdown");
                    self.shutdowns += 1;
                }
                m.unmount().expect("unmount a churn image");
            }
        }
    }

    /// 10,000 request entries in flight: half on a mounted churn disk (sysfs: nothing in
    /// flight, so they lost their completion), half on a disk that no longer exists. Both must
    /// be dropped by the scanner without a phantom stall.
    fn inflight_flood(&mut self, m: &LoopXfs<'_>, cycle: usize) {
        let (ma, mi) = m.dev().expect("loop dev");
        let now = bpfmap::monotonic_ns();
        let start = now.saturating_sub(5_000_000_000);
        let base = (cycle as u64 + 1) << 32;
        let mut written = 0;
        for i in 0..INFLIGHT_ENTRIES {
            let dev = if i % 2 == 0 {
                bpfmap::kernel_dev(ma, mi)
            } else {
                bpfmap::kernel_dev(VANISHED_MAJOR, (cycle % 16) as u32)
            };
            let val = bpfmap::request(start, dev, base + i, 1, 8);
            if self
                .rq
                .update(&bpfmap::request_key(base + i), &val, 0)
                .is_ok()
            {
                written += 1;
            }
        }
        assert_eq!(written, INFLIGHT_ENTRIES, "map had room for the entries");
        self.entries += written;
        // Stale RPC tasks: no NFS mount on the host, no mount call in flight.
        let old = bpfmap::rq_val(now.saturating_sub(100_000_000_000), 1, 0);
        for t in 0..RPC_ENTRIES {
            self.rpc
                .update(&bpfmap::rpc_key(7, t + cycle as u32 * RPC_ENTRIES), &old, 0)
                .expect("RPC entry");
        }
        self.rpc_entries += u64::from(RPC_ENTRIES);
        let name = m.loop_name();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (rq, rpc) = (self.rq.len().unwrap_or(0), self.rpc.len().unwrap_or(0));
            let s = self.agent.status();
            let stalled = s["targets"].as_array().into_iter().flatten().any(|t| {
                t["reasons"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["signal"] == "io_stall")
            });
            assert!(
                !stalled,
                "phantom stall from leaked entries on {name}: {s:#}"
            );
            if rq < 1_000 && rpc == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "leaked entries not dropped within 10 s: {rq} request, {rpc} RPC entries left"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The faulty disk fails every request under fio for 3 s: block_rq_error events as fast
    /// as the host makes them. When `freeze`, the agent is stopped for 1.5 s meanwhile, so the
    /// ring buffer overruns and `bindsto_events_lost_total` must count it.
    fn error_flood(&mut self, freeze: bool) {
        self.faulty.set_mode(Mode::Error).expect("error mode");
        let dev = self.faulty.loop_dev().to_string_lossy().into_owned();
        let mut fio = Command::new("fio");
        fio.args([
            "--name=flood",
            &format!("--filename={dev}"),
            "--rw=randread",
            "--bs=4k",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=16",
            "--numjobs=2",
            "--time_based",
            "--runtime=3",
            "--continue_on_error=all",
            "--group_reporting",
            "--output-format=terse",
        ]);
        let mut fio = BgProcess::spawn(fio).expect("fio");
        if freeze {
            std::thread::sleep(Duration::from_millis(500));
            let pid = nix::unistd::Pid::from_raw(self.agent.pid() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
            std::thread::sleep(Duration::from_millis(1500));
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
            self.freezes += 1;
        }
        assert!(
            fio.wait_timeout(Duration::from_secs(30)).is_some(),
            "fio ended: {}",
            fio.output()
        );
        self.faulty.set_mode(Mode::Pass).expect("pass mode");
    }

    /// Fills `RQ_INFLIGHT` to capacity while the faulty disk holds a parked request (so the
    /// scanner keeps its entries), makes I/O on a churn disk, and checks that the kernel's
    /// failed inserts are counted in `bindsto_map_full_total{map="rq_inflight"}`; then the
    /// disk answers and the map drains.
    fn fill_request_map(&mut self) {
        let before = metric(
            &self.agent.metrics(),
            "bindsto_map_full_total{map=\"rq_inflight\"}",
        );
        self.faulty.set_mode(Mode::Hang).expect("hang mode");
        let dev = self.faulty.loop_dev().to_string_lossy().into_owned();
        let mut parked = BgProcess::sh(&format!(
            "dd if={dev} of=/dev/null bs=4k count=1 skip=70001 iflag=direct 2>/dev/null"
        ))
        .expect("dd");
        let name = self.faulty.loop_name();
        let deadline = Instant::now() + Duration::from_secs(10);
        while bindsto_tests::block_inflight(&name).map_or(0, |(r, w)| r + w) == 0 {
            assert!(Instant::now() < deadline, "no request parked on {name}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let (ma, mi) = dev_of(&name);
        let now = bpfmap::monotonic_ns();
        let dev = bpfmap::kernel_dev(ma, mi);
        let mut filled = 0;
        for i in 0..RQ_MAP_ENTRIES as u64 {
            // Ids no kernel pointer has (the top bit clear, below any kernel address).
            let id = (1 << 40) | i;
            match self.rq.update(
                &bpfmap::request_key(id),
                &bpfmap::request(now, dev, id, 1, 8),
                bpfmap::BPF_NOEXIST,
            ) {
                Ok(()) => filled += 1,
                Err(e) if e.raw_os_error() == Some(libc::E2BIG) => break,
                Err(e) => panic!("filling the request map: {e}"),
            }
        }
        self.entries += filled;
        // Real requests now find the map full.
        let m = LoopXfs::mount(&self.images[2], &self.churn_dir.join("m2")).expect("mount");
        self.mounts += 1;
        let mut full = before;
        for round in 0..50 {
            // fsync of this file only: a global sync would wait on the hung disk.
            write_synced(&m.path().join(format!("full{round}")), 256 << 10);
            full = metric(
                &self.agent.metrics(),
                "bindsto_map_full_total{map=\"rq_inflight\"}",
            );
            if full > before {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            full > before,
            "requests refused by the full map were not counted ({filled} entries written)"
        );
        m.unmount().expect("unmount");
        self.faulty.set_mode(Mode::Pass).expect("pass mode");
        assert!(
            parked.wait_timeout(Duration::from_secs(20)).is_some(),
            "the parked read finished"
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let n = self.rq.len().unwrap_or(usize::MAX);
            if n < 1_000 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the full map did not drain once the disk answered: {n} entries"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        println!(
            "SOAK map fill: {filled} entries written, rq_inflight full count {before} -> {full}"
        );
    }

    fn cycle(&mut self, cycle: usize) {
        self.churn(cycle);
        self.error_flood(cycle.is_multiple_of(3));
        if cycle.is_multiple_of(5) {
            self.fill_request_map();
        }
    }
}

fn write_synced(path: &Path, bytes: usize) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(&vec![7u8; bytes]).expect("write");
    f.sync_all().expect("fsync");
}

fn dev_of(name: &str) -> (u32, u32) {
    let text = std::fs::read_to_string(format!("/sys/block/{name}/dev")).expect("dev");
    let (a, b) = text.trim().split_once(':').expect("maj:min");
    (a.parse().expect("major"), b.parse().expect("minor"))
}

#[test]
fn an_hour_of_churn_ends_with_memory_where_it_started() {
    let _g = privileged();
    let t0 = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("bindsto-soak-")
        .tempdir()
        .expect("tempdir");
    let work_path = work.path().canonicalize().expect("canonical");
    let churn_dir = work_path.join("churn");
    std::fs::create_dir_all(&churn_dir).expect("churn dir");
    let images: Vec<XfsImage> = (0..IMAGES)
        .map(|i| XfsImage::new(&work_path, &format!("img{i}"), 300).expect("image"))
        .collect();
    let faulty = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("FaultyDisk");
    let xfs = XfsMount::new(&faulty).expect("xfs on the faulty disk");
    let faulty_mount = xfs.path().to_path_buf();
    let state_dir = work_path.join("state");
    let agent = Agent::start(&config(&churn_dir, &faulty_mount, &state_dir));
    let pid = agent.pid();
    let rq = BpfMap::of_process(pid, "RQ_INFLIGHT").expect("RQ_INFLIGHT");
    let rpc = BpfMap::of_process(pid, "RPC_INFLIGHT").expect("RPC_INFLIGHT");
    assert_eq!(rq.max_entries as usize, RQ_MAP_ENTRIES);
    let scraper = Scraper::start(&agent);
    let mut soak = Soak {
        agent,
        churn_dir: churn_dir.clone(),
        images: &images,
        faulty: &faulty,
        rq,
        rpc,
        mounts: 0,
        shutdowns: 0,
        entries: 0,
        rpc_entries: 0,
        freezes: 0,
    };

    // Warm-up: one full cycle of everything, so every table, buffer and thread pool has met
    // its working size.
    soak.cycle(0);
    std::thread::sleep(Duration::from_secs(3));
    let warm = mem(pid);
    let warm_threads = threads(pid);
    let warm_metrics = soak.agent.metrics();
    let warm_lost = metric(&warm_metrics, "bindsto_events_lost_total");
    println!(
        "SOAK after warm-up ({:.0} s): VmRSS {} KiB, RssAnon {} KiB, {} threads, /metrics {} bytes",
        t0.elapsed().as_secs_f64(),
        warm.rss_kib,
        warm.anon_kib,
        warm_threads,
        warm_metrics.len()
    );

    let cycles = cycles();
    for cycle in 1..=cycles {
        soak.cycle(cycle);
        let m = mem(pid);
        println!(
            "SOAK cycle {cycle}: VmRSS {} KiB, RssAnon {} KiB, {} threads, {} mounts so far",
            m.rss_kib,
            m.anon_kib,
            threads(pid),
            soak.mounts
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let end = mem(pid);
    let peak = scraper.peak();
    let end_threads = threads(pid);
    let metrics = soak.agent.metrics();
    let status = soak.agent.status();
    scraper_stats(&scraper, &metrics, &warm_metrics);
    let requests = scraper.requests.load(Ordering::SeqCst);
    let failures = scraper.failures.load(Ordering::SeqCst);
    drop(scraper);
    println!(
        "SOAK done in {:.0} s: {} XFS mounts, {} shutdowns, {} request-map entries, {} RPC \
         entries, {} error floods ({} with the agent frozen), {} HTTP requests ({} failed, while \
         frozen)",
        t0.elapsed().as_secs_f64(),
        soak.mounts,
        soak.shutdowns,
        soak.entries,
        soak.rpc_entries,
        cycles + 1,
        soak.freezes,
        requests,
        failures
    );
    println!(
        "SOAK memory: VmRSS warm-up {} KiB, end {} KiB ({:+.1}%), peak {} KiB; RssAnon warm-up \
         {} KiB, end {} KiB, peak {} KiB; threads {} -> {}",
        warm.rss_kib,
        end.rss_kib,
        (end.rss_kib as f64 / warm.rss_kib as f64 - 1.0) * 100.0,
        peak.rss_kib,
        warm.anon_kib,
        end.anon_kib,
        peak.anon_kib,
        warm_threads,
        end_threads
    );

    let io_errors = metric(
        &metrics,
        &format!(
            "bindsto_block_io_errors_total{{device=\"{}\"}}",
            faulty.loop_name()
        ),
    );
    println!(
        "SOAK floods: {io_errors} I/O errors counted on {}, {} events lost (counted)",
        faulty.loop_name(),
        metric(&metrics, "bindsto_events_lost_total")
    );
    // At least an hour's worth (see the table above).
    assert!(soak.mounts >= 120, "{} mounts", soak.mounts);
    assert!(soak.entries >= 100_000, "{} entries", soak.entries);
    assert!(requests >= 1_000, "{requests} HTTP requests");
    // Memory: where it was after warm-up.
    assert!(
        end.rss_kib as f64 <= warm.rss_kib as f64 * 1.10,
        "VmRSS grew from {} KiB to {} KiB",
        warm.rss_kib,
        end.rss_kib
    );
    // Idle blocking-pool threads come and go; a leak would grow with every cycle.
    // The heap part alone (VmRSS is mostly the mapped binary): a leak shows here first.
    assert!(
        end.anon_kib as f64 <= warm.anon_kib as f64 * 1.10,
        "RssAnon grew from {} KiB to {} KiB",
        warm.anon_kib,
        end.anon_kib
    );
    assert!(
        end_threads <= (warm_threads * 2).max(warm_threads + 16),
        "threads grew from {warm_threads} to {end_threads}"
    );
    // The flood past the ring buffer was counted.
    let lost = metric(&metrics, "bindsto_events_lost_total");
    assert!(
        lost > warm_lost,
        "events lost while the agent was frozen were not counted ({warm_lost} -> {lost})"
    );
    // Nothing of the unmounted churn mounts is left: targets, series, watches.
    let churn = churn_dir.to_string_lossy().into_owned();
    assert!(
        !status["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["id"].as_str().is_some_and(|id| id.starts_with(&churn))),
        "a target of an unmounted churn mount is left: {status:#}"
    );
    assert!(
        !metrics.contains(&churn),
        "series of unmounted churn mounts left in /metrics"
    );
    assert!(
        status["watches"][0]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("not a mount point")),
        "the churn watch is unwatched again: {}",
        status["watches"][0]
    );
    // No series of the vanished disk either, and /metrics ends the size it had.
    assert!(
        !metrics.contains(&format!("device=\"{VANISHED_MAJOR}:")),
        "series of a vanished disk"
    );
    assert!(
        metrics.len() <= warm_metrics.len() + warm_metrics.len() / 10,
        "/metrics grew from {} to {} bytes",
        warm_metrics.len(),
        metrics.len()
    );
    for table in [
        "mounts",
        "devices",
        "blocked_mount_calls",
        "device_names",
        "device_series",
        "incidents",
    ] {
        assert_eq!(
            metric(
                &metrics,
                &format!("bindsto_table_full_total{{table=\"{table}\"}}")
            ),
            0.0,
            "table {table} was full on a host far below its limit"
        );
    }
    drop(soak);
    drop(xfs);
}

/// Prints what the scraper saw.
fn scraper_stats(s: &Scraper, end_metrics: &str, warm_metrics: &str) {
    println!(
        "SOAK /metrics: {} bytes after warm-up, {} at the end, {} at most",
        warm_metrics.len(),
        end_metrics.len(),
        s.max_metrics_bytes.load(Ordering::SeqCst)
    );
}
