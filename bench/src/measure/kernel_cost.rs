//! Kernel cost per event: bindsto's block programs (the BTF-enabled ones it runs, and the
//! classic fallback, in a second agent) against empty programs and the bpftrace tracker on
//! the same tracepoints, all attached at once under the same fio load.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Result, bail};

use super::FIO_SECONDS;
use crate::bpf::{bpf_progs, prog_names, prog_tracepoints, tracepoint_of};
use crate::fixtures::{BenchAgent, RamLoop};
use crate::tools::{BPFTRACE_BIOLATENCY, BPFTRACE_EMPTY, bpftrace, fio};

pub struct CostRow {
    pub tracepoint: String,
    /// What the agent runs here (BTF-enabled programs where the kernel has BTF).
    pub bindsto_ns: f64,
    /// The classic-tracepoint programs (`BINDSTO_CLASSIC_TRACEPOINTS=1`); NaN if not run.
    pub classic_ns: f64,
    pub floor_ns: f64,
    pub tracker_ns: f64,
    pub runs: u64,
}

/// Per tracepoint: average ns per run and the number of runs, between two snapshots.
type PerTp = BTreeMap<String, (f64, u64)>;

/// Average run time per event from the kernel's own accounting.
pub fn kernel_cost(bin: &Path, scratch: &Path, ram: &RamLoop) -> Result<Vec<CostRow>> {
    let agent = BenchAgent::start(bin, scratch, "cost", None)?;
    let classic = BenchAgent::start_env(
        bin,
        scratch,
        "cost-classic",
        None,
        &[("BINDSTO_CLASSIC_TRACEPOINTS", "1")],
    )?;
    let empty = bpftrace(BPFTRACE_EMPTY)?;
    let tracker = bpftrace(BPFTRACE_BIOLATENCY)?;
    let pids = [agent.pid(), classic.pid(), empty.pid(), tracker.pid()];
    let before: Vec<_> = pids.iter().map(|p| bpf_progs(*p)).collect();
    for _ in 0..3 {
        fio(&ram.dev, "randread", FIO_SECONDS, &[])?;
        fio(&ram.dev, "randwrite", FIO_SECONDS, &[])?;
    }
    let after: Vec<_> = pids.iter().map(|p| bpf_progs(*p)).collect();
    // bpftrace attaches through perf events (listed by `bpftool perf list`); aya through BPF
    // links, which that list omits, so bindsto's programs are matched by name (the function
    // name, cut to 15 characters by the kernel).
    let mut tps: BTreeMap<u32, String> = prog_tracepoints()
        .into_iter()
        .map(|(id, (_, tp))| (id, tp))
        .collect();
    for (id, name) in prog_names() {
        if let Some(tp) = tracepoint_of(&name) {
            tps.entry(id).or_insert_with(|| tp.to_string());
        }
    }
    let per_tp = |i: usize| -> PerTp {
        let mut m = PerTp::new();
        for (id, (t1, c1)) in &after[i] {
            let (t0, c0) = before[i].get(id).copied().unwrap_or((0, 0));
            let Some(tp) = tps.get(id) else { continue };
            if c1 > &c0 {
                m.insert(tp.clone(), ((t1 - t0) as f64 / (c1 - c0) as f64, c1 - c0));
            }
        }
        m
    };
    let (a, c, e, t) = (per_tp(0), per_tp(1), per_tp(2), per_tp(3));
    let mut rows = Vec::new();
    for (tp, (floor, _)) in &e {
        if let Some((ns, runs)) = a.get(tp) {
            rows.push(CostRow {
                tracepoint: tp.clone(),
                bindsto_ns: *ns,
                classic_ns: c.get(tp).map_or(f64::NAN, |x| x.0),
                floor_ns: *floor,
                tracker_ns: t.get(tp).map_or(f64::NAN, |x| x.0),
                runs: *runs,
            });
        }
    }
    if rows.is_empty() {
        bail!("no program statistics (bindsto {a:?}, empty {e:?})");
    }
    // Programs the agent runs per I/O on tracepoints the empty pair is not on (the bio
    // programs, where a dm device exists) count in the sum too.
    for (tp, (ns, runs)) in a.iter().filter(|(tp, _)| !e.contains_key(*tp)) {
        rows.push(CostRow {
            tracepoint: tp.clone(),
            bindsto_ns: *ns,
            classic_ns: c.get(tp).map_or(f64::NAN, |x| x.0),
            floor_ns: 0.0,
            tracker_ns: 0.0,
            runs: *runs,
        });
    }
    Ok(rows)
}
