//! Incident evidence with the real agent (root, BPF): a mount hung on a faulty disk leaves a
//! bundle naming the mount task with its XFS and mount frames and the block request in flight;
//! an XFS shutdown leaves its kernel log lines; sentinel credentials in the agent's environment
//! appear nowhere; `/incidents`, `/incidents/<id>` and `bindsto incident show` serve the same.
//!
//! The hung mount is made by `bindsto gameday --scenario mount-hang` against the running agent:
//! it creates its own scratch disk and cleans it up, also when the check fails.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use bindsto_tests::{
    Agent, BgProcess, Mode, XfsMount, agent::default_agent_bin, faultyfs_bin, privileged,
};
use serde_json::Value;

const SENTINEL: &str = "AKIAEVIDENCESENTINEL0";

fn config(watch: &std::path::Path, state: &std::path::Path) -> String {
    format!(
        r#"dry_run = true
[detect]
scan_interval = "250ms"
mount_blocked_after = "3s"
io_stall_after = "3s"
fstypes = ["xfs"]
[[watch]]
path = "{}"
critical = true
[remediate]
actions = []
hold_down = "1s"
state_dir = "{}"
"#,
        watch.display(),
        state.display()
    )
}

fn start(watch: &std::path::Path, state: &std::path::Path) -> Agent {
    start_bin(&default_agent_bin().expect("agent"), watch, state)
}

fn start_bin(bin: &std::path::Path, watch: &std::path::Path, state: &std::path::Path) -> Agent {
    Agent::start_with_env(
        bin,
        &config(watch, state),
        &[],
        &[
            ("AWS_ACCESS_KEY_ID", SENTINEL),
            ("AWS_SECRET_ACCESS_KEY", SENTINEL),
        ],
    )
    .expect("agent")
}

/// Waits for an incident with evidence; returns its id and bundle (from `/incidents/<id>`).
fn bundle(agent: &Agent, within: Duration) -> (String, Value) {
    let end = Instant::now() + within;
    loop {
        let (code, body) = agent.get("/incidents");
        assert_eq!(code, 200, "{body}");
        let list: Value = serde_json::from_str(&body).expect("json");
        if let Some(i) = list["incidents"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["evidence"].is_string()))
        {
            let id = i["id"].as_str().expect("id").to_owned();
            let (code, body) = agent.get(&format!("/incidents/{id}"));
            // Named at once, written in the background.
            if code == 404 && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            assert_eq!(code, 200, "{body}");
            assert!(body.len() <= 256 * 1024, "bundle of {} bytes", body.len());
            assert!(!body.contains(SENTINEL), "a credential reached the bundle");
            return (id, serde_json::from_str(&body).expect("bundle json"));
        }
        assert!(
            Instant::now() < end,
            "no incident evidence:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_hung_mount_leaves_its_task_stack_and_the_request_in_flight() {
    let _g = privileged();
    let state = tempfile::tempdir().unwrap();
    let watched = tempfile::tempdir().unwrap();
    let agent = start(watched.path(), state.path());
    hung_mount(&agent);
}

/// As systemd runs it: the unit's bounding set has no CAP_SYS_PTRACE, so `/proc/<tid>/stack`
/// of the root `mount` is closed to the reader; the task iterator still reads it.
#[test]
fn under_the_units_bounding_set_a_root_tasks_stack_is_still_read() {
    let _g = privileged();
    let state = tempfile::tempdir().unwrap();
    let watched = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrapper =
        bindsto_tests::unit::confined_wrapper(dir.path(), &default_agent_bin().unwrap()).unwrap();
    let agent = start_bin(&wrapper, watched.path(), state.path());
    let task = hung_mount(&agent);
    assert_eq!(task["stack_source"], "bpf_iter", "{task}");
    // The reader really is confined: /proc would have refused this stack.
    let pid = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        agent.pid(),
        agent.pid()
    ))
    .unwrap_or_default();
    let helper: u32 = pid
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no evidence reader under {}", agent.pid()));
    let status = std::fs::read_to_string(format!("/proc/{helper}/status")).unwrap();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap();
    assert_eq!(
        bounding & (1 << 19),
        0,
        "CAP_SYS_PTRACE in the reader's bounding set"
    );
}

/// Hangs a mount on a faulty disk (gameday) under `agent` and checks the bundle; returns the
/// mount task's evidence.
fn hung_mount(agent: &Agent) -> Value {
    let bin = default_agent_bin().unwrap();
    let out = Command::new(&bin)
        .args([
            "gameday",
            "--scenario",
            "mount-hang",
            "--agent-timeout",
            "60s",
        ])
        .arg("--addr")
        .arg(agent.addr().to_string())
        .output()
        .expect("gameday");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (id, b) = bundle(agent, Duration::from_secs(30));
    let c = &b["captures"][0];
    println!(
        "EVIDENCE mount-hang capture_ms={} bytes={}",
        c["capture_ms"],
        b.to_string().len()
    );
    let task = c["tasks"]
        .as_array()
        .and_then(|t| {
            t.iter()
                .find(|t| t["why"] == "mount_call" && t["comm"] == "mount")
        })
        .unwrap_or_else(|| panic!("no mount task in {c:#}"));
    println!("EVIDENCE mount task {task}");
    let stack: Vec<&str> = task["stack"]
        .as_array()
        .unwrap_or_else(|| panic!("no stack: {task}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        stack.iter().any(|f| f.starts_with("xfs_")),
        "{stack:?} {task}"
    );
    assert!(stack.iter().any(|f| f.contains("mount")), "{stack:?}");
    assert!(
        task["waited_seconds"].as_f64().unwrap_or(0.0) >= 3.0,
        "{task}"
    );
    let calls = c["inflight"]["mount_calls"].as_array().expect("calls");
    assert!(
        calls
            .iter()
            .any(|m| m["fstype"] == "xfs" && m["syscall"] == "mount"),
        "{calls:?}"
    );
    let reqs = c["inflight"]["requests"].as_array().expect("requests");
    let oldest = reqs
        .iter()
        .flat_map(|d| d["oldest"].as_array().cloned().unwrap_or_default())
        .find(|r| r["age_seconds"].as_f64().unwrap_or(0.0) >= 3.0)
        .unwrap_or_else(|| panic!("no request in flight past the threshold: {reqs:?}"));
    assert!(
        oldest["op"].as_str().is_some_and(|o| o.starts_with('R')),
        "{oldest}"
    );
    // The same, readable, from the command line.
    let show = Command::new(&bin)
        .args(["incident", "show", &id, "--config"])
        .arg(agent.config_path())
        .output()
        .expect("incident show");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{text}");
    assert!(
        text.contains("BLOCKED TASKS") && text.contains("xfs_"),
        "{text}"
    );
    assert!(!text.contains(SENTINEL));
    // Ids that could name another file are refused.
    let (code, _) = agent.get("/incidents/1-..%2F..%2Fetc%2Fpasswd");
    assert_eq!(code, 400);
    task.clone()
}

#[test]
fn a_shutdown_leaves_its_kernel_log_lines() {
    let _g = privileged();
    let disk = bindsto_tests::FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let state = tempfile::tempdir().unwrap();
    let agent = start(xfs.path(), state.path());
    std::thread::sleep(Duration::from_secs(1));
    xfs.shutdown().expect("shutdown");
    let (_, b) = bundle(&agent, Duration::from_secs(30));
    let c = &b["captures"][0];
    let log: Vec<&str> = c["kernel_log"]
        .as_array()
        .expect("log")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        log.iter().any(|l| l.contains("XFS") && l.contains("shut")),
        "no shutdown line in {log:?}; unreadable: {}",
        c["unreadable"]
    );
    assert_eq!(
        c["targets"][0]["reasons"][0]["signal"], "xfs_shutdown",
        "{c}"
    );
    assert!(
        c["targets"][0]["mountinfo"]
            .as_str()
            .is_some_and(|m| m.contains(" xfs "))
    );
    // The state directory holds it too, and nothing of the environment.
    let files: Vec<_> = std::fs::read_dir(state.path().join("evidence"))
        .expect("evidence dir")
        .flatten()
        .collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].path()).unwrap();
    assert!(!text.contains(SENTINEL));
}

#[test]
fn a_stalled_disk_leaves_its_requests_in_flight_and_the_waiting_stacks() {
    let _g = privileged();
    let disk = bindsto_tests::FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let state = tempfile::tempdir().unwrap();
    let agent = start(xfs.path(), state.path());
    disk.set_mode(Mode::Hang).expect("hang mode");
    let mut writer = BgProcess::sh(&format!(
        "dd if=/dev/zero of={}/f bs=64k count=16 2>/dev/null; sync",
        xfs.path().display()
    ))
    .expect("writer");
    let (_, b) = bundle(&agent, Duration::from_secs(30));
    let c = &b["captures"][0];
    println!(
        "EVIDENCE disk-stall capture_ms={} bytes={}",
        c["capture_ms"],
        b.to_string().len()
    );
    let dev = disk.dev_id();
    let on_disk = c["inflight"]["requests"]
        .as_array()
        .and_then(|r| r.iter().find(|d| d["dev"] == dev.as_str()))
        .unwrap_or_else(|| panic!("no requests in flight on {dev}: {c:#}"));
    let oldest = &on_disk["oldest"][0];
    assert!(
        oldest["age_seconds"].as_f64().unwrap_or(0.0) >= 3.0,
        "{oldest}"
    );
    assert!(oldest["bytes"].as_u64().unwrap_or(0) > 0, "{oldest}");
    assert!(
        oldest["op"].as_str().is_some_and(|o| !o.is_empty()),
        "{oldest}"
    );
    // Someone waits on the disk in uninterruptible sleep, with a readable stack.
    let waiting: Vec<&Value> = c["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter(|t| t["state"] == "D" && t["stack"].as_array().is_some_and(|s| !s.is_empty()))
        .collect();
    assert!(
        !waiting.is_empty(),
        "no waiting task with a stack: {:#}",
        c["tasks"]
    );
    disk.set_mode(Mode::Pass).expect("pass mode");
    assert!(
        writer.wait_timeout(Duration::from_secs(30)).is_some(),
        "the writer finished once the disk answered"
    );
}
