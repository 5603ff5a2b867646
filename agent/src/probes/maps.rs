//! The maps the programs share with userspace, taken out of the loaded object: the event
//! ring for the reader, the in-flight maps for the scanner and second handles on them for
//! the incident evidence.

use std::os::fd::AsFd;

use agent_ebpf::{BioDone, MountCall, Request, RpcKey, RqKey, RqVal, maps};
use aya::maps::{HashMap, IterableMap, MapData, PerCpuArray, RingBuf};

use super::ProbeError;

/// Map handles taken out of the object, used by the event reader and the scanner.
pub struct Maps {
    pub events: RingBuf<MapData>,
    pub scan: ScanMaps,
}

/// The maps the scanner reads each pass.
pub struct ScanMaps {
    pub rq_inflight: HashMap<MapData, u64, Request>,
    pub mount_calls: HashMap<MapData, u64, MountCall>,
    pub stats: PerCpuArray<MapData, u64>,
    pub bio_inflight: HashMap<MapData, RqKey, RqVal>,
    pub bio_done: HashMap<MapData, u32, BioDone>,
    pub rpc_inflight: HashMap<MapData, RpcKey, RqVal>,
}

/// Second handles on the in-flight maps, for the incident evidence: its capture runs on its
/// own thread while the scanner keeps the first ones. Read-only by convention.
pub struct InflightMaps {
    pub rq_inflight: HashMap<MapData, u64, Request>,
    pub mount_calls: HashMap<MapData, u64, MountCall>,
    pub bio_inflight: HashMap<MapData, RqKey, RqVal>,
    pub rpc_inflight: HashMap<MapData, RpcKey, RqVal>,
}

fn second<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: &HashMap<MapData, K, V>,
) -> Result<HashMap<MapData, K, V>, ProbeError> {
    let fd = map
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| ProbeError::Dup { name, source })?;
    let data = MapData::from_fd(fd).map_err(|source| ProbeError::Map { name, source })?;
    HashMap::try_from(aya::maps::Map::HashMap(data))
        .map_err(|source| ProbeError::Map { name, source })
}

impl ScanMaps {
    /// Duplicates the descriptors (no privilege needed, unlike opening a map by id).
    pub fn inflight(&self) -> Result<InflightMaps, ProbeError> {
        Ok(InflightMaps {
            rq_inflight: second(maps::RQ_INFLIGHT, &self.rq_inflight)?,
            mount_calls: second(maps::MOUNT_CALLS, &self.mount_calls)?,
            bio_inflight: second(maps::BIO_INFLIGHT, &self.bio_inflight)?,
            rpc_inflight: second(maps::RPC_INFLIGHT, &self.rpc_inflight)?,
        })
    }
}
