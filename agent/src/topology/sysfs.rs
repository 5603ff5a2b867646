//! Block devices in sysfs: a device's disks through partitions and stacks (dm, md), and the
//! block layer's own in-flight and completion counters.

use std::{
    collections::HashSet,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use super::MountEntry;
use crate::probes::dev::DevId;

/// How deep [`Sysfs::disks_for`] follows slaves (dm on dm on md ...) before giving up; real
/// stacks are 2-3 deep, the limit only guards against loops in a broken tree.
const MAX_STACK_DEPTH: usize = 16;

/// A block device as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name (`nvme1n1`, `sda1`, `dm-0`), the sysfs directory's name.
    pub name: String,
    pub dev: DevId,
    /// A partition's sysfs directory is inside its disk's and holds a `partition` file.
    pub is_partition: bool,
    /// Canonical path of the device's directory under `<root>/devices`.
    pub sysfs_dir: PathBuf,
}

/// `/sys/block/<disk>/stat` (Documentation/block/stat.rst), the counters the stall cross-check
/// needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStat {
    /// Field 1, incremented when a read completes.
    pub reads_completed: u64,
    /// Field 5, incremented when a write completes.
    pub writes_completed: u64,
    /// Field 9, requests issued to the driver and not completed.
    pub in_flight: u64,
    /// Field 12 (kernels >= 4.18; 0 before).
    pub discards_completed: u64,
    /// Field 16 (kernels >= 5.5; 0 before).
    pub flushes_completed: u64,
}

impl DiskStat {
    /// All completion counters summed: if this does not move while `in_flight > 0`, the device
    /// completes nothing. Wrapping, because only changes of the value matter.
    pub fn completed(&self) -> u64 {
        self.reads_completed
            .wrapping_add(self.writes_completed)
            .wrapping_add(self.discards_completed)
            .wrapping_add(self.flushes_completed)
    }

    /// Parses the whitespace-separated counters: 11 fields before 4.18, 15 before 5.5, 17 now.
    pub fn parse(text: &str) -> Option<DiskStat> {
        let fields: Vec<u64> = text
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        if fields.len() < 11 {
            return None;
        }
        let at = |i: usize| fields.get(i).copied().unwrap_or(0);
        Some(DiskStat {
            reads_completed: at(0),
            writes_completed: at(4),
            in_flight: at(8),
            discards_completed: at(11),
            flushes_completed: at(15),
        })
    }
}

/// A sysfs tree, normally `/sys`; tests point it at a fixture tree, which must use relative
/// symlinks like the real one.
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self::new("/sys")
    }
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Looks `dev` up through the `<root>/dev/block/MAJ:MIN` symlink. `None` when there is no
    /// such block device (anonymous devices of NFS, overlay, tmpfs; a disk that went away).
    pub fn block_device(&self, dev: DevId) -> Option<BlockDevice> {
        let link = self.root.join("dev/block").join(dev.to_string());
        let dir = fs::canonicalize(link).ok()?;
        Some(device_at(dir, dev))
    }

    /// The whole disks whose requests the block tracepoints report for I/O to `dev`:
    ///
    /// * a disk: itself;
    /// * a partition: its disk (the parent directory);
    /// * a stacked device (dm, md: a non-empty `slaves/` directory): the disks of every slave,
    ///   recursively.
    ///
    /// Deduplicated, in discovery order. Empty when `dev` is not a block device. Request-based
    /// dm (multipath) also reports requests on the dm device itself; those are not listed.
    pub fn disks_for(&self, dev: DevId) -> Vec<BlockDevice> {
        let mut out = Vec::new();
        if let Some(bd) = self.block_device(dev) {
            let mut seen = HashSet::new();
            self.collect_disks(bd, 0, &mut seen, &mut out);
        }
        out
    }

    fn collect_disks(
        &self,
        bd: BlockDevice,
        depth: usize,
        seen: &mut HashSet<PathBuf>,
        out: &mut Vec<BlockDevice>,
    ) {
        if depth > MAX_STACK_DEPTH {
            tracing::warn!(device = %bd.name, "block device stack deeper than {MAX_STACK_DEPTH}, not following");
            return;
        }
        // A device reachable twice (two partitions of one disk under one dm) is walked once.
        if !seen.insert(bd.sysfs_dir.clone()) {
            return;
        }
        if bd.is_partition {
            // The disk may itself be stacked (a partition of an md array).
            if let Some(disk) = bd
                .sysfs_dir
                .parent()
                .and_then(|p| read_device(p.to_path_buf()))
            {
                self.collect_disks(disk, depth + 1, seen, out);
            }
            return;
        }
        let slaves = self.slaves(&bd);
        if slaves.is_empty() {
            if !out.iter().any(|d| d.dev == bd.dev) {
                out.push(bd);
            }
            return;
        }
        for slave in slaves {
            self.collect_disks(slave, depth + 1, seen, out);
        }
    }

    /// The devices listed in `slaves/`, sorted by name for a stable order.
    fn slaves(&self, bd: &BlockDevice) -> Vec<BlockDevice> {
        let Ok(entries) = fs::read_dir(bd.sysfs_dir.join("slaves")) else {
            return Vec::new();
        };
        let mut names: Vec<OsString> = entries.filter_map(|e| Some(e.ok()?.file_name())).collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| {
                // The entry is a relative symlink to the slave's directory; fall back to the
                // class link if it is somehow not resolvable.
                let dir = fs::canonicalize(bd.sysfs_dir.join("slaves").join(&name))
                    .or_else(|_| fs::canonicalize(self.root.join("class/block").join(&name)))
                    .ok()?;
                let slave = read_device(dir);
                if slave.is_none() {
                    tracing::debug!(device = %bd.name, slave = ?name, "slave without a readable dev file");
                }
                slave
            })
            .collect()
    }

    /// The whole disks in `<root>/block` (partitions are not listed there).
    pub fn disks(&self) -> Vec<BlockDevice> {
        let Ok(entries) = fs::read_dir(self.root.join("block")) else {
            return Vec::new();
        };
        let mut disks: Vec<BlockDevice> = entries
            .filter_map(|e| read_device(fs::canonicalize(e.ok()?.path()).ok()?))
            .collect();
        disks.sort_by(|a, b| a.name.cmp(&b.name));
        disks
    }

    /// The mounts whose filesystem sits (directly or through partitions, dm, md) on `disk`.
    pub fn mounts_on_disk<'a>(&self, mounts: &'a [MountEntry], disk: DevId) -> Vec<&'a MountEntry> {
        mounts
            .iter()
            // Anonymous devices (major 0) have no sysfs entry; skip the lookup.
            .filter(|m| m.dev.major != 0)
            .filter(|m| self.disks_for(m.dev).iter().any(|d| d.dev == disk))
            .collect()
    }

    /// `<sysfs_dir>/inflight`: requests in flight as (reads, writes). Takes a device's
    /// [`BlockDevice::sysfs_dir`] rather than a name because a partition's directory is inside
    /// its disk's (`block/sda/sda1`), so no name-based path works for every device.
    pub fn inflight(&self, sysfs_dir: &Path) -> Option<(u64, u64)> {
        let text = fs::read_to_string(sysfs_dir.join("inflight")).ok()?;
        let mut it = text.split_whitespace().map(|f| f.parse::<u64>().ok());
        let reads = it.next()??;
        let writes = it.next()??;
        Some((reads, writes))
    }

    /// `<sysfs_dir>/stat`, see [`DiskStat`]; takes [`BlockDevice::sysfs_dir`] like
    /// [`Sysfs::inflight`].
    pub fn stat(&self, sysfs_dir: &Path) -> Option<DiskStat> {
        DiskStat::parse(&fs::read_to_string(sysfs_dir.join("stat")).ok()?)
    }
}

/// Builds a [`BlockDevice`] for a canonical sysfs directory whose number is known.
fn device_at(dir: PathBuf, dev: DevId) -> BlockDevice {
    BlockDevice {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        dev,
        is_partition: dir.join("partition").exists(),
        sysfs_dir: dir,
    }
}

/// Builds a [`BlockDevice`] for a canonical sysfs directory, reading its number from `dev`.
fn read_device(dir: PathBuf) -> Option<BlockDevice> {
    let dev = DevId::parse(fs::read_to_string(dir.join("dev")).ok()?.trim())?;
    Some(device_at(dir, dev))
}

#[cfg(test)]
mod tests;
