//! I/O overhead: fio IOPS on the RAM loop device with no tracing, with bindsto and with the
//! bpftrace tracker, conditions interleaved and rotated.

use std::{collections::BTreeMap, path::Path};

use anyhow::Result;

use super::{FIO_SECONDS, REPS};
use crate::fixtures::{BenchAgent, RamLoop};
use crate::tools::{BPFTRACE_BIOLATENCY, bpftrace, fio};

pub const WORKLOADS: [(&str, &str); 3] = [
    ("randread", "4k random read"),
    ("randwrite", "4k random write"),
    ("read", "4k sequential read"),
];
const CONDITIONS: [&str; 3] = ["none", "bindsto", "bpftrace"];

pub struct IoResult {
    /// workload -> condition -> IOPS samples
    pub iops: BTreeMap<&'static str, BTreeMap<&'static str, Vec<f64>>>,
}

pub fn io_overhead(bin: &Path, scratch: &Path, ram: &RamLoop) -> Result<IoResult> {
    let mut iops: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for rep in 0..REPS {
        // Rotate the order so a drift in machine load does not favour one condition.
        for k in 0..CONDITIONS.len() {
            let cond = CONDITIONS[(rep + k) % CONDITIONS.len()];
            let _tracer: Option<Box<dyn std::any::Any>> = match cond {
                "bindsto" => Some(Box::new(BenchAgent::start(bin, scratch, "io", None)?)),
                "bpftrace" => Some(Box::new(bpftrace(BPFTRACE_BIOLATENCY)?)),
                _ => None,
            };
            for (rw, _) in WORKLOADS {
                let (v, _) = fio(&ram.dev, rw, FIO_SECONDS, &[])?;
                eprintln!("bench: io rep {rep} {cond:8} {rw:9} {v:.0} IOPS");
                iops.entry(rw).or_default().entry(cond).or_default().push(v);
            }
        }
    }
    Ok(IoResult { iops })
}
