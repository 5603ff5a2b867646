//! Scanner verdicts applied to targets: one pass of every `scan` scanner, then what each
//! verdict means for devices, mounts and the mount subsystem.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agent_ebpf::{MountCall, Request};
use aya::maps::{HashMap, MapData, PerCpuArray};
use tracing::{debug, warn};

use super::{
    Signal,
    engine::{Engine, log_transition},
};
use crate::{
    metrics::{
        self,
        limits::{self, BoundedTable},
    },
    probes::{ScanMaps, dev::DevId},
    scan::{self, block::Disk, stats},
};

impl Engine {
    /// One scanner pass: block devices, mount calls, mount checks, kernel counters.
    pub fn scan(&mut self, maps: Option<&mut ScanMaps>) {
        let started = Instant::now();
        let now = SystemTime::now();
        let cfg = Arc::clone(&self.cfg);
        let now_ns = scan::monotonic_ns();
        let mut maps = maps;
        // Bios of dm devices (a suspended dm device queues them before any request exists).
        let sysfs = &self.sysfs;
        let exists = |d: DevId| sysfs.block_device(d).is_some();
        let bios = maps
            .as_deref_mut()
            .map(|m| {
                scan::bio::scan(
                    &mut m.bio_inflight,
                    &mut m.bio_done,
                    now_ns,
                    cfg.detect.io_stall_after,
                    &exists,
                )
            })
            .unwrap_or_default();
        // RPC tasks (sunrpc): the oldest in flight on the host.
        let rpc = maps
            .as_deref()
            .map(|m| scan::rpc::oldest(&m.rpc_inflight, now_ns))
            .unwrap_or_default();
        self.metrics.rpc_inflight.set(rpc.tasks as i64);
        self.metrics
            .rpc_oldest
            .set(rpc.oldest.map_or(0.0, |(_, a)| a.as_secs_f64()));
        let (rq, calls, stats, rpc_map) = match maps {
            Some(m) => (
                Some(&mut m.rq_inflight),
                Some(&mut m.mount_calls),
                Some(&m.stats),
                Some(&mut m.rpc_inflight),
            ),
            None => (None, None, None, None),
        };

        self.apply_block(rq, &bios.devices, now_ns, now);
        let calls_in_flight = calls.is_some_and(|c| self.apply_calls(c, now));
        self.follow_mounts(rpc, now);

        // RPC entries that lost their end event.
        if let Some(rpc_map) = rpc_map
            && rpc.tasks > 0
        {
            let nfs = self.mounts.values().filter(|o| o.is_nfs());
            let answered = scan::rpc::answered_since(
                nfs.map(|o| o.answered_since_ns),
                calls_in_flight,
                now_ns,
            );
            let n = scan::rpc::forget_leaked(rpc_map, answered, now_ns, cfg.detect.nfs_stall_after);
            if n > 0 {
                debug!(
                    entries = n,
                    "dropped RPC task entries that lost their end event"
                );
            }
        }

        // Kernel-side drop counters.
        if let Some(stats) = stats {
            self.apply_kernel_stats(stats);
        }
        self.count_unevented_shutdowns(now_ns);
        self.metrics.scans.inc();
        self.metrics
            .scan_duration
            .set(started.elapsed().as_secs_f64());
    }

    /// Applies the block scanner's verdicts to the observed devices.
    fn apply_block(
        &mut self,
        rq: Option<&mut HashMap<MapData, u64, Request>>,
        bios: &BTreeMap<DevId, scan::bio::BioInflight>,
        now_ns: u64,
        now: SystemTime,
    ) {
        let disks = self
            .devices
            .iter_mut()
            .map(|(name, d)| Disk {
                name,
                dev: d.dev,
                sysfs_dir: &d.block.sysfs_dir,
                progress: &mut d.progress,
            })
            .collect();
        let stall_after = self.cfg.detect.io_stall_after;
        let verdict = scan::block::scan(&self.sysfs, disks, rq, bios, stall_after, now_ns);
        let errors_window = self.cfg.detect.io_errors_window;
        let dead_after = self.cfg.detect.io_dead_after;
        for (name, v) in verdict.disks {
            let Some(d) = self.devices.get_mut(&name) else {
                continue;
            };
            d.inflight = v.inflight;
            d.oldest_inflight = v.oldest_inflight;
            d.stalled = v.stall.is_some();
            let mut ts = Vec::new();
            let detail = v.stall.unwrap_or_default();
            ts.extend(d.target.set(Signal::IoStall, d.stalled, || detail, now));
            let recent_errors = d.last_error.is_some_and(|t| t.elapsed() < errors_window);
            let dead = d.liveness.on_scan(v.read_ns, v.completed, dead_after);
            if !recent_errors {
                d.liveness.forget();
            }
            d.dead_for = dead.filter(|_| recent_errors);
            let err_detail = match d.dead_for {
                Some(f) => format!("{}; {}", d.last_error_detail, dead_detail(f)),
                None => d.last_error_detail.clone(),
            };
            ts.extend(
                d.target
                    .set(Signal::IoErrors, recent_errors, || err_detail, now),
            );
            ts.extend(
                d.target
                    .escalate(Signal::IoErrors, d.dead_for.is_some(), now),
            );
            for t in ts {
                log_transition(&d.target, &t);
            }
            let l = metrics::device_labels(&name);
            self.metrics
                .inflight_oldest
                .get_or_create(&l)
                .set(d.oldest_inflight.as_secs_f64());
            self.metrics
                .inflight_requests
                .get_or_create(&l)
                .set(i64::try_from(v.requests).unwrap_or(i64::MAX));
        }
    }

    /// Applies the mount-call scanner's verdict to the mount subsystem; returns whether any
    /// call is in flight.
    fn apply_calls(&mut self, map: &mut HashMap<MapData, u64, MountCall>, now: SystemTime) -> bool {
        let v = scan::calls::scan(
            map,
            scan::monotonic_ns(),
            self.cfg.detect.mount_blocked_after,
            limits::BLOCKED_CALLS_MAX,
        );
        self.metrics
            .mount_call_oldest_blocked
            .set(v.oldest.as_secs_f64());
        self.metrics
            .mount_calls_blocked
            .set(i64::try_from(v.blocked_total).unwrap_or(i64::MAX));
        self.metrics
            .count_full(BoundedTable::BlockedMountCalls, v.left_out);
        let detail = v.detail();
        let blocked = detail.is_some();
        if let Some(t) = self.subsystem.set(
            Signal::MountBlocked,
            blocked,
            || detail.unwrap_or_default(),
            now,
        ) {
            log_transition(&self.subsystem, &t);
        }
        self.blocked = v.blocked;
        v.in_flight
    }

    /// Mounts follow the verdicts of their devices.
    fn follow_devices(&mut self, mp: &Path, now: SystemTime) {
        let Some(o) = self.mounts.get_mut(mp) else {
            return;
        };
        let devices = &self.devices;
        let stalled = o
            .devices
            .iter()
            .find(|n| devices.get(*n).is_some_and(|d| d.stalled));
        let erroring = o.devices.iter().any(|n| {
            devices
                .get(n)
                .is_some_and(|d| d.target.has(Signal::IoErrors))
        });
        let dead = o
            .devices
            .iter()
            .find_map(|n| devices.get(n).and_then(|d| Some((n, d.dead_for?, d))));
        let mut ts = Vec::new();
        let stall_detail = || {
            let n = stalled.map_or("", String::as_str);
            let age = devices
                .get(n)
                .map_or(0.0, |d| d.oldest_inflight.as_secs_f64());
            format!("device {n} stalled: oldest request in flight {age:.1}s")
        };
        ts.extend(
            o.target
                .set(Signal::IoStall, stalled.is_some(), stall_detail, now),
        );
        if !erroring {
            ts.extend(o.target.clear(Signal::IoErrors, now));
        }
        if let Some((n, f, d)) = dead
            && o.target.has(Signal::IoErrors)
        {
            let detail = format!("{n}: {}; {}", d.last_error_detail, dead_detail(f));
            ts.extend(o.target.raise(Signal::IoErrors, detail, now));
        }
        ts.extend(o.target.escalate(Signal::IoErrors, dead.is_some(), now));
        for t in ts {
            log_transition(&o.target, &t);
        }
    }

    fn follow_mounts(&mut self, rpc: scan::rpc::RpcInflight, now: SystemTime) {
        let mps: Vec<PathBuf> = self.mounts.keys().cloned().collect();
        for mp in mps {
            self.follow_devices(&mp, now);
            self.follow_check(&mp, rpc, now);
            self.follow_ext4(&mp, now);
        }
        self.follow_canaries(now);
    }

    fn apply_kernel_stats(&mut self, stats: &PerCpuArray<MapData, u64>) {
        for (stat, delta) in self.kernel_stats.read(stats) {
            match stats::full_map(stat) {
                None => {
                    self.events_lost += delta;
                    self.metrics.events_lost.inc_by(delta);
                    warn!(lost = delta, "kernel events lost: ring buffer full");
                }
                Some(map) => {
                    self.metrics
                        .map_full
                        .get_or_create(&metrics::MapLabels { map: map.into() })
                        .inc_by(delta);
                    warn!(map, dropped = delta, "kernel map full");
                }
            }
        }
    }
}

/// Why `io_errors` fails a target: its device completes nothing (`detect.io_dead_after`).
pub(super) fn dead_detail(failing_for: Duration) -> String {
    format!(
        "dead: every request failed for {:.1}s, none completed successfully",
        failing_for.as_secs_f64()
    )
}
