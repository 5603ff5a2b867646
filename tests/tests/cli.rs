//! The command line and bad input: a malformed config names the key and line and exits 2;
//! a watch on an unknown path is reported, not fatal; `doctor`, `status` and `config default`
//! work against the real kernel and a running agent.
//!
//! Needs root. Run: `cargo xtask test`.

use std::{process::Command, time::Duration};

use bindsto_tests::{Agent, agent::default_agent_bin, privileged};

fn bindsto() -> Command {
    Command::new(default_agent_bin().expect("agent binary"))
}

fn write_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, text).unwrap();
    (dir, p)
}

#[test]
fn malformed_config_names_key_and_line_and_exits_2() {
    let _g = privileged();
    let cases = [
        // (config, line, key)
        (
            "listen = \"127.0.0.1:9842\"\n\n[detect]\nscan_interval = \"3 parsecs\"\n",
            4,
            "detect.scan_interval",
        ),
        (
            "[detect]\nscan_interval = \"1s\"\nio_stall_aftr = \"30s\"\n",
            3,
            "detect.io_stall_aftr",
        ),
        ("dry_run = \"yes\"\n", 1, "dry_run"),
        (
            "[[watch]]\npath = \"/a\"\n\n[[watch]]\npath = \"relative\"\n",
            5,
            "watch.path",
        ),
    ];
    for (text, line, key) in cases {
        let (_d, p) = write_config(text);
        for sub in ["run", "check"] {
            let out = bindsto()
                .args([sub, "--config"])
                .arg(&p)
                .output()
                .expect("bindsto");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{sub} {text:?}: {err}");
            assert!(
                err.contains(&format!("line {line}")),
                "{sub}: no line {line} in: {err}"
            );
            assert!(err.contains(key), "{sub}: no key {key} in: {err}");
        }
    }
    let out = bindsto()
        .args(["run", "--config", "/nonexistent/bindsto.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/bindsto.toml"));
}

#[test]
fn unknown_watch_path_is_reported_not_fatal() {
    let _g = privileged();
    let cfg = r#"listen = "127.0.0.1:9842"
[detect]
scan_interval = "250ms"
[[watch]]
path = "/definitely/not/here"
critical = true
[[watch]]
path = "/proc/self"
critical = true
require_mountpoint = true
"#;
    let mut agent = Agent::start(cfg);
    agent
        .wait_for(Duration::from_secs(10), Duration::from_millis(50), |s| {
            s["watches"].as_array().is_some_and(|w| w.len() == 2)
        })
        .expect("watches reported");
    let s = agent.status();
    let w = &s["watches"];
    assert_eq!(w[0]["path"], "/definitely/not/here");
    assert_eq!(w[0]["problem"], "path does not exist", "{w}");
    assert!(w[0]["mount"].is_null());
    assert!(
        w[1]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("not a mount point")),
        "{w}"
    );
    assert_eq!(
        agent.healthz().0,
        200,
        "a watch that does not apply fails nothing"
    );
    assert!(agent.is_running());
    assert!(
        agent.log().contains("watch does not apply"),
        "{}",
        agent.log()
    );
}

#[test]
fn doctor_reports_every_probe_attached_on_this_kernel() {
    let _g = privileged();
    let out = bindsto().args(["doctor", "--json"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let checks = v["checks"].as_array().unwrap();
    for probe in [
        "xfs:xfs_force_shutdown",
        "xfs:xfs_buf_ioerror",
        "xfs:xlog_ail_insert_abort",
        "block:block_rq_issue",
        "block:block_rq_complete",
        "block:block_rq_error",
        "syscalls:sys_enter_mount",
        "syscalls:sys_enter_fsconfig",
        "syscalls:sys_exit_mount",
    ] {
        let c = checks
            .iter()
            .find(|c| c["requirement"] == format!("tracepoint {probe}"))
            .unwrap_or_else(|| panic!("{probe} not checked: {v:#}"));
        assert_eq!(c["verdict"], "ok", "{c}");
    }
    // The request programs are BTF-enabled here (the kernel has BTF); the bio programs wait
    // for a device-mapper device (this machine has none).
    let check_of = |probe: &str| {
        checks
            .iter()
            .find(|c| c["requirement"] == format!("tracepoint {probe}"))
            .cloned()
            .unwrap_or_else(|| panic!("{probe} not checked: {v:#}"))
    };
    assert!(
        check_of("block:block_rq_issue")["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("tp_btf")),
        "{v:#}"
    );
    let dm = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("dm-"));
    if !dm {
        let bio = check_of("block:block_bio_queue");
        assert_eq!(bio["verdict"], "ok", "{bio}");
        assert!(
            bio["detail"]
                .as_str()
                .is_some_and(|d| d.contains("no device-mapper device")),
            "{bio}"
        );
    }
    let human = bindsto().arg("doctor").output().unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("verdict: bindsto can run here"));
}

#[test]
fn status_command_and_metrics_from_a_running_agent() {
    let _g = privileged();
    let cfg = "listen = \"127.0.0.1:9842\"\n[detect]\nscan_interval = \"250ms\"\n";
    let mut agent = Agent::start(cfg);
    agent
        .wait_for(Duration::from_secs(10), Duration::from_millis(50), |s| {
            s["probes"].as_array().is_some_and(|p| !p.is_empty())
        })
        .expect("status");
    let addr = agent.addr().to_string();
    let out = bindsto()
        .args(["status", "--addr", &addr])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("HEALTHY") && text.contains("TARGETS"),
        "{text}"
    );
    let out = bindsto()
        .args(["status", "--json", "--addr", &addr])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["healthy"], true);

    let m = agent.metrics();
    for name in [
        "bindsto_target_healthy{kind=\"subsystem\",target=\"mount\",critical=\"true\"} 1",
        "bindsto_probe_attached{probe=\"xfs:xfs_force_shutdown\"} 1",
        "bindsto_events_lost_total 0",
        "bindsto_mount_calls_blocked 0",
        "bindsto_build_info{version=",
    ] {
        assert!(m.contains(name), "missing {name}:\n{m}");
    }
    let (code, _) = agent.get("/nope");
    assert_eq!(code, 404);
}

#[test]
fn config_default_prints_the_embedded_config() {
    let out = bindsto().args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/var/lib/docker") && text.contains("scan_interval"),
        "{text}"
    );
    // What it prints is a valid config that `check` accepts.
    let (_d, p) = write_config(&text);
    let out = bindsto()
        .args(["check", "--json", "--duration", "1s", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    assert!(v["targets"].is_array());
}

#[test]
fn check_exits_0_healthy_1_unhealthy_and_logs_json_on_request() {
    let _g = privileged();
    let healthy = "[detect]\nscan_interval = \"250ms\"\nfstypes = [\"xfs\"]\n";
    let (_d, p) = write_config(healthy);
    let out = bindsto()
        .args([
            "--log-format",
            "json",
            "check",
            "--duration",
            "1s",
            "--config",
        ])
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("HEALTHY"));
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }

    // A critical XFS that is already shut down: `check` confirms it by statx and exits 1.
    let disk =
        bindsto_tests::FaultyDisk::with_binary(bindsto_tests::faultyfs_bin!(), 300).expect("disk");
    let xfs = bindsto_tests::XfsMount::new(&disk).expect("xfs");
    xfs.shutdown().expect("shutdown");
    let (_d2, p2) = write_config(&format!(
        "{healthy}[[watch]]\npath = \"{}\"\ncritical = true\n",
        xfs.path().display()
    ));
    let out = bindsto()
        .args(["check", "--json", "--duration", "1s", "--config"])
        .arg(&p2)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["healthy"], false);
    let t = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == xfs.path().display().to_string().as_str())
        .expect("the watched mount");
    assert_eq!(t["state"], "failed");
    assert_eq!(t["reasons"][0]["signal"], "xfs_shutdown");
}

#[test]
fn sighup_does_not_kill_the_agent() {
    let _g = privileged();
    let mut agent = Agent::start("listen = \"127.0.0.1:9842\"\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.is_running(), "{}", agent.log());
    assert_eq!(agent.healthz().0, 200);
    assert!(
        agent.log().contains("SIGHUP: reloading the config"),
        "{}",
        agent.log()
    );
}
