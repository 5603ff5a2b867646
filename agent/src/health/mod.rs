//! The health state machine: one per target (a mount, a block device, the mount subsystem).
//!
//! A target's state is derived from its active reasons: each signal has a severity for each
//! kind of target, and the worst active one wins. Signals are raised by evidence (events,
//! scans, mount checks) and cleared by evidence of recovery; `xfs_shutdown` and `fs_shutdown`
//! are latched until the mount goes away, because neither XFS nor ext4 recovers from a shutdown
//! (or an aborted journal) without an unmount.
//!
//! The [`engine`] folds the evidence into targets: kernel events through [`rules`], mount
//! checks through [`checks`], write canaries through [`canary`], scanner verdicts through [`verdicts`] and topology diffs
//! through [`observe`]; [`liveness`] tells a device that fails some requests from one that
//! completes nothing. It publishes a view of its state ([`view::EngineView`]) through the
//! [`view::Publisher`] it is given, so it never names `publish`, which implements that trait.
//! Times in JSON are formatted by [`timestamp`]. May depend on `config`, `metrics`, `probes`,
//! `topology` and `scan`.

mod canary;
mod checks;
pub mod engine;
mod ext4;
mod liveness;
mod observe;
mod once;
mod rules;
pub mod timestamp;
mod verdicts;
pub mod view;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    XfsShutdown,
    IoErrors,
    IoStall,
    MountBlocked,
    NfsStall,
    FsFull,
    /// A filesystem other than XFS shut down or its journal aborted (ext4).
    FsShutdown,
    /// ext4 reported errors and stays writable.
    FsErrors,
    NotMounted,
    ReadOnly,
    /// The write canary under a watched path failed or did not answer.
    NotWritable,
}

impl Signal {
    pub const ALL: [Signal; 11] = [
        Signal::XfsShutdown,
        Signal::IoErrors,
        Signal::IoStall,
        Signal::MountBlocked,
        Signal::NfsStall,
        Signal::FsFull,
        Signal::FsShutdown,
        Signal::FsErrors,
        Signal::NotMounted,
        Signal::ReadOnly,
        Signal::NotWritable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::XfsShutdown => "xfs_shutdown",
            Self::IoErrors => "io_errors",
            Self::IoStall => "io_stall",
            Self::MountBlocked => "mount_blocked",
            Self::NfsStall => "nfs_stall",
            Self::FsFull => "fs_full",
            Self::FsShutdown => "fs_shutdown",
            Self::FsErrors => "fs_errors",
            Self::NotMounted => "not_mounted",
            Self::ReadOnly => "read_only",
            Self::NotWritable => "not_writable",
        }
    }

    /// Latched signals stay until the target itself goes away.
    pub fn latched(self) -> bool {
        matches!(self, Self::XfsShutdown | Self::FsShutdown)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Healthy,
    Degraded,
    Failed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Mount,
    Device,
    Subsystem,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Mount => "mount",
            Self::Device => "device",
            Self::Subsystem => "subsystem",
        }
    }

    /// What a signal does to a target of this kind. A mount whose disk is hung cannot serve
    /// its users, so a stall fails the mount as well as the device; errors alone only
    /// degrade it until the filesystem gives up (shutdown), the device stalls, or nothing
    /// completes at all (then the engine escalates `io_errors`, see [`Target::escalate`]).
    pub fn severity(self, signal: Signal) -> State {
        match (self, signal) {
            (
                _,
                Signal::XfsShutdown
                | Signal::FsShutdown
                | Signal::IoStall
                | Signal::NfsStall
                | Signal::MountBlocked
                | Signal::NotMounted
                | Signal::ReadOnly
                | Signal::NotWritable,
            ) => State::Failed,
            (_, Signal::IoErrors | Signal::FsFull | Signal::FsErrors) => State::Degraded,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reason {
    pub signal: Signal,
    pub detail: String,
    /// When this signal was first raised for the target (RFC 3339 in JSON).
    #[serde(serialize_with = "crate::health::timestamp::rfc3339")]
    pub at: SystemTime,
}

/// A transition worth logging and counting.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub kind: Kind,
    pub id: String,
    pub critical: bool,
    reasons: BTreeMap<Signal, Reason>,
    /// Active signals that fail this target although their kind's severity would only
    /// degrade it (`io_errors` of a device that completes nothing).
    escalated: BTreeSet<Signal>,
    state: State,
    since: SystemTime,
}

impl Target {
    pub fn new(kind: Kind, id: impl Into<String>, critical: bool, now: SystemTime) -> Self {
        Self {
            kind,
            id: id.into(),
            critical,
            reasons: BTreeMap::new(),
            escalated: BTreeSet::new(),
            state: State::Healthy,
            since: now,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// When the target entered its current state.
    pub fn since(&self) -> SystemTime {
        self.since
    }

    pub fn reasons(&self) -> impl Iterator<Item = &Reason> {
        self.reasons.values()
    }

    pub fn has(&self, signal: Signal) -> bool {
        self.reasons.contains_key(&signal)
    }

    /// Raises (or refreshes the detail of) a signal. The first-seen time is kept.
    pub fn raise(&mut self, signal: Signal, detail: String, now: SystemTime) -> Option<Transition> {
        self.reasons
            .entry(signal)
            .and_modify(|r| r.detail.clone_from(&detail))
            .or_insert(Reason {
                signal,
                detail,
                at: now,
            });
        self.recompute(now)
    }

    /// Clears a signal on evidence of recovery. Latched signals ignore this.
    pub fn clear(&mut self, signal: Signal, now: SystemTime) -> Option<Transition> {
        if signal.latched() {
            return None;
        }
        self.reasons.remove(&signal)?;
        self.escalated.remove(&signal);
        self.recompute(now)
    }

    /// Makes an active signal fail this target (`on`) or return to its kind's severity.
    pub fn escalate(&mut self, signal: Signal, on: bool, now: SystemTime) -> Option<Transition> {
        let changed = if on && self.reasons.contains_key(&signal) {
            self.escalated.insert(signal)
        } else {
            self.escalated.remove(&signal)
        };
        if changed { self.recompute(now) } else { None }
    }

    pub fn escalated(&self, signal: Signal) -> bool {
        self.escalated.contains(&signal)
    }

    /// Sets a signal to match a level measured by a scan: raised when `active`, cleared
    /// otherwise.
    pub fn set(
        &mut self,
        signal: Signal,
        active: bool,
        detail: impl FnOnce() -> String,
        now: SystemTime,
    ) -> Option<Transition> {
        if active {
            self.raise(signal, detail(), now)
        } else {
            self.clear(signal, now)
        }
    }

    fn recompute(&mut self, now: SystemTime) -> Option<Transition> {
        let new = self
            .reasons
            .keys()
            .map(|s| {
                if self.escalated.contains(s) {
                    State::Failed
                } else {
                    self.kind.severity(*s)
                }
            })
            .max()
            .unwrap_or(State::Healthy);
        if new == self.state {
            return None;
        }
        let t = Transition {
            from: self.state,
            to: new,
        };
        self.state = new;
        self.since = now;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH
    }

    #[test]
    fn starts_healthy() {
        let t = Target::new(Kind::Mount, "/m", true, now());
        assert_eq!(t.state(), State::Healthy);
        assert_eq!(t.reasons().count(), 0);
    }

    #[test]
    fn shutdown_fails_and_is_latched() {
        let mut t = Target::new(Kind::Mount, "/m", true, now());
        let tr = t.raise(Signal::XfsShutdown, "x".into(), now());
        assert_eq!(
            tr,
            Some(Transition {
                from: State::Healthy,
                to: State::Failed
            })
        );
        assert_eq!(t.clear(Signal::XfsShutdown, now()), None);
        assert_eq!(t.state(), State::Failed);
    }

    #[test]
    fn worst_reason_wins_and_recovery_returns_to_healthy() {
        let mut t = Target::new(Kind::Device, "loop0", false, now());
        t.raise(Signal::IoErrors, "1 error".into(), now());
        assert_eq!(t.state(), State::Degraded);
        t.raise(Signal::IoStall, "31s".into(), now());
        assert_eq!(t.state(), State::Failed);
        t.clear(Signal::IoStall, now());
        assert_eq!(t.state(), State::Degraded);
        t.clear(Signal::IoErrors, now());
        assert_eq!(t.state(), State::Healthy);
    }

    #[test]
    fn an_escalated_signal_fails_until_lowered_or_cleared() {
        let mut t = Target::new(Kind::Device, "loop0", true, now());
        // Only an active signal can be escalated.
        assert_eq!(t.escalate(Signal::IoErrors, true, now()), None);
        t.raise(Signal::IoErrors, "1 error".into(), now());
        assert_eq!(t.state(), State::Degraded);
        t.escalate(Signal::IoErrors, true, now());
        assert_eq!(t.state(), State::Failed);
        t.escalate(Signal::IoErrors, false, now());
        assert_eq!(t.state(), State::Degraded);
        t.escalate(Signal::IoErrors, true, now());
        t.clear(Signal::IoErrors, now());
        assert_eq!(t.state(), State::Healthy);
        // Raised again later: degraded, not failed (the escalation went with the clear).
        t.raise(Signal::IoErrors, "1 error".into(), now());
        assert_eq!(t.state(), State::Degraded);
    }

    #[test]
    fn refresh_keeps_first_seen_and_updates_detail() {
        let mut t = Target::new(Kind::Subsystem, "mount", true, now());
        let t0 = now();
        let t1 = t0 + std::time::Duration::from_secs(5);
        t.raise(Signal::MountBlocked, "a".into(), t0);
        assert_eq!(t.raise(Signal::MountBlocked, "b".into(), t1), None);
        let r = t.reasons().next().unwrap();
        assert_eq!((r.detail.as_str(), r.at), ("b", t0));
    }

    #[test]
    fn set_follows_level() {
        let mut t = Target::new(Kind::Mount, "/m", false, now());
        t.set(Signal::FsFull, true, || "96%".into(), now());
        assert_eq!(t.state(), State::Degraded);
        t.set(Signal::FsFull, false, String::new, now());
        assert_eq!(t.state(), State::Healthy);
    }
}
