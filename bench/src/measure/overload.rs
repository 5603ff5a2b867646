//! Overload: a disk failing every request under fio while the agent is frozen (SIGSTOP) for
//! 3 s, so the ring buffer overruns, and an XFS shutdown on another disk during the flood.

use std::{path::Path, time::Duration};

use anyhow::Result;
use bindsto_tests::Mode;
use nix::sys::signal::Signal;

use crate::fixtures::{BenchAgent, faulty_disk};
use crate::tools::{fio, gameday};

pub struct Overload {
    pub lost: f64,
    pub errors_seen: f64,
    pub alive: bool,
    pub flooded_verdict: String,
    pub gameday: String,
    pub gameday_passed: bool,
    pub fio_errors: u64,
}

/// A disk failing every request under fio while the agent is frozen (SIGSTOP) for 3 s: the
/// ring buffer overruns. Then: lost events counted, agent still up, the flooded disk degraded
/// with io_errors, and an XFS shutdown on another disk during the flood still detected.
pub fn overload(bin: &Path, scratch: &Path, faultyfs: &Path) -> Result<Overload> {
    let disk = faulty_disk(faultyfs)?;
    let mut agent = BenchAgent::start(bin, scratch, "flood", None)?;
    disk.set_mode(Mode::Error)?;
    let dev = disk.loop_dev().to_string_lossy().into_owned();
    let flood = std::thread::spawn(move || {
        fio(
            &dev,
            "randread",
            14,
            &[
                "--continue_on_error=all",
                "--numjobs=2",
                "--group_reporting",
            ],
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    let _ = agent.0.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    let _ = agent.0.signal(Signal::SIGCONT);
    std::thread::sleep(Duration::from_secs(1));
    let addr = agent.0.addr().to_string();
    let gd_v = gameday(
        bin,
        &[
            "--scenario",
            "xfs-shutdown",
            "--agent-timeout",
            "10s",
            "--addr",
            &addr,
        ],
        &scratch.join("gameday-flood"),
    )
    .unwrap_or_default();
    let fio_errors = flood.join().map_err(|_| anyhow::anyhow!("fio thread"))??.1;
    std::thread::sleep(Duration::from_secs(2));
    let alive = agent.0.is_running() && agent.status().is_some();
    let lost = agent.metric("bindsto_events_lost_total");
    let errors_seen = agent.metric(&format!(
        "bindsto_block_io_errors_total{{device=\"{}\"}}",
        disk.loop_name()
    ));
    let flooded_verdict = agent
        .status()
        .and_then(|s| {
            let t = s["targets"]
                .as_array()?
                .iter()
                .find(|t| t["kind"] == "device" && t["id"] == disk.loop_name().as_str())?
                .clone();
            Some(format!(
                "{} ({})",
                t["state"].as_str().unwrap_or("?"),
                t["reasons"]
                    .as_array()
                    .map(|r| r
                        .iter()
                        .filter_map(|r| r["signal"].as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ))
        })
        .unwrap_or_else(|| "none".into());
    let r = &gd_v["results"][0];
    Ok(Overload {
        lost,
        errors_seen,
        alive,
        flooded_verdict,
        gameday: format!(
            "{} in {}",
            r["detected"].as_str().unwrap_or("nothing detected"),
            r["latency_ms"]
                .as_f64()
                .map_or("-".into(), |l| format!("{l:.0} ms"))
        ),
        gameday_passed: gd_v["passed"] == true,
        fio_errors,
    })
}
