//! Fixed limits of every in-process table that grows with what the host does (mounts,
//! devices, mount calls, metric label sets), and the counter of what those limits left out.
//!
//! A watchdog must stay small on the busiest host it runs on: whatever the input, each table
//! holds at most its limit, and anything dropped at the limit is counted in
//! `bindsto_table_full_total{table}` (the kernel maps' equivalent is `bindsto_map_full_total`).
//! Critical targets are kept first, so a flood of other mounts never pushes a watch out.

use crate::publish::metrics::{Metrics, TableLabels};

/// Observed mounts (targets of kind `mount`). An ECS host has tens; EFS-heavy hosts hundreds.
pub const MOUNTS_MAX: usize = 4096;
/// Block devices under the observed mounts (targets of kind `device`).
pub const DEVICES_MAX: usize = 4096;
/// Blocked mount-family calls listed in `/status` (oldest first); the
/// `bindsto_mount_calls_blocked` gauge still counts all of them.
pub const BLOCKED_CALLS_MAX: usize = 1024;
/// Names of disks outside the observed mounts that reported errors (a lookup cache, cleared at
/// every topology refresh).
pub const DEVICE_NAMES_MAX: usize = 1024;
/// Disks outside the observed mounts with their own `{device}` series in the per-device
/// counters (`bindsto_block_io_errors_total`, `bindsto_xfs_shutdowns_total`). Series of a disk
/// that went away are removed at the next topology refresh.
pub const DEVICE_SERIES_MAX: usize = 256;

/// The tables with a limit, as named in `bindsto_table_full_total{table}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Mounts,
    Devices,
    BlockedMountCalls,
    DeviceNames,
    DeviceSeries,
    /// The remediation history (`incidents.json`): its oldest incident is dropped for a new one.
    Incidents,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Mounts,
        Table::Devices,
        Table::BlockedMountCalls,
        Table::DeviceNames,
        Table::DeviceSeries,
        Table::Incidents,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Mounts => "mounts",
            Table::Devices => "devices",
            Table::BlockedMountCalls => "blocked_mount_calls",
            Table::DeviceNames => "device_names",
            Table::DeviceSeries => "device_series",
            Table::Incidents => "incidents",
        }
    }
}

/// Counts `n` entries that `table` could not hold.
pub fn count_full(metrics: &Metrics, table: Table, n: usize) {
    if n == 0 {
        return;
    }
    metrics
        .table_full
        .get_or_create(&TableLabels {
            table: table.name().into(),
        })
        .inc_by(n as u64);
}

/// Keeps at most `max` items, those for which `keep_first` is true before the others (each
/// group in its original order); returns what was left out.
pub fn cap_by<T>(items: Vec<T>, max: usize, keep_first: impl Fn(&T) -> bool) -> (Vec<T>, usize) {
    if items.len() <= max {
        return (items, 0);
    }
    let total = items.len();
    let (first, rest): (Vec<T>, Vec<T>) = items.into_iter().partition(|i| keep_first(i));
    let kept: Vec<T> = first.into_iter().chain(rest).take(max).collect();
    let dropped = total - kept.len();
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_the_preferred_items_first_and_counts_the_rest() {
        let items: Vec<u32> = (0..10).collect();
        let (kept, dropped) = cap_by(items.clone(), 4, |i| i % 3 == 0);
        assert_eq!(kept, vec![0, 3, 6, 9]);
        assert_eq!(dropped, 6);
        let (kept, dropped) = cap_by(items.clone(), 20, |_| false);
        assert_eq!((kept.len(), dropped), (10, 0));
        // More preferred items than room: still only `max`.
        let (kept, dropped) = cap_by(items, 2, |_| true);
        assert_eq!((kept, dropped), (vec![0, 1], 8));
    }

    #[test]
    fn every_table_has_a_zero_series_and_counts_drops() {
        let m = Metrics::new();
        let text = m.encode();
        for t in Table::ALL {
            let line = format!("bindsto_table_full_total{{table=\"{}\"}} 0", t.name());
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        count_full(&m, Table::Mounts, 3);
        count_full(&m, Table::Mounts, 0);
        assert!(
            m.encode()
                .contains("bindsto_table_full_total{table=\"mounts\"} 3")
        );
    }
}
