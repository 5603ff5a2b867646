//! `bindsto doctor`: a verdict per requirement, with the fix for each one that is missing.

use std::path::Path;

use serde::Serialize;

use crate::{daemon::startup, probes::ProbeState};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct DoctorCheck {
    pub requirement: String,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DoctorReport {
    pub kernel: String,
    pub checks: Vec<DoctorCheck>,
}

impl DoctorReport {
    /// No requirement failed (warnings are blind spots, not blockers).
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.verdict != Verdict::Fail)
    }

    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = format!("kernel {}\n", self.kernel);
        for c in &self.checks {
            let tag = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            let _ = writeln!(out, "[{tag}] {:<40} {}", c.requirement, c.detail);
            if let Some(f) = &c.fix {
                let _ = writeln!(out, "       fix: {f}");
            }
        }
        let _ = writeln!(
            out,
            "\n{}",
            if self.ok() {
                "verdict: bindsto can run here"
            } else {
                "verdict: bindsto cannot fully run here (see FAIL lines)"
            }
        );
        out
    }
}

fn check(
    requirement: &str,
    verdict: Verdict,
    detail: impl Into<String>,
    fix: Option<&str>,
) -> DoctorCheck {
    DoctorCheck {
        requirement: requirement.into(),
        verdict,
        detail: detail.into(),
        fix: fix.map(str::to_string),
    }
}

/// Effective capabilities from /proc/self/status.
fn cap_eff() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub fn run() -> DoctorReport {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mut checks = Vec::new();

    let caps = cap_eff().unwrap_or(0);
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        checks.push(check(
            "privileges (CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN)",
            Verdict::Ok,
            format!("CapEff {caps:#x}"),
            None,
        ));
    } else {
        checks.push(check(
            "privileges (CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN)",
            Verdict::Fail,
            format!("CapEff {caps:#x}"),
            Some("run as root or grant CAP_BPF, CAP_PERFMON (CAP_SYS_ADMIN on kernels < 5.8) through the systemd unit"),
        ));
    }

    checks.extend(capability_checks(&kernel, has));

    let tracefs = startup::tracefs();
    match &tracefs {
        Some(p) => checks.push(check("tracefs", Verdict::Ok, p.display().to_string(), None)),
        None => checks.push(check(
            "tracefs",
            Verdict::Fail,
            "not mounted and could not be mounted",
            Some("mount -t tracefs nodev /sys/kernel/tracing (kernel needs CONFIG_FTRACE)"),
        )),
    }

    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        checks.push(check(
            "BTF (/sys/kernel/btf/vmlinux)",
            Verdict::Ok,
            "present",
            None,
        ));
    } else {
        checks.push(check(
            "BTF (/sys/kernel/btf/vmlinux)",
            Verdict::Warn,
            "absent; not needed by the classic tracepoints bindsto uses",
            Some("a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        ));
    }

    for (p, what) in [
        ("/proc/self/mountinfo", "mount table"),
        ("/sys/dev/block", "block device topology"),
    ] {
        if Path::new(p).exists() {
            checks.push(check(what, Verdict::Ok, p, None));
        } else {
            checks.push(check(
                what,
                Verdict::Fail,
                format!("{p} missing"),
                Some("mount proc and sysfs"),
            ));
        }
    }

    if tracefs.is_some() {
        let (loaded, _maps, status) = startup::load_probes();
        if loaded.is_none() {
            let detail = status
                .first()
                .map_or_else(String::new, |s| s.detail.clone());
            checks.push(check(
                "load kernel programs",
                Verdict::Fail,
                detail,
                Some("run as root on a kernel with CONFIG_BPF_SYSCALL and CONFIG_BPF_EVENTS"),
            ));
        } else {
            checks.push(check("load kernel programs", Verdict::Ok, "loaded", None));
        }
        if loaded.is_some() {
            for s in status {
                let (verdict, fix) = match s.state {
                    ProbeState::Attached | ProbeState::Standby => (Verdict::Ok, None),
                    ProbeState::Missing => (Verdict::Warn, Some(missing_fix(&s.probe))),
                    ProbeState::Failed => (
                        Verdict::Warn,
                        Some("report this kernel's format file for the tracepoint"),
                    ),
                };
                let detail = if s.detail.is_empty() {
                    "attached".to_string()
                } else {
                    s.detail
                };
                checks.push(check(
                    &format!("tracepoint {}", s.probe),
                    verdict,
                    detail,
                    fix,
                ));
            }
        }
        // Dropping `loaded` detaches everything: doctor leaves nothing behind.
    }
    DoctorReport { kernel, checks }
}

/// The capabilities the systemd unit grants beyond loading programs, each with why it matters.
fn capability_checks(kernel: &str, has: impl Fn(u32) -> bool) -> Vec<DoctorCheck> {
    const UNIT_FIX: &str = "add it to CapabilityBoundingSet= of bindsto.service (the packaged unit has it), or run as root";
    let mut out = Vec::new();
    out.push(if has(CAP_DAC_READ_SEARCH) {
        check(
            "capability CAP_DAC_READ_SEARCH",
            Verdict::Ok,
            "present",
            None,
        )
    } else {
        check(
            "capability CAP_DAC_READ_SEARCH",
            Verdict::Warn,
            "missing: mounts whose root is not searchable cannot be probed (statx/statfs)",
            Some(UNIT_FIX),
        )
    });
    // Before 5.11 BPF maps are charged to RLIMIT_MEMLOCK, which only CAP_SYS_RESOURCE raises.
    let old = kernel_before(kernel, (5, 11));
    out.push(match (has(CAP_SYS_RESOURCE), old) {
        (true, _) => check("capability CAP_SYS_RESOURCE", Verdict::Ok, "present", None),
        (false, false) => check(
            "capability CAP_SYS_RESOURCE",
            Verdict::Ok,
            "missing, not needed: this kernel charges BPF memory to the cgroup",
            None,
        ),
        (false, true) => check(
            "capability CAP_SYS_RESOURCE",
            Verdict::Fail,
            "missing: kernels before 5.11 need RLIMIT_MEMLOCK raised for the BPF maps",
            Some(UNIT_FIX),
        ),
    });
    out
}

/// Whether `release` (e.g. `5.10.228-219.884.amzn2.x86_64`) is older than `than`.
fn kernel_before(release: &str, than: (u32, u32)) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (it.next(), it.next()) {
        (Some(major), Some(minor)) => (major, minor) < than,
        _ => false,
    }
}

fn missing_fix(probe: &str) -> &'static str {
    if probe.starts_with("xfs:") {
        "load the xfs module (it attaches automatically when it appears); xfs_force_shutdown needs kernel >= 5.15 — log-error shutdowns are still confirmed by statx"
    } else if probe.starts_with("ext4:") {
        "load the ext4 module (it attaches automatically when it appears); until then ext4 errors are read from /sys/fs/ext4/<dev>/errors_count"
    } else if probe == "block:block_rq_error" {
        "kernel < 6.0: errors are read from block_rq_complete instead (nothing to do)"
    } else if probe.starts_with("syscalls:") {
        "a kernel with CONFIG_FTRACE_SYSCALLS=y"
    } else {
        "a kernel that has this tracepoint"
    }
}

/// `bindsto doctor`: the report as text or JSON; exit 0 when the agent can do its job here.
pub fn command(json: bool) -> Result<std::process::ExitCode, super::CliError> {
    let report = run();
    super::emit(&report, json, DoctorReport::render)?;
    Ok(super::verdict(report.ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_compare() {
        assert!(kernel_before("5.10.228-219.884.amzn2.x86_64", (5, 11)));
        assert!(kernel_before("4.14.355-275.570.amzn2.x86_64", (5, 11)));
        assert!(!kernel_before("6.1.115-126.197.amzn2023.x86_64", (5, 11)));
        assert!(!kernel_before("6.18.44-fc", (5, 11)));
        assert!(!kernel_before("weird", (5, 11)));
    }

    #[test]
    fn missing_capabilities_come_with_a_fix() {
        let none = capability_checks("5.10.1", |_| false);
        assert!(
            none.iter()
                .all(|c| c.verdict != Verdict::Ok && c.fix.is_some())
        );
        assert!(none.iter().any(|c| c.verdict == Verdict::Fail));
        let new_kernel = capability_checks("6.1.0", |_| false);
        assert!(new_kernel.iter().all(|c| c.verdict != Verdict::Fail));
        let all = capability_checks("5.10.1", |_| true);
        assert!(all.iter().all(|c| c.verdict == Verdict::Ok));
    }
}
