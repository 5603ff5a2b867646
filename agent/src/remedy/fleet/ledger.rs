//! The budget's item: one per Auto Scaling group, holding the group's leases and failure
//! records, and the pure decisions taken on it (acquire, renew, record, release). Every change
//! is written back with a compare-and-set on the item's version (see `table`), so a decision
//! is taken on exactly the state it replaces: two hosts cannot both take the last slot, and
//! a lease's expiry is judged on the version the write is conditioned on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Out-of-service leases and failure records of one group, keyed by instance id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(default)]
    pub holders: BTreeMap<String, Lease>,
    #[serde(default)]
    pub failing: BTreeMap<String, Failure>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub since_ms: u64,
    pub expires_ms: u64,
    /// What failed on the holder, as it said when it acquired.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub signal: String,
    pub target: String,
    pub since_ms: u64,
    pub expires_ms: u64,
}

/// What a host learns when it asks for a lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It holds one (granted now, or kept from before a restart).
    Granted { kept: bool },
    /// Every slot is held by others.
    Full { holders: Vec<String> },
    /// More than `outage_percent` of the group is failing: nobody new goes out.
    Outage { failing: usize },
}

/// The group's budget as one host sees it: the group's size and the limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub size: usize,
    pub budget: usize,
    pub outage_percent: f64,
    pub lease_ms: u64,
}

impl Limits {
    /// The share of the group with a live failure record, in percent.
    pub fn failing_percent(&self, failing: usize) -> f64 {
        failing as f64 * 100.0 / self.size.max(1) as f64
    }
}

impl Ledger {
    /// Drops leases and records that nobody renewed in time.
    pub fn prune(&mut self, now_ms: u64) {
        self.holders.retain(|_, l| l.expires_ms > now_ms);
        self.failing.retain(|_, f| f.expires_ms > now_ms);
    }

    /// A live copy: what counts at `now_ms`.
    pub fn live(&self, now_ms: u64) -> Ledger {
        let mut l = self.clone();
        l.prune(now_ms);
        l
    }

    /// Asks for a lease for `me`. `Some(ledger)` is what to write (the lease granted or
    /// renewed); `None` leaves the item as it is.
    pub fn acquire(
        &self,
        me: &str,
        reason: &str,
        now_ms: u64,
        lim: Limits,
    ) -> (Verdict, Option<Ledger>) {
        let mut next = self.live(now_ms);
        let expires_ms = now_ms + lim.lease_ms;
        if let Some(l) = next.holders.get_mut(me) {
            // A restarted holder keeps its lease rather than taking a second one.
            l.expires_ms = expires_ms;
            return (Verdict::Granted { kept: true }, Some(next));
        }
        let failing = next.failing.len();
        if lim.failing_percent(failing) > lim.outage_percent {
            return (Verdict::Outage { failing }, None);
        }
        if next.holders.len() >= lim.budget {
            let holders = next.holders.keys().cloned().collect();
            return (Verdict::Full { holders }, None);
        }
        next.holders.insert(
            me.to_owned(),
            Lease {
                since_ms: now_ms,
                expires_ms,
                reason: reason.to_owned(),
            },
        );
        (Verdict::Granted { kept: false }, Some(next))
    }

    /// Records (or renews) `me`'s failure and renews its lease if it holds one; the answer
    /// says whether it holds one. The first `since_ms` of a record is kept.
    pub fn record(
        &self,
        me: &str,
        mut failure: Failure,
        now_ms: u64,
        lease_ms: u64,
    ) -> (bool, Ledger) {
        let mut next = self.live(now_ms);
        let expires_ms = now_ms + lease_ms;
        if let Some(old) = next.failing.get(me) {
            failure.since_ms = old.since_ms;
        }
        failure.expires_ms = expires_ms;
        next.failing.insert(me.to_owned(), failure);
        let holds = match next.holders.get_mut(me) {
            Some(l) => {
                l.expires_ms = expires_ms;
                true
            }
            None => false,
        };
        (holds, next)
    }

    /// Gives back `me`'s lease and failure record (its storage recovered).
    pub fn release(&self, me: &str, now_ms: u64) -> Ledger {
        let mut next = self.live(now_ms);
        next.holders.remove(me);
        next.failing.remove(me);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        size: 10,
        budget: 2,
        outage_percent: 50.0,
        lease_ms: 1000,
    };

    fn failure() -> Failure {
        Failure {
            signal: "xfs_shutdown".into(),
            target: "/var/lib/docker".into(),
            since_ms: 5,
            expires_ms: 0,
        }
    }

    fn fail(l: &Ledger, me: &str, now: u64) -> Ledger {
        l.record(me, failure(), now, LIM.lease_ms).1
    }

    #[test]
    fn two_of_three_get_a_slot_and_a_restart_keeps_its_own() {
        let mut l = Ledger::default();
        for h in ["a", "b", "c"] {
            l = fail(&l, h, 0);
        }
        let (v, next) = l.acquire("a", "x", 10, LIM);
        assert_eq!(v, Verdict::Granted { kept: false });
        l = next.unwrap();
        let (v, next) = l.acquire("b", "x", 10, LIM);
        assert_eq!(v, Verdict::Granted { kept: false });
        l = next.unwrap();
        let (v, next) = l.acquire("c", "x", 10, LIM);
        assert_eq!(
            v,
            Verdict::Full {
                holders: vec!["a".into(), "b".into()]
            }
        );
        assert!(next.is_none());
        // a restarts and asks again: the same lease, renewed, not a second one.
        let (v, next) = l.acquire("a", "x", 500, LIM);
        assert_eq!(v, Verdict::Granted { kept: true });
        let next = next.unwrap();
        assert_eq!(next.holders.len(), 2);
        assert_eq!(next.holders["a"].since_ms, 10);
        assert_eq!(next.holders["a"].expires_ms, 1500);
    }

    #[test]
    fn an_expired_lease_is_free_and_a_renewed_one_is_not() {
        let mut l = Ledger::default();
        for h in ["a", "b", "c"] {
            l = fail(&l, h, 0);
        }
        l = l.acquire("a", "x", 0, LIM).1.unwrap();
        l = l.acquire("b", "x", 0, LIM).1.unwrap();
        // b renews (its record and lease) at 900; a does not.
        let (holds, next) = l.record("b", failure(), 900, LIM.lease_ms);
        assert!(holds);
        l = fail(&next, "c", 900);
        assert!(matches!(
            l.acquire("c", "x", 999, LIM).0,
            Verdict::Full { .. }
        ));
        let (v, next) = l.acquire("c", "x", 1000, LIM);
        assert_eq!(v, Verdict::Granted { kept: false });
        let next = next.unwrap();
        assert!(!next.holders.contains_key("a"));
        assert!(!next.failing.contains_key("a"));
        assert_eq!(next.failing["c"].since_ms, 5);
    }

    #[test]
    fn above_outage_percent_nobody_new_goes_out_but_holders_keep() {
        let mut l = Ledger::default();
        l = fail(&l, "h", 0);
        l = l.acquire("h", "x", 0, LIM).1.unwrap();
        for h in ["a", "b", "c", "d", "e"] {
            l = fail(&l, h, 0);
        }
        // 6 of 10 failing: 60% > 50%.
        assert_eq!(
            l.acquire("a", "x", 1, LIM).0,
            Verdict::Outage { failing: 6 }
        );
        assert_eq!(
            l.acquire("h", "x", 1, LIM).0,
            Verdict::Granted { kept: true }
        );
        // Two recover: 40%, and a slot is free again.
        l = l.release("d", 2).release("e", 2);
        assert_eq!(
            l.acquire("a", "x", 3, LIM).0,
            Verdict::Granted { kept: false }
        );
    }

    #[test]
    fn release_frees_the_slot_and_the_record() {
        let mut l = fail(&Ledger::default(), "a", 0);
        l = l.acquire("a", "x", 0, LIM).1.unwrap();
        let l = l.release("a", 1);
        assert!(l.holders.is_empty() && l.failing.is_empty());
    }
}
