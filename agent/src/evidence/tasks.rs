//! Blocked tasks: the threads in uninterruptible sleep, read from `/proc/<pid>/task/<tid>/stat`.
//!
//! Nothing here touches a watched filesystem: `/proc` answers from kernel memory. `stat`
//! gives the state and `comm`; `wchan` the function a sleeping task waits in (readable where
//! its stack is not). The kernel does not say how long a task has slept, so D-state tasks are
//! ordered by their block I/O delay (delay accounting, when on), then by tid.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// D-state tasks listed (besides those in a blocked mount call).
pub const MAX_D_TASKS: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// The state letter of `/proc/<tid>/stat` (`D`: uninterruptible sleep).
    pub state: String,
    /// The kernel function it sleeps in (`/proc/<tid>/wchan`), when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wchan: Option<String>,
    /// Aggregated block I/O delay in seconds (delay accounting; 0 when it is off).
    pub blkio_delay_seconds: f64,
}

/// One `stat` line: `tid (comm) S ...`; `comm` may hold spaces and parentheses.
pub fn parse_stat(pid: u32, tid: u32, line: &str, ticks_per_s: f64) -> Option<TaskInfo> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    let state = rest.first()?.to_string();
    // Field 42 of stat, the 40th after comm: delayacct_blkio_ticks.
    let ticks: f64 = rest.get(39).and_then(|t| t.parse().ok()).unwrap_or(0.0);
    Some(TaskInfo {
        pid,
        tid,
        comm,
        state,
        wchan: None,
        blkio_delay_seconds: ticks / ticks_per_s,
    })
}

fn numeric_entries(dir: &str) -> Vec<u32> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// What the scan found: the D-state tasks kept, how many there were, and any reason the
/// scan stopped early.
#[derive(Debug, Default)]
pub struct Scan {
    pub tasks: Vec<TaskInfo>,
    pub total_d: usize,
    pub stopped: Option<String>,
}

/// Clock ticks per second, the unit of `stat`'s delays.
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Every thread in `D` state, the `MAX_D_TASKS` most delayed kept; stops at `deadline`.
pub fn uninterruptible(deadline: Instant) -> Scan {
    let hz = ticks_per_s();
    let mut scan = Scan::default();
    let mut found = Vec::new();
    'pids: for pid in numeric_entries("/proc") {
        for tid in numeric_entries(&format!("/proc/{pid}/task")) {
            if Instant::now() >= deadline {
                scan.stopped = Some("the task scan ran out of the capture budget".into());
                break 'pids;
            }
            let Ok(line) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
                continue;
            };
            if let Some(t) = parse_stat(pid, tid, &line, hz).filter(|t| t.state == "D") {
                found.push(t);
            }
        }
    }
    scan.total_d = found.len();
    found.sort_by(|a, b| {
        b.blkio_delay_seconds
            .total_cmp(&a.blkio_delay_seconds)
            .then(a.tid.cmp(&b.tid))
    });
    found.truncate(MAX_D_TASKS);
    scan.tasks = found;
    scan
}

/// The task `tid` of process `pid` as it is now (for the threads of blocked mount calls).
pub fn one(pid: u32, tid: u32) -> Option<TaskInfo> {
    let hz = ticks_per_s();
    let line = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    parse_stat(pid, tid, &line, hz)
}

/// `/proc/<tid>/wchan`: a symbol name, or "0" for a running task.
pub fn wchan(tid: u32) -> Option<String> {
    let w = std::fs::read_to_string(format!("/proc/{tid}/wchan")).ok()?;
    let w = w.trim();
    (!w.is_empty() && w != "0").then(|| w.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_comms_parse() {
        let mut fields = vec!["0"; 50];
        fields[0] = "D";
        fields[39] = "250";
        let line = format!("4242 (mount (x) y) {}", fields.join(" "));
        let t = parse_stat(4240, 4242, &line, 100.0).unwrap();
        assert_eq!(t.comm, "mount (x) y");
        assert_eq!(t.state, "D");
        assert_eq!(t.blkio_delay_seconds, 2.5);
        assert!(parse_stat(1, 1, "garbage", 100.0).is_none());
    }

    #[test]
    fn this_thread_is_found_and_not_in_d_state() {
        let pid = std::process::id();
        let t = one(pid, pid).expect("own stat");
        assert_ne!(t.state, "D");
        assert_eq!(t.pid, pid);
    }
}
