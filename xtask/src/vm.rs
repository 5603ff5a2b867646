//! `cargo xtask vm-test`: builds the agent and the guest runner, then boots the fleet kernels
//! under QEMU/TCG through the `vm-tests` harness and prints the kernel x scenario table.

use std::{path::PathBuf, time::Instant};

use anyhow::{Result, bail};
use bindsto_vm_tests as vm;

use crate::{cargo, ops, status, workspace_root};

pub fn vm_test(kernel: &str, scenarios: Vec<String>) -> Result<()> {
    let kernels = vm::kernel_lines(kernel)?;
    let selected: Vec<_> = vm::scenario::SCENARIOS
        .iter()
        .filter(|s| scenarios.is_empty() || scenarios.iter().any(|n| n == s.name))
        .collect();
    // The initramfs scenarios run the debug agent; the systemd guest only the packaged one.
    if selected.iter().any(|s| !s.rootfs) {
        status(cargo().args(["build", "--package", "bindsto"]))?;
    }
    status(cargo().args([
        "build",
        "--package",
        "bindsto-vm-tests",
        "--bin",
        "vm-guest",
    ]))?;
    // The systemd guest installs the real package: built here with `cargo xtask package`'s
    // code, which reuses an up-to-date release build (seconds) instead of trusting a .deb in
    // target/packages that may predate the sources.
    let deb = if selected.iter().any(|s| s.rootfs) {
        Some(ops::package()?.deb)
    } else {
        None
    };
    let root = workspace_root();
    let cache = std::env::var_os("BINDSTO_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/vm-cache"));
    let started = Instant::now();
    let cells = vm::run(&vm::Options {
        cache,
        work: root.join("target/vm-work"),
        kernels,
        scenarios,
        runner: root.join("target/debug/vm-guest"),
        agent: root.join("target/debug/bindsto"),
        deb,
    })?;
    println!("\n{}", vm::table(&cells));
    println!(
        "vm-test: matrix wall time {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let not_run: Vec<String> = cells
        .iter()
        .filter(|c| c.verdict == "NOT RUN")
        .map(|c| format!("{} on {}", c.scenario, c.kernel))
        .collect();
    if !not_run.is_empty() {
        // Not a pass: listed so that a missing scenario is never mistaken for a green one.
        println!(
            "vm-test: NOT RUN (see the table for why): {}",
            not_run.join(", ")
        );
    }
    let failed: Vec<String> = cells
        .iter()
        .filter(|c| c.verdict == "FAIL")
        .map(|c| format!("{} on {}", c.scenario, c.kernel))
        .collect();
    if !failed.is_empty() {
        bail!("vm-test failed: {}", failed.join(", "));
    }
    Ok(())
}
