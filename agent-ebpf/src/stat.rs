//! The programs' own counters.

/// Indexes of the per-CPU `STATS` counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Ring buffer full: an event was dropped.
    EventsLost = 0,
    /// Block request map full: a request is not tracked.
    RqMapFull = 1,
    /// Mount call map full: a call is not tracked.
    MountMapFull = 2,
    /// Bio map full: a bio of a tracked (dm) device is not tracked.
    BioMapFull = 3,
    /// RPC task map full: an RPC task is not tracked.
    RpcMapFull = 4,
    /// Bio completion map full: a tracked device's completions are not recorded.
    BioDoneFull = 5,
}

pub const STAT_COUNT: u32 = 6;
