//! `cargo xtask bench`: installs what the bench needs and builds it with the release agent and
//! faultyfs, then runs the `bindsto-bench` crate (bench/), which measures and writes
//! docs/BENCHMARKS.md. The bench is its own crate because it uses the test suite's fixtures,
//! which need the agent library: xtask builds without it, as it installs the toolchain the
//! agent's eBPF build needs.

use std::process::{Command, Stdio};

use anyhow::Result;

use crate::{cargo, status, workspace_root};

/// Installs fio and bpftrace when missing (the bench only; the test suite does not need
/// bpftrace).
fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = ["fio", "bpftrace", "bpftool", "python3"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let pkgs: Vec<&str> = missing
        .iter()
        .map(|t| {
            if *t == "python3" {
                "python3-minimal"
            } else {
                t
            }
        })
        .collect();
    eprintln!("bench: installing {pkgs:?}");
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Builds the release agent, faultyfs and the bench, and runs the bench (it finds the other
/// two next to itself) to write docs/BENCHMARKS.md.
pub fn bench() -> Result<()> {
    ensure_tools()?;
    status(cargo().args(["build", "--release", "--package", "bindsto"]))?;
    status(cargo().args([
        "build",
        "--release",
        "--package",
        "bindsto-tests",
        "--bin",
        "faultyfs",
    ]))?;
    let report = workspace_root().join("docs/BENCHMARKS.md");
    status(
        cargo()
            .args(["run", "--release", "--package", "bindsto-bench", "--"])
            .arg(report),
    )
}
