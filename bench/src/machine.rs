//! What the report says about the machine the run was on.

use std::time::Duration;

use crate::fixtures::sh;

/// For the version and date commands.
const SHORT: Duration = Duration::from_secs(30);

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn machine() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let date = sh("date -u '+%Y-%m-%d %H:%M UTC'", SHORT).unwrap_or_default();
    let versions = ["fio --version", "bpftrace --version"]
        .iter()
        .map(|c| sh(c, SHORT).unwrap_or_default().trim().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        ("date".into(), date.trim().to_string()),
        ("kernel".into(), kernel),
        ("cpu".into(), format!("{cpu} ({cores} cores)")),
        ("memory".into(), mem),
        ("tools".into(), versions),
    ]
}
