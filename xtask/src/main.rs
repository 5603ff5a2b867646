//! `cargo xtask ...`: toolchain setup, build, run and the full test suite.
//!
//! Everything the project needs is installed from here (never by hand), so a fresh Debian 12
//! machine and CI take the same path: `cargo xtask run` and `cargo xtask test` both start
//! with `setup`, which is a no-op when everything is present.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

mod fuzz;
mod ops;
mod vm;

#[derive(Parser)]
#[command(name = "xtask", about = "bindsto development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure kernel cost, I/O overhead, detection latency, footprint and overload; write
    /// docs/BENCHMARKS.md (root; installs fio and bpftrace; about 15 minutes).
    Bench,
    /// Install what the build and the tests need (apt packages, bpf-linker); no-op when present.
    Setup,
    /// Build the agent (release).
    Build,
    /// Set up, build and run the agent as root with the embedded default config.
    Run {
        /// Arguments after `--` go to `bindsto run` (e.g. `-- --config /etc/bindsto/config.toml`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run every check and test: fmt, clippy, unit tests, privileged tests.
    /// Every check and test: fmt, clippy, unit tests, the privileged host tests, the packages
    /// (built and checked) and the QEMU/TCG matrix on the fleet kernels.
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Only run privileged tests whose name contains this filter (implies --host-only).
        #[arg(long)]
        filter: Option<String>,
        /// Stop after the host tests: no packages, no VM matrix.
        #[arg(long)]
        host_only: bool,
    },
    /// Boot the fleet kernels under QEMU/TCG and run the guest scenarios (see vm-tests/).
    VmTest {
        /// Kernel line: 5.10, 6.1, 6.12 or all (comma-separated list accepted).
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Only this scenario (repeatable); default all.
        #[arg(long)]
        scenario: Vec<String>,
    },
    /// Build the .deb and .rpm (release binary, unit, default config) into target/packages
    /// and check them (contents, install into a scratch root).
    Package,
    /// `systemd-analyze verify` on packaging/systemd/bindsto.service.
    VerifyUnit,
    /// Run every cargo-fuzz target in fuzz/ for a bounded time from the seed corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 45)]
        seconds: u64,
    },
}

/// Debian packages the build needs (see docs/build.md): Debian's Rust 1.96 with its library source
/// builds the BPF target's `core`; LLVM 22 for bpf-linker. `cargo xtask run` installs only these.
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
];

/// What the tests, packages and VM matrix need on top: the storage tools the tests drive.
const TEST_PACKAGES: &[&str] = &[
    "xfsprogs",
    "fuse3",
    "libfuse3-dev",
    "pkg-config",
    "fio",
    "kmod",
    "util-linux",
    "bpftool",
    // exactly_once counts block errors with a program of its own, independently of the agent.
    "bpftrace",
    // vm-test: TCG guests, their busybox userland, initramfs, module decompression, dm, the
    // systemd guest's root filesystem (debootstrap, mkfs.ext4 -d).
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "dmsetup",
    "debootstrap",
    "e2fsprogs",
    // Operations: systemd-analyze (unit verify), rpm (rpm -qlp on the .rpm), Prometheus and
    // promtool (scrape test, alert rules), binutils (objdump: the binary's glibc needs).
    "systemd",
    "rpm",
    "prometheus",
    "binutils",
    "dpkg-dev",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Bench => setup().and_then(|()| bench::bench()),
        Cmd::Setup => setup(),
        Cmd::Build => setup_build().and_then(|()| build(true)),
        Cmd::Run { args } => run(&args),
        Cmd::Test {
            no_lint,
            filter,
            host_only,
        } => test(no_lint, filter.as_deref()).and_then(|()| {
            if host_only || filter.is_some() {
                return Ok(());
            }
            fuzz::fuzz(45)?;
            // The .deb goes into the VM matrix's systemd guest, so packages come first.
            let p = ops::package()?;
            ops::test_packages(&p)?;
            let started = std::time::Instant::now();
            vm::vm_test("all", Vec::new())?;
            eprintln!(
                "xtask: vm-test matrix took {}s",
                started.elapsed().as_secs()
            );
            Ok(())
        }),
        Cmd::VmTest { kernel, scenario } => setup().and_then(|()| vm::vm_test(&kernel, scenario)),
        Cmd::Package => setup()
            .and_then(|()| ops::package())
            .and_then(|p| ops::test_packages(&p)),
        Cmd::VerifyUnit => setup().and_then(|()| ops::verify_unit()),
        Cmd::Fuzz { seconds } => setup().and_then(|()| fuzz::fuzz(seconds)),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn status(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    bindsto_vm_tests::run_cmd(cmd)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn missing_packages(packages: &[&'static str]) -> Vec<&'static str> {
    packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f", "${Status}", p])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

/// Everything: the build toolchain, then what the tests, packages and VM matrix use.
fn setup() -> Result<()> {
    setup_build()?;
    apt_install(TEST_PACKAGES)?;
    for (krate, version, bin) in ops::CARGO_TOOLS {
        let have = Command::new(cargo_bin_dir().join(bin))
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(version));
        if !have {
            status(Command::new("cargo").args([
                "install",
                "--locked",
                &format!("{krate}@{version}"),
            ]))?;
        }
    }
    // The remediation tests run the ladder against a real moto server (and boto3, which comes
    // with it, to set it up).
    let have_moto = Command::new("python3")
        .args(["-c", "import moto.server, boto3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_moto {
        status(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "--root-user-action=ignore",
            "moto[server]==5.2.1",
        ]))?;
    }
    eprintln!("xtask: setup complete");
    Ok(())
}

fn apt_install(packages: &[&'static str]) -> Result<()> {
    let missing = missing_packages(packages);
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing packages {missing:?}; run `cargo xtask setup` as root");
        }
        eprintln!("xtask: installing {missing:?}");
        status(Command::new("apt-get").args(["update", "-q"]))?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(())
}

/// What building and running the agent needs: Debian's Rust and LLVM 22, bpf-linker, tracefs.
fn setup_build() -> Result<()> {
    apt_install(BUILD_PACKAGES)?;
    let linker = cargo_bin_dir().join("bpf-linker");
    let have = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if !have {
        // /usr/bin/llvm-config is LLVM 14 on Debian 12: point the build at LLVM 22.
        status(
            Command::new("cargo")
                .args([
                    "install",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )?;
    }
    ensure_tracefs();
    Ok(())
}

/// The agent mounts tracefs itself when it can; doing it here too keeps tests independent of
/// which runs first.
fn ensure_tracefs() {
    if Path::new("/sys/kernel/tracing/events").exists() || !is_root() {
        return;
    }
    let _ = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status();
}

fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root());
    c
}

fn build(release: bool) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "--package", "bindsto"]);
    if release {
        c.arg("--release");
    }
    status(&mut c)
}

fn run(args: &[String]) -> Result<()> {
    setup_build()?;
    build(true)?;
    let bin = workspace_root().join("target/release/bindsto");
    status(Command::new(bin).arg("run").args(args))
}

fn test(no_lint: bool, filter: Option<&str>) -> Result<()> {
    setup()?;
    if !is_root() {
        bail!("the privileged tests need root (BPF, loop devices, FUSE, mounts)");
    }
    if !no_lint {
        status(cargo().args(["fmt", "--all", "--check"]))?;
        status(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // Unprivileged unit tests (the default members).
    status(cargo().arg("test"))?;
    ops::verify_unit()?;
    build(false)?;
    let bin = workspace_root().join("target/debug/bindsto");
    // Privileged tests share kernel state (loop devices, tracepoints): one at a time.
    let mut c = cargo();
    c.args(["test", "--package", "bindsto-tests", "--"]);
    if let Some(f) = filter {
        c.arg(f);
    }
    c.args(["--test-threads=1", "--nocapture"])
        .env("BINDSTO_BIN", bin);
    status(&mut c)?;
    eprintln!("xtask: all tests passed");
    Ok(())
}

mod bench;
