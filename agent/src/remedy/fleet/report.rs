//! What `/status` shows under `remediation.fleet`: the group's budget as this host last read
//! it, who holds the slots and since when, who is failing, and why this host waits.

use std::time::SystemTime;

use serde::Serialize;

use super::ledger::Ledger;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetState {
    /// Not failing; nothing asked.
    Idle,
    /// Failing, failure recorded, no lease asked yet (hold_down).
    Failing,
    Holding,
    /// Every slot is held by others.
    Held,
    /// More than outage_percent of the group is failing.
    Outage,
    /// The table or the group cannot be read: this host does not act.
    Unavailable,
}

impl FleetState {
    pub fn name(self) -> &'static str {
        match self {
            FleetState::Idle => "idle",
            FleetState::Failing => "failing",
            FleetState::Holding => "holding",
            FleetState::Held => "held",
            FleetState::Outage => "outage",
            FleetState::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HolderView {
    pub instance: String,
    #[serde(serialize_with = "crate::health::timestamp::rfc3339")]
    pub since: SystemTime,
    #[serde(serialize_with = "crate::health::timestamp::rfc3339")]
    pub expires_at: SystemTime,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailingView {
    pub instance: String,
    pub signal: String,
    pub target: String,
    #[serde(serialize_with = "crate::health::timestamp::rfc3339")]
    pub since: SystemTime,
    #[serde(serialize_with = "crate::health::timestamp::rfc3339")]
    pub expires_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    pub table: String,
    pub group: Option<String>,
    pub group_size: Option<usize>,
    pub budget: Option<usize>,
    pub state: FleetState,
    /// Why this host goes out or waits.
    pub detail: String,
    /// Why the budget cannot be used right now.
    pub problem: Option<String>,
    pub lease_held: bool,
    /// This host is failing and more than outage_percent of the group is too.
    pub outage: bool,
    pub failing_percent: Option<f64>,
    pub holders: Vec<HolderView>,
    pub failing: Vec<FailingView>,
    #[serde(serialize_with = "crate::health::timestamp::rfc3339_opt")]
    pub checked_at: Option<SystemTime>,
}

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

impl FleetReport {
    pub fn new(table: &str) -> Self {
        FleetReport {
            table: table.to_owned(),
            group: None,
            group_size: None,
            budget: None,
            state: FleetState::Idle,
            detail: String::new(),
            problem: None,
            lease_held: false,
            outage: false,
            failing_percent: None,
            holders: Vec::new(),
            failing: Vec::new(),
            checked_at: None,
        }
    }

    /// The live ledger as read at `now`, seen by `me`.
    pub fn show(
        &mut self,
        live: &Ledger,
        me: &str,
        failing_percent: f64,
        outage: bool,
        now: SystemTime,
    ) {
        self.holders = holders(live);
        self.failing = failing(live);
        self.lease_held = live.holders.contains_key(me);
        self.outage = outage && live.failing.contains_key(me);
        self.failing_percent = Some(failing_percent);
        self.checked_at = Some(now);
    }
}

pub fn holders(l: &Ledger) -> Vec<HolderView> {
    l.holders
        .iter()
        .map(|(i, h)| HolderView {
            instance: i.clone(),
            since: at(h.since_ms),
            expires_at: at(h.expires_ms),
            reason: h.reason.clone(),
        })
        .collect()
}

pub fn failing(l: &Ledger) -> Vec<FailingView> {
    l.failing
        .iter()
        .map(|(i, f)| FailingView {
            instance: i.clone(),
            signal: f.signal.clone(),
            target: f.target.clone(),
            since: at(f.since_ms),
            expires_at: at(f.expires_ms),
        })
        .collect()
}
