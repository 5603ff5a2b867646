//! I/O overhead decided on a shared machine: many short paired runs, no tracing against
//! bindsto, back to back in alternating order (ABBA), on the RAM loop device and on a loop
//! device over a file on the real disk. A drift in machine load hits both halves of a pair
//! alike, so the pair's difference is the agent's cost; its median and spread over the pairs
//! decide the target, and "inconclusive" means the spread really covers it.

use std::path::Path;

use anyhow::Result;

use crate::fixtures::{BenchAgent, RamLoop};
use crate::tools::fio;

/// Pairs per workload and device.
pub const PAIRS: usize = 10;
/// Seconds per fio run of a pair.
pub const PAIR_SECONDS: u64 = 2;
pub const PAIRED_WORKLOADS: [(&str, &str); 2] = [
    ("randread", "4k random read"),
    ("randwrite", "4k random write"),
];

/// One workload on one device: the IOPS loss of each pair, in percent.
pub struct Paired {
    pub device: &'static str,
    pub workload: &'static str,
    pub losses: Vec<f64>,
    pub base_iops: Vec<f64>,
}

/// The loss quantile `q` (0..1), by nearest rank.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// Runs the pairs on `devices` (label, loop device).
pub fn paired(
    bin: &Path,
    scratch: &Path,
    devices: &[(&'static str, &RamLoop)],
) -> Result<Vec<Paired>> {
    let mut out = Vec::new();
    for (device, lo) in devices {
        for (rw, label) in PAIRED_WORKLOADS {
            let mut p = Paired {
                device,
                workload: label,
                losses: Vec::new(),
                base_iops: Vec::new(),
            };
            for i in 0..PAIRS {
                let traced_first = i % 2 == 1;
                let mut none = 0.0;
                let mut traced = 0.0;
                for half in 0..2 {
                    if (half == 0) == traced_first {
                        let _agent = BenchAgent::start(bin, scratch, "pair", None)?;
                        traced = fio(&lo.dev, rw, PAIR_SECONDS, &[])?.0;
                    } else {
                        none = fio(&lo.dev, rw, PAIR_SECONDS, &[])?.0;
                    }
                }
                if none > 0.0 {
                    p.losses.push((1.0 - traced / none) * 100.0);
                    p.base_iops.push(none);
                }
                eprintln!("bench: pair {device} {rw} {i}: none {none:.0} bindsto {traced:.0} IOPS");
            }
            out.push(p);
        }
    }
    Ok(out)
}
