//! The remediation ladder end to end: the real agent, a FUSE-backed XFS marked critical, a
//! real moto server for ECS and Auto Scaling (through a recording proxy, so order and count are
//! checked on the wire), the project's own IMDSv2 + ECS introspection fixture, and `exec`.
//!
//! `stop-units` runs in no ladder here: there is no systemd (PID 1) on the test host; the
//! D-Bus client is unit-tested in agent/src/remedy/steps/systemd.rs and proven against real
//! systemd in the VM tests' systemd guest. Held by the breaker it never reaches D-Bus, so that
//! one case is tested here.
//!
//! Needs root and moto (`python3 -m pip install 'moto[server]'`, done by `.ci/run`).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use bindsto_tests::{
    Agent, XfsMount, faultyfs_bin,
    ladder::{ENV, World},
    privileged,
};
use serde_json::Value;

const POLL: Duration = Duration::from_millis(50);
const MUTATING: [&str; 2] = ["UpdateContainerInstancesState", "SetInstanceHealth"];

fn world(n: usize, n_unhealthy: usize) -> World {
    World::with_fleet(faultyfs_bin!(), n, n_unhealthy)
}

fn config(w: &World, mount: &Path, dry_run: bool, extra: &str, exec_out: &Path) -> String {
    let script = format!("cat > {}", exec_out.display());
    w.ladder_config(mount, dry_run, "1s", extra, &script)
}

fn start(cfg: &str) -> Agent {
    let bin = bindsto_tests::agent::default_agent_bin().expect("agent binary");
    Agent::start_with_env(bin, cfg, &[], &ENV).expect("agent starts")
}

fn remediation(s: &Value) -> &Value {
    &s["remediation"]
}

fn last_incident(s: &Value) -> Option<&Value> {
    remediation(s)["incidents"].as_array()?.last()
}

fn phase(s: &Value) -> String {
    last_incident(s)
        .and_then(|i| i["phase"].as_str())
        .unwrap_or("none")
        .to_owned()
}

fn step<'a>(s: &'a Value, action: &str) -> Option<&'a Value> {
    last_incident(s)?["steps"]
        .as_array()?
        .iter()
        .find(|st| st["action"] == action)
}

fn outcome(s: &Value, action: &str) -> String {
    step(s, action)
        .and_then(|st| st["outcome"].as_str())
        .unwrap_or("none")
        .to_owned()
}

/// Starts the agent and waits until it knows who it is (ECS identity read at start).
fn start_identified(cfg: &str, mount: &str) -> Agent {
    let mut agent = start(cfg);
    agent
        .wait_for(Duration::from_secs(15), POLL, |s| {
            !remediation(s)["ecs"].is_null()
                && !remediation(s)["instance"].is_null()
                && s["targets"].as_array().is_some_and(|ts| {
                    ts.iter()
                        .any(|t| t["id"] == mount && t["state"] == "healthy")
                })
        })
        .unwrap_or_else(|e| panic!("agent not ready: {e}\n{}", agent.log()));
    agent
}

fn metric(agent: &Agent, action: &str, outcome: &str) -> u64 {
    let m = agent.metrics();
    let needle =
        format!("bindsto_remediations_total{{action=\"{action}\",outcome=\"{outcome}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn shutdown_drains_and_marks_unhealthy_once_in_ladder_order_and_survives_restart() {
    let _g = privileged();
    let w = world(3, 0);
    let xfs = XfsMount::new(&w.disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let exec_out = w.state.path().join("exec-stdin.json");
    let cfg = config(&w, xfs.path(), false, "", &exec_out);
    let mut agent = start_identified(&cfg, &m);
    assert_eq!(
        w.fleet.state(&w.moto).unwrap(),
        ("ACTIVE".into(), "Healthy".into())
    );
    assert!(
        w.recorder
            .names()
            .iter()
            .all(|n| !MUTATING.contains(&n.as_str()))
    );

    let t0 = Instant::now();
    xfs.shutdown().expect("xfs_io shutdown");
    agent
        .wait_for(Duration::from_secs(60), POLL, |s| phase(s) == "done")
        .unwrap_or_else(|e| panic!("ladder did not finish: {e}\n{}", agent.log()));
    let took = t0.elapsed();

    // moto's view.
    assert_eq!(
        w.fleet.state(&w.moto).unwrap(),
        ("DRAINING".into(), "Unhealthy".into())
    );
    // On the wire: each mutating call exactly once, drain before the health change, and the
    // breaker's reads before the ladder (it gates every step) and right before
    // SetInstanceHealth.
    let calls: Vec<String> = w
        .recorder
        .names()
        .into_iter()
        .filter(|n| n != "DescribeContainerInstances")
        .collect();
    assert_eq!(
        calls,
        vec![
            "DescribeAutoScalingInstances",
            "DescribeAutoScalingGroups",
            "UpdateContainerInstancesState",
            "DescribeAutoScalingInstances",
            "DescribeAutoScalingGroups",
            "SetInstanceHealth"
        ],
        "{}",
        agent.log()
    );
    let drained = w.recorder.first("UpdateContainerInstancesState").unwrap();
    let unhealthy = w.recorder.first("SetInstanceHealth").unwrap();
    println!(
        "LATENCY ladder_end_to_end: shutdown -> DRAINING {} ms, -> Unhealthy {} ms, ladder done in /status {} ms (hold_down 1 s)",
        drained.duration_since(t0).as_millis(),
        unhealthy.duration_since(t0).as_millis(),
        took.as_millis()
    );

    // The record: every step done, in ladder order, and exec got the incident on stdin.
    let s = agent.status();
    for a in ["ecs-drain", "asg-unhealthy", "exec"] {
        assert_eq!(outcome(&s, a), "done", "{a}: {s:#}");
        assert_eq!(metric(&agent, a, "done"), 1, "{a}");
    }
    let stdin: Value =
        serde_json::from_slice(&std::fs::read(&exec_out).expect("exec wrote its stdin"))
            .expect("exec stdin is JSON");
    assert_eq!(stdin["id"], last_incident(&s).unwrap()["id"]);
    assert!(
        stdin["targets"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["id"] == m.as_str())),
        "{stdin:#}"
    );
    assert_eq!(stdin["steps"][0]["action"], "ecs-drain");
    assert_eq!(stdin["steps"][0]["outcome"], "done");
    let id = last_incident(&s).unwrap()["id"].clone();

    // A restarted agent with the same state dir (the disk is still shut down) does not run
    // the ladder again: same incident, no new AWS writes.
    agent.stop();
    drop(agent);
    w.imds
        .ecs_up
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let before = w.recorder.names().len();
    let mut agent = start(&cfg);
    agent
        .wait_for(Duration::from_secs(15), POLL, |s| {
            s["targets"].as_array().is_some_and(|ts| {
                ts.iter()
                    .any(|t| t["id"] == m.as_str() && t["state"] == "failed")
            })
        })
        .unwrap_or_else(|e| {
            panic!(
                "restarted agent did not see the failure: {e}\n{}",
                agent.log()
            )
        });
    // Several hold_downs and scans.
    std::thread::sleep(Duration::from_secs(5));
    let s = agent.status();
    let incidents = remediation(&s)["incidents"].as_array().unwrap().clone();
    assert_eq!(incidents.len(), 1, "{s:#}");
    assert_eq!(incidents[0]["id"], id);
    assert_eq!(incidents[0]["phase"], "done");
    let after: Vec<String> = w.recorder.names()[before..].to_vec();
    assert!(
        after.iter().all(|n| !MUTATING.contains(&n.as_str())),
        "restart repeated AWS writes: {after:?}\n{}",
        agent.log()
    );
    // The cached ECS identity survives the ECS agent being gone.
    assert_eq!(
        remediation(&s)["ecs"]["container_instance_arn"],
        w.fleet.arn.as_str()
    );
}

#[test]
fn dry_run_reports_every_step_and_changes_nothing() {
    let _g = privileged();
    let w = world(3, 0);
    let xfs = XfsMount::new(&w.disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let exec_out = w.state.path().join("exec-stdin.json");
    let mut agent = start_identified(&config(&w, xfs.path(), true, "", &exec_out), &m);

    xfs.shutdown().expect("xfs_io shutdown");
    agent
        .wait_for(Duration::from_secs(60), POLL, |s| phase(s) == "done")
        .unwrap_or_else(|e| panic!("dry-run ladder did not finish: {e}\n{}", agent.log()));
    let s = agent.status();
    for a in ["ecs-drain", "asg-unhealthy", "exec"] {
        assert_eq!(outcome(&s, a), "dry_run", "{a}: {s:#}");
        assert_eq!(metric(&agent, a, "dry_run"), 1, "{a}");
    }
    let detail = |a: &str| step(&s, a).unwrap()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail("ecs-drain").contains(&w.fleet.arn),
        "{}",
        detail("ecs-drain")
    );
    assert!(
        detail("asg-unhealthy").contains(&w.fleet.me),
        "{}",
        detail("asg-unhealthy")
    );
    assert!(!exec_out.exists(), "exec ran in dry_run");
    assert_eq!(
        w.fleet.state(&w.moto).unwrap(),
        ("ACTIVE".into(), "Healthy".into())
    );
    let names = w.recorder.names();
    assert!(
        names.iter().all(|n| !MUTATING.contains(&n.as_str())),
        "dry run wrote to AWS: {names:?}"
    );
    assert!(agent.log().contains("dry_run"), "{}", agent.log());
}

#[test]
fn breaker_holds_back_while_the_fleet_is_unhealthy_then_retries() {
    let _g = privileged();
    // 4 instances, 2 others already unhealthy: 50% > 20%.
    let w = world(4, 2);
    let xfs = XfsMount::new(&w.disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let exec_out = w.state.path().join("exec-stdin.json");
    let cfg = config(&w, xfs.path(), false, "breaker_retry = \"2s\"", &exec_out);
    let mut agent = start_identified(&cfg, &m);

    xfs.shutdown().expect("xfs_io shutdown");
    agent
        .wait_for(Duration::from_secs(60), POLL, |s| phase(s) == "held")
        .unwrap_or_else(|e| panic!("breaker did not hold: {e}\n{}", agent.log()));
    let s = agent.status();
    // The breaker gates every out-of-service step, not only asg-unhealthy (issue 13).
    for action in ["ecs-drain", "asg-unhealthy", "exec"] {
        assert_eq!(outcome(&s, action), "held_by_breaker", "{action}: {s:#}");
    }
    assert_eq!(
        w.fleet.state(&w.moto).unwrap(),
        ("ACTIVE".into(), "Healthy".into())
    );
    for call in MUTATING {
        assert!(!w.recorder.names().iter().any(|n| n == call), "{call} sent");
    }
    assert!(!exec_out.exists(), "exec ran while held");
    // It keeps retrying (every breaker_retry) and keeps holding.
    agent
        .wait_for(Duration::from_secs(20), POLL, |s| {
            step(s, "asg-unhealthy").and_then(|st| st["attempts"].as_u64()) >= Some(2)
                && outcome(s, "asg-unhealthy") == "held_by_breaker"
        })
        .unwrap_or_else(|e| panic!("no breaker retry: {e}\n{}", agent.log()));
    assert!(
        metric(&agent, "asg-unhealthy", "held_by_breaker") >= 2
            && metric(&agent, "ecs-drain", "held_by_breaker") >= 2,
        "{}",
        agent.metrics()
    );
    assert!(agent.log().contains("fleet breaker"), "{}", agent.log());

    // The fleet recovers: the next retry goes through.
    for other in &w.fleet.instances[1..3] {
        w.moto.ctl(&["set-health", other, "Healthy"]).expect("heal");
    }
    agent
        .wait_for(Duration::from_secs(30), POLL, |s| phase(s) == "done")
        .unwrap_or_else(|e| panic!("held step never retried: {e}\n{}", agent.log()));
    assert_eq!(
        w.fleet.state(&w.moto).unwrap(),
        ("DRAINING".into(), "Unhealthy".into())
    );
    let names = w.recorder.names();
    assert_eq!(
        names.iter().filter(|n| *n == "SetInstanceHealth").count(),
        1
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "UpdateContainerInstancesState")
            .count(),
        1
    );
}

/// Without a table the breaker holds `stop-units` too: the step never reaches D-Bus (there is
/// no systemd here, so reaching it would fail the step instead).
#[test]
fn breaker_holds_stop_units_too() {
    let _g = privileged();
    let w = world(4, 2);
    let xfs = XfsMount::new(&w.disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let exec_out = w.state.path().join("exec-stdin.json");
    let cfg = config(&w, xfs.path(), false, "breaker_retry = \"2s\"", &exec_out).replace(
        r#"actions = ["ecs-drain", "asg-unhealthy", "exec"]"#,
        r#"actions = ["ecs-drain", "stop-units", "asg-unhealthy", "exec"]"#,
    );
    assert!(cfg.contains("\"stop-units\""));
    let mut agent = start_identified(&cfg, &m);
    xfs.shutdown().expect("xfs_io shutdown");
    agent
        .wait_for(Duration::from_secs(60), POLL, |s| {
            phase(s) == "held"
                && step(s, "stop-units").and_then(|st| st["attempts"].as_u64()) >= Some(2)
        })
        .unwrap_or_else(|e| panic!("breaker did not hold: {e}\n{}", agent.log()));
    let s = agent.status();
    for action in ["ecs-drain", "stop-units", "asg-unhealthy", "exec"] {
        assert_eq!(outcome(&s, action), "held_by_breaker", "{action}: {s:#}");
    }
    assert!(metric(&agent, "stop-units", "held_by_breaker") >= 2);
    assert_eq!(metric(&agent, "stop-units", "failed"), 0, "reached D-Bus");
    assert!(!exec_out.exists(), "exec ran while held");
}
