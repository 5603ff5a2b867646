//! The experiments. Each builds fresh scratch storage, starts observing, injects one failure,
//! waits for the verdict, restores, and leaves the cleanup to the drops (which run on errors
//! and Ctrl-C too). Observers are declared after the scratch, so they stop first.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use super::{
    ExperimentOutcome, GamedayError,
    faultfile::Mode,
    observe::{self, BLOCKED_AFTER, InProcess, Observer, SCAN, STALL_AFTER},
    scratch::Scratch,
    status_doc::{device_errors, reason, state},
};

mod ext4;
mod mount;

pub const SCENARIOS: [&str; 10] = [
    "xfs-shutdown",
    "disk-errors",
    "disk-stall",
    "mount-hang",
    "recovery",
    "unmount",
    "read-only",
    "ext4-shutdown",
    "ext4-disk-errors",
    "not-writable",
];

/// Slack on top of threshold + one scan: the writer's I/O reaching the disk, the status
/// publish, the poll.
const SLACK: Duration = Duration::from_secs(1);

pub fn select(names: &[String]) -> Result<Vec<&'static str>, GamedayError> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(SCENARIOS.to_vec());
    }
    names
        .iter()
        .map(|n| {
            SCENARIOS
                .iter()
                .copied()
                .find(|s| s == n)
                .ok_or_else(|| GamedayError::UnknownScenario(n.clone()))
        })
        .collect()
}

#[derive(Clone)]
pub struct Ctx {
    pub workdir: PathBuf,
    pub agent: Option<SocketAddr>,
    pub rt: tokio::runtime::Handle,
    pub agent_timeout: Duration,
}

impl Ctx {
    fn observer(
        &self,
        scratch: &Scratch,
        hide_shutdown: bool,
        canary: bool,
    ) -> Result<Observer, GamedayError> {
        match self.agent {
            Some(a) => Ok(Observer::Agent(a)),
            None => {
                let layouts = if hide_shutdown {
                    Some(observe::layouts_without_shutdown(
                        &scratch.top().join("tracefs"),
                    )?)
                } else {
                    None
                };
                Ok(Observer::InProcess(InProcess::start(
                    &self.rt,
                    &scratch.mnt(),
                    layouts,
                    canary,
                )?))
            }
        }
    }

    /// How long to wait for a verdict that must come after `threshold` (ours) or after the
    /// running agent's own threshold (unknown).
    fn budget(&self, obs: &Observer, threshold: Duration) -> Duration {
        if obs.thresholds_known() {
            threshold + SCAN + SLACK
        } else {
            self.agent_timeout
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Run {
    expected: &'static str,
    detected: Option<String>,
    latency: Option<Duration>,
    threshold: Option<Duration>,
    passed: bool,
    note: String,
}

pub fn run(ctx: &Ctx, name: &'static str) -> Result<ExperimentOutcome, GamedayError> {
    let r = match name {
        "xfs-shutdown" => xfs_shutdown(ctx)?,
        "disk-errors" => disk_errors(ctx)?,
        "disk-stall" => disk_stall(ctx)?,
        "mount-hang" => mount_hang(ctx)?,
        "unmount" => mount::unmount(ctx)?,
        "read-only" => mount::read_only(ctx)?,
        "ext4-shutdown" => ext4::shutdown(ctx)?,
        "ext4-disk-errors" => ext4::disk_errors(ctx)?,
        "not-writable" => mount::not_writable(ctx)?,
        _ => recovery(ctx)?,
    };
    Ok(ExperimentOutcome {
        scenario: name,
        repetition: 1,
        expected: r.expected.to_string(),
        detected: r.detected,
        latency_ms: r.latency.map(ms),
        threshold_ms: r.threshold.map(ms),
        passed: r.passed,
        note: r.note,
    })
}

/// Fresh scratch storage with an XFS mounted, and an observer that sees it healthy.
fn mounted(ctx: &Ctx, hide_shutdown: bool) -> Result<(Scratch, Observer), GamedayError> {
    mounted_as(ctx, "xfs", hide_shutdown, false)
}

/// As [`mounted`] with `fstype`, and the in-process engine's canary on if `canary`.
fn mounted_as(
    ctx: &Ctx,
    fstype: &'static str,
    hide_shutdown: bool,
    canary: bool,
) -> Result<(Scratch, Observer), GamedayError> {
    let mut scratch = Scratch::new(&ctx.workdir)?;
    scratch.mkfs_as(fstype)?;
    let mnt = scratch.mnt();
    scratch.mount_at(&mnt)?;
    let obs = ctx.observer(&scratch, hide_shutdown, canary)?;
    let m = mnt.display().to_string();
    let seen = obs.wait_for(Duration::from_secs(20), |s| {
        state(s, "mount", &m) == "healthy"
    })?;
    if seen.is_none() {
        return Err(GamedayError::Agent(format!(
            "the {} never reported the scratch mount {m} healthy (does it observe {fstype} mounts?)",
            obs.describe()
        )));
    }
    Ok((scratch, obs))
}

fn missed(expected: &'static str, note: String) -> Run {
    Run {
        expected,
        detected: None,
        latency: None,
        threshold: None,
        passed: false,
        note,
    }
}

/// `xfs_io -x -c shutdown`: the `xfs_force_shutdown` tracepoint.
fn xfs_shutdown(ctx: &Ctx) -> Result<Run, GamedayError> {
    const EXPECTED: &str = "mount failed: xfs_shutdown";
    let (mut scratch, obs) = mounted(ctx, false)?;
    let m = scratch.mnt().display().to_string();
    // In the background, so the wait starts polling at once.
    let t0 = Instant::now();
    scratch.background(&format!("exec xfs_io -x -c shutdown '{m}'"))?;
    let Some((at, s)) = obs.wait_for(Duration::from_secs(5), |s| {
        state(s, "mount", &m) == "failed" && reason(s, "mount", &m, "xfs_shutdown").is_some()
    })?
    else {
        return Ok(missed(EXPECTED, "no verdict within 5 s".into()));
    };
    let took = at.duration_since(t0);
    let mut note = String::new();
    if obs.thresholds_known() && s["healthy"] != false {
        note = "/healthz would still answer 200".into();
    }
    Ok(Run {
        expected: EXPECTED,
        detected: Some("mount failed: xfs_shutdown".into()),
        latency: Some(took),
        threshold: None,
        passed: note.is_empty(),
        note,
    })
}

/// The disk fails under a mounted XFS: the log write fails and XFS shuts down without the
/// `xfs_force_shutdown` tracepoint (hidden from the in-process engine), as after an EBS
/// force-detach; seen through block errors and the statx confirmation.
fn disk_errors(ctx: &Ctx) -> Result<Run, GamedayError> {
    const EXPECTED: &str = "mount failed: xfs_shutdown (log error) + io_errors";
    let (mut scratch, obs) = mounted(ctx, true)?;
    let mnt = scratch.mnt();
    let m = mnt.display().to_string();
    // Metadata changes still in the log when the disk fails make the next log write fail.
    for i in 0..64 {
        std::fs::write(mnt.join(format!("pending.{i}")), b"x").map_err(|e| {
            GamedayError::Scratch {
                what: format!("writing to {m}"),
                detail: e.to_string(),
            }
        })?;
    }
    scratch.set_mode(Mode::Error);
    let t0 = Instant::now();
    scratch.background(&format!(
        "for i in 1 2 3 4 5 6 7 8; do dd if=/dev/zero of='{m}/during.'$i bs=64k count=16 2>/dev/null; done; sync"
    ))?;
    let name = scratch.loop_name().to_string();
    let Some((at, s)) = obs.wait_for(Duration::from_secs(10), |s| {
        reason(s, "mount", &m, "xfs_shutdown").is_some() && device_errors(s, &name) > 0
    })?
    else {
        return Ok(missed(EXPECTED, "no verdict within 10 s".into()));
    };
    let took = at.duration_since(t0);
    let detail = reason(&s, "mount", &m, "xfs_shutdown")
        .and_then(|r| r["detail"].as_str())
        .unwrap_or_default()
        .to_string();
    let via_statx = detail.contains("statx");
    // With our own engine the tracepoint is hidden, so only the log-error path can see it.
    let passed = via_statx || !obs.thresholds_known();
    Ok(Run {
        expected: EXPECTED,
        detected: Some(format!(
            "mount failed: xfs_shutdown ({}) + {} io_errors",
            if via_statx { "statx EIO" } else { "tracepoint" },
            device_errors(&s, &name)
        )),
        latency: Some(took),
        threshold: None,
        passed,
        note: if passed {
            String::new()
        } else {
            format!("shutdown not seen through the log-error path: {detail}")
        },
    })
}

/// Starts a writer against a hung disk and waits for `io_stall` on the loop device.
fn stall(
    ctx: &Ctx,
    scratch: &mut Scratch,
    obs: &Observer,
) -> Result<Option<Duration>, GamedayError> {
    let m = scratch.mnt().display().to_string();
    scratch.set_mode(Mode::Hang);
    let t0 = Instant::now();
    scratch.background(&format!(
        "dd if=/dev/zero of='{m}/f' bs=64k count=16 2>/dev/null; sync"
    ))?;
    let name = scratch.loop_name().to_string();
    let got = obs.wait_for(ctx.budget(obs, STALL_AFTER), |s| {
        reason(s, "device", &name, "io_stall").is_some()
    })?;
    Ok(got.map(|(at, _)| at.duration_since(t0)))
}

/// A check of a latency that must come after a threshold: not before it, at most a scan (and
/// the slack) after it.
fn after_threshold(obs: &Observer, took: Duration, threshold: Duration) -> (bool, String) {
    if !obs.thresholds_known() {
        return (true, "agent thresholds".into());
    }
    if took < threshold {
        return (
            false,
            format!("reported before the {threshold:?} threshold"),
        );
    }
    if took > threshold + SCAN + SLACK {
        return (
            false,
            format!("later than threshold + scan ({SCAN:?}) + {SLACK:?}"),
        );
    }
    (true, String::new())
}

fn disk_stall(ctx: &Ctx) -> Result<Run, GamedayError> {
    const EXPECTED: &str = "device failed: io_stall";
    let started = SystemTime::now();
    let (mut scratch, obs) = mounted(ctx, false)?;
    let Some(took) = stall(ctx, &mut scratch, &obs)? else {
        return Ok(missed(EXPECTED, "no io_stall in time".into()));
    };
    let (passed, note) = after_threshold(&obs, took, STALL_AFTER);
    obs.await_evidence(started)?;
    scratch.set_mode(Mode::Pass);
    scratch.wait_background(Duration::from_secs(20));
    Ok(Run {
        expected: EXPECTED,
        detected: Some("device failed: io_stall".into()),
        latency: Some(took),
        threshold: obs.thresholds_known().then_some(STALL_AFTER),
        passed,
        note,
    })
}

/// `mount -t xfs` of a hung disk blocks inside mount(2).
fn mount_hang(ctx: &Ctx) -> Result<Run, GamedayError> {
    const EXPECTED: &str = "blocked mount call listed";
    let started = SystemTime::now();
    let mut scratch = Scratch::new(&ctx.workdir)?;
    scratch.mkfs()?;
    let obs = ctx.observer(&scratch, false, false)?;
    if obs
        .wait_for(Duration::from_secs(20), |s| {
            state(s, "subsystem", "mount") != "absent"
        })?
        .is_none()
    {
        return Err(GamedayError::Agent(format!(
            "the {} reports no mount subsystem",
            obs.describe()
        )));
    }
    let target_dir = scratch.mnt();
    let target_s = target_dir.display().to_string();
    let source = scratch.loop_dev().to_string();
    scratch.set_mode(Mode::Hang);
    let t0 = Instant::now();
    scratch.mount_in_background(&target_dir)?;
    let got = obs.wait_for(ctx.budget(&obs, BLOCKED_AFTER), |s| {
        s["blocked_mount_calls"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["target"] == target_s.as_str() && c["source"] == source.as_str())
        })
    })?;
    let Some((at, s)) = got else {
        return Ok(missed(
            EXPECTED,
            "the blocked mount was not listed in time".into(),
        ));
    };
    let took = at.duration_since(t0);
    let (passed, note) = after_threshold(&obs, took, BLOCKED_AFTER);
    let subsystem = state(&s, "subsystem", "mount");
    obs.await_evidence(started)?;
    // Release the disk: the mount completes and the call leaves the list.
    scratch.set_mode(Mode::Pass);
    scratch.wait_background(Duration::from_secs(20));
    Ok(Run {
        expected: EXPECTED,
        detected: Some(format!(
            "blocked mount call listed; mount subsystem {subsystem}"
        )),
        latency: Some(took),
        threshold: obs.thresholds_known().then_some(BLOCKED_AFTER),
        passed,
        note,
    })
}

/// A stalled disk that answers again: device and mount must be healthy again, and /healthz 200.
fn recovery(ctx: &Ctx) -> Result<Run, GamedayError> {
    const EXPECTED: &str = "io_stall clears: device and mount healthy";
    let (mut scratch, obs) = mounted(ctx, false)?;
    if stall(ctx, &mut scratch, &obs)?.is_none() {
        return Ok(missed(EXPECTED, "the stall itself was not detected".into()));
    }
    let m = scratch.mnt().display().to_string();
    let name = scratch.loop_name().to_string();
    scratch.set_mode(Mode::Pass);
    let t1 = Instant::now();
    let budget = if obs.thresholds_known() {
        2 * SCAN + SLACK
    } else {
        ctx.agent_timeout
    };
    let known = obs.thresholds_known();
    let got = obs.wait_for(budget, |s| {
        state(s, "device", &name) == "healthy"
            && state(s, "mount", &m) == "healthy"
            && (!known || s["healthy"] == true)
    })?;
    scratch.wait_background(Duration::from_secs(20));
    let Some((at, _)) = got else {
        return Ok(missed(
            EXPECTED,
            format!("not healthy again within {budget:?}"),
        ));
    };
    let took = at.duration_since(t1);
    Ok(Run {
        expected: EXPECTED,
        detected: Some("device and mount healthy again".into()),
        latency: Some(took),
        threshold: None,
        passed: true,
        note: String::new(),
    })
}
