//! The BindsTo= scenarios: the watched mount lazily unmounted (`unmount`) or remounted
//! read-only (`read-only`), then restored. Only a critical watch on the scratch path raises
//! `not_mounted` or `read_only`, which a running agent cannot have (the path is made here), so
//! these always use the in-process engine.

use std::time::{Duration, Instant};

use super::{Ctx, Run, missed, mounted};
use crate::gameday::{
    GamedayError,
    scratch::{Scratch, run},
    status_doc::{reason, state},
};

/// `umount -l` of the watched XFS; mounted again at the same path.
pub(super) fn unmount(ctx: &Ctx) -> Result<Run, GamedayError> {
    inject_and_restore(
        ctx,
        "not_mounted",
        |s| {
            nix::mount::umount2(&s.mnt(), nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
                GamedayError::Scratch {
                    what: format!("umount -l {}", s.mnt().display()),
                    detail: e.to_string(),
                }
            })
        },
        |s| s.mount_at(&s.mnt()),
    )
}

/// `mount -o remount,ro` of the watched XFS; `remount,rw` after.
pub(super) fn read_only(ctx: &Ctx) -> Result<Run, GamedayError> {
    inject_and_restore(ctx, "read_only", |s| remount(s, "ro"), |s| remount(s, "rw"))
}

fn remount(s: &Scratch, opts: &str) -> Result<(), GamedayError> {
    let mnt = s.mnt().to_string_lossy().into_owned();
    let o = format!("remount,{opts}");
    run("mount", &["-o", &o, &mnt], Duration::from_secs(30)).map(|_| ())
}

fn inject_and_restore(
    ctx: &Ctx,
    signal: &'static str,
    inject: impl FnOnce(&mut Scratch) -> Result<(), GamedayError>,
    restore: impl FnOnce(&mut Scratch) -> Result<(), GamedayError>,
) -> Result<Run, GamedayError> {
    let expected = match signal {
        "not_mounted" => "mount failed: not_mounted",
        _ => "mount failed: read_only",
    };
    let local = Ctx {
        agent: None,
        ..ctx.clone()
    };
    let (mut scratch, obs) = mounted(&local, false)?;
    let m = scratch.mnt().display().to_string();
    let t0 = Instant::now();
    inject(&mut scratch)?;
    let Some((at, s)) = obs.wait_for(Duration::from_secs(5), |s| {
        state(s, "mount", &m) == "failed" && reason(s, "mount", &m, signal).is_some()
    })?
    else {
        return Ok(missed(expected, "no verdict within 5 s".into()));
    };
    let took = at.duration_since(t0);
    let mut note = String::new();
    if s["healthy"] != false {
        note = "/healthz would still answer 200".into();
    }
    restore(&mut scratch)?;
    let back = obs.wait_for(Duration::from_secs(10), |s| {
        state(s, "mount", &m) == "healthy"
    })?;
    if back.is_none() {
        note = "not healthy again within 10 s of the restore".into();
    }
    if ctx.agent.is_some() {
        note = format!(
            "{note} (in-process engine: the running agent has no watch on the scratch path)"
        )
        .trim()
        .to_string();
    }
    Ok(Run {
        expected,
        detected: Some(expected.into()),
        latency: Some(took),
        threshold: None,
        passed: s["healthy"] == false && back.is_some(),
        note,
    })
}
