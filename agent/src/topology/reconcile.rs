//! Which mounts and devices to observe: the desired set from the mount table and the watches,
//! capped at the table limits (critical first), as a plain diff against what is observed now.
//! The engine applies the diff to its targets; nothing here holds state.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::Serialize;
use tracing::warn;

use super::{BlockDevice, MountEntry, Sysfs, mount_for_path};
use crate::config::Config;

/// A configured watch and what it resolved to (served in `/status` as is).
#[derive(Clone, Debug, Serialize)]
pub struct WatchStatus {
    pub path: String,
    pub critical: bool,
    /// The mount point the watch resolved to, if any.
    pub mount: Option<String>,
    /// Why the watch does not apply (path missing, not a mount point).
    pub problem: Option<String>,
    /// Set when the watch fails for want of a mount at its path (`not_mounted`): a
    /// `must_be_mounted` path that is not a mount point, or a critical watch's mount point
    /// that went away while watched.
    pub not_mounted: Option<String>,
    /// A mount has been seen at `path` itself since the agent started: losing it is a
    /// failure, not a watch that never applied.
    #[serde(skip)]
    pub was_mount_point: bool,
}

/// Mount point -> (entry, critical).
pub type WantedMounts = BTreeMap<PathBuf, (MountEntry, bool)>;
/// Device name -> (device, critical).
pub type WantedDevices = BTreeMap<String, (BlockDevice, bool)>;

/// What to observe, and how it differs from what is observed now. A key whose identity
/// changed (a remount: new mount id; a new disk under an old name) is `added`, not `kept`: it
/// starts fresh.
#[derive(Debug)]
pub struct Diff<K, V> {
    pub added: Vec<(K, V)>,
    pub kept: Vec<(K, V)>,
    pub gone: Vec<K>,
}

/// Splits `wanted` against `current` (key -> identity).
pub fn diff<K: Ord + Clone, V, I: PartialEq>(
    wanted: BTreeMap<K, V>,
    current: &BTreeMap<K, I>,
    identity: impl Fn(&V) -> I,
) -> Diff<K, V> {
    let gone = current
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    let (kept, added) = wanted
        .into_iter()
        .partition(|(k, v)| current.get(k).is_some_and(|i| *i == identity(v)));
    Diff { added, kept, gone }
}

/// The mounts the config asks for: every mount of an observed fstype plus the mounts of the
/// watches (critical when a critical watch is on them), at most `max`, watched ones first.
pub struct MountPlan {
    pub mounts: WantedMounts,
    pub watches: Vec<WatchStatus>,
    /// How many mounts the limit left out.
    pub left_out: usize,
}

/// Plans the observed mounts from the mount table. `previous` are the watches as last
/// resolved (a problem is logged once, when it appears); `left_out_before` likewise for the
/// limit.
pub fn plan_mounts(
    entries: &[MountEntry],
    cfg: &Config,
    previous: &[WatchStatus],
    path_exists: &dyn Fn(&Path) -> Option<bool>,
    max: usize,
    left_out_before: usize,
) -> MountPlan {
    // Later entries win: the top of a stack of mounts.
    let mut desired = WantedMounts::new();
    let observed = |e: &MountEntry| cfg.detect.fstypes.contains(&e.fstype);
    for e in entries.iter().filter(|e| observed(e)) {
        // A bind mount of a directory of a filesystem that is observed at its root adds
        // only a duplicate target (systemd's StateDirectory= under ProtectSystem=strict
        // makes one of /var/lib/bindsto in the agent's own mount namespace). A watch on
        // such a path still resolves to it below.
        let duplicate = e.root != "/"
            && entries
                .iter()
                .any(|o| o.dev == e.dev && o.root == "/" && observed(o));
        if !duplicate {
            desired.insert(e.mount_point.clone(), (e.clone(), false));
        }
    }
    let watches: Vec<WatchStatus> = cfg
        .watch
        .iter()
        .map(|w| resolve_watch(w, entries, path_exists, &mut desired, previous))
        .collect();
    let (mounts, left_out) = cap_mounts(desired, &watches, max);
    if left_out > 0 && left_out != left_out_before {
        warn!(
            observed = max,
            left_out, "more mounts than the observed-mount limit; the rest are not observed"
        );
    }
    MountPlan {
        mounts,
        watches,
        left_out,
    }
}

fn resolve_watch(
    w: &crate::config::Watch,
    entries: &[MountEntry],
    path_exists: &dyn Fn(&Path) -> Option<bool>,
    desired: &mut WantedMounts,
    previous: &[WatchStatus],
) -> WatchStatus {
    let on = mount_for_path(entries, &w.path);
    let at_path = on.is_some_and(|m| m.mount_point == w.path);
    let mut ws = WatchStatus {
        path: w.path.display().to_string(),
        critical: w.critical,
        mount: None,
        problem: None,
        not_mounted: None,
        was_mount_point: at_path,
    };
    let was = previous
        .iter()
        .any(|o| o.path == ws.path && o.was_mount_point);
    ws.was_mount_point |= was;
    // BindsTo= semantics: the mount at the path is what the watch depends on; the directory
    // beneath it (usually on the root filesystem) is not a substitute.
    if !at_path && (w.must_be_mounted || (w.critical && was)) {
        let now_on = match on {
            Some(m) => format!("the path is on {}", m.mount_point.display()),
            None => "no mount contains the path".into(),
        };
        let detail = if was {
            format!("no longer a mount point: unmounted while watched ({now_on})")
        } else {
            format!("not a mount point ({now_on}); must_be_mounted is set")
        };
        ws.problem = Some(detail.clone());
        ws.not_mounted = Some(detail);
        warn_once(&ws, previous);
        return ws;
    }
    match on {
        Some(m) if (w.require_mountpoint || w.must_be_mounted) && !at_path => {
            ws.problem = Some(format!(
                "not a mount point (it is on {}); require_mountpoint is set",
                m.mount_point.display()
            ));
        }
        Some(m) => {
            let exists = if at_path {
                Some(true)
            } else {
                path_exists(&w.path)
            };
            match exists {
                Some(false) => ws.problem = Some("path does not exist".into()),
                None => ws.problem = Some("could not check the path (timed out)".into()),
                Some(true) => {}
            }
            if exists != Some(false) {
                ws.mount = Some(m.mount_point.display().to_string());
                let slot = desired
                    .entry(m.mount_point.clone())
                    .or_insert_with(|| (m.clone(), false));
                slot.1 |= w.critical;
            }
        }
        None => ws.problem = Some("no mount contains this path".into()),
    }
    warn_once(&ws, previous);
    ws
}

/// Logs a watch's problem when it appears, not on every re-read of the mount table.
fn warn_once(ws: &WatchStatus, previous: &[WatchStatus]) {
    if let Some(p) = &ws.problem {
        let known = previous
            .iter()
            .any(|o| o.path == ws.path && o.problem.as_ref() == Some(p));
        if !known {
            warn!(path = %ws.path, problem = %p, "watch does not apply");
        }
    }
}

/// At most `max` mounts: watched ones (critical first) before the others.
fn cap_mounts(desired: WantedMounts, watches: &[WatchStatus], max: usize) -> (WantedMounts, usize) {
    if desired.len() <= max {
        return (desired, 0);
    }
    let watched: BTreeSet<&str> = watches.iter().filter_map(|w| w.mount.as_deref()).collect();
    let mut items: Vec<_> = desired.into_iter().collect();
    // Critical first, then other watched mounts, then the rest in mount point order.
    items.sort_by_key(|(mp, (_, critical))| {
        (!*critical, !watched.contains(mp.to_string_lossy().as_ref()))
    });
    let (kept, dropped) = cap_by(items, max, |_| true);
    (kept.into_iter().collect(), dropped)
}

/// The devices under the planned mounts.
pub struct DevicePlan {
    /// Per mount (in the order given): the names of its own device and the disks below it.
    pub per_mount: Vec<Vec<String>>,
    pub devices: WantedDevices,
    /// How many devices the limit left out.
    pub left_out: usize,
}

/// Plans the observed devices of `mounts` (device, critical), at most `max`, critical first.
pub fn plan_devices(
    sysfs: &Sysfs,
    mounts: impl IntoIterator<Item = (crate::probes::dev::DevId, bool)>,
    max: usize,
    left_out_before: usize,
) -> DevicePlan {
    let mut wanted = WantedDevices::new();
    let mut per_mount = Vec::new();
    for (dev, critical) in mounts {
        let mut names = Vec::new();
        let own = sysfs.block_device(dev);
        let below = sysfs.disks_for(dev);
        for bd in own.into_iter().chain(below) {
            if !names.contains(&bd.name) {
                names.push(bd.name.clone());
            }
            let slot = wanted.entry(bd.name.clone()).or_insert((bd, false));
            slot.1 |= critical;
        }
        per_mount.push(names);
    }
    let (devices, left_out) = cap_by(wanted.into_iter().collect(), max, |(_, (_, critical))| {
        *critical
    });
    if left_out != left_out_before {
        warn!(
            observed = max,
            left_out, "more devices than the device limit; the rest are not observed"
        );
    }
    DevicePlan {
        per_mount,
        devices: devices.into_iter().collect(),
        left_out,
    }
}

/// Keeps at most `max` items, those for which `keep_first` is true before the others (each
/// group in its original order); returns what was left out.
pub fn cap_by<T>(items: Vec<T>, max: usize, keep_first: impl Fn(&T) -> bool) -> (Vec<T>, usize) {
    if items.len() <= max {
        return (items, 0);
    }
    let total = items.len();
    let (first, rest): (Vec<T>, Vec<T>) = items.into_iter().partition(|i| keep_first(i));
    let kept: Vec<T> = first.into_iter().chain(rest).take(max).collect();
    let dropped = total - kept.len();
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_the_preferred_items_first_and_counts_the_rest() {
        let items: Vec<u32> = (0..10).collect();
        let (kept, dropped) = cap_by(items.clone(), 4, |i| i % 3 == 0);
        assert_eq!(kept, vec![0, 3, 6, 9]);
        assert_eq!(dropped, 6);
        let (kept, dropped) = cap_by(items.clone(), 20, |_| false);
        assert_eq!((kept.len(), dropped), (10, 0));
        // More preferred items than room: still only `max`.
        let (kept, dropped) = cap_by(items, 2, |_| true);
        assert_eq!((kept, dropped), (vec![0, 1], 8));
    }
}
