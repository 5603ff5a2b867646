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
        "nfs-mount-hang" => nfs_mount_hang(1),
        "efs-parallel-mounts" => nfs_mount_hang(20),
        "nfs-server-gone" => nfs_server_gone(),
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

fn status() -> Result<Value> {
    let mut s = TcpStream::connect(API)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    let text = String::from_utf8_lossy(&body);
    let (_, json) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    Ok(serde_json::from_str(json)?)
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

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---- NFS blackhole mounts (nfs-mount-hang, efs-parallel-mounts) ----

/// NFSv4.1 mounts to a TCP listener that accepts and never answers (FAULTS.md, verified on
/// 6.1): each `mount(2)` sleeps killable in `rpc_wait_bit_killable`, invisible to the kernel's
/// hung-task detector. The agent must list every one with source, target and fstype after
/// `mount_blocked_after` and fail the mount subsystem.
fn nfs_mount_hang(n: usize) -> Result<String> {
    let _server = Bg::spawn("nc -ll -p 2049 -e /bin/sleep 600")?;
    let agent = Agent::start("")?;
    let mut mounts = Vec::new();
    let t0 = Instant::now();
    for i in 0..n {
        let dir = format!("/mnt/efs{i}");
        fs::create_dir_all(&dir)?;
        mounts.push(Bg::spawn(&format!(
            "mount -t nfs4 -o vers=4.1,port=2049,addr=127.0.0.1,clientaddr=127.0.0.1 127.0.0.1:/ {dir}"
        ))?);
    }
    let (_, detail) = wait_for("every blocked NFS mount", Duration::from_secs(90), |s| {
        let calls = s["blocked_mount_calls"].as_array()?;
        let listed = (0..n)
            .filter(|i| {
                calls.iter().any(|c| {
                    c["fstype"] == "nfs4"
                        && c["source"] == "127.0.0.1:/"
                        && c["target"] == format!("/mnt/efs{i}").as_str()
                        && c["syscall"] == "mount"
                        && c["blocked_seconds"].as_f64().is_some_and(|b| b >= 3.0)
                })
            })
            .count();
        let sub = targets(s, "subsystem").find(|t| t["id"] == "mount")?;
        (listed == n && sub["state"] == "failed" && has_reason(sub, "mount_blocked"))
            .then(|| format!("{listed}/{n} listed, subsystem mount failed (mount_blocked)"))
    })?;
    let latency = t0.elapsed();
    if latency < Duration::from_secs(3) {
        bail!(
            "reported after {} ms, before mount_blocked_after (3 s)",
            ms(latency)
        );
    }
    // The mounts are still hanging: nothing returned on its own.
    if s_count_running(&mut mounts) != n {
        bail!("some mount(2) calls returned; the blackhole did not hold");
    }
    drop(mounts);
    drop(agent);
    Ok(format!(
        "latency_ms={} (threshold 3000 ms, scan 250 ms): {detail}",
        ms(latency)
    ))
}

// ---- a real NFS server that goes away (nfs-server-gone) ----

const NFS_MNT: &str = "/mnt/nfs";

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

fn nfs_stall_detail(s: &Value) -> Option<String> {
    let t = mount_target(s, NFS_MNT)?;
    t["reasons"]
        .as_array()?
        .iter()
        .find(|r| r["signal"] == "nfs_stall")
        .map(|r| r["detail"].as_str().unwrap_or_default().to_string())
}

fn metric(name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(API).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The kernel NFS server with Debian's nfs-kernel-server userspace, exporting a tmpfs on
/// loopback only.
struct NfsServer {
    mountd: Option<Bg>,
}

impl NfsServer {
    fn setup() -> Result<()> {
        sh(
            "mkdir -p /proc/fs/nfsd /srv/nfs /var/lib/nfs/v4recovery /run/rpc_pipefs \
            && mount -t nfsd nfsd /proc/fs/nfsd && mount -t tmpfs tmpfs /srv/nfs \
            && touch /var/lib/nfs/etab /var/lib/nfs/rmtab",
        )?;
        // fsid=0: the NFSv4 pseudo root, and what lets a tmpfs be exported at all.
        fs::write(
            "/etc/exports",
            "/srv/nfs 127.0.0.1(rw,sync,fsid=0,no_subtree_check,no_root_squash,insecure)\n",
        )?;
        sh("exportfs -ra")?;
        Ok(())
    }

    fn start() -> Result<Self> {
        // mountd answers the kernel's export-cache upcalls, which NFSv4 needs too.
        let mountd = Bg::spawn("rpc.mountd -F -N 2 -N 3 -u")?;
        // v4 only (no rpcbind in the guest); short grace and lease: TCG is slow enough.
        // 6.x kernels are built without NFSv2 and refuse to be told to turn it off.
        let args = "-d -p 2049 -N 3 -U -G 10 -L 10 4";
        sh(&format!("rpc.nfsd -N 2 {args} || rpc.nfsd {args}")).map_err(|e| {
            anyhow!(
                "{e:#}; dmesg: {}",
                sh("dmesg | tail -5").unwrap_or_default()
            )
        })?;
        Ok(Self {
            mountd: Some(mountd),
        })
    }

    /// The server goes away: nfsd threads stopped (its sockets close), mountd killed.
    fn stop(&mut self) -> Result<()> {
        sh("rpc.nfsd -d 0")?;
        self.mountd = None;
        Ok(())
    }
}

/// Unmounts the share forcibly if the scenario leaves early, so the final sync cannot hang on
/// dirty pages of a server that is gone.
struct ForceUmount;

impl Drop for ForceUmount {
    fn drop(&mut self) {
        let _ = sh(&format!("timeout 20 umount -f -l {NFS_MNT}"));
    }
}

/// A real NFS server in the guest, a share mounted with NFSv4.1 and written to, then the
/// server stopped: the agent must report `nfs_stall` on the mount from sunrpc tasks in flight,
/// with the sunrpc probes attached after the modules loaded (after the agent started), and
/// the mount must be healthy again once the server is back.
fn nfs_server_gone() -> Result<String> {
    let agent = Agent::start("")?;
    let s = status()?;
    let (state, why) = probe_state(&s, "sunrpc:rpc_task_begin")
        .context("/status lists no sunrpc:rpc_task_begin probe")?;
    if state != "missing" {
        bail!("sunrpc:rpc_task_begin is {state} before sunrpc loaded");
    }
    println!("vmtest: before modprobe: sunrpc:rpc_task_begin missing ({why})");
    sh("modprobe nfsd && modprobe nfsv4")?;
    let (attach, _) = wait_for(
        "sunrpc probes attached after the modules loaded",
        Duration::from_secs(60),
        |s| {
            let ok = ["sunrpc:rpc_task_begin", "sunrpc:rpc_task_end"]
                .iter()
                .all(|p| probe_state(s, p).is_some_and(|(st, _)| st == "attached"));
            ok.then(String::new)
        },
    )?;
    println!(
        "vmtest: sunrpc probes attached {} ms after modprobe",
        ms(attach)
    );
    // For the record: the layout the offsets were read from, and which end event was used.
    for ev in ["rpc_task_begin", "rpc_task_end", "rpc_task_complete"] {
        let f = fs::read_to_string(format!("/sys/kernel/tracing/events/sunrpc/{ev}/format"))
            .unwrap_or_default();
        let fields: Vec<&str> = f
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("field:") && l.contains("_id;"))
            .collect();
        println!("vmtest: {ev}: {}", fields.join(" "));
    }
    if let Ok(log) = fs::read_to_string("/tmp/agent.log") {
        for l in log
            .lines()
            .filter(|l| l.contains("attached probe=\"sunrpc"))
        {
            println!("vmtest: agent: {l}");
        }
    }

    NfsServer::setup()?;
    let mut server = NfsServer::start()?;
    fs::create_dir_all(NFS_MNT)?;
    let _umount = ForceUmount;
    sh(&format!(
        "timeout 120 mount -t nfs4 -o vers=4.1,addr=127.0.0.1,clientaddr=127.0.0.1 127.0.0.1:/ {NFS_MNT}"
    ))?;
    let _writer = Bg::spawn(&format!(
        "sh -c 'while true; do dd if=/dev/zero of={NFS_MNT}/data bs=64k count=4 conv=fsync; \
         sleep 0.2; done'"
    ))?;
    // In use and healthy: the writer's RPCs come and go, the share answers its probe. It must
    // stay healthy for longer than nfs_stall_after (5 s): no false positive on a live share.
    wait_for(
        "the NFS mount healthy and written",
        Duration::from_secs(120),
        |s| {
            let t = mount_target(s, NFS_MNT)?;
            let written = fs::metadata(format!("{NFS_MNT}/data")).is_ok_and(|m| m.len() > 0);
            (t["state"] == "healthy" && written).then(String::new)
        },
    )?;
    let healthy_from = Instant::now();
    while healthy_from.elapsed() < Duration::from_secs(12) {
        let s = status()?;
        if let Some(d) = nfs_stall_detail(&s) {
            bail!("nfs_stall on a live share: {d}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let rpc_seen = metric("bindsto_rpc_tasks_inflight").unwrap_or(-1.0);

    let t0 = Instant::now();
    server.stop()?;
    let (_, detail) = wait_for(
        "nfs_stall from RPC tasks in flight",
        Duration::from_secs(120),
        |s| nfs_stall_detail(s).filter(|d| d.contains("RPC task in flight")),
    )?;
    let latency = t0.elapsed();
    let oldest = metric("bindsto_rpc_tasks_inflight_oldest_seconds").unwrap_or(0.0);
    if oldest < 5.0 {
        bail!("bindsto_rpc_tasks_inflight_oldest_seconds is {oldest} with nfs_stall raised");
    }
    if !detail.contains("127.0.0.1:/") {
        bail!("the detail does not name the server: {detail}");
    }

    // The server comes back: the stuck tasks finish and the mount is healthy again.
    let t1 = Instant::now();
    let _server = NfsServer::start()?;
    wait_for(
        "the mount healthy again after the server returned",
        Duration::from_secs(150),
        |s| {
            mount_target(s, NFS_MNT)
                .filter(|t| t["state"] == "healthy")
                .map(|_| String::new())
        },
    )?;
    let recovered = t1.elapsed();
    drop(_writer);
    drop(agent);
    Ok(format!(
        "latency_ms={} (nfs_stall_after 5000 ms, scan 250 ms; oldest RPC {oldest:.1}s): {detail}; \
         sunrpc attached {} ms after modprobe (in flight while healthy: {rpc_seen}); \
         healthy {} ms after the server returned",
        ms(latency),
        ms(attach),
        ms(recovered)
    ))
}

fn s_count_running(bgs: &mut [Bg]) -> usize {
    let mut n = 0;
    for b in bgs.iter_mut() {
        if matches!(b.0.try_wait(), Ok(None)) {
            n += 1;
        }
    }
    n
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
        "latency_ms={} (threshold 3000 ms; {stall}; healthy {} ms after resume)",
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
        "latency_ms={} (xfs_shutdown via {}; kprobe:xfs_do_force_shutdown {kprobe}; io_errors on vdb from block_rq_complete after {} ms: {errs})",
        ms(shut),
        reasons,
        ms(errs_at)
    ))
}

// The crate root's modules resolve next to it (src/bin/): these live in src/bin/vm-guest/.
#[path = "vm-guest/ext4.rs"]
mod ext4;
#[path = "vm-guest/systemd.rs"]
mod systemd;
