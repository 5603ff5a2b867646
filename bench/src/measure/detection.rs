//! Detection latency: `bindsto gameday --standalone --repeat REPS`, each scenario on fresh
//! scratch storage, observed by the engine inside the gameday process.

use std::{collections::BTreeMap, path::Path};

use anyhow::Result;

use super::REPS;
use crate::tools::gameday;

#[derive(Default)]
pub struct Latency {
    /// scenario -> (latencies ms, after-threshold ms, passes, runs)
    pub per: BTreeMap<String, (Vec<f64>, Vec<f64>, usize, usize)>,
}

pub fn detection(bin: &Path, scratch: &Path) -> Result<Latency> {
    let v = gameday(
        bin,
        &["--standalone", "--repeat", &REPS.to_string()],
        &scratch.join("gameday"),
    )?;
    let mut l = Latency::default();
    for r in v["results"].as_array().into_iter().flatten() {
        let e = l
            .per
            .entry(r["scenario"].as_str().unwrap_or("?").to_string())
            .or_default();
        e.3 += 1;
        if r["passed"] == true {
            e.2 += 1;
        }
        if let Some(ms) = r["latency_ms"].as_f64() {
            e.0.push(ms);
            if let Some(t) = r["threshold_ms"].as_f64() {
                e.1.push(ms - t);
            }
        }
    }
    Ok(l)
}
