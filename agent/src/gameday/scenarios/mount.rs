//! The BindsTo= scenarios: the watched mount lazily unmounted (`unmount`), remounted read-only
//! (`read-only`) or filled up so the canary cannot write (`not-writable`), then restored. Only a
//! critical watch on the scratch path raises `not_mounted`, `read_only` or `not_writable`,
//! which a running agent cannot have (the path is made here), so these always use the
//! in-process engine.

use std::time::{Duration, Instant};

use super::{Ctx, Run, SLACK, missed, mounted, mounted_as};
use crate::gameday::{
    GamedayError,
    observe::{CANARY_EVERY, SCAN},
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

/// The scratch XFS filled up (the seed's Docker disk, out of space): the canary's write fails
/// with ENOSPC; space freed again, the next canary writes.
pub(super) fn not_writable(ctx: &Ctx) -> Result<Run, GamedayError> {
    const EXPECTED: &str = "mount failed: not_writable (ENOSPC)";
    let (scratch, obs) = mounted_as(&in_process(ctx), "xfs", false, true)?;
    let m = scratch.mnt().display().to_string();
    let free = nix::sys::statvfs::statvfs(&scratch.mnt())
        .map(|v| v.blocks_available() * v.fragment_size())
        .map_err(|e| GamedayError::Scratch {
            what: format!("statvfs {m}"),
            detail: e.to_string(),
        })?;
    // Most of it at once, the rest a block at a time until nothing fits; the disk's files are
    // under the scratch mount only.
    let fill = format!(
        "cd '{m}' && fallocate -l {} fill; dd if=/dev/zero of=fill.tail bs=64k 2>/dev/null;          i=0; while [ $i -lt 4096 ] && head -c 4096 /dev/zero > fill.$i 2>/dev/null;          do i=$((i+1)); done; sync; true",
        free.saturating_sub(8 << 20)
    );
    run("sh", &["-c", &fill], Duration::from_secs(120))?;
    let t0 = Instant::now();
    let budget = CANARY_EVERY + SCAN + SLACK;
    let Some((at, s)) = obs.wait_for(budget, |s| {
        state(s, "mount", &m) == "failed" && reason(s, "mount", &m, "not_writable").is_some()
    })?
    else {
        return Ok(missed(
            EXPECTED,
            format!("no not_writable within {budget:?}"),
        ));
    };
    let took = at.duration_since(t0);
    let detail = reason(&s, "mount", &m, "not_writable")
        .and_then(|r| r["detail"].as_str())
        .unwrap_or_default()
        .to_string();
    let mut note = String::new();
    if s["healthy"] != false {
        note = "/healthz would still answer 200".into();
    } else if !detail.contains("ENOSPC") {
        note = format!("the detail names no ENOSPC: {detail}");
    }
    run(
        "sh",
        &["-c", &format!("rm -f '{m}'/fill*")],
        Duration::from_secs(60),
    )?;
    let back = obs.wait_for(Duration::from_secs(10), |s| {
        state(s, "mount", &m) == "healthy"
    })?;
    if back.is_none() && note.is_empty() {
        note = "not healthy again within 10 s of freeing the space".into();
    }
    Ok(Run {
        expected: EXPECTED,
        detected: Some(format!("mount failed: not_writable ({detail})")),
        latency: Some(took),
        threshold: None,
        passed: note.is_empty(),
        note: in_process_note(ctx, note),
    })
}

/// The context for a scenario that needs its own critical watch: always the in-process engine.
fn in_process(ctx: &Ctx) -> Ctx {
    Ctx {
        agent: None,
        ..ctx.clone()
    }
}

/// `note`, saying why a running agent was not asked.
fn in_process_note(ctx: &Ctx, note: String) -> String {
    if ctx.agent.is_none() {
        return note;
    }
    format!("{note} (in-process engine: the running agent has no watch on the scratch path)")
        .trim()
        .to_string()
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
    let (mut scratch, obs) = mounted(&in_process(ctx), false)?;
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
    Ok(Run {
        expected,
        detected: Some(expected.into()),
        latency: Some(took),
        threshold: None,
        passed: s["healthy"] == false && back.is_some(),
        note: in_process_note(ctx, note),
    })
}
