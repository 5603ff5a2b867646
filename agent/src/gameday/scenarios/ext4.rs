//! The ext4 scenarios: `xfs_io -x -c shutdown` on ext4 (`EXT4_IOC_SHUTDOWN`: `fs_shutdown`),
//! and a disk that fails every request under a mounted ext4 with a writer (the mount fails
//! through whichever comes first: the journal aborted, the superblock read-only, or the
//! device dead for `io_dead_after`).

use std::time::{Duration, Instant};

use super::{Ctx, Run, missed, mounted_as};
use crate::gameday::{
    GamedayError,
    faultfile::Mode,
    observe::{DEAD_AFTER, SCAN},
    status_doc::{reason, state},
};

/// The signals that fail an ext4 mount whose disk fails, in the order they are named.
const FAILING: [&str; 3] = ["fs_shutdown", "read_only", "io_errors"];

pub(super) fn shutdown(ctx: &Ctx) -> Result<Run, GamedayError> {
    const EXPECTED: &str = "mount failed: fs_shutdown";
    let (mut scratch, obs) = mounted_as(ctx, "ext4", false, false)?;
    let m = scratch.mnt().display().to_string();
    let t0 = Instant::now();
    scratch.background(&format!("exec xfs_io -x -c shutdown '{m}'"))?;
    let Some((at, s)) = obs.wait_for(Duration::from_secs(5), |s| {
        state(s, "mount", &m) == "failed" && reason(s, "mount", &m, "fs_shutdown").is_some()
    })?
    else {
        return Ok(missed(EXPECTED, "no verdict within 5 s".into()));
    };
    let mut note = String::new();
    if obs.thresholds_known() && s["healthy"] != false {
        note = "/healthz would still answer 200".into();
    }
    Ok(Run {
        expected: EXPECTED,
        detected: Some(EXPECTED.into()),
        latency: Some(at.duration_since(t0)),
        threshold: None,
        passed: note.is_empty(),
        note,
    })
}

pub(super) fn disk_errors(ctx: &Ctx) -> Result<Run, GamedayError> {
    const EXPECTED: &str = "mount failed: fs_shutdown, read_only or io_errors (device dead)";
    let (mut scratch, obs) = mounted_as(ctx, "ext4", false, false)?;
    let m = scratch.mnt().display().to_string();
    scratch.set_mode(Mode::Error);
    let t0 = Instant::now();
    // Writes that keep reaching the disk for longer than io_dead_after (ended at cleanup).
    scratch.background(&format!(
        "i=0; while [ $i -lt 200 ]; do dd if=/dev/zero of='{m}/during.'$i bs=64k count=4 \
         conv=fsync 2>/dev/null; i=$((i+1)); sleep 0.05; done"
    ))?;
    let budget = ctx.budget(&obs, DEAD_AFTER);
    let Some((at, s)) = obs.wait_for(budget, |s| {
        state(s, "mount", &m) == "failed"
            && FAILING.iter().any(|f| reason(s, "mount", &m, f).is_some())
    })?
    else {
        return Ok(missed(
            EXPECTED,
            format!("the mount did not fail within {budget:?}"),
        ));
    };
    let took = at.duration_since(t0);
    let by: Vec<String> = FAILING
        .iter()
        .filter_map(|f| {
            let r = reason(&s, "mount", &m, f)?;
            Some(format!(
                "{f} ({})",
                r["detail"].as_str().unwrap_or_default()
            ))
        })
        .collect();
    let mut note = String::new();
    if obs.thresholds_known() {
        if s["healthy"] != false {
            note = "/healthz would still answer 200".into();
        } else if took > DEAD_AFTER + SCAN + super::SLACK {
            note = format!("later than io_dead_after ({DEAD_AFTER:?}) + scan + slack");
        }
    }
    Ok(Run {
        expected: EXPECTED,
        detected: Some(format!("mount failed: {}", by.join(" + "))),
        latency: Some(took),
        threshold: None,
        passed: note.is_empty(),
        note,
    })
}
