//! `bindsto gameday` end to end: the real binary, as root, on the running kernel. It builds its
//! own scratch storage (fault-injecting FUSE file, loop device, XFS) inside the directory the
//! test gives it; the test checks the verdicts it reports and that nothing of it is left over:
//! after a normal run, after Ctrl-C (SIGINT to its process group, as a terminal sends it) and
//! after SIGTERM, each while a failure is injected.
//!
//! Needs root. Run: `cargo xtask test` (or `cargo build -p bindsto` then
//! `cargo test -p bindsto-tests --test gameday -- --test-threads=1`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bindsto_tests::{
    Agent, BgProcess, agent::default_agent_bin, privileged, run_with_timeout, sys,
};
use nix::sys::signal::Signal;
use serde_json::Value;

fn gameday_cmd(workdir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(default_agent_bin().expect("bindsto binary"));
    cmd.args(["--log-level", "off", "gameday", "--workdir"])
        .arg(workdir)
        .args(args);
    cmd
}

fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bindsto-gameday-test-")
        .tempdir()
        .expect("workdir")
}

/// Loop devices whose backing file lies under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("loop"))
                .filter(|n| sys::loop_backing_file(n).is_some_and(|b| b.starts_with(dir)))
                .collect()
        })
        .unwrap_or_default()
}

/// Attached loop devices. Privileged tests hold a host-wide lock, so no other test attaches
/// one while a test here runs.
fn attached_loops() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/block")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("loop") && sys::loop_backing_file(n).is_some())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Nothing gameday made is left: no loop device beyond those attached `before` (a detached
/// FUSE file would show as `/disk.img`, so the check is by device, not by path), no mount, no
/// directory under `dir`.
fn assert_clean(dir: &Path, before: &[String]) {
    let dir = dir.canonicalize().unwrap();
    let new: Vec<String> = attached_loops()
        .into_iter()
        .filter(|l| !before.contains(l))
        .collect();
    assert_eq!(new, Vec::<String>::new(), "loop devices left");
    let mounts: Vec<PathBuf> = sys::mounts_under(&dir)
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "files left: {left:?}");
}

fn json_of(output: &str) -> Value {
    let start = output
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in:\n{output}"));
    serde_json::from_str(&output[start..]).unwrap_or_else(|e| panic!("{e}:\n{output}"))
}

fn result<'a>(report: &'a Value, scenario: &str) -> &'a Value {
    report["results"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["scenario"] == scenario))
        .unwrap_or_else(|| panic!("no {scenario} in {report:#}"))
}

fn latency_ms(r: &Value) -> f64 {
    r["latency_ms"].as_f64().unwrap_or(f64::MAX)
}

#[test]
fn all_scenarios_pass_with_an_in_process_engine_and_leave_nothing() {
    let _g = privileged();
    let before = attached_loops();
    let dir = workdir();
    let out = run_with_timeout(
        gameday_cmd(dir.path(), &["--standalone", "--json"]),
        Duration::from_secs(360),
    )
    .expect("gameday finishes");
    assert!(out.success(), "exit {}:\n{}", out.status, out.output);
    let report = json_of(&out.output);
    assert_eq!(report["observer"], "in-process engine", "{report:#}");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["results"].as_array().map(Vec::len), Some(10));
    for r in report["results"].as_array().unwrap() {
        assert_eq!(r["passed"], true, "{r:#}");
        eprintln!(
            "LATENCY gameday_{}: {:.0} ms",
            r["scenario"].as_str().unwrap(),
            latency_ms(r)
        );
    }
    // The bounds the issue sets: an XFS shutdown well under a second, stalls and blocked
    // mounts at most a scan (250 ms) after their 3 s threshold (plus slack for the writer).
    assert!(latency_ms(result(&report, "xfs-shutdown")) < 1000.0);
    // Mount-table changes are event-driven: within one scan.
    for s in ["unmount", "read-only", "ext4-shutdown"] {
        assert!(latency_ms(result(&report, s)) < 1000.0, "{s}: {report:#}");
    }
    // io_dead_after (2 s) + a scan + the slack, whichever ext4 signal comes first.
    assert!(latency_ms(result(&report, "ext4-disk-errors")) < 3250.0);
    // The canary every 1 s, + a scan + the slack, after the filesystem is full.
    assert!(latency_ms(result(&report, "not-writable")) < 2250.0);
    assert!(
        result(&report, "not-writable")["detected"]
            .as_str()
            .is_some_and(|d| d.contains("ENOSPC")),
        "{report:#}"
    );
    assert!(latency_ms(result(&report, "disk-errors")) < 2000.0);
    assert!(
        result(&report, "disk-errors")["detected"]
            .as_str()
            .is_some_and(|d| d.contains("statx")),
        "the log-error shutdown must be seen without the shutdown tracepoint: {report:#}"
    );
    for s in ["disk-stall", "mount-hang"] {
        let l = latency_ms(result(&report, s));
        assert!((3000.0..4250.0).contains(&l), "{s}: {l} ms");
    }
    assert_clean(dir.path(), &before);
}

#[test]
fn scenarios_run_against_a_running_agent() {
    let _g = privileged();
    let before = attached_loops();
    let dir = workdir();
    let mut agent = Agent::start(
        "dry_run = true\n[detect]\nscan_interval = \"250ms\"\nio_stall_after = \"3s\"\n\
         mount_blocked_after = \"3s\"\nfstypes = [\"xfs\"]\n",
    );
    agent
        .wait_for(Duration::from_secs(10), Duration::from_millis(20), |s| {
            s["targets"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| t["kind"] == "subsystem"))
        })
        .expect("agent up");
    let addr = agent.addr().to_string();
    let out = run_with_timeout(
        gameday_cmd(
            dir.path(),
            &[
                "--addr",
                &addr,
                "--json",
                "--scenario",
                "xfs-shutdown",
                "--scenario",
                "disk-stall",
                "--agent-timeout",
                "20s",
            ],
        ),
        Duration::from_secs(120),
    )
    .expect("gameday finishes");
    assert!(out.success(), "exit {}:\n{}", out.status, out.output);
    let report = json_of(&out.output);
    assert_eq!(report["observer"], format!("running agent at {addr}"));
    assert_eq!(report["passed"], true, "{report:#}");
    assert!(
        latency_ms(result(&report, "xfs-shutdown")) < 1000.0,
        "{report:#}"
    );
    let stall = latency_ms(result(&report, "disk-stall"));
    assert!((3000.0..4500.0).contains(&stall), "{stall} ms");
    assert!(agent.is_running(), "the agent survived:\n{}", agent.log());
    assert_clean(dir.path(), &before);
}

/// Starts `gameday --scenario <scenario>`, waits until the fault is injected (the loop device is
/// hung with a request in flight), sends `signal` and checks it cleans up and exits 130.
fn interrupted_mid_fault(scenario: &str, signal: Signal, to_group: bool) {
    let before = attached_loops();
    let dir = workdir();
    let root = dir.path().canonicalize().unwrap();
    let mut p = BgProcess::spawn(gameday_cmd(
        &root,
        &["--standalone", "--scenario", scenario],
    ))
    .expect("gameday");
    // Requests in flight on our loop device and none completing for a second: the hang is
    // injected and something waits on it (mkfs's I/O before that completes quickly).
    let stuck = |n: &str| {
        let a = sys::block_stat(n).ok()?;
        std::thread::sleep(Duration::from_secs(1));
        let b = sys::block_stat(n).ok()?;
        (a.in_flight > 0
            && b.in_flight > 0
            && a.read_ios == b.read_ios
            && a.write_ios == b.write_ios)
            .then_some(())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let injected = loop {
        if let Some(n) = loops_under(&root).into_iter().find(|n| stuck(n).is_some()) {
            break n;
        }
        assert!(p.is_running(), "gameday ended early:\n{}", p.output());
        assert!(
            Instant::now() < deadline,
            "no hung request:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    if to_group {
        p.signal_group(signal).expect("signal group");
    } else {
        p.signal(signal).expect("signal");
    }
    let t0 = Instant::now();
    let st = p
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("gameday did not stop after {signal}:\n{}", p.output()));
    eprintln!(
        "gameday {scenario}: {signal} with {injected} hung, stopped in {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(st.code(), Some(130), "{}", p.output());
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "cleanup took {:?}",
        t0.elapsed()
    );
    assert!(p.output().contains("interrupted"), "{}", p.output());
    assert_clean(&root, &before);
}

#[test]
fn ctrl_c_during_a_stall_cleans_up_everything() {
    let _g = privileged();
    interrupted_mid_fault("disk-stall", Signal::SIGINT, true);
}

#[test]
fn sigterm_during_a_blocked_mount_cleans_up_everything() {
    let _g = privileged();
    interrupted_mid_fault("mount-hang", Signal::SIGTERM, false);
}

#[test]
fn refuses_devices_existing_mounts_and_unknown_scenarios() {
    let _g = privileged();
    let before = attached_loops();
    for (workdir, why) in [
        ("/", "is an existing mount"),
        ("/dev/null", "is a device"),
        ("/nonexistent-gameday-dir", "No such file"),
    ] {
        let out = run_with_timeout(
            gameday_cmd(Path::new(workdir), &["--standalone"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "{workdir}: {}", out.output);
        assert!(out.output.contains("refusing"), "{workdir}: {}", out.output);
        assert!(out.output.contains(why), "{workdir}: {}", out.output);
    }
    let dir = workdir();
    let out = run_with_timeout(
        gameday_cmd(dir.path(), &["--scenario", "meteor-strike"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", out.output);
    assert!(out.output.contains("unknown scenario"), "{}", out.output);
    assert_clean(dir.path(), &before);
}
