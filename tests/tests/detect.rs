//! The real agent binary against real failures on the running kernel: a FUSE-backed faulty
//! disk under a loop device with XFS. The agent is observed only through `/status`,
//! `/healthz` and `/metrics`. Latencies are printed as `LATENCY <test>: <ms>` lines.
//!
//! Needs root. Run: `cargo xtask test` (or `cargo test -p bindsto-tests -- --test-threads=1`
//! after `cargo build -p bindsto`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bindsto_tests::status::{has_reason, state, target};
use bindsto_tests::{Agent, BgProcess, FaultyDisk, Mode, XfsMount, faultyfs_bin, privileged};
use serde_json::Value;

const SIZE_MB: u64 = 300;
const POLL: Duration = Duration::from_millis(20);

fn disk() -> FaultyDisk {
    FaultyDisk::with_binary(faultyfs_bin!(), SIZE_MB).expect("FaultyDisk")
}

/// The test config of the issue: 250 ms scans, 3 s thresholds, the mount watched as critical.
fn config(watch: &Path) -> String {
    format!(
        r#"listen = "127.0.0.1:9842"
dry_run = true

[detect]
scan_interval = "250ms"
io_stall_after = "3s"
mount_blocked_after = "3s"
probe_timeout = "2s"
fstypes = ["xfs"]

[[watch]]
path = "{}"
critical = true
"#,
        watch.display()
    )
}

fn device<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    s["devices"].as_array()?.iter().find(|d| d["name"] == name)
}

fn mp(xfs: &XfsMount<'_>) -> String {
    xfs.path().display().to_string()
}

/// Starts the agent and waits until it observes the mount, healthy.
fn start_agent(cfg: &str, mount: &str) -> Agent {
    let mut agent = Agent::start(cfg);
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            state(s, "mount", mount) == "healthy"
        })
        .unwrap_or_else(|e| panic!("the agent never observed {mount}: {e}"));
    agent
}

/// An agent watching nothing in particular, for tests about mount calls.
fn start_agent_without_watch() -> Agent {
    let mut agent = Agent::start(&config(Path::new("/nonexistent-watch")));
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            state(s, "subsystem", "mount") == "healthy"
        })
        .expect("agent up");
    agent
}

fn latency(name: &str, d: Duration) {
    eprintln!("LATENCY {name}: {} ms", d.as_millis());
}

#[test]
fn explicit_shutdown_fails_the_mount_within_a_second() {
    let _g = privileged();
    let disk = disk();
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = mp(&xfs);
    let mut agent = start_agent(&config(xfs.path()), &m);
    assert_eq!(agent.healthz().0, 200);

    let t0 = Instant::now();
    xfs.shutdown().expect("xfs_io -x -c shutdown");
    let took = agent
        .wait_for(Duration::from_secs(5), POLL, |s| {
            state(s, "mount", &m) == "failed" && has_reason(s, "mount", &m, "xfs_shutdown")
        })
        .unwrap_or_else(|e| panic!("no xfs_shutdown: {e}"));
    // From before xfs_io started to the verdict being served (conservative).
    let took = t0.elapsed().max(took);
    latency("explicit_shutdown", took);
    assert!(took < Duration::from_secs(1), "took {took:?}");

    let (code, body) = agent.healthz();
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).expect("503 body is JSON");
    assert!(
        v["failed"]
            .as_array()
            .is_some_and(|f| f.iter().any(|t| t["id"] == m.as_str())),
        "{body}"
    );
    let metrics = agent.metrics();
    let dev = disk.loop_name();
    assert!(
        metrics.contains(&format!(
            "bindsto_xfs_shutdowns_total{{device=\"{dev}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "bindsto_target_healthy{{kind=\"mount\",target=\"{m}\",critical=\"true\"}} 0"
        )),
        "{metrics}"
    );
}

#[test]
fn log_error_shutdown_is_confirmed_and_io_errors_reported() {
    let _g = privileged();
    let disk = disk();
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = mp(&xfs);
    std::fs::write(xfs.path().join("before"), vec![1u8; 1 << 20]).expect("write");
    let mut agent = start_agent(&config(xfs.path()), &m);

    // Metadata changes still in the log when the disk fails make the next log write fail.
    for i in 0..64 {
        std::fs::write(xfs.path().join(format!("pending.{i}")), b"x").unwrap();
    }
    disk.set_mode(Mode::Error).expect("error mode");
    let t0 = Instant::now();
    let path = xfs.path().join("during");
    let mut writer = BgProcess::sh(&format!(
        "for i in 1 2 3 4 5 6 7 8; do dd if=/dev/zero of={p}.$i bs=64k count=16 2>/dev/null; done; sync",
        p = path.display()
    ))
    .expect("writer");
    let name = disk.loop_name();
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            has_reason(s, "mount", &m, "xfs_shutdown")
                && device(s, &name).is_some_and(|d| d["io_errors"].as_u64() > Some(0))
        })
        .unwrap_or_else(|e| panic!("no confirmed shutdown with io_errors: {e}"));
    let took = t0.elapsed();
    latency("log_error_shutdown", took);
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let s = agent.status();
    assert_eq!(state(&s, "mount", &m), "failed");
    assert!(has_reason(&s, "device", &name, "io_errors"), "{s:#}");
    let detail = target(&s, "mount", &m).unwrap()["reasons"].to_string();
    eprintln!("log_error_shutdown reasons: {detail}");
    assert_eq!(agent.healthz().0, 503);
    let metrics = agent.metrics();
    assert!(
        metrics.contains(&format!(
            "bindsto_block_io_errors_total{{device=\"{name}\"}}"
        )),
        "{metrics}"
    );
    writer.wait_timeout(Duration::from_secs(10));
}

#[test]
fn hung_disk_is_a_stall_and_recovers() {
    hung_disk_stall(&[], "1");
}

/// The classic tracepoints, the fallback where the kernel has no BTF, see the same stall.
#[test]
fn classic_tracepoints_see_the_same_stall() {
    hung_disk_stall(&[("BINDSTO_CLASSIC_TRACEPOINTS", "1")], "0");
}

/// A hung disk under a writer is a stall after the threshold and recovers; `btf` is what
/// `bindsto_probe_btf` must say of the request programs.
fn hung_disk_stall(env: &[(&str, &str)], btf: &str) {
    let _g = privileged();
    let disk = disk();
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = mp(&xfs);
    let bin = bindsto_tests::agent::default_agent_bin().expect("agent binary");
    let mut agent = Agent::start_with_env(bin, &config(xfs.path()), &[], env).expect("agent");
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            state(s, "mount", &m) == "healthy"
        })
        .unwrap_or_else(|e| panic!("the agent never observed {m}: {e}"));
    let name = disk.loop_name();
    for event in ["block_rq_issue", "block_rq_complete"] {
        let line = format!("bindsto_probe_btf{{probe=\"block:{event}\"}} {btf}");
        assert!(agent.metrics().contains(&line), "no {line}");
    }

    disk.set_mode(Mode::Hang).expect("hang mode");
    let t0 = Instant::now();
    let mut writer = BgProcess::sh(&format!(
        "dd if=/dev/zero of={}/f bs=64k count=16 2>/dev/null; sync",
        xfs.path().display()
    ))
    .expect("writer");
    agent
        .wait_for(Duration::from_secs(15), POLL, |s| {
            has_reason(s, "device", &name, "io_stall")
        })
        .unwrap_or_else(|e| panic!("no io_stall: {e}"));
    let took = t0.elapsed();
    latency("io_stall", took);
    // Not before the threshold, and within one scan (plus the writer reaching the disk).
    assert!(
        took >= Duration::from_secs(3),
        "stall reported early: {took:?}"
    );
    assert!(took < Duration::from_millis(4500), "took {took:?}");

    let s = agent.status();
    assert_eq!(state(&s, "device", &name), "failed", "{s:#}");
    assert!(
        ["degraded", "failed"].contains(&state(&s, "mount", &m).as_str()),
        "{s:#}"
    );
    let d = device(&s, &name).expect("device in /status");
    assert!(d["inflight"].as_u64() >= Some(1), "{d}");
    assert!(d["oldest_inflight_seconds"].as_f64() >= Some(3.0), "{d}");
    assert_eq!(agent.healthz().0, 503);
    let metrics = agent.metrics();
    assert!(
        metrics.contains(&format!(
            "bindsto_block_inflight_oldest_seconds{{device=\"{name}\"}}"
        )),
        "{metrics}"
    );

    disk.set_mode(Mode::Pass).expect("pass mode");
    let t1 = Instant::now();
    agent
        .wait_for(Duration::from_secs(15), POLL, |s| {
            state(s, "device", &name) == "healthy" && state(s, "mount", &m) == "healthy"
        })
        .unwrap_or_else(|e| panic!("no recovery: {e}"));
    latency("io_stall_recovery", t1.elapsed());
    assert_eq!(agent.healthz().0, 200);
    assert!(
        writer.wait_timeout(Duration::from_secs(20)).is_some(),
        "the writer finished once the disk answered"
    );
}

/// Unmounts `path` on drop if something is mounted there from `dev` (a mount the test made
/// itself by running `mount`), lazily if it is busy.
struct MountGuard {
    path: PathBuf,
    source: String,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let ours = bindsto_tests::sys::mounts_at(&self.path)
            .iter()
            .any(|e| e.source == self.source);
        if ours {
            let ok = Command::new("umount")
                .arg(&self.path)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            }
        }
    }
}

#[test]
fn blocked_mount_call_is_listed_and_disappears() {
    let _g = privileged();
    let disk = disk();
    bindsto_tests::xfs::mkfs_xfs(&disk, &[]).expect("mkfs");
    let target_dir = tempfile::Builder::new()
        .prefix("bindsto-mnt-")
        .tempdir()
        .expect("mount point");
    let target_path = target_dir.path().canonicalize().unwrap();
    let source = disk.loop_dev().display().to_string();
    let mut agent = start_agent_without_watch();

    disk.set_mode(Mode::Hang).expect("hang mode");
    let _guard = MountGuard {
        path: target_path.clone(),
        source: source.clone(),
    };
    let t0 = Instant::now();
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "xfs", &source]).arg(&target_path);
    let mut mounter = BgProcess::spawn(cmd).expect("mount");
    let target_s = target_path.display().to_string();
    let listed = |s: &Value| {
        s["blocked_mount_calls"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["syscall"] == "mount"
                    && c["target"] == target_s.as_str()
                    && c["source"] == source.as_str()
                    && c["fstype"] == "xfs"
            })
        })
    };
    agent
        .wait_for(Duration::from_secs(15), POLL, listed)
        .unwrap_or_else(|e| panic!("mount call not listed: {e}"));
    let took = t0.elapsed();
    latency("mount_blocked", took);
    assert!(
        took >= Duration::from_secs(3),
        "listed before the threshold: {took:?}"
    );
    assert!(took < Duration::from_millis(4000), "took {took:?}");

    let seconds = |s: &Value| -> f64 {
        s["blocked_mount_calls"][0]["blocked_seconds"]
            .as_f64()
            .unwrap_or(0.0)
    };
    let s1 = agent.status();
    assert_eq!(state(&s1, "subsystem", "mount"), "failed", "{s1:#}");
    assert!(has_reason(&s1, "subsystem", "mount", "mount_blocked"));
    assert_eq!(s1["blocked_mount_calls"][0]["pid"], mounter.pid());
    std::thread::sleep(Duration::from_millis(800));
    let s2 = agent.status();
    assert!(
        seconds(&s2) > seconds(&s1),
        "blocked_seconds grows: {s1} then {s2}"
    );
    let metrics = agent.metrics();
    assert!(
        metrics.contains("bindsto_mount_calls_blocked 1"),
        "{metrics}"
    );

    disk.set_mode(Mode::Pass).expect("pass mode");
    assert!(
        mounter.wait_timeout(Duration::from_secs(20)).is_some(),
        "mount returned once the disk answered"
    );
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            !listed(s) && state(s, "subsystem", "mount") == "healthy"
        })
        .unwrap_or_else(|e| panic!("the call stayed listed: {e}"));
}

#[test]
fn shutdown_mount_recovers_when_remounted() {
    let _g = privileged();
    let disk = disk();
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = mp(&xfs);
    let mut agent = start_agent(&config(xfs.path()), &m);
    xfs.shutdown().expect("shutdown");
    agent
        .wait_for(Duration::from_secs(5), POLL, |s| {
            state(s, "mount", &m) == "failed"
        })
        .expect("failed");
    // XFS never recovers on its own: the verdict stays while the dead mount stays.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(state(&agent.status(), "mount", &m), "failed");

    // The watch is critical, so while nothing is mounted at its path it is `not_mounted`
    // (BindsTo= semantics); a host mounts the volume again where it was, which gives the path a
    // fresh target: only a new one can be healthy, the shut-down one is latched.
    xfs.unmount_in_place().expect("unmount the shut-down XFS");
    agent
        .wait_for(Duration::from_secs(5), POLL, |s| {
            has_reason(s, "mount", &m, "not_mounted")
        })
        .unwrap_or_else(|e| panic!("the unmounted critical watch is not not_mounted: {e}"));
    xfs.mount_again().expect("mount again");
    let t0 = Instant::now();
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            state(s, "mount", &m) == "healthy"
        })
        .unwrap_or_else(|e| panic!("no recovery after remount: {e}"));
    latency("remount_recovery", t0.elapsed());
    assert_eq!(agent.healthz().0, 200);
}

#[test]
fn full_filesystem_degrades_the_mount() {
    let _g = privileged();
    let disk = disk();
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = mp(&xfs);
    let cfg = config(xfs.path()).replace(
        "fstypes = [\"xfs\"]",
        "fstypes = [\"xfs\"]\nfs_full_percent = 50.0",
    );
    let mut agent = start_agent(&cfg, &m);
    // 300 MiB XFS: 200 MiB of data is well above half.
    let mut fill = BgProcess::sh(&format!(
        "dd if=/dev/zero of={}/fill bs=1M count=200 conv=fsync 2>/dev/null",
        xfs.path().display()
    ))
    .expect("fill");
    assert!(
        fill.wait_timeout(Duration::from_secs(60))
            .is_some_and(|s| s.success())
    );
    agent
        .wait_for(Duration::from_secs(5), POLL, |s| {
            state(s, "mount", &m) == "degraded" && has_reason(s, "mount", &m, "fs_full")
        })
        .unwrap_or_else(|e| panic!("no fs_full: {e}"));
    assert_eq!(agent.healthz().0, 200, "fs_full degrades, it does not fail");
    std::fs::remove_file(xfs.path().join("fill")).expect("rm");
    agent
        .wait_for(Duration::from_secs(5), POLL, |s| {
            state(s, "mount", &m) == "healthy"
        })
        .unwrap_or_else(|e| panic!("fs_full did not clear: {e}"));
}

/// The id of the BPF map called `name` that process `pid` holds (from its fds' fdinfo).
fn agent_map_id(pid: u32, name: &str) -> String {
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).expect("fdinfo") {
        let Ok(info) = std::fs::read_to_string(entry.expect("fdinfo entry").path()) else {
            continue;
        };
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .map(|v| v.trim().to_owned())
        else {
            continue;
        };
        let out = Command::new("bpftool")
            .args(["map", "show", "id", &id, "-j"])
            .output()
            .expect("bpftool");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["name"] == name {
            return id;
        }
    }
    panic!("agent {pid} holds no map {name}");
}

/// A request entry whose completion was lost (simulated by writing one into the agent's own
/// map with bpftool) must not become a stall: sysfs says nothing is in flight, so the scanner
/// drops it.
#[test]
fn leaked_map_entry_is_no_phantom_stall() {
    let _g = privileged();
    let disk = disk();
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = mp(&xfs);
    let agent = start_agent(&config(xfs.path()), &m);
    let name = disk.loop_name();
    let minor: u32 = disk.dev_id().split(':').nth(1).unwrap().parse().unwrap();
    let dev = (7u32 << 20) | minor;
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    let start_ns = (mono.tv_sec() as u64 - 100) * 1_000_000_000;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>();
    // `RQ_INFLIGHT`: a request pointer (or the classic programs' folded key) to
    // `agent_ebpf::Request` { start_ns, sector, dev, count, nr_sector, _pad, op }.
    let key = 0xdead_beefu64.to_le_bytes().to_vec();
    let mut val = start_ns.to_le_bytes().to_vec();
    val.extend(0xdead_beefu64.to_le_bytes());
    val.extend(dev.to_le_bytes());
    val.extend(1u32.to_le_bytes());
    val.extend(8u32.to_le_bytes());
    val.extend(0u32.to_le_bytes());
    // `op`: unknown.
    val.extend([0u8; 8]);
    // By id, not by name: another agent on the host has a map of the same name.
    let map_id = agent_map_id(agent.pid(), "RQ_INFLIGHT");
    let mut cmd = Command::new("bpftool");
    cmd.args(["map", "update", "id", &map_id, "key", "hex"])
        .args(hex(&key))
        .args(["value", "hex"])
        .args(hex(&val));
    let out = cmd.output().expect("bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Longer than io_stall_after plus several scans.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let s = agent.status();
        assert!(
            !has_reason(&s, "device", &name, "io_stall"),
            "phantom stall: {s:#}"
        );
        assert_eq!(state(&s, "mount", &m), "healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let lookup = Command::new("bpftool")
        .args(["map", "lookup", "id", &map_id, "key", "hex"])
        .args(hex(&key))
        .output()
        .expect("bpftool");
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&lookup.stdout),
        String::from_utf8_lossy(&lookup.stderr)
    );
    assert!(
        !lookup.status.success() && err.to_lowercase().contains("not found"),
        "the leaked entry was dropped by the scanner: {err}"
    );
}

/// The new mount API blocks in `fsconfig(FSCONFIG_CMD_CREATE)`, where the superblock is read;
/// util-linux does not use it here, so a few lines of Python drive the syscalls directly.
#[test]
fn blocked_fsconfig_create_is_listed() {
    let _g = privileged();
    let disk = disk();
    bindsto_tests::xfs::mkfs_xfs(&disk, &[]).expect("mkfs");
    let mut agent = start_agent_without_watch();
    disk.set_mode(Mode::Hang).expect("hang mode");
    let script = format!(
        r#"import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(430, b"xfs", 0)  # fsopen
assert fd >= 0, os.strerror(ctypes.get_errno())
assert libc.syscall(431, fd, 1, b"source", b"{src}", 0) == 0  # FSCONFIG_SET_STRING
rc = libc.syscall(431, fd, 6, None, None, 0)  # FSCONFIG_CMD_CREATE: reads the superblock
print("create", rc, os.strerror(ctypes.get_errno()) if rc else "ok")
"#,
        src = disk.loop_dev().display()
    );
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script);
    let mut caller = BgProcess::spawn(cmd).expect("python3");
    let t0 = Instant::now();
    let listed = |s: &Value| {
        s["blocked_mount_calls"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["syscall"] == "fsconfig"))
    };
    agent
        .wait_for(Duration::from_secs(15), POLL, listed)
        .unwrap_or_else(|e| panic!("fsconfig not listed: {e}\n{}", caller.output()));
    latency("fsconfig_blocked", t0.elapsed());
    let s = agent.status();
    assert_eq!(s["blocked_mount_calls"][0]["pid"], caller.pid());
    assert_eq!(state(&s, "subsystem", "mount"), "failed");

    disk.set_mode(Mode::Pass).expect("pass mode");
    assert!(
        caller.wait_timeout(Duration::from_secs(20)).is_some(),
        "fsconfig returned once the disk answered"
    );
    assert!(
        caller.output().contains("create 0 ok"),
        "{}",
        caller.output()
    );
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| !listed(s))
        .unwrap_or_else(|e| panic!("the call stayed listed: {e}"));
}
