//! `cargo xtask fuzz`: every cargo-fuzz target in fuzz/ for a bounded time, from the committed
//! seed corpus, failing on the first crash.
//!
//! CI has no nightly toolchain: cargo-fuzz's `-Z` flags are accepted by stable with
//! `RUSTC_BOOTSTRAP=1`. AddressSanitizer is used when the toolchain ships its runtime, else
//! the targets build without a sanitizer (Rust code is memory-safe; coverage-guided panics
//! are what these targets look for).

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{status, workspace_root};

/// Installed by `cargo xtask setup` (see ops::CARGO_TOOLS); builds with Rust 1.95.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn fuzz(seconds: u64) -> Result<()> {
    let root = workspace_root();
    let dir = root.join("fuzz");
    let started = std::time::Instant::now();
    let sanitizer = if asan_runtime_present() {
        "address"
    } else {
        eprintln!("xtask: no AddressSanitizer runtime in this toolchain; fuzzing without one");
        "none"
    };
    status(fuzz_cmd(&dir).args(["build", "--sanitizer", sanitizer]))?;
    let built = started.elapsed().as_secs();
    let out = fuzz_cmd(&dir)
        .arg("list")
        .output()
        .context("running cargo fuzz list")?;
    let targets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if !out.status.success() || targets.is_empty() {
        bail!("cargo fuzz list found no targets in {}", dir.display());
    }
    for t in &targets {
        let seeds = dir.join("corpus").join(t);
        if !seeds.is_dir() {
            bail!("fuzz target {t} has no seed corpus in {}", seeds.display());
        }
        // New inputs go to a scratch corpus so runs never dirty the committed seeds.
        let work = dir.join("target").join("corpus").join(t);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let artifacts = dir.join("artifacts").join(t);
        std::fs::create_dir_all(&artifacts)?;
        let r = status(
            fuzz_cmd(&dir)
                .args(["run", "--sanitizer", sanitizer, t])
                .arg(&work)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg(format!("-artifact_prefix={}/", artifacts.display()))
                // A hang or a runaway allocation on one input is a bug as much as a panic.
                .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]),
        );
        if let Err(e) = r {
            bail!(
                "fuzz target {t} failed ({e:#}); the input is in {}; reproduce with \
                 `cd fuzz && RUSTC_BOOTSTRAP=1 AYA_BUILD_SKIP=1 cargo fuzz run --sanitizer {sanitizer} {t} <file>`",
                artifacts.display()
            );
        }
    }
    eprintln!(
        "xtask: fuzzed {} targets for {seconds}s each; build {built}s, total {}s",
        targets.len(),
        started.elapsed().as_secs()
    );
    Ok(())
}

fn fuzz_cmd(dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.arg("fuzz")
        .current_dir(dir)
        // Stable rustc takes the -Z flags cargo-fuzz passes.
        .env("RUSTC_BOOTSTRAP", "1")
        // The parsers need no kernel programs: skip the eBPF build (an empty object).
        .env("AYA_BUILD_SKIP", "1")
        .env("CARGO_INCREMENTAL", "0");
    c
}

/// Whether the active toolchain ships the AddressSanitizer runtime for the host target.
fn asan_runtime_present() -> bool {
    let Ok(out) = Command::new("rustc").args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = Path::new(&sysroot).join("lib/rustlib/x86_64-unknown-linux-gnu/lib");
    std::fs::read_dir(lib).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with("_rt.asan.a"))
    })
}
