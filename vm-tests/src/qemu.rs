//! Boots one guest under QEMU's TCG (KVM is unusable on the development machines) with the
//! serial console on stdout, and reads the verdict lines. A guest that panics, locks up or
//! overruns its time limit is killed by its PID.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::scenario::{END_LINE, RESULT_PREFIX};

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub disks: &'a [PathBuf],
    pub cmdline: String,
    pub time_limit: Duration,
    pub log: &'a Path,
}

/// One `VMTEST-RESULT <scenario> <PASS|FAIL|NOTRUN> [latency_ms=N] <detail>` line.
#[derive(Clone, Debug)]
pub struct GuestResult {
    pub scenario: String,
    pub verdict: String,
    pub detail: String,
}

pub struct Outcome {
    pub results: Vec<GuestResult>,
    /// Why the boot ended abnormally (time limit, panic, no end line), if it did.
    pub abnormal: Option<String>,
    /// The runner printed something: the guest got as far as /init.
    pub runner_started: bool,
    pub wall: Duration,
}

/// Kernel messages after which the guest will never finish on its own.
const FATAL_MARKERS: &[&str] = &[
    "end Kernel panic",
    "Oops: ",
    "BUG: kernel NULL pointer dereference",
    "Kernel panic - not syncing",
    "watchdog: BUG: soft lockup",
    "rcu: RCU grace-period kthread stack dump:",
];

fn accel() -> String {
    // KVM initialises on these machines and then fails mid-boot, so it is never the default.
    std::env::var("BINDSTO_VM_ACCEL").unwrap_or_else(|_| "tcg".into())
}

pub fn boot(b: &Boot) -> Result<Outcome> {
    let mut cmd = Command::new("qemu-system-x86_64");
    let smp = std::env::var("BINDSTO_VM_SMP").unwrap_or_else(|_| "2".into());
    cmd.args(["-accel", &accel(), "-m", "1024", "-smp", &smp]);
    // QEMU 7.2's TCG corrupts a 6.12 guest at `cmpxchg16b %gs:(%rsi)` (SLUB's per-CPU
    // fast path): double faults with garbage EFLAGS in kmem_cache_alloc, at boot or under
    // I/O, in about half the boots. Without CX16 the kernel takes SLUB's locked path, and 6.12
    // boots cleanly (5.10 and 6.1 run the same way).
    let cpu = std::env::var("BINDSTO_VM_CPU").unwrap_or_else(|_| "qemu64,-cx16".into());
    cmd.args(["-cpu", &cpu]);
    cmd.args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initrd)
        .arg("-append")
        .arg(&b.cmdline);
    for d in b.disks {
        cmd.arg("-drive").arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            d.display()
        ));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            while r
                .read_until(b'\n', &mut buf)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if tx.send(line).is_err() {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);
    let mut log = fs::File::create(b.log)?;
    let mut results = Vec::new();
    let mut abnormal = None;
    let mut ended = false;
    let mut runner_started = false;
    let mut grace: Option<Instant> = None;
    let verbose = std::env::var_os("BINDSTO_VM_VERBOSE").is_some();
    loop {
        if grace.is_some_and(|g| Instant::now() >= g) {
            break;
        }
        let left = b.time_limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            abnormal = Some(format!("time limit {}s exceeded", b.time_limit.as_secs()));
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                if verbose || line.contains(RESULT_PREFIX) || line.contains("vmtest:") {
                    eprintln!("  | {line}");
                }
                runner_started |= line.contains("vmtest:");
                // Under systemd the runner's lines reach the console through journald, with a
                // "[ time] vm-guest[pid]: " prefix.
                if let Some(rest) = line
                    .find(RESULT_PREFIX)
                    .map(|i| &line[i + RESULT_PREFIX.len()..])
                {
                    let mut w = rest.split_whitespace();
                    let scenario = w.next().unwrap_or_default().to_string();
                    let verdict = w.next().unwrap_or_default().to_string();
                    let detail = w.collect::<Vec<_>>().join(" ");
                    results.push(GuestResult {
                        scenario,
                        verdict,
                        detail,
                    });
                } else if line.trim() == END_LINE || line.ends_with(&format!(": {END_LINE}")) {
                    ended = true;
                } else if abnormal.is_none()
                    && let Some(m) = FATAL_MARKERS.iter().find(|m| line.contains(*m))
                {
                    // Keep reading briefly so the log has the trace, then kill.
                    abnormal = Some(format!("guest kernel: {}", m.trim()));
                    grace = Some(Instant::now() + Duration::from_secs(3));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if abnormal.is_some() {
        // Kill exactly the QEMU we started (by its PID), never by name.
        // SAFETY: plain kill(2) on our own child's PID, which we have not reaped yet.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let status = child.wait()?;
    if abnormal.is_none() && !ended {
        abnormal = Some(format!("guest ended without {END_LINE} (qemu {status})"));
    }
    Ok(Outcome {
        results,
        abnormal,
        runner_started,
        wall: start.elapsed(),
    })
}
