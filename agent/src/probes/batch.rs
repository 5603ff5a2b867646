//! Reading a whole hash map in a few system calls: `BPF_MAP_LOOKUP_BATCH` (5.6 and later)
//! copies a chunk of entries per call, where aya's iterator makes two per entry (next key,
//! then lookup): at 64k requests in flight that is the scan's whole cost. A kernel that
//! refuses the command gets the iterator, once decided for the process.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU8, Ordering},
};

use aya::maps::{HashMap, IterableMap, MapData};

/// Entries per call: 1024 requests are 56 KiB of buffers, and no hash bucket holds that many
/// (a bucket larger than the chunk would fail with `ENOSPC`, which falls back below).
const CHUNK: usize = 1024;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// 0 unknown, 1 works, 2 refused.
static BATCH: AtomicU8 = AtomicU8::new(0);

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// How a [`for_each`] read the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    Batched,
    /// Stopped part way (the next scan reads it again).
    BatchCut,
    PerEntry,
}

/// Calls `f` for every entry of `map`. Entries added or removed meanwhile may or may not be
/// seen, as with the iterator.
pub fn for_each<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    mut f: impl FnMut(K, V),
) -> Read {
    if BATCH.load(Ordering::Relaxed) != 2 {
        match batched(map, &mut f) {
            Ok(()) => {
                BATCH.store(1, Ordering::Relaxed);
                return Read::Batched;
            }
            Err(Refused::Before(e)) => {
                if BATCH.swap(2, Ordering::Relaxed) != 2 {
                    tracing::info!(error = %e, "BPF_MAP_LOOKUP_BATCH refused; in-flight maps are read entry by entry");
                }
            }
            // Entries were handed out already: the rest of this pass is lost, not repeated.
            Err(Refused::During(e)) => {
                tracing::debug!(error = %e, "a batched map read stopped; the next scan reads it again");
                return Read::BatchCut;
            }
        }
    }
    for (k, v) in map.iter().flatten() {
        f(k, v);
    }
    Read::PerEntry
}

/// Every entry of `map`, read as [`for_each`] does.
pub fn collect<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> Vec<(K, V)> {
    let mut out = Vec::new();
    for_each(map, |k, v| out.push((k, v)));
    out
}

enum Refused {
    /// Before any entry was handed out: the iterator can take over.
    Before(std::io::Error),
    During(std::io::Error),
}

fn batched<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    f: &mut impl FnMut(K, V),
) -> Result<(), Refused> {
    // SAFETY: `Pod` types are plain data for which every bit pattern, zero included, is valid.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; CHUNK];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; CHUNK];
    // The kernel's batch cursor (a bucket index for hash maps), opaque here.
    let mut cursor = [0u64; 1];
    let mut next = [0u64; 1];
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut first = true;
    let mut handed = false;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { cursor.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at buffers of `count` keys and values of the map's
        // sizes (aya checked them against K and V when it made the handle) and at cursors
        // that outlive the call; the kernel writes nothing else.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        let end = matches!(&err, Some(e) if e.raw_os_error() == Some(libc::ENOENT));
        if let Some(e) = err.filter(|_| !end) {
            return Err(if handed {
                Refused::During(e)
            } else {
                Refused::Before(e)
            });
        }
        let n = (attr.count as usize).min(CHUNK);
        for (k, v) in keys[..n].iter().zip(&values[..n]) {
            handed = true;
            f(*k, *v);
        }
        if end {
            return Ok(());
        }
        cursor = next;
        first = false;
    }
}
