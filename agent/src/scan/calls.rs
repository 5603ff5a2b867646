//! Mount-family syscalls in flight (mount, umount, fsmount, move_mount ...): which are
//! blocked past `mount_blocked_after`. Entries of threads that died without the exit
//! tracepoint are pruned.

use std::time::Duration;

use agent_ebpf::{MountCall, Syscall};
use aya::maps::{HashMap, MapData};

use crate::probes::batch;

/// A mount-family syscall in flight, decoded from the map.
#[derive(Clone, Debug, PartialEq)]
pub struct InflightCall {
    pub tgid: u32,
    pub tid: u32,
    pub syscall: &'static str,
    pub comm: String,
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub age: Duration,
}

/// A NUL-padded string the programs recorded, as text.
pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub fn decode_call(pid_tgid: u64, c: &MountCall, now_ns: u64) -> InflightCall {
    InflightCall {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        syscall: Syscall::from_u32(c.syscall).map_or("unknown", Syscall::name),
        comm: cstr(&c.comm),
        source: cstr(&c.source),
        target: cstr(&c.target),
        fstype: cstr(&c.fstype),
        age: Duration::from_nanos(now_ns.saturating_sub(c.start_ns)),
    }
}

/// All mount-family calls in flight, oldest first, and how many entries were pruned: those
/// whose thread no longer exists (it died in a way that skipped the exit tracepoint).
pub fn mount_calls(
    map: &mut HashMap<MapData, u64, MountCall>,
    now_ns: u64,
) -> (Vec<InflightCall>, usize) {
    let mut calls = Vec::new();
    let mut dead = Vec::new();
    for (key, call) in batch::collect(map) {
        let c = decode_call(key, &call, now_ns);
        let alive = std::path::Path::new(&format!("/proc/{}/task/{}", c.tgid, c.tid)).exists();
        if alive {
            calls.push(c);
        } else {
            dead.push(key);
        }
    }
    let pruned = dead.iter().filter(|k| map.remove(k).is_ok()).count();
    calls.sort_by_key(|c| std::cmp::Reverse(c.age));
    (calls, pruned)
}

/// The mount-call verdict of one scan.
#[derive(Debug, Default)]
pub struct CallsVerdict {
    /// Any call in flight at all (an NFS mount not in mountinfo yet may be one).
    pub in_flight: bool,
    pub oldest: Duration,
    /// Blocked calls, oldest first, at most the limit given.
    pub blocked: Vec<InflightCall>,
    /// Blocked calls, all of them.
    pub blocked_total: usize,
    /// Blocked calls the limit left out of `blocked`.
    pub left_out: usize,
    pub pruned: usize,
}

impl CallsVerdict {
    /// The `mount_blocked` detail (None when nothing is blocked).
    pub fn detail(&self) -> Option<String> {
        let first = self.blocked.first()?;
        Some(format!(
            "{} mount call(s) blocked; oldest: {} {} {} -> {} ({}) for {:.0}s",
            self.blocked.len(),
            first.comm,
            first.syscall,
            first.source,
            first.target,
            first.fstype,
            first.age.as_secs_f64()
        ))
    }
}

/// Reads the mount-call map: calls in flight longer than `blocked_after` are blocked.
pub fn scan(
    map: &mut HashMap<MapData, u64, MountCall>,
    now_ns: u64,
    blocked_after: Duration,
    max: usize,
) -> CallsVerdict {
    let (all, pruned) = mount_calls(map, now_ns);
    let oldest = all.first().map_or(Duration::ZERO, |c| c.age);
    let in_flight = !all.is_empty();
    let mut blocked: Vec<InflightCall> =
        all.into_iter().filter(|c| c.age >= blocked_after).collect();
    let blocked_total = blocked.len();
    // Oldest first: the ones listed are the ones that matter most.
    let left_out = blocked_total.saturating_sub(max);
    blocked.truncate(max);
    CallsVerdict {
        in_flight,
        oldest,
        blocked,
        blocked_total,
        left_out,
        pruned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn decodes_mount_call_strings() {
        let mut c = MountCall::zeroed();
        c.start_ns = S;
        c.syscall = Syscall::Mount as u32;
        c.comm[..5].copy_from_slice(b"mount");
        c.source[..9].copy_from_slice(b"/dev/loop");
        c.target[..4].copy_from_slice(b"/mnt");
        c.fstype[..3].copy_from_slice(b"xfs");
        let d = decode_call((42u64 << 32) | 43, &c, 4 * S);
        assert_eq!((d.tgid, d.tid, d.syscall), (42, 43, "mount"));
        assert_eq!(
            (d.source.as_str(), d.target.as_str(), d.fstype.as_str()),
            ("/dev/loop", "/mnt", "xfs")
        );
        assert_eq!(d.comm, "mount");
        assert_eq!(d.age, Duration::from_secs(3));
    }
}
