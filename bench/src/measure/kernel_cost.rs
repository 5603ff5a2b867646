//! Kernel cost per event: bindsto's block programs against empty ones and the bpftrace
//! tracker on the same tracepoints, all attached at once under the same fio load.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Result, bail};

use super::FIO_SECONDS;
use crate::bpf::{BLOCK_TRACEPOINTS, bpf_progs, prog_names, prog_tracepoints};
use crate::fixtures::{BenchAgent, RamLoop};
use crate::tools::{BPFTRACE_BIOLATENCY, BPFTRACE_EMPTY, bpftrace, fio};

pub struct CostRow {
    pub tracepoint: String,
    pub bindsto_ns: f64,
    pub floor_ns: f64,
    pub tracker_ns: f64,
    pub runs: u64,
}

/// Average run time per event from the kernel's own accounting.
pub fn kernel_cost(bin: &Path, scratch: &Path, ram: &RamLoop) -> Result<Vec<CostRow>> {
    let agent = BenchAgent::start(bin, scratch, "cost", None)?;
    let empty = bpftrace(BPFTRACE_EMPTY)?;
    let tracker = bpftrace(BPFTRACE_BIOLATENCY)?;
    let before_a = bpf_progs(agent.pid());
    let before_e = bpf_progs(empty.pid());
    let before_t = bpf_progs(tracker.pid());
    for _ in 0..3 {
        fio(&ram.dev, "randread", FIO_SECONDS, &[])?;
        fio(&ram.dev, "randwrite", FIO_SECONDS, &[])?;
    }
    let after_a = bpf_progs(agent.pid());
    let after_e = bpf_progs(empty.pid());
    let after_t = bpf_progs(tracker.pid());
    // bpftrace attaches through perf events (listed by `bpftool perf list`); aya through BPF
    // links, which that list omits, so bindsto's programs are matched by name (the function
    // name, cut to 15 characters by the kernel).
    let mut tps: BTreeMap<u32, String> = prog_tracepoints()
        .into_iter()
        .map(|(id, (_, tp))| (id, tp))
        .collect();
    for (id, name) in prog_names() {
        if let Some(tp) = BLOCK_TRACEPOINTS.iter().find(|tp| tp.starts_with(&name)) {
            tps.entry(id).or_insert_with(|| tp.to_string());
        }
    }
    let per_tp = |before: &BTreeMap<u32, (u64, u64)>, after: &BTreeMap<u32, (u64, u64)>| {
        let mut m: BTreeMap<String, (f64, u64)> = BTreeMap::new();
        for (id, (t1, c1)) in after {
            let (t0, c0) = before.get(id).copied().unwrap_or((0, 0));
            let Some(tp) = tps.get(id) else { continue };
            if c1 > &c0 {
                m.insert(tp.clone(), ((t1 - t0) as f64 / (c1 - c0) as f64, c1 - c0));
            }
        }
        m
    };
    let a = per_tp(&before_a, &after_a);
    let e = per_tp(&before_e, &after_e);
    let t = per_tp(&before_t, &after_t);
    let mut rows = Vec::new();
    for (tp, (floor, _)) in &e {
        if let Some((ns, runs)) = a.get(tp) {
            rows.push(CostRow {
                tracepoint: tp.clone(),
                bindsto_ns: *ns,
                floor_ns: *floor,
                tracker_ns: t.get(tp).map_or(f64::NAN, |x| x.0),
                runs: *runs,
            });
        }
    }
    if rows.is_empty() {
        bail!("no program statistics (bindsto {a:?}, empty {e:?})");
    }
    Ok(rows)
}
