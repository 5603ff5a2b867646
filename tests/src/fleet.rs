//! The fleet-budget tests' world (tests/tests/fleet.rs, fleet_faults.rs): one serialized moto
//! Auto Scaling group whose instances are all ECS container instances, and one agent per
//! instance, each with its own IMDSv2 + ECS introspection fixture and state dir, on a critical
//! watch of a mount the test shares between them.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::{
    Agent,
    aws::{Imds, Moto},
    ladder::ENV,
    run_with_timeout,
};

pub const POLL: Duration = Duration::from_millis(100);
pub const TABLE: &str = "bindsto-fleet-test";
pub const GROUP: &str = "bindsto-test-asg";

pub struct Group {
    pub moto: Moto,
    pub instances: Vec<String>,
    pub arns: Vec<String>,
    pub cluster: String,
}

impl Group {
    pub fn new(n: usize) -> Group {
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
    pub fn state(&self) -> Vec<(String, String)> {
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

    pub fn out_of_service(&self) -> usize {
        self.state()
            .iter()
            .filter(|(c, h)| c == "DRAINING" || h == "Unhealthy")
            .count()
    }
}

/// One agent for instance `i`: ecs-drain and asg-unhealthy on a critical watch of `mount`.
pub struct Host {
    pub _imds: Imds,
    pub _state: tempfile::TempDir,
    pub agent: Agent,
    pub config: String,
}

pub fn config(
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

pub fn agent_bin() -> std::path::PathBuf {
    crate::agent::default_agent_bin().expect("agent binary")
}

pub fn host(g: &Group, i: usize, mount: &std::path::Path, lease: &str) -> Host {
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
pub fn fleet_cli(config: &str, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(agent_bin());
    cmd.arg("fleet").args(args).arg("--config").arg(&path);
    cmd.envs(ENV);
    let out = run_with_timeout(cmd, Duration::from_secs(60)).expect("bindsto fleet");
    (out.success(), out.output)
}

pub fn fleet(s: &Value) -> &Value {
    &s["remediation"]["fleet"]
}

pub fn init(h: &Host) {
    let (ok, out) = fleet_cli(&h.config, &["init", "--region", "us-east-1"]);
    assert!(ok, "{out}");
}

pub fn wait_all(hosts: &mut [Host], what: &str, pred: impl Fn(&Value) -> bool) {
    for (i, h) in hosts.iter_mut().enumerate() {
        h.agent
            .wait_for(Duration::from_secs(60), POLL, &pred)
            .unwrap_or_else(|e| panic!("host {i}: no {what}: {e}\n{}", h.agent.log()));
    }
}

pub fn bindsto_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
