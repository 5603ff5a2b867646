//! Restarts: `kill -9` of the real agent during an incident and during ladder steps, a corrupt
//! or truncated state file at start, and no kernel programs or maps left by a dead agent.
//!
//! The AWS side is real moto behind the recording proxy (each call counted on the wire); an
//! answer the proxy holds back is how a step is caught in flight: moto has acted on the call,
//! the agent has not heard back when it is killed.
//!
//! Needs root and moto (`python3 -m pip install 'moto[server]'`, done by `.ci/run`).

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use bindsto_tests::{
    Agent, XfsMount, faultyfs_bin,
    ladder::{ENV, World, last_incident, metric, outcome, phase, step, wait_identified},
    privileged, run_cmd,
};
use serde_json::Value;

const POLL: Duration = Duration::from_millis(50);
const DRAIN: &str = "UpdateContainerInstancesState";
const UNHEALTHY: &str = "SetInstanceHealth";

fn start(cfg: &str) -> Agent {
    let bin = bindsto_tests::agent::default_agent_bin().expect("agent binary");
    Agent::start_with_env(bin, cfg, &[], &ENV).expect("agent starts")
}

/// How many times exec ran to completion (one incident JSON per line).
fn exec_runs(out: &Path) -> usize {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"hostname\""))
        .count()
}

fn incidents(s: &Value) -> Vec<Value> {
    s["remediation"]["incidents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// After the last restart: one incident, done, each AWS write exactly once on the wire, moto
/// changed, exec run once.
fn assert_once(w: &World, agent: &Agent, id: &Value, exec_out: &Path) {
    let s = agent.status();
    let all = incidents(&s);
    assert_eq!(all.len(), 1, "{s:#}");
    assert_eq!(
        all[0]["id"], *id,
        "the restarted agent opened another incident"
    );
    assert_eq!(phase(&s), "done");
    for a in ["ecs-drain", "asg-unhealthy", "exec"] {
        assert_eq!(outcome(&s, a), "done", "{a}: {s:#}");
    }
    assert_eq!(
        w.recorder.count(DRAIN),
        1,
        "calls: {:?}",
        w.recorder.names()
    );
    assert_eq!(
        w.recorder.count(UNHEALTHY),
        1,
        "calls: {:?}",
        w.recorder.names()
    );
    assert_eq!(
        w.fleet.state(&w.moto).unwrap(),
        ("DRAINING".into(), "Unhealthy".into())
    );
    assert_eq!(exec_runs(exec_out), 1, "exec ran more or less than once");
}

#[test]
fn kill9_during_hold_down_resumes_the_incident_and_runs_the_ladder_once() {
    let _g = privileged();
    let w = World::new(faultyfs_bin!());
    let xfs = XfsMount::new(&w.disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let exec_out = w.state.path().join("exec-runs.jsonl");
    let cfg = w.config(xfs.path(), "6s", &exec_out);
    let mut agent = start(&cfg);
    wait_identified(&mut agent, &m);

    xfs.shutdown().expect("xfs_io shutdown");
    agent
        .wait_for(Duration::from_secs(20), POLL, |s| phase(s) == "pending")
        .unwrap_or_else(|e| panic!("no pending incident: {e}\n{}", agent.log()));
    let id = last_incident(&agent.status()).unwrap()["id"].clone();
    let st = agent.kill9().expect("killed");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(9),
        "{st}"
    );
    assert!(w.recorder.count(DRAIN) == 0 && w.recorder.count(UNHEALTHY) == 0);

    // The restarted agent reads the incident from its state file, waits out the rest of the
    // hold-down (counted from when the incident opened) and runs the ladder once.
    let t0 = Instant::now();
    let mut agent = start(&cfg);
    agent
        .wait_for(Duration::from_secs(60), POLL, |s| phase(s) == "done")
        .unwrap_or_else(|e| panic!("ladder did not finish: {e}\n{}", agent.log()));
    println!(
        "LATENCY restart_after_kill9_in_hold_down: ladder done {} ms after the restart",
        t0.elapsed().as_millis()
    );
    // Several more scans and ticks: nothing runs again.
    std::thread::sleep(Duration::from_secs(3));
    assert_once(&w, &agent, &id, &exec_out);
}

#[test]
fn kill9_during_ladder_steps_neither_repeats_nor_loses_an_aws_call() {
    let _g = privileged();
    let w = World::new(faultyfs_bin!());
    let xfs = XfsMount::new(&w.disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let exec_out = w.state.path().join("exec-runs.jsonl");
    let cfg = w.config(xfs.path(), "1s", &exec_out);
    let hold = Duration::from_secs(15);

    // 1. Killed while the drain is in flight: moto has set DRAINING, the agent has no answer.
    w.recorder.delay_answer(DRAIN, hold);
    let mut agent = start(&cfg);
    wait_identified(&mut agent, &m);
    xfs.shutdown().expect("xfs_io shutdown");
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.recorder.count(DRAIN) == 0 {
        assert!(Instant::now() < deadline, "no drain call: {}", agent.log());
        std::thread::sleep(POLL);
    }
    let s = agent.status();
    assert_eq!(outcome(&s, "ecs-drain"), "started", "{s:#}");
    let id = last_incident(&s).unwrap()["id"].clone();
    agent.kill9();
    assert_eq!(w.fleet.state(&w.moto).unwrap().0, "DRAINING");

    // 2. Restarted: the drain is not sent again (ECS already says DRAINING). Killed again while
    //    SetInstanceHealth is in flight.
    w.recorder.delays.lock().unwrap().clear();
    w.recorder.delay_answer(UNHEALTHY, hold);
    let mut agent = start(&cfg);
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.recorder.count(UNHEALTHY) == 0 {
        assert!(
            Instant::now() < deadline,
            "no SetInstanceHealth: {}",
            agent.log()
        );
        std::thread::sleep(POLL);
    }
    let s = agent.status();
    assert_eq!(outcome(&s, "ecs-drain"), "done", "{s:#}");
    assert_eq!(outcome(&s, "asg-unhealthy"), "started", "{s:#}");
    let drain = step(&s, "ecs-drain").unwrap();
    assert_eq!(drain["attempts"], 2, "{drain:#}");
    assert!(
        drain["detail"]
            .as_str()
            .is_some_and(|d| d.contains("already DRAINING")),
        "{drain:#}"
    );
    assert!(w.recorder.count("DescribeContainerInstances") >= 1);
    agent.kill9();
    assert_eq!(w.fleet.state(&w.moto).unwrap().1, "Unhealthy");

    // 3. Restarted with nothing held back: the instance is already Unhealthy, so no second
    //    SetInstanceHealth; exec runs; the incident is done.
    w.recorder.delays.lock().unwrap().clear();
    let mut agent = start(&cfg);
    agent
        .wait_for(Duration::from_secs(60), POLL, |s| phase(s) == "done")
        .unwrap_or_else(|e| panic!("ladder did not finish: {e}\n{}", agent.log()));
    let s = agent.status();
    let asg = step(&s, "asg-unhealthy").unwrap();
    assert_eq!(asg["attempts"], 2, "{asg:#}");
    assert!(
        asg["detail"]
            .as_str()
            .is_some_and(|d| d.contains("already Unhealthy")),
        "{asg:#}"
    );
    assert!(
        agent
            .log()
            .contains("a step was in flight when the agent stopped"),
        "{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_once(&w, &agent, &id, &exec_out);
}

/// A config with remediation (exec only, dry run) on `state`, so the history is opened.
fn state_only_config(state: &Path) -> String {
    format!(
        r#"[remediate]
actions = ["exec"]
state_dir = "{}"
[remediate.exec]
command = ["/bin/true"]
"#,
        state.display()
    )
}

#[test]
fn corrupt_and_truncated_state_files_are_reported_and_moved_aside() {
    let _g = privileged();
    let truncated: &[u8] =
        br#"{"incidents": [{"id": "1763700000000-h", "phase": "running", "dry_run": false, "opened_at": "2025-11-21T04:"#;
    let garbage: &[u8] = b"\x00\xff\xfenot json at all\n";
    for (kind, body) in [("truncated", truncated), ("corrupt", garbage)] {
        let state = tempfile::Builder::new()
            .prefix("bindsto-state-")
            .tempdir()
            .unwrap();
        let file = state.path().join("incidents.json");
        std::fs::write(&file, body).unwrap();
        let mut agent = start(&state_only_config(state.path()));
        agent
            .wait_for(Duration::from_secs(15), POLL, |s| {
                s["remediation"]["problems"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|p| p.as_str().unwrap_or("").contains("corrupt"))
                })
            })
            .unwrap_or_else(|e| panic!("{kind}: not reported: {e}\n{}", agent.log()));
        assert!(agent.is_running(), "{kind}: {}", agent.log());
        assert_eq!(agent.healthz().0, 200, "{kind}");
        assert!(
            agent
                .log()
                .contains("incident history is corrupt; moved aside"),
            "{kind}: {}",
            agent.log()
        );
        assert_eq!(
            metric(&agent, "bindsto_state_files_moved_aside_total"),
            1,
            "{kind}"
        );
        let aside: Vec<_> = std::fs::read_dir(state.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("incidents.json.corrupt-"))
            })
            .collect();
        assert_eq!(aside.len(), 1, "{kind}: {aside:?}");
        assert_eq!(
            std::fs::read(&aside[0]).unwrap(),
            body,
            "{kind}: kept as found"
        );
        assert!(!file.exists() || std::fs::read(&file).unwrap() != body);
        agent.stop();
    }
}

/// The ids of the BPF programs and maps a process holds, from its fds' fdinfo.
fn bpf_ids(pid: u32) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let (mut progs, mut maps) = (BTreeSet::new(), BTreeSet::new());
    let dir = format!("/proc/{pid}/fdinfo");
    for e in std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()) {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("prog_id:") {
                progs.extend(v.trim().parse::<u32>().ok());
            }
            if let Some(v) = line.strip_prefix("map_id:") {
                maps.extend(v.trim().parse::<u32>().ok());
            }
        }
    }
    (progs, maps)
}

fn pins() -> BTreeSet<String> {
    let out = run_cmd(
        "find",
        &["/sys/fs/bpf", "-mindepth", "1"],
        Duration::from_secs(10),
    )
    .unwrap_or_default();
    out.lines().map(str::to_owned).collect()
}

fn exists(kind: &str, id: u32) -> bool {
    std::process::Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn kill9_leaves_no_bpf_programs_maps_or_pins() {
    let _g = privileged();
    let pins_before = pins();
    let state = tempfile::Builder::new()
        .prefix("bindsto-state-")
        .tempdir()
        .unwrap();
    let mut agent = Agent::start(&state_only_config(state.path()));
    let (progs, maps) = bpf_ids(agent.pid());
    assert!(
        progs.len() >= 3 && maps.len() >= 5,
        "the agent holds too few programs/maps: {progs:?} {maps:?}"
    );
    for id in &progs {
        assert!(exists("prog", *id), "prog {id} not visible to bpftool");
    }
    assert_eq!(pins(), pins_before, "the agent pinned something");
    agent.kill9();

    // The kernel frees them once the last fd is gone (after an RCU grace period).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left_p: Vec<_> = progs.iter().filter(|i| exists("prog", **i)).collect();
        let left_m: Vec<_> = maps.iter().filter(|i| exists("map", **i)).collect();
        if left_p.is_empty() && left_m.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind by the dead agent: progs {left_p:?} maps {left_m:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(pins(), pins_before, "pins left behind");
    println!(
        "kill -9: {} programs and {} maps freed, no pins",
        progs.len(),
        maps.len()
    );
}

/// `kill -9` while `exec` runs: the command dies with the agent (no leftover beside the rerun),
/// the restarted agent runs it again once, and its stdin shows the interrupted attempt.
#[test]
fn kill9_during_exec_takes_the_command_along_and_reruns_it_once() {
    let _g = privileged();
    let disk = bindsto_tests::FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let state = tempfile::Builder::new()
        .prefix("bindsto-state-")
        .tempdir()
        .unwrap();
    let (mark, pidfile, out) = (
        state.path().join("first-attempt"),
        state.path().join("first-attempt.pid"),
        state.path().join("exec-runs.jsonl"),
    );
    // First attempt: leaves a mark and becomes a long sleep (same PID); later ones record stdin.
    let script = format!(
        "if [ -e {mark} ]; then cat >> {out}; echo >> {out}; else touch {mark}; echo $$ > {pidfile}; exec sleep 60; fi",
        mark = mark.display(),
        out = out.display(),
        pidfile = pidfile.display()
    );
    let cfg = format!(
        r#"dry_run = false
[detect]
scan_interval = "250ms"
fstypes = ["xfs"]
[[watch]]
path = "{m}"
critical = true
[remediate]
actions = ["exec"]
hold_down = "1s"
state_dir = "{}"
[remediate.exec]
command = ["/bin/sh", "-c", "{}"]
timeout = "90s"
"#,
        state.path().display(),
        script.replace('"', "\\\"")
    );
    let mut agent = start(&cfg);
    agent
        .wait_for(Duration::from_secs(15), POLL, |s| {
            s["targets"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| t["id"] == m.as_str()))
        })
        .unwrap_or_else(|e| panic!("mount not watched: {e}\n{}", agent.log()));
    xfs.shutdown().expect("shutdown");
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid: i32 = loop {
        if let Some(p) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "exec never started: {}",
            agent.log()
        );
        std::thread::sleep(POLL);
    };
    assert_eq!(outcome(&agent.status(), "exec"), "started");
    agent.kill9();
    // PR_SET_PDEATHSIG: the command is killed with the agent.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "exec's command (pid {pid}) outlived the killed agent"
        );
        std::thread::sleep(POLL);
    }

    let mut agent = start(&cfg);
    agent
        .wait_for(Duration::from_secs(60), POLL, |s| phase(s) == "done")
        .unwrap_or_else(|e| panic!("ladder did not finish: {e}\n{}", agent.log()));
    let s = agent.status();
    assert_eq!(outcome(&s, "exec"), "done", "{s:#}");
    assert_eq!(step(&s, "exec").unwrap()["attempts"], 2);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(exec_runs(&out), 1, "the rerun ran more or less than once");
    let stdin: Value = serde_json::from_str(
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let st = &stdin["steps"][0];
    assert_eq!(st["outcome"], "started", "{stdin:#}");
    assert_eq!(st["attempts"], 2, "{stdin:#}");
}
