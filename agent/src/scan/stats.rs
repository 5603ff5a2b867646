//! The programs' drop counters (`stats`, per CPU): what was lost since the last scan.

use agent_ebpf::{STAT_COUNT, Stat};
use aya::maps::{MapData, PerCpuArray};

/// The counters in the order they are read.
const READ: [Stat; 6] = [
    Stat::EventsLost,
    Stat::RqMapFull,
    Stat::MountMapFull,
    Stat::BioMapFull,
    Stat::RpcMapFull,
    Stat::BioDoneFull,
];

/// What the counters said at the last scan.
#[derive(Debug)]
pub struct KernelStats {
    seen: [u64; STAT_COUNT as usize],
}

impl Default for KernelStats {
    fn default() -> Self {
        Self {
            seen: [0; STAT_COUNT as usize],
        }
    }
}

impl KernelStats {
    /// The counters that grew since the last read, with how much.
    pub fn read(&mut self, stats: &PerCpuArray<MapData, u64>) -> Vec<(Stat, u64)> {
        let mut grew = Vec::new();
        for (i, stat) in READ.iter().enumerate() {
            let Ok(values) = stats.get(&(*stat as u32), 0) else {
                continue;
            };
            let total: u64 = values.iter().sum();
            let delta = total.saturating_sub(self.seen[i]);
            self.seen[i] = total;
            if delta > 0 {
                grew.push((*stat, delta));
            }
        }
        grew
    }
}

/// The map a `*MapFull` counter is about, as named in `bindsto_map_full_total{map}`; None
/// for the ring buffer's counter.
pub fn full_map(stat: Stat) -> Option<&'static str> {
    match stat {
        Stat::EventsLost => None,
        Stat::RqMapFull => Some("rq_inflight"),
        Stat::BioMapFull => Some("bio_inflight"),
        Stat::RpcMapFull => Some("rpc_inflight"),
        Stat::BioDoneFull => Some("bio_done"),
        Stat::MountMapFull => Some("mount_calls"),
    }
}
