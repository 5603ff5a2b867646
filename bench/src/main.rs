//! `cargo xtask bench`: what bindsto costs and how fast it sees a failure, measured side by
//! side in one run on this machine, written to `docs/BENCHMARKS.md` (machine, kernel, date,
//! load, numbers, each target met or missed with the reason).
//!
//! Everything runs on scratch storage the bench creates (a loop device over a file on its own
//! tmpfs, the test suite's `faultyfs` for failing disks) and on processes it starts; they are
//! ended by PID and every loop device and mount is undone, also when a step fails.
//!
//! `cargo xtask bench` installs the tools and builds the release agent and faultyfs, then runs
//! this binary, which finds them next to itself (or through `$BINDSTO_BIN`, `$FAULTYFS_BIN`)
//! and writes where its argument says.
//! Layers: fixtures, tools and bpf (the kernel's program accounting) < measure (one file per
//! measurement) < report (the Markdown writer) < main.

mod bpf;
mod fixtures;
mod machine;
mod measure;
mod report;
mod tools;

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::Result;
use bindsto_tests::{agent::default_agent_bin, faulty::default_faultyfs_bin};

use fixtures::{BenchDir, BpfStats, RamLoop};
use measure::{REPS, detection, footprint, io_overhead, kernel_cost, overload, paired};

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs everything and writes the report to the file named by the one argument (by default
/// this checkout's docs/BENCHMARKS.md).
fn bench() -> Result<()> {
    let t_start = Instant::now();
    let path = std::env::args_os().nth(1).map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../docs/BENCHMARKS.md"
            ))
        },
        PathBuf::from,
    );
    let bin = default_agent_bin()?;
    let faultyfs = default_faultyfs_bin()?;
    let _stats = BpfStats::enable()?;
    let scratch = BenchDir::new()?;
    let dir = scratch.path();
    let load_start = machine::loadavg();
    let others = bpf::other_block_tracers();
    let info = machine::machine();

    let ram = RamLoop::new(dir)?;
    eprintln!("bench: kernel cost per event");
    let cost = kernel_cost::kernel_cost(&bin, dir, &ram)?;
    eprintln!("bench: I/O overhead");
    let io = io_overhead::io_overhead(&bin, dir, &ram)?;
    eprintln!("bench: paired I/O overhead");
    let disk = RamLoop::on_disk(dir)?;
    let pairs = paired::paired(
        &bin,
        dir,
        &[("tmpfs loop", &ram), ("disk-file loop", &disk)],
    )?;
    drop(disk);
    eprintln!("bench: footprint");
    let fp = footprint::footprint_runs(&bin, dir, &ram, &faultyfs)?;
    drop(ram);
    eprintln!("bench: detection latency (gameday x{REPS})");
    let lat = detection::detection(&bin, dir)?;
    eprintln!("bench: overload");
    let ov = overload::overload(&bin, dir, &faultyfs)?;
    let load_end = machine::loadavg();
    let took = t_start.elapsed();

    let doc = report::render(&report::Rendered {
        info,
        load_start,
        load_end,
        others,
        cost,
        io,
        pairs,
        fp,
        lat,
        ov,
        took,
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, doc)?;
    eprintln!(
        "bench: wrote {} in {:.0} s",
        path.display(),
        took.as_secs_f64()
    );
    Ok(())
}
