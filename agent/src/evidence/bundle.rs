//! The evidence bundle: its JSON, and the trimming that keeps it under [`MAX_BYTES`].
//!
//! One bundle per incident, with one capture when it opened and a second when the ladder ran
//! if the failure had changed by then. It holds what the kernel and the agent saw, never the
//! environment, credentials or file contents.

use serde::{Deserialize, Serialize};

use super::inflight::Inflight;

/// The largest bundle written, in bytes.
pub const MAX_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub incident: String,
    pub hostname: String,
    pub agent_version: String,
    pub kernel: String,
    /// The host's identity as the remedy knows it (instance, group, zone); null when unknown.
    pub identity: serde_json::Value,
    /// The config in effect.
    pub config: serde_json::Value,
    pub captures: Vec<Capture>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capture {
    /// `opened` (the moment the incident opened) or `ladder` (when the ladder ran).
    pub trigger: String,
    pub captured_at: String,
    pub capture_ms: u64,
    pub targets: Vec<TargetEvidence>,
    /// Threads of mount-family calls in flight first, then threads in uninterruptible sleep.
    pub tasks: Vec<TaskEvidence>,
    /// Threads found in uninterruptible sleep (more than `tasks` holds when capped).
    pub uninterruptible_total: usize,
    pub inflight: Inflight,
    /// Kernel log lines of the incident's window (`/dev/kmsg`).
    pub kernel_log: Vec<String>,
    pub kernel_log_omitted: usize,
    /// The last results of the mount and path checks (`/status` → `watches`).
    pub mount_checks: serde_json::Value,
    /// Sources that could not be read, and why; the rest was still captured.
    pub unreadable: Vec<Unreadable>,
    /// What was cut to fit the size cap.
    pub truncated: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetEvidence {
    pub kind: String,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    pub state: String,
    pub since: String,
    pub reasons: Vec<ReasonEvidence>,
    /// The target's line of `/proc/self/mountinfo`, when it is mounted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mountinfo: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasonEvidence {
    pub signal: String,
    pub detail: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvidence {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub state: String,
    /// `mount_call` (inside a mount-family syscall) or `uninterruptible`.
    pub why: String,
    /// How long it has waited, where known: the mount call's age, else the time since it
    /// last ran (the stack iterator's reading of the scheduler's `last_arrival`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wchan: Option<String>,
    pub blkio_delay_seconds: f64,
    /// Kernel stack, innermost frame first, with symbol names.
    pub stack: Vec<String>,
    /// Where the stack came from: `bpf_iter` (the task iterator) or `proc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unreadable {
    pub source: String,
    pub why: String,
}

pub fn size(b: &Bundle) -> usize {
    serde_json::to_vec_pretty(b).map_or(usize::MAX, |v| v.len())
}

/// One cut, applied to every capture: its name and what it does.
type Cut = (&'static str, fn(&mut Capture));

const CUTS: &[Cut] = &[
    ("kernel log to its first and newest 100 lines", |c| {
        keep_log(c, 100);
    }),
    ("stacks to 24 frames", |c| frames(c, 24)),
    ("requests to 4 per device, mount calls to 20", |c| {
        c.inflight
            .requests
            .iter_mut()
            .for_each(|d| d.oldest.truncate(4));
        c.inflight
            .dm_bios
            .iter_mut()
            .for_each(|d| d.oldest.truncate(4));
        c.inflight.mount_calls.truncate(20);
        c.inflight.rpc_tasks.truncate(20);
    }),
    ("kernel log to 30 lines", |c| keep_log(c, 30)),
    ("tasks to 16", |c| c.tasks.truncate(16)),
    ("stacks to 12 frames", |c| frames(c, 12)),
    ("tasks to 4, mount calls to 4", |c| {
        c.tasks.truncate(4);
        c.inflight.mount_calls.truncate(4);
    }),
    ("mount checks dropped", |c| {
        c.mount_checks = serde_json::Value::Null;
    }),
    ("kernel log dropped", |c| keep_log(c, 0)),
];

fn keep_log(c: &mut Capture, max: usize) {
    let lines = std::mem::take(&mut c.kernel_log);
    let (kept, omitted) = super::helper::keep_ends(lines, max);
    c.kernel_log = kept;
    c.kernel_log_omitted += omitted;
}

fn frames(c: &mut Capture, max: usize) {
    c.tasks.iter_mut().for_each(|t| t.stack.truncate(max));
}

/// Cuts until the bundle fits `max` bytes, noting each cut in the newest capture. Returns the
/// final size.
pub fn fit(b: &mut Bundle, max: usize) -> usize {
    let mut n = size(b);
    for (what, cut) in CUTS {
        if n <= max {
            return n;
        }
        b.captures.iter_mut().for_each(cut);
        if let Some(c) = b.captures.last_mut() {
            c.truncated.push((*what).to_owned());
        }
        n = size(b);
    }
    if n > max {
        // Still too big (a huge config): the config goes, the evidence stays.
        b.config = serde_json::Value::String("dropped to fit the size cap".into());
        n = size(b);
    }
    n
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn capture(tasks: usize, frames: usize, log: usize) -> Capture {
        Capture {
            trigger: "opened".into(),
            captured_at: "2026-12-03T00:00:00Z".into(),
            capture_ms: 5,
            targets: vec![],
            tasks: (0..tasks)
                .map(|i| TaskEvidence {
                    pid: i as u32,
                    tid: i as u32,
                    comm: "kworker".into(),
                    state: "D".into(),
                    why: "uninterruptible".into(),
                    waited_seconds: None,
                    wchan: None,
                    blkio_delay_seconds: 0.0,
                    stack: (0..frames)
                        .map(|f| format!("some_kernel_function_{f}+0x3c/0x120 [xfs]"))
                        .collect(),
                    stack_source: None,
                    stack_error: None,
                })
                .collect(),
            uninterruptible_total: tasks,
            inflight: Inflight::default(),
            kernel_log: (0..log)
                .map(|i| format!("[ {i}.000000] {}", "x".repeat(300)))
                .collect(),
            kernel_log_omitted: 0,
            mount_checks: serde_json::Value::Null,
            unreadable: vec![],
            truncated: vec![],
        }
    }

    pub fn bundle(captures: Vec<Capture>) -> Bundle {
        Bundle {
            incident: "1-host".into(),
            hostname: "host".into(),
            agent_version: "0".into(),
            kernel: "6.18".into(),
            identity: serde_json::Value::Null,
            config: serde_json::json!({"dry_run": true}),
            captures,
        }
    }

    #[test]
    fn a_big_bundle_is_cut_to_the_cap_and_says_what_went() {
        let mut b = bundle(vec![capture(96, 48, 200), capture(96, 48, 200)]);
        assert!(size(&b) > MAX_BYTES);
        let n = fit(&mut b, MAX_BYTES);
        assert!(n <= MAX_BYTES, "{n}");
        assert_eq!(n, size(&b));
        let last = b.captures.last().unwrap();
        assert!(!last.truncated.is_empty());
        assert!(!last.tasks.is_empty(), "stacks survive the cut");
    }

    #[test]
    fn a_small_bundle_is_left_alone() {
        let mut b = bundle(vec![capture(2, 5, 3)]);
        let before = b.clone();
        fit(&mut b, MAX_BYTES);
        assert_eq!(b, before);
    }
}
