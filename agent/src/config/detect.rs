//! `[detect]`: thresholds of the detectors.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::Problem;
use super::de::{BadValue, checked_str, duration, nonzero, percent};
use super::locate::KeyLines;

/// `[detect]`: thresholds of the detectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct Detect {
    #[serde(with = "nonzero")]
    pub scan_interval: Duration,
    #[serde(with = "duration")]
    pub io_stall_after: Duration,
    #[serde(with = "duration")]
    pub mount_blocked_after: Duration,
    #[serde(with = "nonzero")]
    pub probe_timeout: Duration,
    #[serde(with = "duration")]
    pub nfs_stall_after: Duration,
    #[serde(with = "duration")]
    pub io_errors_window: Duration,
    /// A device whose requests keep failing with none completing successfully for this long
    /// is dead: `io_errors` fails it and its mounts instead of degrading them.
    #[serde(with = "duration")]
    pub io_dead_after: Duration,
    #[serde(deserialize_with = "threshold_percent")]
    pub fs_full_percent: f64,
    #[serde(deserialize_with = "threshold_percent")]
    pub inodes_full_percent: f64,
    #[serde(deserialize_with = "fstypes")]
    pub fstypes: Vec<String>,
    pub mount_calls_critical: bool,
}

impl Default for Detect {
    fn default() -> Self {
        Detect {
            scan_interval: Duration::from_secs(1),
            io_stall_after: Duration::from_secs(30),
            mount_blocked_after: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(5),
            nfs_stall_after: Duration::from_secs(60),
            io_errors_window: Duration::from_secs(5 * 60),
            io_dead_after: Duration::from_secs(10),
            fs_full_percent: 95.0,
            inodes_full_percent: 95.0,
            fstypes: ["xfs", "ext4", "nfs", "nfs4"].map(String::from).to_vec(),
            mount_calls_critical: true,
        }
    }
}

/// A threshold shorter than the sampling period could never be observed as configured.
pub(super) fn validate(d: &Detect, lines: &KeyLines) -> Result<(), Problem> {
    for (key, value) in [
        ("detect.io_stall_after", d.io_stall_after),
        ("detect.mount_blocked_after", d.mount_blocked_after),
        ("detect.nfs_stall_after", d.nfs_stall_after),
        ("detect.io_errors_window", d.io_errors_window),
        ("detect.io_dead_after", d.io_dead_after),
    ] {
        if value < d.scan_interval {
            // Point at the key the file sets; if it relies on the default, blame scan_interval.
            let blame = if lines.is_set(key) {
                key
            } else {
                "detect.scan_interval"
            };
            return Err(lines.problem(
                blame,
                format!(
                    "{key} ({}) must not be shorter than detect.scan_interval ({})",
                    humantime::format_duration(value),
                    humantime::format_duration(d.scan_interval)
                ),
            ));
        }
    }
    Ok(())
}

fn threshold_percent<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    percent(d, " (0 disables)")
}

fn fstypes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    /// One list element, checked on its own so an error names its line.
    struct FsType(String);

    impl<'de> Deserialize<'de> for FsType {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            checked_str(d, |s| {
                if s.is_empty() || s.contains(char::is_whitespace) {
                    Err(BadValue(format!("invalid filesystem type {s:?}")))
                } else {
                    Ok(FsType(s.to_owned()))
                }
            })
        }
    }

    Ok(Vec::<FsType>::deserialize(d)?
        .into_iter()
        .map(|f| f.0)
        .collect())
}
