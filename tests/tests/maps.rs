//! The scanner's batched read of an in-flight map (`bindsto::probes::batch`, one
//! `BPF_MAP_LOOKUP_BATCH` per 1024 entries) against a real kernel hash map of the request
//! map's shape and size: every entry handed out exactly once with its value, the same set the
//! entry-by-entry iterator sees, for an empty, a small and a full map. Needs root (BPF).

use std::collections::BTreeMap;
use std::time::Instant;

use agent_ebpf::{RQ_MAP_ENTRIES, Request};
use aya::maps::{HashMap, Map, MapData};
use bindsto_tests::{bpfmap, bpfmap::BpfMap, privileged};

fn handle(map: &BpfMap) -> HashMap<MapData, u64, Request> {
    let data = MapData::from_fd(map.dup_fd().unwrap()).unwrap();
    HashMap::try_from(Map::HashMap(data)).unwrap()
}

/// Fills `n` entries whose value encodes the key, so a value read with the wrong key shows.
fn fill(map: &BpfMap, n: u64) {
    for i in 0..n {
        let id = (1 << 40) | i;
        map.update(
            &bpfmap::request_key(id),
            &bpfmap::request(1_000 + i, 7 << 20 | (i as u32 & 0xff), id, 1, 8),
            bpfmap::BPF_NOEXIST,
        )
        .unwrap_or_else(|e| panic!("entry {i}: {e}"));
    }
}

fn batched(h: &HashMap<MapData, u64, Request>) -> (BTreeMap<u64, Request>, usize) {
    let mut seen = BTreeMap::new();
    let mut handed = 0;
    let read = bindsto::probes::batch::for_each(h, |k, v| {
        handed += 1;
        seen.insert(k, v);
    });
    // Kernel 5.6 and later (every kernel this runs on): the fallback would pass the checks
    // below too, so the batched path must be the one taken.
    assert_eq!(read, bindsto::probes::batch::Read::Batched);
    (seen, handed)
}

#[test]
fn a_batched_read_sees_every_entry_once_like_the_iterator() {
    let _g = privileged();
    for n in [0u64, 3, 1025, u64::from(RQ_MAP_ENTRIES)] {
        let map = BpfMap::create_hash(8, std::mem::size_of::<Request>(), RQ_MAP_ENTRIES).unwrap();
        fill(&map, n);
        let h = handle(&map);
        let t0 = Instant::now();
        let (seen, handed) = batched(&h);
        let batch_took = t0.elapsed();
        assert_eq!(handed as u64, n, "entries handed out (each once)");
        assert_eq!(seen.len() as u64, n, "distinct keys");
        for (k, v) in &seen {
            let i = k & 0xff_ffff_ffff;
            assert_eq!(*k, (1 << 40) | i, "a key the test wrote");
            assert_eq!(v.sector, *k, "the value of this key, not another's");
            assert_eq!(v.start_ns, 1_000 + i);
            assert_eq!(v.dev, 7 << 20 | (i as u32 & 0xff));
        }
        let t0 = Instant::now();
        let iterated: BTreeMap<u64, Request> = h.iter().flatten().collect();
        let iter_took = t0.elapsed();
        assert_eq!(
            iterated.keys().collect::<Vec<_>>(),
            seen.keys().collect::<Vec<_>>(),
            "the iterator sees the same entries"
        );
        println!(
            "MAPS entries={n} batched={:.2} ms iterator={:.2} ms",
            batch_took.as_secs_f64() * 1e3,
            iter_took.as_secs_f64() * 1e3
        );
    }
}
