//! Detection latency: `bindsto gameday --standalone --repeat REPS`, each scenario on fresh
//! scratch storage, observed by the engine inside the gameday process.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context, Result};
use serde_json::Value;

use super::REPS;

#[derive(Default)]
pub struct Latency {
    /// scenario -> (latencies ms, after-threshold ms, passes, runs)
    pub per: BTreeMap<String, (Vec<f64>, Vec<f64>, usize, usize)>,
}

pub fn detection(bin: &Path, scratch: &Path) -> Result<Latency> {
    let dir = scratch.join("gameday");
    std::fs::create_dir_all(&dir)?;
    let out = Command::new(bin)
        .args([
            "--log-level",
            "off",
            "gameday",
            "--standalone",
            "--json",
            "--repeat",
        ])
        .arg(REPS.to_string())
        .arg("--workdir")
        .arg(&dir)
        .output()
        .context("running bindsto gameday")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "gameday printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
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
