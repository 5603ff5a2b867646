//! NFS stalls from SUNRPC tasks in flight (`sunrpc:rpc_task_begin` -> `rpc_task_end`).
//!
//! The tracepoints name an RPC task and its client (`cl_clid`) but not the server, and the
//! client id is not visible in mountinfo, so a task cannot be tied to one mount from the
//! tracepoint alone. The verdict is therefore per host plus per mount: an NFS mount is stalled
//! when an RPC task on the host has been in flight longer than `nfs_stall_after` *and* the
//! mount's own check (statx of its root) is unanswered past `probe_timeout`. A healthy share
//! answers its check, so a stuck task of another server, or an entry that lost its end
//! event, cannot mark it.

use std::time::Duration;

use agent_ebpf::{RpcKey, RqVal};
use aya::maps::{HashMap, MapData};

use crate::{config::Detect, probes::batch};

/// What the RPC task map holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RpcInflight {
    /// Tasks in flight (counts included: task ids are all 0 without SUNRPC debug).
    pub tasks: u64,
    /// The oldest task's client id and age.
    pub oldest: Option<(u32, Duration)>,
}

/// Folds map entries into the host-wide view.
pub fn summarize(entries: impl IntoIterator<Item = (RpcKey, RqVal)>, now_ns: u64) -> RpcInflight {
    let mut out = RpcInflight::default();
    for (k, v) in entries {
        out.tasks += u64::from(v.count.max(1));
        let age = Duration::from_nanos(now_ns.saturating_sub(v.start_ns));
        if out.oldest.is_none_or(|(_, a)| age > a) {
            out.oldest = Some((k.client_id, age));
        }
    }
    out
}

pub fn oldest(map: &HashMap<MapData, RpcKey, RqVal>, now_ns: u64) -> RpcInflight {
    summarize(batch::collect(map), now_ns)
}

/// Keys of entries that lost their end event (an end the agent missed while it was not
/// attached, a task torn down without `rpc_task_end`): in flight longer than `leak_after` and
/// started before `answered_since_ns`, the time after which the server of every NFS mount on
/// the host has answered a mount check (None: some mount has not, so every entry may be its stall).
/// Without this the map only grows and the oldest-task gauge climbs forever.
pub fn leaked(
    entries: impl IntoIterator<Item = (RpcKey, RqVal)>,
    answered_since_ns: Option<u64>,
    now_ns: u64,
    leak_after: Duration,
) -> Vec<RpcKey> {
    let Some(answered) = answered_since_ns else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter(|(_, v)| {
            v.start_ns < answered
                && Duration::from_nanos(now_ns.saturating_sub(v.start_ns)) >= leak_after
        })
        .map(|(k, _)| k)
        .collect()
}

/// Removes the [`leaked`] entries from the map; returns how many.
pub fn forget_leaked(
    map: &mut HashMap<MapData, RpcKey, RqVal>,
    answered_since_ns: Option<u64>,
    now_ns: u64,
    leak_after: Duration,
) -> usize {
    if answered_since_ns.is_none() {
        return 0;
    }
    let stale = leaked(batch::collect(map), answered_since_ns, now_ns, leak_after);
    stale.iter().filter(|k| map.remove(k).is_ok()).count()
}

/// The time after which every NFS mount's server answered a check (the oldest of
/// `answered`, each None while its mount has not), or None when some has not answered or a
/// mount call is in flight: that may be an NFS mount not in mountinfo yet, whose tasks are
/// exactly the ones that matter.
pub fn answered_since(
    answered: impl IntoIterator<Item = Option<u64>>,
    calls_in_flight: bool,
    now_ns: u64,
) -> Option<u64> {
    if calls_in_flight {
        return None;
    }
    answered
        .into_iter()
        .try_fold(now_ns, |min, a| a.map(|a| min.min(a)))
}

/// The `nfs_stall` verdict of an NFS mount (source `server:/path`) whose check has waited
/// `waited`: the RPC view names the stuck RPC; without it (tracepoints missing, or no task
/// old enough yet) the unanswered check alone decides, after `nfs_stall_after`.
pub fn nfs_stall(
    rpc: RpcInflight,
    waited: Duration,
    source: &str,
    detect: &Detect,
) -> Option<String> {
    stall_detail(rpc, waited, source, detect).or_else(|| {
        (waited >= detect.nfs_stall_after).then(|| {
            format!(
                "statx of the mount root unanswered for {:.0}s",
                waited.as_secs_f64()
            )
        })
    })
}

/// The `nfs_stall` detail for an NFS mount (source `server:/path`) whose check has waited
/// `check_waited`, or None when the RPC view does not show a stall of it.
pub fn stall_detail(
    rpc: RpcInflight,
    check_waited: Duration,
    source: &str,
    detect: &Detect,
) -> Option<String> {
    let (client, age) = rpc.oldest?;
    if age < detect.nfs_stall_after || check_waited < detect.probe_timeout {
        return None;
    }
    let server = source.rsplit_once(':').map_or(source, |(host, _)| host);
    Some(format!(
        "server {server} ({source}) not answering: RPC task in flight for {:.0}s \
         (sunrpc client {client}, {} task(s) in flight), statx of the mount root unanswered for {:.0}s",
        age.as_secs_f64(),
        rpc.tasks,
        check_waited.as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn entry(client_id: u32, task_id: u32, start_s: u64, count: u32) -> (RpcKey, RqVal) {
        (
            RpcKey { client_id, task_id },
            RqVal {
                start_ns: start_s * S,
                count,
                nr_sector: 0,
                op: [0; agent_ebpf::OP_LEN],
            },
        )
    }

    fn detect() -> Detect {
        let mut d = crate::config::Config::default().detect;
        d.nfs_stall_after = Duration::from_secs(10);
        d.probe_timeout = Duration::from_secs(5);
        d
    }

    #[test]
    fn oldest_task_and_counts() {
        let r = summarize(
            [entry(3, 7, 90, 1), entry(4, 0, 20, 3), entry(3, 8, 95, 1)],
            100 * S,
        );
        assert_eq!(r.tasks, 5);
        assert_eq!(r.oldest, Some((4, Duration::from_secs(80))));
        assert_eq!(summarize([], 100 * S), RpcInflight::default());
    }

    #[test]
    fn entries_are_leaked_only_when_old_and_every_share_answered_since() {
        let entries = [entry(1, 1, 10, 1), entry(1, 2, 80, 1), entry(2, 0, 50, 4)];
        let keys = |v: Vec<RpcKey>| {
            v.iter()
                .map(|k| (k.client_id, k.task_id))
                .collect::<Vec<_>>()
        };
        let after = Duration::from_secs(30);
        // Every share answered since t=60: tasks from before then, 30 s old, lost their end.
        assert_eq!(
            keys(leaked(entries, Some(60 * S), 100 * S, after)),
            vec![(1, 1), (2, 0)]
        );
        // A share that has not answered since: nothing is dropped, any task may be its stall.
        assert!(leaked(entries, None, 1000 * S, after).is_empty());
        // Young entries stay even when the shares answered.
        assert!(leaked(entries, Some(100 * S), 30 * S, after).is_empty());
    }

    #[test]
    fn stall_needs_an_old_task_and_an_unanswered_check() {
        let d = detect();
        let old = summarize([entry(2, 1, 0, 1)], 30 * S);
        let young = summarize([entry(2, 1, 25, 1)], 30 * S);
        let src = "127.0.0.1:/export";
        // A healthy share answers its check: an old task elsewhere does not mark it.
        assert!(stall_detail(old, Duration::from_secs(1), src, &d).is_none());
        assert!(stall_detail(young, Duration::from_secs(20), src, &d).is_none());
        assert!(stall_detail(RpcInflight::default(), Duration::from_secs(20), src, &d).is_none());
        let detail = stall_detail(old, Duration::from_secs(6), src, &d).unwrap();
        assert!(
            detail.starts_with("server 127.0.0.1 (127.0.0.1:/export)"),
            "{detail}"
        );
        assert!(detail.contains("RPC task in flight for 30s"), "{detail}");
        assert!(detail.contains("sunrpc client 2"), "{detail}");
    }
}
