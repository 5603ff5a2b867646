//! Capability drop after the kernel programs are loaded and attached.
//!
//! `bindsto run` loads and attaches while the process is still single-threaded, then keeps only
//! what the running agent needs; every thread started afterwards (the async runtime, probe and
//! exec threads) inherits the reduced set, since capabilities are per thread.
//!
//! What stays, and why (kernels that know CAP_BPF, 5.8 and later):
//! - `CAP_BPF`: the scanner reads the in-flight maps every scan (`bpf(2)` map lookups need it
//!   while `kernel.unprivileged_bpf_disabled` is set, the distributions' default), and a
//!   program whose tracepoint appears late (the `sunrpc` or `xfs` module loads after the agent)
//!   is loaded then.
//! - `CAP_PERFMON`: that late attach opens a perf event on the tracepoint (or a kprobe on 5.10),
//!   and the verifier allows the tracing helpers the late program uses only with it.
//! - `CAP_DAC_READ_SEARCH`: the off-thread `statx`/`statfs` of every watched mount root,
//!   whatever its permissions.
//!
//! On older kernels (no CAP_BPF) `CAP_SYS_ADMIN` stands in for the first two. So it does where
//! `kernel.perf_event_paranoid` is above 2: Debian's and Ubuntu's kernels (default 3) then allow
//! `perf_event_open`, and so the late attach, only with `CAP_SYS_ADMIN` (found by the VM test
//! `nfs-server-gone` on Debian's 6.12). Everything else
//! goes: `CAP_SYS_ADMIN` (tracefs is mounted by then), `CAP_SYS_RESOURCE` (RLIMIT_MEMLOCK is
//! already raised), and all the rest. Nothing else needs one: tracefs files, the state
//! directory and the config are root's own (uid 0 stays), D-Bus authorises systemd calls by
//! uid, the HTTP port is unprivileged and bound already, and `exec` children are ours.
//!
//! The bounding set is narrowed too when the process may (`CAP_SETPCAP`, e.g. run by hand as
//! root). Under the systemd unit it cannot, and stays the unit's `CapabilityBoundingSet=`:
//! with `NoNewPrivileges=yes` a child started by `exec` cannot gain more than the agent keeps.

use std::fmt;

use tracing::{info, warn};

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SETPCAP: u32 = 8;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("capget: {0}")]
    Get(std::io::Error),
    #[error("capset (keep {keep}): {source}")]
    Set {
        keep: CapSet,
        source: std::io::Error,
    },
}

/// A set of capabilities as a bit mask (bit n = capability n), as /proc/<pid>/status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    pub fn has(self, cap: u32) -> bool {
        self.0 & (1u64 << cap) != 0
    }
}

impl fmt::Display for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = (0..64).filter(|c| self.has(*c)).map(cap_name).collect();
        if names.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&names.join(","))
    }
}

fn cap_name(cap: u32) -> &'static str {
    match cap {
        CAP_DAC_READ_SEARCH => "cap_dac_read_search",
        CAP_SETPCAP => "cap_setpcap",
        CAP_SYS_ADMIN => "cap_sys_admin",
        CAP_PERFMON => "cap_perfmon",
        CAP_BPF => "cap_bpf",
        _ => "other",
    }
}

/// The highest capability this kernel knows (`/proc/sys/kernel/cap_last_cap`).
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAP_BPF)
}

/// `kernel.perf_event_paranoid` (2, the upstream default, when unreadable).
pub fn perf_event_paranoid() -> i32 {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2)
}

/// What the running agent keeps on a kernel whose last capability is `last_cap`, with
/// `kernel.perf_event_paranoid` at `perf_paranoid`.
pub fn runtime_set(last_cap: u32, perf_paranoid: i32) -> CapSet {
    let mut keep = 1u64 << CAP_DAC_READ_SEARCH;
    if last_cap >= CAP_BPF {
        keep |= (1 << CAP_BPF) | (1 << CAP_PERFMON);
    } else {
        keep |= 1 << CAP_SYS_ADMIN;
    }
    // Debian's "perf_event_paranoid = 3": perf_event_open needs CAP_SYS_ADMIN, whatever else.
    if perf_paranoid > 2 {
        keep |= 1 << CAP_SYS_ADMIN;
    }
    CapSet(keep)
}

fn capget() -> Result<CapSet, PrivilegeError> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData structs (version 3) into `data`, which has room for them.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if r != 0 {
        return Err(PrivilegeError::Get(std::io::Error::last_os_error()));
    }
    Ok(CapSet(
        u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32),
    ))
}

/// Drops the calling thread (call it while the process has one) to `keep` in the effective,
/// permitted and inheritable sets, clears the ambient set, and narrows the bounding set when
/// allowed. Returns the bounding set left (the unit's when it could not be narrowed).
fn drop_to(keep: CapSet, last: u32) -> Result<(CapSet, bool), PrivilegeError> {
    let permitted = capget()?;
    // Only what we hold can be kept.
    let keep = CapSet(keep.0 & permitted.0);
    // SAFETY: plain prctl calls with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let mut narrowed = false;
    if permitted.has(CAP_SETPCAP) {
        narrowed = true;
        for cap in 0..=last {
            if !keep.has(cap) {
                // SAFETY: as above.
                let r =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                if r != 0 {
                    narrowed = false;
                }
            }
        }
    }
    let lo = (keep.0 & 0xffff_ffff) as u32;
    let hi = (keep.0 >> 32) as u32;
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads the two CapData structs of `data`.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if r != 0 {
        return Err(PrivilegeError::Set {
            keep,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok((bounding(last), narrowed))
}

fn bounding(last: u32) -> CapSet {
    let mut set = 0u64;
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments; reads the calling thread's bounding set.
        if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } == 1 {
            set |= 1 << cap;
        }
    }
    CapSet(set)
}

/// Drops to [`runtime_set`], logging what stays. A failure is logged, not fatal: the agent
/// then runs with the capabilities it was started with (still bounded by the unit).
pub fn drop_after_attach() {
    let last = last_cap();
    let keep = runtime_set(last, perf_event_paranoid());
    match drop_to(keep, last) {
        Ok((bset, narrowed)) => {
            let kept = capget().map(|c| c.to_string()).unwrap_or_default();
            if narrowed {
                info!(kept = %kept, bounding = %bset, "capabilities dropped after attaching the kernel programs");
            } else {
                info!(kept = %kept, bounding = %bset, "capabilities dropped after attaching the kernel programs; the bounding set stays the service's (no CAP_SETPCAP)");
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot drop capabilities; running with those the agent started with");
        }
    }
}

/// The evidence helper (`bindsto evidence-helper`) keeps, of what it was started with,
/// `CAP_SYS_ADMIN` (loading the stack iterator, opening `/proc/<tid>/stack`), `CAP_SYS_PTRACE`
/// (`/proc/<tid>/stack` of a task whose capabilities are not a subset of its own, for tasks
/// the iterator skips), `CAP_SYSLOG` (opening `/dev/kmsg` on kernels without the
/// `CAP_SYS_ADMIN` fallback) and `CAP_DAC_READ_SEARCH`; nothing else. Under the unit, whose
/// bounding set has neither `CAP_SYS_PTRACE` nor `CAP_SYSLOG`, blocked tasks' stacks come from
/// the iterator and the kernel log from the journal. Silent: it has no log.
pub fn drop_for_evidence_helper() {
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_SYSLOG: u32 = 34;
    let keep = CapSet(
        (1 << CAP_SYS_ADMIN)
            | (1 << CAP_DAC_READ_SEARCH)
            | (1 << CAP_SYS_PTRACE)
            | (1 << CAP_SYSLOG),
    );
    let _ = drop_to(keep, last_cap());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_set_by_kernel() {
        let modern = runtime_set(40, 2);
        assert!(modern.has(CAP_BPF) && modern.has(CAP_PERFMON) && modern.has(CAP_DAC_READ_SEARCH));
        assert!(!modern.has(CAP_SYS_ADMIN));
        assert_eq!(modern.0.count_ones(), 3);
        assert_eq!(
            modern.to_string(),
            "cap_dac_read_search,cap_perfmon,cap_bpf"
        );
        // Amazon Linux 2 on 4.14: no CAP_BPF, CAP_SYS_ADMIN instead.
        let old = runtime_set(37, 2);
        assert_eq!(old.to_string(), "cap_dac_read_search,cap_sys_admin");
        // Debian and Ubuntu kernels (perf_event_paranoid 3): late attach needs CAP_SYS_ADMIN.
        let debian = runtime_set(40, 3);
        assert_eq!(
            debian.to_string(),
            "cap_dac_read_search,cap_sys_admin,cap_perfmon,cap_bpf"
        );
    }
}
