//! A remediation world for tests that restart or inspect the agent during the ladder
//! (tests/tests/remediate.rs, restart.rs, security.rs): real moto behind the recording proxy,
//! the IMDSv2 + ECS introspection fixture, a state dir, and a FUSE-backed disk for an XFS.

use std::{path::Path, time::Duration};

use serde_json::Value;

use crate::{
    Agent, FaultyDisk,
    aws::{Fleet, Imds, Moto, Recorder},
};

pub struct World {
    pub moto: Moto,
    pub fleet: Fleet,
    pub imds: Imds,
    pub recorder: Recorder,
    pub state: tempfile::TempDir,
    pub disk: FaultyDisk,
}

impl World {
    /// An Auto Scaling group of 3 healthy instances, this host's container instance, and a
    /// 300 MiB disk; `faultyfs` is the FUSE server binary (`faultyfs_bin!()`).
    pub fn new(faultyfs: impl AsRef<Path>) -> World {
        World::with_fleet(faultyfs, 3, 0)
    }

    /// The same with `n` instances, the first `n_unhealthy` others already `Unhealthy`.
    pub fn with_fleet(faultyfs: impl AsRef<Path>, n: usize, n_unhealthy: usize) -> World {
        let moto = Moto::start().expect("moto server");
        let fleet = Fleet::setup(&moto, n, n_unhealthy).expect("moto setup");
        let imds = Imds::start(&fleet.me, "us-east-1", &fleet.cluster, &fleet.arn).expect("imds");
        let recorder = Recorder::start(moto.addr).expect("recorder");
        let state = tempfile::Builder::new()
            .prefix("bindsto-state-")
            .tempdir()
            .expect("state dir");
        let disk = FaultyDisk::with_binary(faultyfs.as_ref(), 300).expect("FaultyDisk");
        World {
            moto,
            fleet,
            imds,
            recorder,
            state,
            disk,
        }
    }

    /// The ladder ecs-drain, asg-unhealthy, exec (appending its stdin to `exec_out`) on a
    /// critical watch of `mount`; `hold_down` as given.
    pub fn config(&self, mount: &Path, hold_down: &str, exec_out: &Path) -> String {
        let out = exec_out.display();
        self.ladder_config(
            mount,
            false,
            hold_down,
            "",
            &format!("cat >> {out}; echo >> {out}"),
        )
    }

    /// The ladder ecs-drain, asg-unhealthy, exec on a critical watch of `mount`: `asg_extra`
    /// goes into `[remediate.asg_unhealthy]`, `exec_script` is what `/bin/sh -c` runs.
    pub fn ladder_config(
        &self,
        mount: &Path,
        dry_run: bool,
        hold_down: &str,
        asg_extra: &str,
        exec_script: &str,
    ) -> String {
        format!(
            r#"dry_run = {dry_run}

[detect]
scan_interval = "250ms"
io_stall_after = "3s"
mount_blocked_after = "3s"
probe_timeout = "2s"
fstypes = ["xfs"]

[[watch]]
path = "{mount}"
critical = true

[remediate]
actions = ["ecs-drain", "asg-unhealthy", "exec"]
hold_down = "{hold_down}"
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
fleet_max_unhealthy_percent = 20
timeout = "20s"
{asg_extra}

[remediate.exec]
command = ["/bin/sh", "-c", "{exec_script}"]
timeout = "5s"
"#,
            mount = mount.display(),
            state = self.state.path().display(),
            imds = self.imds.url(),
            aws = self.recorder.url(),
        )
    }
}

/// moto accepts any credentials; the SDK needs some.
pub const ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

pub fn last_incident(s: &Value) -> Option<&Value> {
    s["remediation"]["incidents"].as_array()?.last()
}

pub fn phase(s: &Value) -> String {
    last_incident(s)
        .and_then(|i| i["phase"].as_str())
        .unwrap_or("none")
        .to_owned()
}

pub fn step<'a>(s: &'a Value, action: &str) -> Option<&'a Value> {
    last_incident(s)?["steps"]
        .as_array()?
        .iter()
        .find(|st| st["action"] == action)
}

pub fn outcome(s: &Value, action: &str) -> String {
    step(s, action)
        .and_then(|st| st["outcome"].as_str())
        .unwrap_or("none")
        .to_owned()
}

/// Waits until the agent knows its ECS and EC2 identity and sees `mount` healthy.
pub fn wait_identified(agent: &mut Agent, mount: &str) {
    agent
        .wait_for(Duration::from_secs(20), Duration::from_millis(50), |s| {
            !s["remediation"]["ecs"].is_null()
                && !s["remediation"]["instance"].is_null()
                && s["targets"].as_array().is_some_and(|ts| {
                    ts.iter()
                        .any(|t| t["id"] == mount && t["state"] == "healthy")
                })
        })
        .unwrap_or_else(|e| panic!("agent not ready: {e}\n{}", agent.log()));
}

/// The value of one sample line of `/metrics` (`name{labels}` exactly), 0 when absent.
pub fn metric(agent: &Agent, series: &str) -> u64 {
    let needle = format!("{series} ");
    agent
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
