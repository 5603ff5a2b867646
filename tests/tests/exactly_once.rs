//! Every counter agrees with the kernel under churn, counted independently of the agent: XFS
//! shutdowns by the kernel's own log lines for the test's loop device, block errors by a
//! bpftrace program of the test's own on `block:block_rq_error`. Counts are printed as
//! `CROSSCHECK <what> kernel=N agent=N lost=N` lines. Also: the series of a loop device that
//! was detached leave `/metrics` at the next topology refresh.
//!
//! Needs root. Run: `cargo xtask test` (or `cargo test -p bindsto-tests --test exactly_once --
//! --test-threads=1` after `cargo build -p bindsto`).

use std::{
    io::Read,
    os::unix::fs::OpenOptionsExt,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use bindsto_tests::{
    Agent, BgProcess, FaultyDisk, Mode, XfsMount,
    churn::{LoopXfs, XfsImage},
    faultyfs_bin, privileged, run_cmd,
};

/// Shutdown/remount cycles (the issue asks for at least 100).
const CYCLES: usize = 110;

fn config() -> String {
    r#"listen = "127.0.0.1:9842"
dry_run = true

[detect]
scan_interval = "250ms"
probe_timeout = "2s"
fstypes = ["xfs"]
"#
    .to_string()
}

/// The value of `name{device="<dev>"}` in a `/metrics` text (0 when absent).
fn device_counter(metrics: &str, name: &str, dev: &str) -> u64 {
    let prefix = format!("{name}{{device=\"{dev}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("counter value"))
}

fn plain_counter(metrics: &str, name: &str) -> u64 {
    let prefix = format!("{name} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("counter value"))
}

/// Polls `/metrics` until `value` stops changing for `quiet` (the agent has caught up).
fn settled(agent: &Agent, quiet: Duration, value: impl Fn(&str) -> u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (u64::MAX, Instant::now());
    loop {
        let text = agent.metrics();
        let v = value(&text);
        if v != last.0 {
            last = (v, Instant::now());
        } else if last.1.elapsed() >= quiet || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The kernel log from now on, read without blocking (`/dev/kmsg`, one record per read).
struct KernelLog(std::fs::File);

impl KernelLog {
    fn open() -> KernelLog {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .expect("/dev/kmsg");
        // SAFETY: lseek on a descriptor we own; SEEK_END skips the records already logged.
        let r = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&f), 0, libc::SEEK_END) };
        assert!(r >= 0, "lseek /dev/kmsg");
        KernelLog(f)
    }

    /// The message part of every record logged since `open` (or the last call).
    fn read_new(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let msg = rec.split_once(';').map_or(&*rec, |(_, m)| m);
                    out.push(msg.lines().next().unwrap_or_default().to_string());
                }
                // Records overwritten before we read them: the count would be short.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    panic!("kernel log records were overwritten before the test read them")
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("reading /dev/kmsg: {e}"),
            }
        }
        out
    }
}

/// fio on its own XFS (another loop device): several jobs of mixed I/O for `secs`.
fn fio_load(dir: &Path, secs: u64) -> BgProcess {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=churn",
        &format!("--directory={}", dir.display()),
        "--rw=randrw",
        "--bs=4k",
        "--size=16m",
        "--numjobs=4",
        "--ioengine=psync",
        "--fsync=32",
        "--time_based",
        &format!("--runtime={secs}"),
        "--group_reporting",
        // Jobs as threads: fio's job processes are session leaders of their own, which a
        // signal to the fixture's process group would not reach.
        "--thread",
    ]);
    BgProcess::spawn(cmd).expect("fio")
}

#[test]
fn shutdown_count_equals_the_kernel_log_over_a_hundred_remounts() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("FaultyDisk");
    let name = disk.loop_name();
    drop(XfsMount::new(&disk).expect("mkfs + mount"));
    let work = tempfile::tempdir().expect("tempdir");
    let image = XfsImage::new(work.path(), "load", 300).expect("image");
    let load = LoopXfs::mount(&image, &work.path().join("load")).expect("load mount");
    let agent = Agent::start(&config());
    let mut fio = fio_load(load.path(), 300);
    let mut klog = KernelLog::open();
    let lost_before = plain_counter(&agent.metrics(), "bindsto_events_lost_total");

    let mut kernel_lines = Vec::new();
    let started = Instant::now();
    for i in 0..CYCLES {
        let xfs = XfsMount::mount_existing(&disk, None).expect("mount");
        std::fs::write(xfs.path().join(format!("f{i}")), vec![7u8; 64 << 10]).expect("write");
        // Alternate a flushing and a log-error-like shutdown; hold the mount past a scan so
        // the agent's statx check races the event.
        let flag = if i % 2 == 0 {
            "shutdown"
        } else {
            "shutdown -f"
        };
        let p = xfs.path().to_string_lossy().into_owned();
        run_cmd("xfs_io", &["-x", "-c", flag, &p], Duration::from_secs(30)).expect("xfs_io");
        std::thread::sleep(Duration::from_millis(if i % 3 == 0 { 40 } else { 300 }));
        xfs.unmount().expect("unmount");
        kernel_lines.extend(klog.read_new());
    }
    let churn = started.elapsed();
    let agent_text = settled(&agent, Duration::from_secs(3), |t| {
        device_counter(t, "bindsto_xfs_shutdowns_total", &name)
    });
    kernel_lines.extend(klog.read_new());
    assert!(fio.is_running(), "fio stopped early: {}", fio.output());
    // fio stops its jobs on SIGINT; the load mount can then be unmounted, not only lazily.
    fio.signal(nix::sys::signal::Signal::SIGINT)
        .expect("SIGINT fio");
    fio.wait_timeout(Duration::from_secs(30));
    let tag = format!("XFS ({name}): ");
    let kernel = kernel_lines
        .iter()
        .filter(|l| l.starts_with(&tag) && l.contains("Shutting down filesystem"))
        .count() as u64;
    let agent_count = device_counter(&agent_text, "bindsto_xfs_shutdowns_total", &name);
    let lost = plain_counter(&agent_text, "bindsto_events_lost_total") - lost_before;
    // Shutdowns the mount check saw before the event had been read: the race of the issue.
    let by_check = agent.log().matches("confirmed by statx").count();
    eprintln!(
        "CROSSCHECK shutdowns kernel={kernel} agent={agent_count} lost={lost} cycles={CYCLES} \
         check_first={by_check} churn_s={:.1}",
        churn.as_secs_f64()
    );
    let ours: Vec<&String> = kernel_lines
        .iter()
        .filter(|l| l.starts_with(&tag))
        .collect();
    assert_eq!(kernel, CYCLES as u64, "kernel lines for {name}: {ours:#?}");
    assert_eq!(agent_count, kernel, "agent log:\n{}", agent.log());
    drop(load);
}

/// How many errors bpftrace prints one by one: the warm-up's, before fio.
const WARM_UP_LINES: u64 = 64;

#[test]
fn block_error_count_equals_a_bpf_count_under_fio() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 64).expect("FaultyDisk");
    let name = disk.loop_name();
    let (major, minor) = disk
        .dev_id()
        .split_once(':')
        .map(|(a, b)| (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap()))
        .unwrap();
    let agent = Agent::start(&config());
    // The kernel's dev_t in tracepoints: major << 20 | minor.
    let kdev = (major << 20) | minor;
    // `count()` is a per-CPU map and exact; `@seq++` is a read-modify-write of one shared
    // value that loses increments when two CPUs complete requests at once (fio does), so it
    // only numbers the warm-up's errors, which one `dd` at a time makes.
    let prog = format!(
        "tracepoint:block:block_rq_error /args->dev == {kdev}/ {{ @errors = count(); @seq++; \
         if (@seq <= {WARM_UP_LINES}) {{ printf(\"E %d\\n\", @seq); }} }} \
         END {{ print(@errors); clear(@errors); clear(@seq); }}"
    );
    let mut bt = BgProcess::spawn({
        let mut c = Command::new("bpftrace");
        c.args(["-e", &prog]);
        c
    })
    .expect("bpftrace");
    let t0 = Instant::now();
    while !bt.output().contains("Attaching") {
        assert!(bt.is_running(), "bpftrace: {}", bt.output());
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "bpftrace: {}",
            bt.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // bpftrace says "Attaching" before its probe is attached: errors made before then reach
    // the agent only. So the count starts once bpftrace has printed an error of its own, and
    // both sides are compared from that baseline.
    let dev = disk.loop_dev().to_string_lossy().into_owned();
    disk.set_mode(Mode::Error).expect("error mode");
    let t0 = Instant::now();
    while !bt.output().lines().any(|l| l.starts_with("E ")) {
        assert!(bt.is_running(), "bpftrace: {}", bt.output());
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "bpftrace saw no error: {}",
            bt.output()
        );
        let _ = run_cmd(
            "dd",
            &[
                &format!("if={dev}"),
                "of=/dev/null",
                "bs=4k",
                "count=1",
                "iflag=direct",
            ],
            Duration::from_secs(10),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    disk.set_mode(Mode::Pass).expect("pass mode");
    let base_text = settled(&agent, Duration::from_secs(2), |t| {
        device_counter(t, "bindsto_block_io_errors_total", &name)
    });
    let kernel_base: u64 = bt
        .output()
        .lines()
        .filter_map(|l| l.strip_prefix("E ")?.trim().parse().ok())
        .max()
        .expect("an E line");
    assert!(
        kernel_base < WARM_UP_LINES,
        "warm-up made too many errors to count"
    );
    let agent_base = device_counter(&base_text, "bindsto_block_io_errors_total", &name);
    let lost_before = plain_counter(&base_text, "bindsto_events_lost_total");
    disk.set_mode(Mode::Error).expect("error mode");
    let fio = run_cmd(
        "fio",
        &[
            "--name=errors",
            &format!("--filename={dev}"),
            "--rw=randrw",
            "--bs=4k",
            "--direct=1",
            "--numjobs=4",
            "--iodepth=8",
            "--ioengine=libaio",
            "--continue_on_error=all",
            "--number_ios=1500",
            "--thread",
            "--group_reporting",
        ],
        Duration::from_secs(120),
    );
    disk.set_mode(Mode::Pass).expect("pass mode");
    let agent_text = settled(&agent, Duration::from_secs(2), |t| {
        device_counter(t, "bindsto_block_io_errors_total", &name)
    });
    bt.signal(nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    bt.wait_timeout(Duration::from_secs(30));
    let out = bt.output();
    let kernel: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("@errors: "))
        .unwrap_or_else(|| panic!("no count from bpftrace: {out}"))
        .trim()
        .parse::<u64>()
        .expect("count")
        - kernel_base;
    let agent_count =
        device_counter(&agent_text, "bindsto_block_io_errors_total", &name) - agent_base;
    let lost = plain_counter(&agent_text, "bindsto_events_lost_total") - lost_before;
    eprintln!(
        "CROSSCHECK block_errors kernel={kernel} agent={agent_count} lost={lost} \
         (after a warm-up of {kernel_base} errors; agent {agent_base})"
    );
    assert!(
        kernel >= 1000,
        "fio made too few errors ({kernel}): {fio:?}"
    );
    assert!(agent_count <= kernel, "counted more than the kernel did");
    assert!(
        kernel - agent_count <= lost,
        "missed {} errors but only {lost} events were lost",
        kernel - agent_count
    );
}

/// A mount table change of the test's own: a tmpfs mounted and unmounted in a temp dir.
fn touch_mount_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().to_string_lossy().into_owned();
    run_cmd(
        "mount",
        &["-t", "tmpfs", "none", &p],
        Duration::from_secs(10),
    )
    .expect("mount");
    if let Err(e) = run_cmd("umount", &[&p], Duration::from_secs(10)) {
        let _ = run_cmd("umount", &["-l", &p], Duration::from_secs(10));
        panic!("umount {p}: {e:#}");
    }
}

#[test]
fn series_of_a_detached_loop_device_go_at_the_next_refresh() {
    let _g = privileged();
    let work = tempfile::tempdir().expect("tempdir");
    let image = XfsImage::new(work.path(), "gone", 300).expect("image");
    let xfs = LoopXfs::mount(&image, &work.path().join("m")).expect("mount");
    let name = xfs.loop_name();
    let agent = Agent::start(&config());
    let p = xfs.path().to_string_lossy().into_owned();
    run_cmd(
        "xfs_io",
        &["-x", "-c", "shutdown", &p],
        Duration::from_secs(30),
    )
    .expect("xfs_io");
    let series = format!("bindsto_xfs_shutdowns_total{{device=\"{name}\"}}");
    let t0 = Instant::now();
    while !agent.metrics().contains(&series) {
        assert!(t0.elapsed() < Duration::from_secs(5), "no {series}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Unmounted and detached; the refresh the unmount caused may come before the detach.
    xfs.unmount().expect("unmount + detach");
    touch_mount_table();
    let t0 = Instant::now();
    while agent.metrics().contains(&format!("device=\"{name}\"")) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "series of {name} still there:\n{}",
            agent.metrics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "series of detached {name} gone {} ms after the next mount change",
        t0.elapsed().as_millis()
    );
}
