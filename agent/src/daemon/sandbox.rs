//! Write canaries under the unit's sandbox. `ProtectSystem=strict` makes every mount that
//! exists when the unit starts read-only in the agent's own mount namespace, so a canary
//! would always answer `EROFS` there. Before the capabilities are dropped, the mounts that hold
//! a canary's path are made writable again in this namespace only (a bind remount changes the
//! agent's view, never the host's mount or the filesystem). Mounts that appear later come in
//! through mount propagation with the host's flags. Nothing else is made writable: watches
//! without a canary stay read-only to the agent.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use nix::mount::MsFlags;
use tracing::{info, warn};

use crate::{
    config::Config,
    topology::mountinfo::{MountEntry, read_mountinfo},
};

/// A bind remount touches only the mount table, but it takes the kernel's namespace lock:
/// never wait on it for long at start.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Makes the mounts holding canary paths writable in this namespace (see the module doc).
pub fn writable_canaries(cfg: &Config) {
    let paths: Vec<PathBuf> = cfg
        .watch
        .iter()
        .filter(|w| !w.canary.is_zero())
        .map(|w| w.path.clone())
        .collect();
    if paths.is_empty() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("canary-remount".into())
        .spawn(move || {
            let _ = tx.send(remount_all(&paths));
        });
    let handle = match spawned {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "write canaries: cannot start the remount thread");
            return;
        }
    };
    let answer = rx.recv_timeout(TIMEOUT);
    if answer.is_ok() {
        // Gone before the capabilities are dropped: no thread keeps the full set.
        let _ = handle.join();
    }
    match answer {
        Ok(Ok(done)) => {
            for mp in done {
                info!(mount = %mp.display(), "write canary: mount made writable in the agent's namespace");
            }
        }
        Ok(Err(e)) => {
            warn!(error = %e, "write canaries: the sandbox's read-only mounts stay read-only; canaries there are skipped");
        }
        Err(_) => warn!(
            "write canaries: remount did not return within 2 s; canaries on read-only mounts are skipped"
        ),
    }
}

fn remount_all(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mounts = read_mountinfo().map_err(|e| e.to_string())?;
    let mut done = Vec::new();
    for p in paths {
        let Some(m) = holder(&mounts, p) else {
            continue;
        };
        let Some(flags) = remount_flags(m) else {
            continue;
        };
        nix::mount::mount(
            None::<&str>,
            &m.mount_point,
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|e| format!("remount {}: {e}", m.mount_point.display()))?;
        done.push(m.mount_point.clone());
    }
    Ok(done)
}

/// The mount `path` is on: the deepest mount point that is an ancestor of it (the last one
/// listed wins when several are stacked there).
fn holder<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
}

/// The flags that make a read-only view of a writable filesystem writable, keeping its other
/// per-mount flags; `None` when there is nothing to do (already writable, or the filesystem
/// itself is read-only: that is for `read_only` to report, not to hide).
fn remount_flags(m: &MountEntry) -> Option<MsFlags> {
    let opts: Vec<&str> = m.options.split(',').collect();
    if !opts.contains(&"ro") || m.read_only().is_some() {
        return None;
    }
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    for (name, f) in [
        ("nosuid", MsFlags::MS_NOSUID),
        ("nodev", MsFlags::MS_NODEV),
        ("noexec", MsFlags::MS_NOEXEC),
        ("noatime", MsFlags::MS_NOATIME),
        ("nodiratime", MsFlags::MS_NODIRATIME),
        ("relatime", MsFlags::MS_RELATIME),
    ] {
        if opts.contains(&name) {
            flags |= f;
        }
    }
    Some(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::mountinfo::parse_mountinfo;

    const TABLE: &str = "\
22 1 259:1 / / ro,relatime shared:1 - xfs /dev/nvme0n1p1 rw,attr2
30 22 259:2 / /var/lib/docker ro,nosuid,nodev,noatime shared:2 - xfs /dev/nvme1n1 rw,attr2
31 22 259:3 / /data ro,relatime shared:3 - ext4 /dev/nvme2n1 ro,errors=remount-ro
32 22 259:4 / /scratch rw,relatime shared:4 - ext4 /dev/nvme3n1 rw
";

    #[test]
    fn only_a_read_only_view_of_a_writable_filesystem_is_remounted() {
        let mounts = parse_mountinfo(TABLE).unwrap();
        let docker = holder(&mounts, Path::new("/var/lib/docker/volumes")).unwrap();
        assert_eq!(docker.mount_point, Path::new("/var/lib/docker"));
        let f = remount_flags(docker).unwrap();
        assert!(f.contains(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID));
        assert!(f.contains(MsFlags::MS_NODEV | MsFlags::MS_NOATIME));
        assert!(!f.contains(MsFlags::MS_RDONLY));
        // The filesystem itself read-only: left for read_only to report.
        assert_eq!(
            remount_flags(holder(&mounts, Path::new("/data")).unwrap()),
            None
        );
        // Already writable.
        assert_eq!(
            remount_flags(holder(&mounts, Path::new("/scratch/x")).unwrap()),
            None
        );
        // A path on the root filesystem.
        let root = holder(&mounts, Path::new("/var/lib/other")).unwrap();
        assert_eq!(root.mount_point, Path::new("/"));
    }
}
