//! The load, the comparison tracers and the fault injector: fio runs, bpftrace one-liners and
//! `bindsto gameday`.

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bindsto_tests::BgProcess;
use serde_json::Value;

use crate::bpf::bpf_progs;

/// The biolatency-style tracker users reach for today: a start time per request on issue, a
/// histogram on completion.
pub const BPFTRACE_BIOLATENCY: &str = "tracepoint:block:block_rq_issue { @start[args->dev, args->sector] = nsecs; } \
tracepoint:block:block_rq_complete /@start[args->dev, args->sector]/ { @usecs = hist((nsecs - @start[args->dev, args->sector]) / 1000); delete(@start[args->dev, args->sector]); }";
/// The floor: empty programs on the same tracepoints as bindsto's block programs.
pub const BPFTRACE_EMPTY: &str =
    "tracepoint:block:block_rq_issue { } tracepoint:block:block_rq_complete { }";

/// bpftrace running `program`, returned once its probes are attached.
pub fn bpftrace(program: &str) -> Result<BgProcess> {
    let mut cmd = Command::new("bpftrace");
    cmd.args(["-e", program]);
    let mut p = BgProcess::spawn(cmd)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = p.output();
        if text.contains("Attaching") && !bpf_progs(p.pid()).is_empty() {
            std::thread::sleep(Duration::from_millis(300));
            return Ok(p);
        }
        if !p.is_running() || Instant::now() > deadline {
            bail!("bpftrace did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One fio run of 4k direct I/O at iodepth 32 on `dev`: (IOPS, errors).
pub fn fio(dev: &str, rw: &str, seconds: u64, extra: &[&str]) -> Result<(f64, u64)> {
    let out = Command::new("fio")
        .args([
            "--name=bench",
            &format!("--filename={dev}"),
            &format!("--rw={rw}"),
            "--bs=4k",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=32",
            &format!("--runtime={seconds}"),
            "--time_based",
            "--output-format=json",
        ])
        .args(extra)
        .output()
        .context("running fio")?;
    let v = json_output(&out, "fio output is not JSON")?;
    let job = &v["jobs"][0];
    let side = if rw.contains("write") {
        "write"
    } else {
        "read"
    };
    let iops = job[side]["iops"].as_f64().unwrap_or(0.0);
    let errors = job["total_err"].as_u64().unwrap_or(0);
    Ok((iops, errors))
}

/// `bindsto --log-level off gameday --json ARGS --workdir DIR` (DIR created first): its report.
pub fn gameday(bin: &Path, args: &[&str], workdir: &Path) -> Result<Value> {
    std::fs::create_dir_all(workdir)?;
    let out = Command::new(bin)
        .args(["--log-level", "off", "gameday", "--json"])
        .args(args)
        .arg("--workdir")
        .arg(workdir)
        .output()
        .context("running bindsto gameday")?;
    json_output(&out, "gameday printed no report")
}

/// A command's stdout as JSON; the error carries `what` and its stderr.
fn json_output(out: &Output, what: &str) -> Result<Value> {
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{what}: {}", String::from_utf8_lossy(&out.stderr)))
}
