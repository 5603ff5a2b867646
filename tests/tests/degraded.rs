//! A kernel without some tracepoints: the agent skips them with a warning, reports them in
//! `bindsto_probe_attached` and `doctor`, and still detects through the others. Simulated by
//! pointing the agent's layout reader (BINDSTO_TRACEFS) at a copy of tracefs without
//! `xfs_force_shutdown` and `block_rq_error`, which is what Amazon Linux 2's 5.10 lacks.
//!
//! Needs root. Run: `cargo xtask test`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use bindsto_tests::{
    Agent, BgProcess, FaultyDisk, Mode, XfsMount, agent::default_agent_bin, faultyfs_bin,
    privileged,
};
use serde_json::Value;

const MISSING: [&str; 2] = ["xfs/xfs_force_shutdown", "block/block_rq_error"];

/// Copies the format files of the xfs, block and syscalls events, leaving out `MISSING`.
fn fake_tracefs(dir: &Path) {
    let real = Path::new("/sys/kernel/tracing/events");
    for sys in ["xfs", "block", "syscalls"] {
        for e in std::fs::read_dir(real.join(sys)).expect("tracefs") {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if MISSING.contains(&format!("{sys}/{name}").as_str()) {
                continue;
            }
            let format = e.path().join("format");
            if !format.exists() {
                continue;
            }
            let to = dir.join("events").join(sys).join(&name);
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(&format, to.join("format")).unwrap();
        }
    }
}

fn reasons(s: &Value, id: &str) -> String {
    s["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["id"] == id))
        .map(|t| t["reasons"].to_string())
        .unwrap_or_default()
}

#[test]
fn missing_tracepoints_degrade_and_detection_goes_on() {
    let _g = privileged();
    let tracefs = tempfile::tempdir().unwrap();
    fake_tracefs(tracefs.path());
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let cfg = format!(
        "listen = \"127.0.0.1:9842\"\n[detect]\nscan_interval = \"250ms\"\nio_stall_after = \"3s\"\nfstypes = [\"xfs\"]\n[[watch]]\npath = \"{m}\"\ncritical = true\n"
    );
    let tracefs_s = tracefs.path().display().to_string();
    let mut agent = Agent::start_with_env(
        default_agent_bin().unwrap(),
        &cfg,
        &[],
        &[("BINDSTO_TRACEFS", &tracefs_s)],
    )
    .expect("agent");

    let metrics = agent.metrics();
    for (probe, v) in [
        ("xfs:xfs_force_shutdown", 0),
        ("block:block_rq_error", 0),
        ("block:block_rq_complete", 1),
        ("xfs:xfs_buf_ioerror", 1),
        ("syscalls:sys_enter_mount", 1),
        // No NFS client on this kernel: the sunrpc programs wait for the module.
        ("sunrpc:rpc_task_begin", 0),
        ("sunrpc:rpc_task_end", 0),
    ] {
        let line = format!("bindsto_probe_attached{{probe=\"{probe}\"}} {v}");
        assert!(metrics.contains(&line), "missing {line}:\n{metrics}");
    }
    let log = agent.log();
    assert!(log.contains("tracepoint missing on this kernel"), "{log}");
    let s = agent.status();
    let probe = |name: &str| {
        s["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["probe"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(probe("xfs:xfs_force_shutdown")["state"], "missing");
    let rpc = probe("sunrpc:rpc_task_begin");
    assert_eq!(rpc["state"], "missing", "{rpc}");
    assert!(
        rpc["detail"]
            .as_str()
            .is_some_and(|d| d.contains("module sunrpc not loaded")),
        "{rpc}"
    );
    assert!(
        metrics.contains("bindsto_rpc_tasks_inflight 0"),
        "{metrics}"
    );

    // Errors now come from block_rq_complete, and the log-error shutdown from statx.
    // Metadata changes still in the log when the disk fails make the next log write fail.
    for i in 0..64 {
        std::fs::write(format!("{m}/pending.{i}"), b"x").unwrap();
    }
    disk.set_mode(Mode::Error).expect("error mode");
    let t0 = Instant::now();
    let mut w = BgProcess::sh(&format!(
        "dd if=/dev/zero of={m}/x bs=64k count=32 2>/dev/null; sync"
    ))
    .expect("writer");
    let name = disk.loop_name();
    agent
        .wait_for(Duration::from_secs(10), Duration::from_millis(20), |s| {
            reasons(s, &m).contains("xfs_shutdown")
                && s["devices"].as_array().is_some_and(|d| {
                    d.iter()
                        .any(|d| d["name"] == name.as_str() && d["io_errors"].as_u64() > Some(0))
                })
        })
        .unwrap_or_else(|e| panic!("no detection without the missing tracepoints: {e}"));
    eprintln!(
        "LATENCY degraded_log_error_shutdown: {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(agent.healthz().0, 503);
    w.wait_timeout(Duration::from_secs(10));
}
