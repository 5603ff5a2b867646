//! Fixed limits of every in-process table that grows with what the host does (mounts,
//! devices, mount calls, metric label sets), and the names of those tables. What a limit
//! leaves out is counted with [`Metrics::count_full`](crate::metrics::Metrics::count_full).
//!
//! A watchdog must stay small on the busiest host it runs on: whatever the input, each table
//! holds at most its limit, and anything dropped at the limit is counted in
//! `bindsto_table_full_total{table}` (the kernel maps' equivalent is `bindsto_map_full_total`).
//! Critical targets are kept first, so a flood of other mounts never pushes a watch out.

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
pub enum BoundedTable {
    Mounts,
    Devices,
    BlockedMountCalls,
    DeviceNames,
    DeviceSeries,
    /// The remediation history (`incidents.json`): its oldest incident is dropped for a new one.
    Incidents,
}

impl BoundedTable {
    pub const ALL: [BoundedTable; 6] = [
        BoundedTable::Mounts,
        BoundedTable::Devices,
        BoundedTable::BlockedMountCalls,
        BoundedTable::DeviceNames,
        BoundedTable::DeviceSeries,
        BoundedTable::Incidents,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BoundedTable::Mounts => "mounts",
            BoundedTable::Devices => "devices",
            BoundedTable::BlockedMountCalls => "blocked_mount_calls",
            BoundedTable::DeviceNames => "device_names",
            BoundedTable::DeviceSeries => "device_series",
            BoundedTable::Incidents => "incidents",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn every_table_has_a_zero_series_and_counts_drops() {
        let m = Metrics::new();
        let text = m.encode();
        for t in BoundedTable::ALL {
            let line = format!("bindsto_table_full_total{{table=\"{}\"}} 0", t.name());
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        m.count_full(BoundedTable::Mounts, 3);
        m.count_full(BoundedTable::Mounts, 0);
        assert!(
            m.encode()
                .contains("bindsto_table_full_total{table=\"mounts\"} 3")
        );
    }
}
