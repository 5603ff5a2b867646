//! One count per XFS shutdown, whichever path sees it first.
//!
//! Two paths report a shutdown: the `xfs_force_shutdown` event and a mount check whose `statx`
//! fails with `EIO`. The kernel marks the filesystem shut down before it fires the tracepoint
//! (the log is forced in between), so a check can see `EIO` milliseconds before the event is
//! read. The event fires once per filesystem instance, so it always counts; a check's
//! confirmation counts only if no event for that instance comes within [`EVENT_GRACE_NS`] (the
//! event was lost, or the kernel has no such tracepoint).
//!
//! Instances are told apart by mount id: `down` holds the mount ids known shut down. An event
//! for a device none of whose observed mounts is still up is `unclaimed`: it belongs to a
//! mount of that device the engine has not observed yet (a remount seen by the event before
//! the mount table), whose check then takes it instead of counting again.

use std::collections::{BTreeMap, BTreeSet};

use crate::probes::dev::DevId;

/// How long (kernel time) a confirmation waits for its event before counting itself. The
/// event trails `EIO` by 0.1-5 ms; this leaves room for a slow log force and a busy agent.
pub const EVENT_GRACE_NS: u64 = 2_000_000_000;

#[derive(Debug, Default)]
pub struct ShutdownLedger {
    down: BTreeSet<u32>,
    unclaimed: BTreeSet<DevId>,
    /// Confirmed by a check, waiting for the event: device -> deadline (monotonic ns).
    pending: BTreeMap<DevId, u64>,
}

impl ShutdownLedger {
    /// An `xfs_force_shutdown` event for `dev`, whose observed mounts are `mount_ids`. Always
    /// one count (the caller's); this records which instance it was.
    pub fn event(&mut self, dev: DevId, mount_ids: &[u32]) {
        let claimed_by_check = self.pending.remove(&dev).is_some();
        let fresh = mount_ids.iter().any(|id| !self.down.contains(id));
        self.down.extend(mount_ids);
        if !fresh && !claimed_by_check {
            self.unclaimed.insert(dev);
        }
    }

    /// A check of mount `mount_id` on `dev` found it shut down at `now_ns`. Returns nothing to
    /// count now: a confirmation counts later, in [`Self::expire`], if its event never came.
    pub fn confirmed(&mut self, dev: DevId, mount_id: u32, now_ns: u64) {
        if !self.down.insert(mount_id) || self.unclaimed.remove(&dev) {
            return;
        }
        self.pending
            .entry(dev)
            .or_insert(now_ns.saturating_add(EVENT_GRACE_NS));
    }

    /// Confirmations whose event did not come in time: one count each, by device.
    pub fn expire(&mut self, now_ns: u64) -> Vec<DevId> {
        let due: Vec<DevId> = self
            .pending
            .iter()
            .filter(|(_, deadline)| **deadline <= now_ns)
            .map(|(dev, _)| *dev)
            .collect();
        for dev in &due {
            self.pending.remove(dev);
        }
        due
    }

    /// After a mount table read: forget mounts and devices no longer in it, so the ledger is
    /// bounded by the mount table. Pending confirmations stay: their shutdown happened.
    pub fn retain(&mut self, mounted: &BTreeMap<u32, DevId>) {
        self.down.retain(|id| mounted.contains_key(id));
        let devs: BTreeSet<DevId> = mounted.values().copied().collect();
        self.unclaimed.retain(|d| devs.contains(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: DevId = DevId { major: 7, minor: 0 };

    /// Counts as the engine does: every event, and every expired confirmation.
    fn run(steps: &[(&str, u32)]) -> usize {
        let mut l = ShutdownLedger::default();
        let mut counted = 0;
        let mut mounted = BTreeMap::new();
        for &(step, id) in steps {
            match step {
                "mount" => {
                    mounted.clear();
                    mounted.insert(id, D);
                    l.retain(&mounted);
                }
                "event" => {
                    let ids: Vec<u32> = mounted.keys().copied().collect();
                    l.event(D, &ids);
                    counted += 1;
                }
                "event-unseen" => {
                    l.event(D, &[]);
                    counted += 1;
                }
                "stale-event" => {
                    // An event for the old instance read after the table shows the new one.
                    l.event(D, &[id]);
                    counted += 1;
                }
                "check" => l.confirmed(D, id, 0),
                _ => unreachable!(),
            }
        }
        counted + l.expire(u64::MAX).len()
    }

    #[test]
    fn each_order_counts_once() {
        assert_eq!(run(&[("mount", 1), ("event", 0), ("check", 1)]), 1);
        assert_eq!(run(&[("mount", 1), ("check", 1), ("event", 0)]), 1);
        assert_eq!(run(&[("mount", 1), ("check", 1)]), 1, "event lost");
        assert_eq!(run(&[("mount", 1), ("check", 1), ("check", 1)]), 1);
    }

    #[test]
    fn remounts_count_each_instance_once() {
        // The second instance's event is read before the table shows its mount.
        let steps = [
            ("mount", 1),
            ("event", 0),
            ("check", 1),
            ("stale-event", 1),
            ("mount", 2),
            ("check", 2),
        ];
        assert_eq!(run(&steps), 2);
        // Instances the engine never observed, then one it did.
        let steps = [
            ("event-unseen", 0),
            ("event-unseen", 0),
            ("mount", 3),
            ("check", 3),
            ("event", 0),
        ];
        assert_eq!(run(&steps), 3);
    }

    #[test]
    fn a_confirmation_waits_for_its_grace() {
        let mut l = ShutdownLedger::default();
        l.confirmed(D, 1, 100);
        assert!(l.expire(100 + EVENT_GRACE_NS - 1).is_empty());
        assert_eq!(l.expire(100 + EVENT_GRACE_NS), vec![D]);
        assert!(l.expire(u64::MAX).is_empty());
    }
}
