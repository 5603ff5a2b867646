//! The guest's `/init`: mounts the pseudo filesystems, loads the scenario's modules, runs the
//! scenario named on the kernel command line (`vmtest.scenario=`) against the real agent,
//! asserting only through its `/status`, and prints exactly one verdict line
//! (`VMTEST-RESULT <scenario> PASS|FAIL ...`) and `VMTEST-END` before powering off.
//!
//! The guest is thrown away after one scenario, but what a scenario starts is still stopped by
//! PID (and devices resumed) so the end line and the power-off are never blocked by it.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use bindsto_vm_tests::scenario::{END_LINE, RESULT_PREFIX};
use serde_json::Value;

const API: &str = "127.0.0.1:9842";

fn main() {
    // Second stage of the systemd scenarios: started by systemd as vmtest.service, not as
    // /init (the kernel command line still names the scenario).
    if std::process::id() != 1 {
        let scenario = param("vmtest.scenario=");
        let r = systemd::inside(&scenario);
        finish(&scenario, Instant::now(), r);
        return;
    }
    if let Err(e) = setup() {
        println!("vmtest: setup failed: {e:#}");
    }
    let scenario = param("vmtest.scenario=");
    let kernel = param("vmtest.kernel=");
    println!(
        "vmtest: kernel {} ({}), scenario {scenario}",
        kernel,
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let started = Instant::now();
    let r = match scenario.as_str() {
        "nfs-mount-hang" => nfs::nfs_mount_hang(1),
        "efs-parallel-mounts" => nfs::nfs_mount_hang(20),
        "nfs-server-gone" => nfs_server::nfs_server_gone(),
        "ebs-detach" => ebs_detach(),
        "ebs-detach-ext4" => ext4::ebs_detach_ext4(),
        "ebs-stall" => ebs_stall(),
        "xfs-shutdown-5.10" => xfs_shutdown_510(),
        // Only returns on failure: on success it has become systemd.
        s if systemd::Fault::of(s).is_some() => systemd::switch_root().map(|()| String::new()),
        other => Err(anyhow!("unknown scenario {other:?}")),
    };
    finish(&scenario, started, r);
}

/// A `key=value` of the kernel command line (`vmtest.scenario=`, `vmtest.kernel=`).
fn param(key: &str) -> String {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_default()
        .to_string()
}

fn finish(scenario: &str, started: Instant, r: Result<String>) {
    match r {
        Ok(detail) => println!("{RESULT_PREFIX} {scenario} PASS {detail}"),
        Err(e) => {
            dump("/tmp/agent.log");
            println!(
                "{RESULT_PREFIX} {scenario} FAIL {:#} (after {:.1}s)",
                e,
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!("{END_LINE}");
    let _ = std::io::stdout().flush();
    // SAFETY: plain syscalls; we are PID 1 and the guest is disposable.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}

fn dump(path: &str) {
    if let Ok(s) = fs::read_to_string(path) {
        let lines: Vec<&str> = s.lines().collect();
        let from = lines.len().saturating_sub(60);
        println!("vmtest: ---- last lines of {path} ----");
        for l in &lines[from..] {
            println!("vmtest: | {l}");
        }
    }
}

fn setup() -> Result<()> {
    let mounts: &[(&str, &str, &str)] = &[
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("tracefs", "/sys/kernel/tracing", "tracefs"),
        ("debugfs", "/sys/kernel/debug", "debugfs"),
        ("bpf", "/sys/fs/bpf", "bpf"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2"),
    ];
    for (src, dst, fstype) in mounts {
        let _ = fs::create_dir_all(dst);
        // mount(2) directly: spawning anything needs /dev/null, which devtmpfs provides.
        let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
        let (src, dst, fstype) = (c(src), c(dst), c(fstype));
        // SAFETY: valid NUL-terminated strings, no data argument.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 {
            println!("vmtest: mount {dst:?}: {}", std::io::Error::last_os_error());
        }
    }
    sh("ip link set lo up")?;
    // The hostname stays the kernel's placeholder "(none)": the agent must still name its
    // incidents (and keep their evidence) on a host nobody named.
    let modules = fs::read_to_string("/etc/vmtest-modules").unwrap_or_default();
    for m in modules.lines().filter(|l| !l.is_empty()) {
        // Built-in on some kernels (virtio_pci on 6.12): then /sys/module exists already.
        if sh(&format!("modprobe {m}")).is_err()
            && !std::path::Path::new(&format!("/sys/module/{m}")).exists()
        {
            bail!("modprobe {m} failed");
        }
    }
    Ok(())
}

/// Runs a shell command and fails with its output when it fails.
fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("/bin/sh")
        .args(["-c", cmd])
        .output()
        .with_context(|| format!("sh -c {cmd}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("`{cmd}` failed ({}): {}", out.status, text.trim());
    }
    Ok(text)
}

/// A background process, stopped by its PID when dropped.
struct Bg(Child);

impl Bg {
    fn spawn(cmd: &str) -> Result<Self> {
        let c = Command::new("/bin/sh")
            .args(["-c", &format!("exec {cmd}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {cmd}"))?;
        Ok(Self(c))
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.try_wait();
    }
}

/// The agent with a scenario's config; its log goes to /tmp/agent.log.
struct Agent {
    _proc: Bg,
}

impl Agent {
    fn start(extra: &str) -> Result<Self> {
        let config = format!(
            "listen = \"{API}\"\ndry_run = true\n\n[detect]\nscan_interval = \"250ms\"\n\
             io_stall_after = \"3s\"\nmount_blocked_after = \"3s\"\nprobe_timeout = \"2s\"\n\
             nfs_stall_after = \"5s\"\nio_errors_window = \"5m\"\n\n{extra}"
        );
        fs::write("/tmp/bindsto.toml", config)?;
        let log = fs::File::create("/tmp/agent.log")?;
        let child = Command::new("/usr/bin/bindsto")
            .args(["run", "--config", "/tmp/bindsto.toml"])
            .env("BINDSTO_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting /usr/bin/bindsto")?;
        let agent = Agent { _proc: Bg(child) };
        let t = Instant::now();
        // TCG is slow: loading and verifying the programs takes a while.
        while t.elapsed() < Duration::from_secs(120) {
            if let Ok(s) = status()
                && s["probes"].as_array().is_some_and(|p| !p.is_empty())
            {
                println!(
                    "vmtest: agent ready after {:.1}s",
                    t.elapsed().as_secs_f64()
                );
                return Ok(agent);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("agent did not answer /status within 120 s")
    }
}

/// `GET path` on the agent's API: the status code and the body.
fn get(path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(API)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    let text = String::from_utf8_lossy(&body);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    Ok((code, body.to_string()))
}

fn status() -> Result<Value> {
    let (_, body) = get("/status")?;
    Ok(serde_json::from_str(&body)?)
}

/// Polls /status until `check` returns Some(detail); returns the elapsed time and detail.
fn wait_for(
    what: &str,
    limit: Duration,
    mut check: impl FnMut(&Value) -> Option<String>,
) -> Result<(Duration, String)> {
    let t = Instant::now();
    let mut last = Value::Null;
    while t.elapsed() < limit {
        if let Ok(s) = status() {
            if let Some(d) = check(&s) {
                return Ok((t.elapsed(), d));
            }
            last = s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let summary = serde_json::json!({
        "targets": last["targets"],
        "blocked_mount_calls": last["blocked_mount_calls"],
        "devices": last["devices"],
    });
    bail!(
        "{what} not seen within {}s; last status: {summary}",
        limit.as_secs()
    )
}

fn targets<'a>(s: &'a Value, kind: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let kind = kind.to_string();
    s["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |t| t["kind"] == kind.as_str())
}

fn has_reason(t: &Value, signal: &str) -> bool {
    t["reasons"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["signal"] == signal))
}

fn probe_state(s: &Value, probe: &str) -> Option<(String, String)> {
    s["probes"].as_array()?.iter().find_map(|p| {
        (p["probe"] == probe).then(|| {
            (
                p["state"].as_str().unwrap_or_default().to_string(),
                p["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

/// The request programs must run as BTF-enabled tracepoints on every kernel of the fleet
/// (all have BTF), and the bio programs must be attached once a dm device exists.
fn block_programs_ok(s: &Value, dm: bool) -> Result<()> {
    let probes = s["probes"].as_array().cloned().unwrap_or_default();
    let find = |name: &str| probes.iter().find(|p| p["probe"] == name).cloned();
    for name in ["block:block_rq_issue", "block:block_rq_complete"] {
        let p = find(name).with_context(|| format!("{name} not in /status"))?;
        if p["state"] != "attached" || p["via"] != "tp_btf" {
            bail!("{name} is not a BTF-enabled program here: {p}");
        }
    }
    if dm {
        let p = find("block:block_bio_queue").context("block_bio_queue not in /status")?;
        if p["state"] != "attached" {
            bail!("a dm device exists but block_bio_queue is {p}");
        }
    }
    Ok(())
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---- device-mapper over a virtio disk (ebs-detach, ebs-stall, xfs-shutdown-5.10) ----

/// `ebs`: a dm linear device over /dev/vda (an XFS made on the host), mounted on /data and
/// watched as critical, with a writer running. Dropping it resumes the device and stops the
/// writer, so nothing stays blocked.
struct DmXfs {
    sectors: u64,
    writer: Option<Bg>,
}

impl DmXfs {
    fn new() -> Result<Self> {
        Self::with_fs("xfs", None)
    }

    /// As [`DmXfs::new`] with another filesystem; `mkfs`, when given, runs on the dm device
    /// first (the disk is raw).
    fn with_fs(fstype: &str, mkfs: Option<&str>) -> Result<Self> {
        let sectors: u64 = sh("blockdev --getsz /dev/vda")?.trim().parse()?;
        // No udev in the guest: dmsetup makes the /dev/mapper node itself.
        sh(&format!(
            "dmsetup create --noudevsync ebs --table '0 {sectors} linear /dev/vda 0' && dmsetup mknodes ebs"
        ))?;
        if let Some(mkfs) = mkfs {
            sh(&format!("{mkfs} /dev/mapper/ebs"))?;
        }
        fs::create_dir_all("/data")?;
        sh(&format!("mount -t {fstype} /dev/mapper/ebs /data"))?;
        Ok(Self {
            sectors,
            writer: None,
        })
    }

    /// The kernel name (dm-N) of the device, as the agent reports it.
    fn dm_name(&self) -> Result<String> {
        for e in fs::read_dir("/sys/block")?.flatten() {
            let name = fs::read_to_string(e.path().join("dm/name")).unwrap_or_default();
            if name.trim() == "ebs" {
                return Ok(e.file_name().to_string_lossy().into_owned());
            }
        }
        bail!("no /sys/block/dm-*/dm/name says ebs")
    }

    fn start_writer(&mut self) -> Result<()> {
        self.writer = Some(Bg::spawn(
            "sh -c 'i=0; while true; do i=$((i+1)); \
             dd if=/dev/zero of=/data/f$((i%4)) bs=64k count=16 conv=fsync 2>/dev/null; done'",
        )?);
        Ok(())
    }
}

impl Drop for DmXfs {
    fn drop(&mut self) {
        let _ = sh("dmsetup resume ebs");
        self.writer = None;
        let _ = sh("umount -l /data");
        let _ = self.sectors;
    }
}

const WATCH_DATA: &str = "[[watch]]\npath = \"/data\"\ncritical = true\n";

fn mount_target<'a>(s: &'a Value, path: &str) -> Option<&'a Value> {
    targets(s, "mount").find(|t| t["id"] == path)
}

fn device_target<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    targets(s, "device").find(|t| t["id"] == name)
}

/// Swaps the live table to `error` under writes (a force-detached EBS volume): the mount must
/// fail with `xfs_shutdown` and the device report `io_errors`.
fn ebs_detach() -> Result<String> {
    let mut dm = DmXfs::new()?;
    let dev = dm.dm_name()?;
    let agent = Agent::start(WATCH_DATA)?;
    block_programs_ok(&status()?, true)?;
    dm.start_writer()?;
    std::thread::sleep(Duration::from_secs(2));
    wait_for(
        "healthy /data before the fault",
        Duration::from_secs(10),
        |s| {
            mount_target(s, "/data")
                .filter(|t| t["state"] == "healthy")
                .map(|_| String::new())
        },
    )?;
    let t0 = Instant::now();
    sh(&format!(
        "dmsetup load ebs --table '0 {} error' && dmsetup resume ebs",
        dm.sectors
    ))?;
    wait_for("xfs_shutdown on /data", Duration::from_secs(60), |s| {
        mount_target(s, "/data")
            .filter(|t| t["state"] == "failed" && has_reason(t, "xfs_shutdown"))
            .map(|_| String::new())
    })?;
    let shut = t0.elapsed();
    let (_, errs) = wait_for("io_errors on the dm device", Duration::from_secs(30), |s| {
        let t = device_target(s, &dev)?;
        has_reason(t, "io_errors").then(|| format!("{dev} {}", t["state"]))
    })?;
    let errs_at = t0.elapsed();
    drop(agent);
    Ok(format!(
        "latency_ms={} (xfs_shutdown; io_errors on {errs} at {} ms)",
        ms(shut),
        ms(errs_at)
    ))
}

/// `dmsetup suspend` with writes pending (a stalled EBS volume): bios queue inside dm before
/// any request exists, so only bio-level tracking sees them. `--nolockfs` because a plain
/// suspend freezes XFS first and the writers would then wait in the VFS, not on the device
/// (a real stalled volume freezes nothing). `dmsetup resume` must make it healthy again.
fn ebs_stall() -> Result<String> {
    let mut dm = DmXfs::new()?;
    let dev = dm.dm_name()?;
    let agent = Agent::start(WATCH_DATA)?;
    block_programs_ok(&status()?, true)?;
    dm.start_writer()?;
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    sh("dmsetup suspend --nolockfs ebs")?;
    let (_, stall) = wait_for("io_stall on the dm device", Duration::from_secs(60), |s| {
        let t = device_target(s, &dev)?;
        let m = mount_target(s, "/data")?;
        (t["state"] == "failed" && has_reason(t, "io_stall") && m["state"] == "failed")
            .then(|| format!("{dev} io_stall, /data failed"))
    })?;
    let stall_at = t0.elapsed();
    if stall_at < Duration::from_secs(3) {
        bail!(
            "io_stall after {} ms, before io_stall_after (3 s)",
            ms(stall_at)
        );
    }
    let t1 = Instant::now();
    sh("dmsetup resume ebs")?;
    wait_for("healthy again after resume", Duration::from_secs(30), |s| {
        let t = device_target(s, &dev)?;
        let m = mount_target(s, "/data")?;
        (t["state"] == "healthy" && m["state"] == "healthy").then(String::new)
    })?;
    let rec = t1.elapsed();
    drop(agent);
    Ok(format!(
        "latency_ms={} (threshold 3000 ms; {stall}; requests by tp_btf, bios by block_bio_queue; healthy {} ms after resume)",
        ms(stall_at),
        ms(rec)
    ))
}

/// 5.10 has neither `xfs:xfs_force_shutdown` nor `block:block_rq_error`. An explicit shutdown
/// must still be reported (kprobe on `xfs_do_force_shutdown` where kprobes exist, else the
/// statx confirmation), and a failing request on /dev/vdb must be reported as `io_errors`
/// through `block_rq_complete`'s error field.
fn xfs_shutdown_510() -> Result<String> {
    let dm = DmXfs::new()?;
    let agent = Agent::start(WATCH_DATA)?;
    let s = status()?;
    let probes = s["probes"].as_array().cloned().unwrap_or_default();
    let state = |name: &str| {
        probes
            .iter()
            .find(|p| p["probe"] == name)
            .map(|p| p["state"].as_str().unwrap_or("?").to_string())
            .unwrap_or_else(|| "absent".into())
    };
    let tp_state = state("xfs:xfs_force_shutdown");
    let err_state = state("block:block_rq_error");
    if tp_state == "attached" || err_state == "attached" {
        bail!(
            "this kernel has xfs_force_shutdown ({tp_state}) / block_rq_error ({err_state}): not a 5.10 layout"
        );
    }
    // Errors come from the BTF-enabled completion's errno argument here.
    block_programs_ok(&s, true)?;
    let kprobe = state("kprobe:xfs_do_force_shutdown");
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() && kprobe != "attached"
    {
        bail!("the kernel has kprobes but kprobe:xfs_do_force_shutdown is {kprobe}");
    }
    fs::create_dir_all("/data2")?;
    sh("mount -t xfs /dev/vdb /data2")?;
    fs::write("/data/x", b"data")?;
    sh("sync")?;
    let t0 = Instant::now();
    sh("xfs_io -x -c shutdown /data")?;
    let (_, reasons) = wait_for("xfs_shutdown on /data", Duration::from_secs(30), |s| {
        mount_target(s, "/data")
            .filter(|t| t["state"] == "failed" && has_reason(t, "xfs_shutdown"))
            .map(|t| t["reasons"][0]["detail"].to_string())
    })?;
    let shut = t0.elapsed();
    // Block errors: /dev/vdb fails this sector at the request level (QEMU blkdebug).
    let t1 = Instant::now();
    if sh(&format!(
        "dd if=/dev/vdb of=/dev/null bs=512 skip={} count=1 iflag=direct",
        bindsto_vm_tests::scenario::FAILING_SECTOR
    ))
    .is_ok()
    {
        bail!("the blkdebug sector read succeeded: no error injected");
    }
    let (_, errs) = wait_for("io_errors on vdb", Duration::from_secs(30), |s| {
        let t = device_target(s, "vdb")?;
        has_reason(t, "io_errors").then(|| t["reasons"][0]["detail"].to_string())
    })?;
    let errs_at = t1.elapsed();
    let _ = sh("umount /data2");
    drop(dm);
    drop(agent);
    Ok(format!(
        "latency_ms={} (xfs_shutdown via {}; kprobe:xfs_do_force_shutdown {kprobe}; io_errors on vdb from tp_btf/block_rq_complete after {} ms: {errs})",
        ms(shut),
        reasons,
        ms(errs_at)
    ))
}

// The crate root's modules resolve next to it (src/bin/): these live in src/bin/vm-guest/.
#[path = "vm-guest/ext4.rs"]
mod ext4;
#[path = "vm-guest/nfs.rs"]
mod nfs;
#[path = "vm-guest/nfs_server.rs"]
mod nfs_server;
#[path = "vm-guest/systemd.rs"]
mod systemd;
