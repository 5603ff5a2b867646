//! QEMU/TCG harness for the fleet kernels (5.10, 6.1, 6.12): Debian kernel packages, an
//! initramfs with the agent and the scenario runner, one TCG boot per kernel and scenario, and
//! a table of the verdicts. `cargo xtask vm-test` drives it; `src/bin/vm-guest.rs` is the
//! guest side.

pub mod initramfs;
pub mod kernel;
pub mod qemu;
pub mod rootfs;
pub mod scenario;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use scenario::{KERNELS, KernelLine, NOT_RUN, SCENARIOS, not_applicable};

/// Runs a command, failing with its name and status.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

pub struct Options {
    /// Downloads and unpacked kernels (`BINDSTO_VM_CACHE`, default `target/vm-cache`).
    pub cache: PathBuf,
    /// Per-run files: images, disks, console logs.
    pub work: PathBuf,
    pub kernels: Vec<&'static KernelLine>,
    /// Scenario names; empty means all.
    pub scenarios: Vec<String>,
    pub runner: PathBuf,
    /// The agent for the initramfs scenarios (they run it from the initramfs).
    pub agent: PathBuf,
    /// The `.deb` of `cargo xtask package`: the systemd guest installs it with `dpkg -i`
    /// (binary, unit, default config, maintainer scripts). Without it those cells are NOT RUN.
    pub deb: Option<PathBuf>,
}

/// One cell of the table.
pub struct Cell {
    pub kernel: String,
    pub scenario: String,
    pub verdict: String,
    pub detail: String,
    pub wall_s: f64,
}

pub fn kernel_lines(arg: &str) -> Result<Vec<&'static KernelLine>> {
    if arg == "all" {
        return Ok(KERNELS.iter().collect());
    }
    arg.split(',')
        .map(|k| {
            KERNELS
                .iter()
                .find(|l| l.name == k)
                .with_context(|| format!("unknown kernel {k:?}: expected 5.10, 6.1, 6.12 or all"))
        })
        .collect()
}

fn known(name: &str) -> bool {
    SCENARIOS.iter().any(|s| s.name == name) || NOT_RUN.iter().any(|(n, _)| *n == name)
}

fn make_disk(path: &Path, mib: u64, xfs: bool) -> Result<()> {
    let _ = fs::remove_file(path);
    let f = fs::File::create(path)?;
    f.set_len(mib << 20)?;
    drop(f);
    if xfs {
        // Made on the host: the guest then needs no mkfs. Defaults of xfsprogs 6.1 mount on 5.10.
        run_cmd(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(path))?;
    }
    Ok(())
}

/// Runs the selected matrix and returns every cell, failures included.
pub fn run(o: &Options) -> Result<Vec<Cell>> {
    for s in &o.scenarios {
        if !known(s) {
            let names: Vec<&str> = SCENARIOS
                .iter()
                .map(|s| s.name)
                .chain(NOT_RUN.iter().map(|(n, _)| *n))
                .collect();
            bail!("unknown scenario {s:?}; known: {}", names.join(", "));
        }
    }
    let selected = |name: &str| o.scenarios.is_empty() || o.scenarios.iter().any(|s| s == name);
    fs::create_dir_all(&o.work)?;
    let mut cells = Vec::new();
    for line in &o.kernels {
        let kernel = match kernel::fetch(&o.cache, line) {
            Ok(k) => k,
            Err(e) => {
                for s in SCENARIOS.iter().filter(|s| selected(s.name)) {
                    cells.push(Cell {
                        kernel: line.name.into(),
                        scenario: s.name.into(),
                        verdict: "FAIL".into(),
                        detail: format!("kernel not available: {e:#}"),
                        wall_s: 0.0,
                    });
                }
                continue;
            }
        };
        eprintln!("vm-test: kernel {} = {}", line.name, kernel.package);
        for s in SCENARIOS.iter().filter(|s| selected(s.name)) {
            if let Some(why) = not_applicable(s.name, line.name) {
                cells.push(Cell {
                    kernel: line.name.into(),
                    scenario: s.name.into(),
                    verdict: "N/A".into(),
                    detail: why.into(),
                    wall_s: 0.0,
                });
                continue;
            }
            eprintln!("vm-test: {} on {}", s.name, line.name);
            let started = Instant::now();
            let cell = match boot_one(o, &kernel, s) {
                Ok(c) => c,
                Err(e) => Cell {
                    kernel: line.name.into(),
                    scenario: s.name.into(),
                    verdict: "FAIL".into(),
                    detail: format!("harness: {e:#}"),
                    wall_s: started.elapsed().as_secs_f64(),
                },
            };
            eprintln!(
                "vm-test: {} on {}: {} {} ({:.0}s)",
                s.name, line.name, cell.verdict, cell.detail, cell.wall_s
            );
            cells.push(cell);
        }
        for (name, why) in NOT_RUN.iter().filter(|(n, _)| selected(n)) {
            cells.push(Cell {
                kernel: line.name.into(),
                scenario: (*name).into(),
                verdict: "NOT RUN".into(),
                detail: (*why).into(),
                wall_s: 0.0,
            });
        }
    }
    Ok(cells)
}

fn boot_one(o: &Options, kernel: &kernel::Kernel, s: &scenario::Scenario) -> Result<Cell> {
    let dir = o.work.join(format!("{}-{}", kernel.line, s.name));
    fs::create_dir_all(&dir)?;
    let mut files = Vec::new();
    let mut disks = Vec::new();
    if s.rootfs {
        let Some(deb) = o.deb.as_ref().filter(|d| d.is_file()) else {
            return Ok(Cell {
                kernel: kernel.line.into(),
                scenario: s.name.into(),
                verdict: "NOT RUN".into(),
                detail: "not run: no .deb (run cargo xtask package)".into(),
                wall_s: 0.0,
            });
        };
        files.push((deb.clone(), scenario::DEB_IN_INITRAMFS));
        let image = rootfs::image(&o.cache)?;
        let copy = dir.join("rootfs.img");
        rootfs::copy_for_boot(&image, &copy)?;
        disks.push(copy);
    }
    let debs = if s.debs.is_empty() {
        None
    } else {
        let tree = kernel::userspace(&o.cache, scenario::USERSPACE_SUITE, s.debs)?;
        // libtirpc (rpc.mountd) reads netconfig to know its transports; the NFS tools look
        // up their ports and protocols by name. From the packages, not from the host.
        for f in ["/etc/netconfig", "/etc/services", "/etc/protocols"] {
            files.push((tree.join(&f[1..]), f));
        }
        Some(tree)
    };
    let initrd = dir.join("initrd.cpio");
    initramfs::build(
        &dir,
        &initramfs::Contents {
            kernel,
            runner: &o.runner,
            // The systemd guest runs the packaged agent only: no second binary to mistake for it.
            agent: (!s.rootfs).then_some(o.agent.as_path()),
            modules: s.modules,
            late_modules: s.late_modules,
            programs: s.programs,
            debs: debs.as_deref().map(|t| (t, s.deb_programs)),
            files: &files,
        },
        &initrd,
    )?;
    let keep = std::env::var_os("BINDSTO_VM_KEEP").is_some();
    if !keep {
        let _ = fs::remove_dir_all(dir.join("root"));
    }
    for (i, (mib, xfs)) in s.disks.iter().enumerate() {
        let p = dir.join(format!("disk{i}.img"));
        make_disk(&p, *mib, *xfs)?;
        if s.failing_disk == Some(i) {
            // QEMU's blkdebug fails reads touching one sector with EIO: a request-level error,
            // as a failing EBS volume gives, without device-mapper in between.
            let conf = dir.join(format!("disk{i}.blkdebug"));
            fs::write(
                &conf,
                format!(
                    "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nsector = \"{}\"\n",
                    scenario::FAILING_SECTOR
                ),
            )?;
            disks.push(PathBuf::from(format!(
                "blkdebug:{}:{}",
                conf.display(),
                p.display()
            )));
        } else {
            disks.push(p);
        }
    }
    let log = dir.join("console.log");
    let mut retried = Vec::new();
    let out = loop {
        let out = qemu::boot(&qemu::Boot {
            vmlinuz: &kernel.vmlinuz,
            initrd: &initrd,
            disks: &disks,
            cmdline: format!(
                "console=ttyS0 panic=-1 loglevel=4 rdinit=/init vmtest.scenario={} vmtest.kernel={} {}",
                s.name,
                kernel.line,
                std::env::var("BINDSTO_VM_APPEND").unwrap_or_default()
            ),
            time_limit: Duration::from_secs(s.time_limit_s),
            log: &log,
        })?;
        // An emulator fault is not a test result: a guest kernel crash (QEMU 7.2's TCG
        // corrupted 6.12 guests at cmpxchg16b until CX16 was hidden, see qemu.rs), or a guest
        // that died before /init, is booted again, at most twice, and the table says so. A
        // scenario that fails on its own is never retried.
        let crashed = out
            .abnormal
            .as_deref()
            .is_some_and(|a| a.starts_with("guest kernel:"));
        match &out.abnormal {
            Some(a) if (crashed || !out.runner_started) && retried.len() < 2 => {
                eprintln!("vm-test: guest kernel died ({a}); booting again");
                let _ = fs::copy(
                    &log,
                    dir.join(format!("console-early-crash-{}.log", retried.len())),
                );
                retried.push(a.clone());
            }
            _ => break out,
        }
    };
    for i in 0..s.disks.len() {
        let _ = fs::remove_file(dir.join(format!("disk{i}.img")));
    }
    let _ = fs::remove_file(dir.join("rootfs.img"));
    if !keep {
        let _ = fs::remove_file(&initrd);
    }
    let r = out.results.iter().find(|r| r.scenario == s.name);
    let (verdict, detail) = match (r, &out.abnormal) {
        (Some(r), None) => (r.verdict.clone(), r.detail.clone()),
        (Some(r), Some(a)) if r.verdict != "PASS" => {
            (r.verdict.clone(), format!("{}; {a}", r.detail))
        }
        (Some(r), Some(a)) => ("FAIL".into(), format!("{} but {a}", r.detail)),
        (None, a) => (
            "FAIL".into(),
            format!(
                "no verdict line: {}; console: {}",
                a.as_deref().unwrap_or("unknown"),
                log.display()
            ),
        ),
    };
    let detail = if retried.is_empty() {
        detail
    } else {
        format!(
            "{detail} [rebooted after guest kernel crash: {}]",
            retried.join("; ")
        )
    };
    Ok(Cell {
        kernel: kernel.line.into(),
        scenario: s.name.into(),
        verdict,
        detail,
        wall_s: out.wall.as_secs_f64(),
    })
}

/// The result table (markdown), kernel x scenario.
pub fn table(cells: &[Cell]) -> String {
    let mut t = String::from(
        "| kernel | scenario | result | detection / reason | boot wall time |\n|---|---|---|---|---|\n",
    );
    for c in cells {
        let wall = if c.wall_s > 0.0 {
            format!("{:.0} s", c.wall_s)
        } else {
            "-".into()
        };
        // The full detail is in the run's output and the console log.
        let mut detail: String = c.detail.chars().take(300).collect();
        if detail.len() < c.detail.len() {
            detail.push_str(" ...");
        }
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            c.kernel, c.scenario, c.verdict, detail, wall
        );
    }
    t
}
