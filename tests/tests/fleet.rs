//! The shared out-of-service budget end to end: several real agents on this host, each with its
//! own IMDSv2 + ECS introspection fixture naming a different instance of one moto Auto Scaling
//! group, all watching the same critical XFS, so one `xfs_io -x -c shutdown` fails all of them
//! at the same moment. moto (DynamoDB, Auto Scaling, ECS) runs with one request at a time
//! (`tests/aws/moto_serial.py`), because real DynamoDB is linearizable per item and moto's
//! threaded server is not; `serialized_moto_never_over_grants` shows the serialization holds.
//!
//! Needs root and moto (`.ci/run` installs it).

use std::process::Command;
use std::time::{Duration, Instant};

use bindsto_tests::{
    Agent, FaultyDisk, XfsMount,
    aws::{Imds, Moto},
    faultyfs_bin,
    ladder::{ENV, metric, outcome, phase},
    privileged, run_with_timeout,
};
use serde_json::Value;

const POLL: Duration = Duration::from_millis(100);
const TABLE: &str = "bindsto-fleet-test";
const GROUP: &str = "bindsto-test-asg";

struct Group {
    moto: Moto,
    instances: Vec<String>,
    arns: Vec<String>,
    cluster: String,
}

impl Group {
    fn new(n: usize) -> Group {
        let moto = Moto::start_serialized().expect("moto");
        let v = moto
            .ctl(&["fleet-setup", &n.to_string()])
            .expect("fleet-setup");
        let list = |k: &str| -> Vec<String> {
            v[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect()
        };
        Group {
            instances: list("instances"),
            arns: list("arns"),
            cluster: v["cluster"].as_str().unwrap().to_owned(),
            moto,
        }
    }

    /// (container instance status, health) of instance `i`.
    fn state(&self) -> Vec<(String, String)> {
        let mut args = vec!["fleet-state"];
        args.extend(self.arns.iter().map(String::as_str));
        let v = self.moto.ctl(&args).expect("fleet-state");
        (0..self.instances.len())
            .map(|i| {
                (
                    v["container_status"][i]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    v["health"][&self.instances[i]]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }

    fn out_of_service(&self) -> usize {
        self.state()
            .iter()
            .filter(|(c, h)| c == "DRAINING" || h == "Unhealthy")
            .count()
    }
}

/// One agent for instance `i`: ecs-drain and asg-unhealthy on a critical watch of `mount`.
struct Host {
    _imds: Imds,
    _state: tempfile::TempDir,
    agent: Agent,
    config: String,
}

fn config(
    g: &Group,
    imds: &Imds,
    state: &std::path::Path,
    mount: &std::path::Path,
    lease: &str,
) -> String {
    format!(
        r#"dry_run = false

[detect]
scan_interval = "250ms"
fstypes = ["xfs"]

[[watch]]
path = "{mount}"
critical = true

[remediate]
actions = ["ecs-drain", "asg-unhealthy"]
hold_down = "1s"
max_per_hour = 5
state_dir = "{state}"
aws_max_attempts = 2

[remediate.ecs_drain]
introspection_url = "{imds}"
endpoint_url = "{aws}"
timeout = "20s"

[remediate.asg_unhealthy]
imds_url = "{imds}"
endpoint_url = "{aws}"
timeout = "20s"

[remediate.fleet]
table = "{TABLE}"
endpoint_url = "{aws}"
max_out_of_service_percent = 20.0
outage_percent = 50.0
lease = "{lease}"
retry = "1s"
"#,
        mount = mount.display(),
        state = state.display(),
        imds = imds.url(),
        aws = g.moto.url,
    )
}

fn agent_bin() -> std::path::PathBuf {
    bindsto_tests::agent::default_agent_bin().expect("agent binary")
}

fn host(g: &Group, i: usize, mount: &std::path::Path, lease: &str) -> Host {
    let imds = Imds::start(&g.instances[i], "us-east-1", &g.cluster, &g.arns[i]).expect("imds");
    let state = tempfile::Builder::new()
        .prefix("bindsto-fleet-")
        .tempdir()
        .expect("state");
    let config = config(g, &imds, state.path(), mount, lease);
    let mut agent = Agent::start_with_env(agent_bin(), &config, &[], &ENV).expect("agent");
    agent
        .wait_for(Duration::from_secs(20), POLL, |s| {
            !s["remediation"]["instance"].is_null() && s["healthy"] == true
        })
        .unwrap_or_else(|e| panic!("agent {i} not ready: {e}\n{}", agent.log()));
    Host {
        _imds: imds,
        _state: state,
        agent,
        config,
    }
}

/// `bindsto fleet <args>` with the agent's config.
fn fleet_cli(config: &str, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(agent_bin());
    cmd.arg("fleet").args(args).arg("--config").arg(&path);
    cmd.envs(ENV);
    let out = run_with_timeout(cmd, Duration::from_secs(60)).expect("bindsto fleet");
    (out.success(), out.output)
}

fn fleet(s: &Value) -> &Value {
    &s["remediation"]["fleet"]
}

#[test]
fn serialized_moto_never_over_grants() {
    let moto = Moto::start_serialized().expect("moto");
    let v = moto.ctl(&["race", "race", "20", "12", "2"]).expect("race");
    println!("FLEET moto race: {v}");
    assert_eq!(v["trials"], 20);
    assert_eq!(v["over_granted"], 0, "{v}");
}

#[test]
fn budget_grants_exactly_two_of_three_failing_hosts() {
    let _g = privileged();
    let mut over_granted = 0;
    let rounds = 2;
    for round in 0..rounds {
        let g = Group::new(10);
        let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
        let xfs = XfsMount::new(&disk).expect("xfs");
        let hosts: Vec<Host> = (0..3).map(|i| host(&g, i, xfs.path(), "5m")).collect();
        if round == 0 {
            let (ok, out) = fleet_cli(&hosts[0].config, &["init", "--region", "us-east-1"]);
            assert!(ok && out.contains("created table"), "{out}");
            let (ok, out) = fleet_cli(&hosts[0].config, &["init", "--region", "us-east-1"]);
            assert!(
                ok && out.contains("already exists"),
                "init is idempotent: {out}"
            );
        } else {
            assert!(fleet_cli(&hosts[0].config, &["init", "--region", "us-east-1"]).0);
        }

        xfs.shutdown().expect("xfs_io shutdown");
        let t0 = Instant::now();
        // Two go out, one waits.
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let phases: Vec<String> = hosts.iter().map(|h| phase(&h.agent.status())).collect();
            let done = phases.iter().filter(|p| *p == "done").count();
            let held = phases.iter().filter(|p| *p == "held").count();
            if done == 2 && held == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "phases {phases:?}\n{}",
                hosts[0].agent.log()
            );
            std::thread::sleep(POLL);
        }
        println!(
            "FLEET round {round}: 2 out, 1 held after {} ms",
            t0.elapsed().as_millis()
        );
        // Held hosts retry every ~1 s: still exactly two out a while later.
        std::thread::sleep(Duration::from_secs(5));
        let out = g.out_of_service();
        if out > 2 {
            over_granted += 1;
        }
        assert_eq!(out, 2, "moto: {:?}", g.state());
        let mut held = 0;
        for h in &hosts {
            let s = h.agent.status();
            let (code, body) = h.agent.healthz();
            let f = fleet(&s);
            if phase(&s) == "held" {
                held += 1;
                assert_eq!(outcome(&s, "ecs-drain"), "held_by_budget", "{s:#}");
                assert_eq!(outcome(&s, "asg-unhealthy"), "held_by_budget", "{s:#}");
                assert_eq!(f["state"], "held", "{f:#}");
                assert_eq!(f["lease_held"], false);
                assert_eq!(f["holders"].as_array().unwrap().len(), 2, "{f:#}");
                assert!(
                    f["detail"].as_str().unwrap().contains("2 of 2 slots"),
                    "{f:#}"
                );
                assert_eq!(code, 200, "a held host must not ask to be replaced: {body}");
                let b: Value = serde_json::from_str(&body).expect("healthz JSON");
                assert_eq!(b["healthy"], false);
                assert!(
                    b["held"]
                        .as_str()
                        .is_some_and(|h| h.contains("no out-of-service lease")),
                    "{b}"
                );
                assert!(
                    metric(
                        &h.agent,
                        "bindsto_remediations_total{action=\"ecs-drain\",outcome=\"held_by_budget\"}"
                    ) >= 2
                );
                assert_eq!(metric(&h.agent, "bindsto_fleet_lease_held"), 0);
            } else {
                assert_eq!(f["state"], "holding", "{f:#}");
                assert_eq!(f["lease_held"], true);
                assert_eq!(code, 503, "{body}");
                assert_eq!(metric(&h.agent, "bindsto_fleet_lease_held"), 1);
            }
            assert_eq!(f["group"], GROUP);
            assert_eq!(f["budget"], 2);
            assert_eq!(f["failing"].as_array().unwrap().len(), 3, "{f:#}");
        }
        assert_eq!(held, 1);
        let (ok, out) = fleet_cli(
            &hosts[0].config,
            &[
                "status",
                "--group",
                GROUP,
                "--region",
                "us-east-1",
                "--json",
            ],
        );
        assert!(ok, "{out}");
        let j: Value =
            serde_json::from_str(&out[out.find('{').unwrap()..]).expect("fleet status JSON");
        assert_eq!(j["holders"].as_array().unwrap().len(), 2, "{j:#}");
        assert_eq!(j["failing"].as_array().unwrap().len(), 3, "{j:#}");
        drop(hosts);
        drop(xfs);
    }
    println!("FLEET over_granted={over_granted} rounds={rounds}");
    assert_eq!(over_granted, 0);
}
