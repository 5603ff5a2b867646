//! What is in flight at capture: the oldest block requests and dm bios per device, RPC tasks,
//! and every mount-family call, read from second handles on the programs' maps.
//!
//! Only map lookups (`bpf(2)`) and debugfs reads, never a watched filesystem. An RPC task's
//! procedure is not in the map; where debugfs is mounted, `sunrpc/rpc_clnt/<id>/tasks` names it.

use std::collections::BTreeMap;

use agent_ebpf::{RqKey, RqVal};
use aya::maps::{HashMap, MapData};
use serde::{Deserialize, Serialize};

use crate::{
    probes::{InflightMaps, dev::DevId},
    scan::calls::{cstr, decode_call},
};

/// Requests kept per device, devices kept, RPC tasks and mount calls kept.
pub const MAX_PER_DEVICE: usize = 16;
pub const MAX_DEVICES: usize = 8;
pub const MAX_RPC: usize = 64;
pub const MAX_CALLS: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub sector: u64,
    /// `rwbs` as the block layer writes it (`W`, `WS`, `FWS`, `RA`...); "" when unknown.
    pub op: String,
    pub bytes: u64,
    pub age_seconds: f64,
    /// Requests in flight with the same device and sector (flushes share sector 0).
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInflight {
    pub dev: String,
    pub total: usize,
    /// The oldest, oldest first.
    pub oldest: Vec<Request>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcTask {
    pub client_id: u32,
    pub task_id: u32,
    pub age_seconds: f64,
    /// `program version procedure` from debugfs, when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub procedure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountCall {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub syscall: String,
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub age_seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inflight {
    pub requests: Vec<DeviceInflight>,
    pub dm_bios: Vec<DeviceInflight>,
    pub rpc_tasks: Vec<RpcTask>,
    pub rpc_total: usize,
    /// Whether an empty `rpc_tasks` means none were in flight: `tracked` (the sunrpc
    /// tracepoints are attached), or why RPC tasks are not seen.
    #[serde(default)]
    pub rpc_tracking: String,
    pub mount_calls: Vec<MountCall>,
    pub mount_calls_total: usize,
}

fn age(now_ns: u64, start_ns: u64) -> f64 {
    now_ns.saturating_sub(start_ns) as f64 / 1e9
}

/// Groups entries by device, keeps `devices` (all when empty) and the oldest of each.
pub fn per_device(
    entries: impl Iterator<Item = (RqKey, RqVal)>,
    devices: &[DevId],
    now_ns: u64,
) -> Vec<DeviceInflight> {
    let mut by_dev: BTreeMap<DevId, Vec<(RqKey, RqVal)>> = BTreeMap::new();
    for (k, v) in entries {
        let dev = DevId::from_kernel(k.dev);
        if devices.is_empty() || devices.contains(&dev) {
            by_dev.entry(dev).or_default().push((k, v));
        }
    }
    let mut out: Vec<DeviceInflight> = by_dev
        .into_iter()
        .map(|(dev, mut v)| {
            v.sort_by_key(|(_, val)| val.start_ns);
            DeviceInflight {
                dev: dev.to_string(),
                total: v.len(),
                oldest: v
                    .iter()
                    .take(MAX_PER_DEVICE)
                    .map(|(k, val)| Request {
                        sector: k.sector,
                        op: cstr(&val.op),
                        bytes: u64::from(val.nr_sector) * 512,
                        age_seconds: age(now_ns, val.start_ns),
                        count: val.count,
                    })
                    .collect(),
            }
        })
        .collect();
    // The devices with the oldest request first.
    out.sort_by(|a, b| {
        let oldest = |d: &DeviceInflight| d.oldest.first().map_or(0.0, |r| r.age_seconds);
        oldest(b).total_cmp(&oldest(a))
    });
    out.truncate(MAX_DEVICES);
    out
}

fn entries<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
) -> impl Iterator<Item = (K, V)> + '_ {
    map.iter().flatten()
}

/// Reads everything; `devices` are the failing targets' disks (every device when empty).
/// `tracked` when every sunrpc tracepoint is attached, else which is not and why.
pub fn rpc_tracking(probes: &[crate::probes::ProbeStatus]) -> String {
    let rpc: Vec<_> = probes
        .iter()
        .filter(|p| p.probe.starts_with("sunrpc:"))
        .collect();
    let missing: Vec<String> = rpc
        .iter()
        .filter(|p| p.state != crate::probes::ProbeState::Attached)
        .map(|p| format!("{}: {}", p.probe, p.detail))
        .collect();
    match (rpc.is_empty(), missing.is_empty()) {
        (true, _) => "not tracked: no sunrpc tracepoint in this build".into(),
        (false, true) => "tracked".into(),
        (false, false) => format!("not tracked: {}", missing.join("; ")),
    }
}

pub fn read(maps: &InflightMaps, devices: &[DevId], now_ns: u64) -> Inflight {
    let requests = per_device(
        entries(&maps.rq_inflight).map(|(_, r)| r.split()),
        devices,
        now_ns,
    );
    let dm_bios = per_device(entries(&maps.bio_inflight), devices, now_ns);
    let mut rpc: Vec<RpcTask> = entries(&maps.rpc_inflight)
        .map(|(k, v)| RpcTask {
            client_id: k.client_id,
            task_id: k.task_id,
            age_seconds: age(now_ns, v.start_ns),
            procedure: None,
        })
        .collect();
    rpc.sort_by(|a, b| b.age_seconds.total_cmp(&a.age_seconds));
    let rpc_total = rpc.len();
    rpc.truncate(MAX_RPC);
    name_procedures(
        &mut rpc,
        std::path::Path::new("/sys/kernel/debug/sunrpc/rpc_clnt"),
    );
    let mut calls: Vec<MountCall> = maps
        .mount_calls
        .iter()
        .flatten()
        .map(|(key, c)| {
            let d = decode_call(key, &c, now_ns);
            MountCall {
                pid: d.tgid,
                tid: d.tid,
                comm: d.comm,
                syscall: d.syscall.to_owned(),
                source: d.source,
                target: d.target,
                fstype: d.fstype,
                age_seconds: d.age.as_secs_f64(),
            }
        })
        .collect();
    calls.sort_by(|a, b| b.age_seconds.total_cmp(&a.age_seconds));
    let mount_calls_total = calls.len();
    calls.truncate(MAX_CALLS);
    Inflight {
        requests,
        dm_bios,
        rpc_tasks: rpc,
        rpc_total,
        rpc_tracking: String::new(),
        mount_calls: calls,
        mount_calls_total,
    }
}

/// Fills in procedures from debugfs: each line of `<client>/tasks` starts with the task id and
/// holds `<program>v<version> <procedure>` (`nfsv4 COMPOUND`).
pub fn name_procedures(rpc: &mut [RpcTask], root: &std::path::Path) {
    let mut clients: BTreeMap<u32, Option<String>> = BTreeMap::new();
    for t in rpc.iter_mut() {
        let text = clients
            .entry(t.client_id)
            .or_insert_with(|| {
                std::fs::read_to_string(root.join(format!("{:x}", t.client_id)).join("tasks"))
                    .or_else(|_| {
                        std::fs::read_to_string(root.join(t.client_id.to_string()).join("tasks"))
                    })
                    .ok()
            })
            .as_deref();
        t.procedure = text.and_then(|text| procedure_of(text, t.task_id));
    }
}

/// The procedure of `task_id` in a debugfs `tasks` listing.
pub fn procedure_of(text: &str, task_id: u32) -> Option<String> {
    text.lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        (words.first()?.parse::<u32>().ok()? == task_id).then_some(())?;
        // `... <ops> nfsv4 COMPOUND a:call_status q:xprt_pending`: the word with "v<digits>"
        // after a program name, and the next one.
        let i = words.iter().position(|w| {
            w.rsplit_once('v').is_some_and(|(p, v)| {
                !p.is_empty() && !v.is_empty() && v.chars().all(|c| c.is_ascii_digit())
            })
        })?;
        Some(format!("{} {}", words[i], words.get(i + 1)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rq(dev: u32, sector: u64, start_ns: u64, op: &[u8]) -> (RqKey, RqVal) {
        let mut o = [0u8; agent_ebpf::OP_LEN];
        o[..op.len()].copy_from_slice(op);
        (
            RqKey {
                dev,
                _pad: 0,
                sector,
            },
            RqVal {
                start_ns,
                count: 1,
                nr_sector: 8,
                op: o,
            },
        )
    }

    #[test]
    fn the_oldest_requests_of_the_asked_devices_come_first() {
        let d7 = DevId::new(7, 3).to_kernel();
        let d8 = DevId::new(8, 0).to_kernel();
        let mut v: Vec<_> = (0..40).map(|i| rq(d7, i * 8, 1_000 + i, b"W")).collect();
        v.push(rq(d8, 0, 10, b"FWS"));
        let out = per_device(v.clone().into_iter(), &[DevId::new(7, 3)], 2_000_000_000);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].dev, "7:3");
        assert_eq!(out[0].total, 40);
        assert_eq!(out[0].oldest.len(), MAX_PER_DEVICE);
        assert_eq!(out[0].oldest[0].sector, 0);
        assert_eq!(out[0].oldest[0].op, "W");
        assert_eq!(out[0].oldest[0].bytes, 4096);
        assert!(out[0].oldest[0].age_seconds > 1.9);
        let all = per_device(v.into_iter(), &[], 2_000_000_000);
        assert_eq!(all[0].dev, "8:0", "oldest device first");
        assert_eq!(all[0].oldest[0].op, "FWS");
    }

    #[test]
    fn procedures_are_found_in_the_debugfs_listing() {
        let text = "   42 0880      0 0x5 0xa1b2c3d4     6000 nfs4_call_sync_ops [nfsv4] nfsv4 COMPOUND a:call_status [sunrpc] q:xprt_pending\n";
        assert_eq!(procedure_of(text, 42).as_deref(), Some("nfsv4 COMPOUND"));
        assert_eq!(procedure_of(text, 43), None);
    }

    #[test]
    fn rpc_tracking_says_whether_none_means_none() {
        use crate::probes::{ProbeState, ProbeStatus};
        let p = |probe: &str, state, detail: &str| {
            ProbeStatus::new(probe.into(), "x", state, detail.into())
        };
        let attached = [
            p("sunrpc:rpc_task_begin", ProbeState::Attached, ""),
            p("block:block_rq_issue", ProbeState::Attached, ""),
        ];
        assert_eq!(rpc_tracking(&attached), "tracked");
        let missing = [p(
            "sunrpc:rpc_task_begin",
            ProbeState::Missing,
            "module sunrpc not loaded",
        )];
        assert_eq!(
            rpc_tracking(&missing),
            "not tracked: sunrpc:rpc_task_begin: module sunrpc not loaded"
        );
        assert!(rpc_tracking(&[]).starts_with("not tracked"));
    }
}
