//! Incident evidence: what the kernel was doing when critical storage failed, kept on disk.
//!
//! One job: when the remedy opens an incident (and again when its ladder runs, if the failure
//! changed), capture a bounded bundle (the failing targets and their reasons, the blocked
//! tasks with their kernel stacks, what is in flight, the kernel log of the window, the mount
//! checks) on a blocking thread within [`BUDGET`], and keep it in `state_dir/evidence`.
//! Depends on `config`, `probes` (map handles, device numbers), `scan` (call decoding) and
//! `publish` (the status it starts from); `remedy` uses it.

pub mod bundle;
pub mod client;
pub mod files;
pub mod helper;
pub mod inflight;
pub mod stacks;
pub mod tasks;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    config::Config, health::timestamp::format_time, probes::InflightMaps, probes::dev::DevId,
    publish::status::Status,
};
use bundle::{Bundle, Capture, ReasonEvidence, TargetEvidence, TaskEvidence, Unreadable};

/// Work a capture may do; sources not read by then are reported as such.
pub const BUDGET: Duration = Duration::from_secs(2);
/// Kernel log kept before the first reason of the failure.
const LOG_BEFORE: Duration = Duration::from_secs(60);

/// Where the privileged sources come from; what the daemon hands over at start.
#[derive(Default, Clone)]
pub struct Sources {
    pub helper: Option<Arc<Mutex<client::Helper>>>,
    /// Why there is no helper, when there is none.
    pub helper_missing: Option<String>,
    pub maps: Option<Arc<InflightMaps>>,
    pub maps_missing: Option<String>,
}

/// What one capture is about.
pub struct Request {
    pub incident: String,
    pub trigger: &'static str,
    pub status: Arc<Status>,
    pub config: Arc<Config>,
    /// `(kind, id)` of the failed critical targets.
    pub failed: Vec<(String, String)>,
    pub hostname: String,
    pub identity: serde_json::Value,
    /// The bundle written earlier for this incident, to add the new capture to.
    pub earlier: Option<Bundle>,
}

/// Captures and writes one bundle; returns it with its path and size. Blocking: run it on a
/// blocking thread.
pub fn capture_and_write(
    src: &Sources,
    req: Request,
    dir: &std::path::Path,
) -> Result<(Bundle, PathBuf, usize), files::FileError> {
    let mut b = capture(src, req);
    bundle::fit(&mut b, bundle::MAX_BYTES);
    let (path, size) = files::write(dir, &b)?;
    Ok((b, path, size))
}

/// Builds the bundle: the earlier one plus a new capture.
pub fn capture(src: &Sources, req: Request) -> Bundle {
    let started = Instant::now();
    let deadline = started + BUDGET;
    let mut unreadable = Vec::new();
    let s = &req.status;
    let failed: Vec<_> = s
        .targets
        .iter()
        .filter(|t| req.failed.iter().any(|(k, id)| k == t.kind && *id == t.id))
        .collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let targets: Vec<TargetEvidence> = failed
        .iter()
        .map(|t| TargetEvidence {
            kind: t.kind.to_owned(),
            id: t.id.clone(),
            device: t.device.clone(),
            fstype: t.fstype.clone(),
            state: format!("{:?}", t.state).to_lowercase(),
            since: format_time(t.since),
            reasons: t
                .reasons
                .iter()
                .map(|r| ReasonEvidence {
                    signal: r.signal.name().to_owned(),
                    detail: r.detail.clone(),
                    at: format_time(r.at),
                })
                .collect(),
            mountinfo: mountinfo_line(&mountinfo, t.kind, &t.id, t.device.as_deref()),
        })
        .collect();
    let devices: Vec<DevId> = failed
        .iter()
        .filter_map(|t| t.device.as_deref().and_then(DevId::parse))
        .collect();

    let now_ns = crate::scan::monotonic_ns();
    let inflight = match &src.maps {
        Some(m) => inflight::read(m, &devices, now_ns),
        None => {
            unreadable.push(Unreadable {
                source: "in-flight maps".into(),
                why: src
                    .maps_missing
                    .clone()
                    .unwrap_or_else(|| "the kernel programs are not loaded".into()),
            });
            inflight::Inflight::default()
        }
    };
    let mut inflight = inflight;
    inflight.rpc_tracking = inflight::rpc_tracking(&req.status.probes);

    // Threads of mount calls first (their wait is known), then the D-state ones.
    let mut list: Vec<TaskEvidence> = inflight
        .mount_calls
        .iter()
        .map(|c| {
            let now = tasks::one(c.pid, c.tid);
            TaskEvidence {
                pid: c.pid,
                tid: c.tid,
                comm: c.comm.clone(),
                state: now.map_or_else(|| "gone".into(), |t| t.state),
                why: "mount_call".into(),
                waited_seconds: Some(c.age_seconds),
                wchan: None,
                blkio_delay_seconds: 0.0,
                stack: Vec::new(),
                stack_source: None,
                stack_error: None,
            }
        })
        .collect();
    let scan = tasks::uninterruptible(started + BUDGET / 3);
    if let Some(why) = &scan.stopped {
        unreadable.push(Unreadable {
            source: "/proc tasks".into(),
            why: why.clone(),
        });
    }
    for t in scan.tasks {
        if list.iter().any(|x| x.tid == t.tid) {
            continue;
        }
        list.push(TaskEvidence {
            pid: t.pid,
            tid: t.tid,
            comm: t.comm,
            state: t.state,
            why: "uninterruptible".into(),
            waited_seconds: None,
            wchan: None,
            blkio_delay_seconds: t.blkio_delay_seconds,
            stack: Vec::new(),
            stack_source: None,
            stack_error: None,
        });
    }
    list.truncate(helper::MAX_TIDS);
    for t in &mut list {
        t.wchan = tasks::wchan(t.tid);
    }

    let since_us = log_since_us(&failed, LOG_BEFORE);
    let (mut kernel_log, mut kernel_log_omitted) = (Vec::new(), 0);
    let tids: Vec<u32> = list.iter().map(|t| t.tid).collect();
    match ask_helper(src, tids, since_us, deadline) {
        Ok(r) => {
            for st in r.stacks {
                if let Some(t) = list.iter_mut().find(|t| t.tid == st.tid) {
                    t.stack = st.frames;
                    t.stack_error = st.error;
                    t.stack_source = st.source;
                    if t.waited_seconds.is_none() {
                        t.waited_seconds = st.waited_seconds;
                    }
                }
            }
            if let Some(e) = r.iter_error {
                unreadable.push(Unreadable {
                    source: "stack iterator".into(),
                    why: format!("{e}; stacks read from /proc instead"),
                });
            }
            if let Some(e) = r.stacks_error {
                unreadable.push(Unreadable {
                    source: "kernel stacks".into(),
                    why: e,
                });
            }
            match r.kmsg_error {
                Some(e) => unreadable.push(Unreadable {
                    source: "kernel log".into(),
                    why: e,
                }),
                None => {
                    kernel_log = r.kmsg;
                    kernel_log_omitted = r.kmsg_omitted;
                }
            }
        }
        Err(why) => {
            for source in ["kernel stacks", "kernel log"] {
                unreadable.push(Unreadable {
                    source: source.into(),
                    why: why.clone(),
                });
            }
        }
    }

    let capture = Capture {
        trigger: req.trigger.to_owned(),
        captured_at: format_time(SystemTime::now()),
        capture_ms: started.elapsed().as_millis() as u64,
        targets,
        tasks: list,
        uninterruptible_total: scan.total_d,
        inflight,
        kernel_log,
        kernel_log_omitted,
        mount_checks: serde_json::to_value(&s.watches).unwrap_or_default(),
        unreadable,
        truncated: Vec::new(),
    };
    let mut captures = req.earlier.map(|b| b.captures).unwrap_or_default();
    captures.push(capture);
    Bundle {
        incident: req.incident,
        hostname: req.hostname,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: kernel(),
        identity: req.identity,
        config: serde_json::to_value(&*req.config).unwrap_or_default(),
        captures,
    }
}

fn ask_helper(
    src: &Sources,
    tids: Vec<u32>,
    since_us: Option<u64>,
    deadline: Instant,
) -> Result<helper::Response, String> {
    let Some(h) = &src.helper else {
        return Err(src
            .helper_missing
            .clone()
            .unwrap_or_else(|| "no privileged reader in this process".into()));
    };
    // An earlier capture that still waits holds the lock: do not queue behind it.
    let mut h = h
        .try_lock()
        .map_err(|_| "the privileged reader is busy with an earlier capture".to_string())?;
    h.ask(tids, since_us, deadline)
}

/// The start of the incident's window on the kernel log's clock (CLOCK_MONOTONIC, in
/// microseconds): `before` ahead of the failure's first reason.
fn log_since_us(failed: &[&crate::publish::status::TargetStatus], before: Duration) -> Option<u64> {
    let first = failed
        .iter()
        .flat_map(|t| t.reasons.iter().map(|r| r.at).chain([t.since]))
        .min()?;
    let ago = SystemTime::now().duration_since(first).unwrap_or_default() + before;
    let now_us = crate::scan::monotonic_ns() / 1_000;
    Some(now_us.saturating_sub(ago.as_micros() as u64))
}

/// The mountinfo line of a mount target (by mount point) or a device target (by major:minor).
pub fn mountinfo_line(text: &str, kind: &str, id: &str, dev: Option<&str>) -> Option<String> {
    text.lines()
        .find(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            match kind {
                "mount" => f.get(4) == Some(&id),
                "device" => dev.is_some() && f.get(2).copied() == dev,
                _ => false,
            }
        })
        .map(str::to_owned)
}

fn kernel() -> String {
    nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {} {}",
                u.release().to_string_lossy(),
                u.version().to_string_lossy(),
                u.machine().to_string_lossy()
            )
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_found_by_mount_point_or_device() {
        let text = "36 25 7:3 / /var/lib/docker rw,relatime - xfs /dev/loop3 rw\n37 25 8:1 / / rw - ext4 /dev/sda1 rw\n";
        assert!(
            mountinfo_line(text, "mount", "/var/lib/docker", None)
                .unwrap()
                .starts_with("36 ")
        );
        assert!(
            mountinfo_line(text, "device", "loop3", Some("7:3"))
                .unwrap()
                .starts_with("36 ")
        );
        assert_eq!(mountinfo_line(text, "mount", "/x", None), None);
    }
}
