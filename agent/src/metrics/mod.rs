//! The metrics registry (OpenMetrics text from prometheus-client), a base the stages count
//! into: the families are cheap handles that the engine, the remedy and the daemon update and
//! the HTTP handler encodes. Also the fixed table limits ([`limits`]) and the lifetime of
//! series ([`series`]). Depends on `probes` and `topology` only ([`series::DeviceSeries`] asks
//! sysfs whether a disk still exists), so every stage from `scan` on may use it.

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub mod limits;
pub mod series;

use limits::BoundedTable;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TargetLabels {
    pub kind: String,
    pub target: String,
    pub critical: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ReasonLabels {
    pub kind: String,
    pub target: String,
    pub critical: String,
    pub signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// A watch's write canary: the watched path and how the attempt ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    pub target: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

type GaugeF = Gauge<f64, AtomicU64>;

/// The kernel maps whose full inserts are counted, as named in `bindsto_map_full_total{map}`.
pub const MAP_NAMES: [&str; 5] = [
    "rq_inflight",
    "mount_calls",
    "bio_inflight",
    "rpc_inflight",
    "bio_done",
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub target_healthy: Family<TargetLabels, Gauge>,
    pub xfs_shutdowns: Family<DeviceLabels, Counter>,
    pub block_io_errors: Family<DeviceLabels, Counter>,
    pub inflight_oldest: Family<DeviceLabels, GaugeF>,
    pub inflight_requests: Family<DeviceLabels, Gauge>,
    pub mount_calls_blocked: Gauge,
    pub mount_call_oldest_blocked: GaugeF,
    pub rpc_inflight: Gauge,
    pub rpc_oldest: GaugeF,
    pub remediations: Family<ActionLabels, Counter>,
    pub remediation_state_write_failures: Family<OutcomeLabels, Counter>,
    pub evidence_captures: Family<OutcomeLabels, Counter>,
    pub fleet_lease_held: Gauge,
    pub fleet_outage: Gauge,
    pub fleet_unavailable: Gauge,
    pub events_lost: Counter,
    pub events_decode_errors: Counter,
    pub mountinfo_read_failures: Counter,
    pub map_full: Family<MapLabels, Counter>,
    pub table_full: Family<TableLabels, Counter>,
    pub probe_attached: Family<ProbeLabels, Gauge>,
    pub probe_btf: Family<ProbeLabels, Gauge>,
    pub mount_checks: Family<OutcomeLabels, Counter>,
    pub canary_writes: Family<CanaryLabels, Counter>,
    pub scans: Counter,
    pub scan_duration: GaugeF,
    pub config_reloads: Family<OutcomeLabels, Counter>,
    pub config_last_reload_successful: Gauge,
    pub state_files_moved_aside: Counter,
    pub healthy: Gauge,
    pub target_failed: Family<TargetLabels, Gauge>,
    pub target_reason: Family<ReasonLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("bindsto");
        let m = Self {
            registry: Arc::default(),
            target_healthy: Family::default(),
            xfs_shutdowns: Family::default(),
            block_io_errors: Family::default(),
            inflight_oldest: Family::default(),
            inflight_requests: Family::default(),
            mount_calls_blocked: Gauge::default(),
            mount_call_oldest_blocked: GaugeF::default(),
            rpc_inflight: Gauge::default(),
            rpc_oldest: GaugeF::default(),
            remediations: Family::default(),
            remediation_state_write_failures: Family::default(),
            evidence_captures: Family::default(),
            fleet_lease_held: Gauge::default(),
            fleet_outage: Gauge::default(),
            fleet_unavailable: Gauge::default(),
            events_lost: Counter::default(),
            events_decode_errors: Counter::default(),
            mountinfo_read_failures: Counter::default(),
            map_full: Family::default(),
            table_full: Family::default(),
            probe_attached: Family::default(),
            probe_btf: Family::default(),
            mount_checks: Family::default(),
            canary_writes: Family::default(),
            scans: Counter::default(),
            scan_duration: GaugeF::default(),
            config_reloads: Family::default(),
            config_last_reload_successful: Gauge::default(),
            state_files_moved_aside: Counter::default(),
            healthy: Gauge::default(),
            target_failed: Family::default(),
            target_reason: Family::default(),
        };
        // Healthy until the first verdict says otherwise, as /healthz answers.
        m.healthy.set(1);
        // A fresh start loaded its config successfully.
        m.config_last_reload_successful.set(1);
        r.register(
            "target_healthy",
            "1 when the target (mount, device or subsystem) is healthy, 0 when degraded or failed",
            m.target_healthy.clone(),
        );
        r.register(
            "xfs_shutdowns",
            "XFS shutdowns seen, by the filesystem's device",
            m.xfs_shutdowns.clone(),
        );
        r.register(
            "block_io_errors",
            "Failed block requests, by whole disk",
            m.block_io_errors.clone(),
        );
        r.register(
            "block_inflight_oldest_seconds",
            "Age of the oldest block request in flight, by whole disk (0 when none)",
            m.inflight_oldest.clone(),
        );
        r.register(
            "block_inflight_requests",
            "Block requests in flight according to /sys/block/<dev>/inflight",
            m.inflight_requests.clone(),
        );
        r.register(
            "mount_calls_blocked",
            "Mount-family syscalls in flight longer than mount_blocked_after",
            m.mount_calls_blocked.clone(),
        );
        r.register(
            "mount_call_oldest_blocked_seconds",
            "Age of the oldest mount-family syscall in flight (0 when none)",
            m.mount_call_oldest_blocked.clone(),
        );
        r.register(
            "rpc_tasks_inflight",
            "SUNRPC tasks (NFS client calls) in flight on the host, from sunrpc tracepoints",
            m.rpc_inflight.clone(),
        );
        r.register(
            "rpc_tasks_inflight_oldest_seconds",
            "Age of the oldest SUNRPC task in flight on the host (0 when none)",
            m.rpc_oldest.clone(),
        );
        r.register(
            "remediations",
            "Remediation steps by action and outcome",
            m.remediations.clone(),
        );
        r.register(
            "remediation_state_write_failures",
            "Incident history writes that failed (error), timed out (timeout) or were not tried because an earlier one still hangs (hung)",
            m.remediation_state_write_failures.clone(),
        );
        r.register(
            "evidence_captures",
            "Incident evidence bundles captured and written (captured), not written (failed), or not written in time (timeout)",
            m.evidence_captures.clone(),
        );
        r.register(
            "fleet_lease_held",
            "1 while this host holds an out-of-service lease of its group's budget",
            m.fleet_lease_held.clone(),
        );
        r.register(
            "fleet_outage",
            "1 while this failing host sees more than outage_percent of its group failing (no new host goes out)",
            m.fleet_outage.clone(),
        );
        r.register(
            "fleet_unavailable",
            "1 while the budget table cannot be used (the ladder does not act)",
            m.fleet_unavailable.clone(),
        );
        r.register(
            "events_lost",
            "Kernel events dropped because the ring buffer was full",
            m.events_lost.clone(),
        );
        r.register(
            "events_decode_errors",
            "Kernel event records that could not be decoded",
            m.events_decode_errors.clone(),
        );
        r.register(
            "mountinfo_read_failures",
            "Reads of /proc/self/mountinfo that failed (the last mount table is kept)",
            m.mountinfo_read_failures.clone(),
        );
        r.register(
            "map_full",
            "Operations not tracked because a kernel map was full",
            m.map_full.clone(),
        );
        // Every limited table and map has a series from the start, so "never full" reads as 0.
        for map in MAP_NAMES {
            let _ = m.map_full.get_or_create(&MapLabels { map: map.into() });
        }
        for t in BoundedTable::ALL {
            let _ = m.table_full.get_or_create(&TableLabels {
                table: t.name().into(),
            });
        }
        r.register(
            "table_full",
            "Entries left out because an in-process table was at its fixed limit, by table",
            m.table_full.clone(),
        );
        r.register(
            "probe_attached",
            "1 when the tracepoint is attached, 0 when missing, failed or on standby",
            m.probe_attached.clone(),
        );
        r.register(
            "probe_btf",
            "For events with a BTF-enabled program: 1 when it runs (tp_btf), 0 when the classic tracepoint does instead (doctor says why)",
            m.probe_btf.clone(),
        );
        r.register(
            "confirm_probes",
            "Off-thread statx/statfs probes of mounts, by outcome",
            m.mount_checks.clone(),
        );
        r.register(
            "canary_writes",
            "Write canaries of watched paths (create, 4 KiB, fsync, remove), by outcome: ok, failed, timeout, skipped",
            m.canary_writes.clone(),
        );
        r.register("scans", "Scanner passes completed", m.scans.clone());
        r.register(
            "scan_duration_seconds",
            "Duration of the last scanner pass",
            m.scan_duration.clone(),
        );
        r.register(
            "healthy",
            "1 when no critical target is failed (what /healthz answers: 200), 0 otherwise (503)",
            m.healthy.clone(),
        );
        r.register(
            "target_failed",
            "1 when the target is failed, 0 when healthy or degraded",
            m.target_failed.clone(),
        );
        r.register(
            "target_reason",
            "1 for each active reason (signal) of a target; absent when the reason cleared",
            m.target_reason.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads on SIGHUP, by outcome (applied, rejected)",
            m.config_reloads.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 when the last config load (start or SIGHUP) succeeded, 0 when it was rejected",
            m.config_last_reload_successful.clone(),
        );
        r.register(
            "state_files_moved_aside",
            "Corrupt or truncated state files (incident history) found at start and moved aside",
            m.state_files_moved_aside.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        r.register("build_info", "Build information", build_info);
        Self {
            registry: Arc::new(r),
            ..m
        }
    }

    /// Counts `n` entries that `table` could not hold.
    pub fn count_full(&self, table: BoundedTable, n: usize) {
        if n == 0 {
            return;
        }
        self.table_full
            .get_or_create(&TableLabels {
                table: table.name().into(),
            })
            .inc_by(n as u64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn target_labels(kind: &str, target: &str, critical: bool) -> TargetLabels {
    TargetLabels {
        kind: kind.to_string(),
        target: target.to_string(),
        critical: critical.to_string(),
    }
}

pub fn device_labels(device: &str) -> DeviceLabels {
    DeviceLabels {
        device: device.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let m = Metrics::new();
        m.target_healthy
            .get_or_create(&target_labels("mount", "/x", true))
            .set(1);
        m.block_io_errors
            .get_or_create(&device_labels("loop0"))
            .inc();
        m.inflight_oldest
            .get_or_create(&device_labels("loop0"))
            .set(1.5);
        m.probe_attached
            .get_or_create(&ProbeLabels {
                probe: "xfs:xfs_force_shutdown".into(),
            })
            .set(1);
        let text = m.encode();
        for needle in [
            "bindsto_target_healthy{kind=\"mount\",target=\"/x\",critical=\"true\"} 1",
            "bindsto_block_io_errors_total{device=\"loop0\"} 1",
            "bindsto_block_inflight_oldest_seconds{device=\"loop0\"} 1.5",
            "bindsto_mount_calls_blocked 0",
            "bindsto_mount_call_oldest_blocked_seconds 0.0",
            "bindsto_rpc_tasks_inflight 0",
            "bindsto_rpc_tasks_inflight_oldest_seconds 0.0",
            "bindsto_events_lost_total 0",
            "bindsto_probe_attached{probe=\"xfs:xfs_force_shutdown\"} 1",
            "bindsto_build_info{version=",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
