//! The kernel's own accounting of BPF programs: run time and run count per program of a
//! process (from its fdinfo, with `kernel.bpf_stats_enabled=1`), and which tracepoint each is on.

use std::{collections::BTreeMap, process::Command};

use serde_json::Value;

pub const BLOCK_TRACEPOINTS: [&str; 6] = [
    "block_rq_issue",
    "block_rq_complete",
    "block_rq_error",
    "block_rq_requeue",
    "block_bio_queue",
    "block_bio_complete",
];

/// The tracepoint a program of that (kernel-truncated, 15-character) name is on: bindsto's
/// BTF-enabled programs are named `<tracepoint>_btf`.
pub fn tracepoint_of(name: &str) -> Option<&'static str> {
    BLOCK_TRACEPOINTS.iter().copied().find(|tp| {
        tp.starts_with(name) || name.strip_prefix(tp).is_some_and(|r| r.starts_with('_'))
    })
}

/// BPF programs held by `pid`: prog id -> (run_time_ns, run_cnt), from its fdinfo.
pub fn bpf_progs(pid: u32) -> BTreeMap<u32, (u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(t), Some(c)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            out.insert(id as u32, (t, c));
        }
    }
    out
}

/// Tracepoint of each attached program (bpftool perf list).
pub fn prog_tracepoints() -> BTreeMap<u32, (u32, String)> {
    let mut out = BTreeMap::new();
    let Ok(o) = Command::new("bpftool")
        .args(["perf", "list", "--json"])
        .output()
    else {
        return out;
    };
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    for e in v.as_array().into_iter().flatten() {
        if let (Some(id), Some(tp), Some(pid)) = (
            e["prog_id"].as_u64(),
            e["tracepoint"].as_str(),
            e["pid"].as_u64(),
        ) {
            out.insert(id as u32, (pid as u32, tp.to_string()));
        }
    }
    out
}

/// Name of every loaded program.
pub fn prog_names() -> BTreeMap<u32, String> {
    let Ok(o) = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
    else {
        return BTreeMap::new();
    };
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_u64()? as u32, p["name"].as_str()?.to_string())))
        .collect()
}

/// Other processes' BPF programs on block tracepoints (other agents on a shared machine):
/// they cost every condition the same, including "no tracing".
pub fn other_block_tracers() -> String {
    let names = prog_names();
    let on_block = |id: &u32| names.get(id).is_some_and(|n| tracepoint_of(n).is_some());
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && bpf_progs(pid).keys().any(on_block) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push(format!("{} (pid {pid})", comm.trim()));
        }
    }
    for (pid, tp) in prog_tracepoints().values() {
        let s = format!("(pid {pid})");
        if tp.starts_with("block_") && !found.iter().any(|f| f.ends_with(&s)) {
            found.push(format!("pid {pid} on {tp}"));
        }
    }
    if found.is_empty() {
        "none".into()
    } else {
        found.join(", ")
    }
}
