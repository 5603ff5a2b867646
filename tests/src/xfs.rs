//! `XfsMount`: an XFS (or, with [`XfsMount::ext4`], an ext4) made on a [`FaultyDisk`] and
//! mounted at a fresh temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::faulty::{FaultyDisk, Mode};
use crate::proc::{run_cmd, run_with_timeout};
use crate::sys::mounts_at;

/// mkfs.xfs (xfsprogs >= 5.19) refuses to make a filesystem smaller than 300 MiB.
pub const MIN_XFS_BYTES: u64 = 300 * 1024 * 1024;

/// An XFS on a [`FaultyDisk`]'s loop device, mounted at a temp dir. It borrows the disk, so it
/// is always dropped (unmounted) before the disk is torn down.
///
/// Drop (also during a panic): the disk goes back to `pass` (so blocked writers finish), then
/// `umount`, retried for up to 10 s while busy, then `umount -l` (a shut-down XFS, or a process
/// still holding a file); the mount point is removed once nothing is mounted there. It only
/// unmounts the mount at its own mount point whose device is the disk's loop device.
pub struct XfsMount<'d> {
    disk: &'d FaultyDisk,
    dir: Option<TempDir>,
    path: PathBuf,
    mounted: bool,
}

impl<'d> XfsMount<'d> {
    /// `mkfs.xfs -f -K` on the disk, then mount it.
    pub fn new(disk: &'d FaultyDisk) -> anyhow::Result<Self> {
        Self::with_options(disk, &[], None)
    }

    /// `mkfs.xfs -f -K <mkfs_args>` then `mount -t xfs [-o <mount_opts>]`.
    pub fn with_options(
        disk: &'d FaultyDisk,
        mkfs_args: &[&str],
        mount_opts: Option<&str>,
    ) -> anyhow::Result<Self> {
        if disk.size() < MIN_XFS_BYTES {
            bail!(
                "the disk has {} MiB; mkfs.xfs makes no XFS under 300 MiB",
                disk.size() >> 20
            );
        }
        mkfs_xfs(disk, mkfs_args)?;
        Self::mount_existing(disk, mount_opts)
    }

    /// Mounts the XFS already on the disk (no mkfs), e.g. to mount it again after an unmount.
    pub fn mount_existing(disk: &'d FaultyDisk, mount_opts: Option<&str>) -> anyhow::Result<Self> {
        Self::mount_as(disk, "xfs", mount_opts)
    }

    /// `mkfs.ext4 -F -q -E nodiscard` on the disk, then `mount -t ext4 [-o <mount_opts>]`. The
    /// same cleanup applies (`xfs_io -x -c shutdown` works on ext4 too).
    pub fn ext4(disk: &'d FaultyDisk, mount_opts: Option<&str>) -> anyhow::Result<Self> {
        let mut cmd = Command::new("mkfs.ext4");
        cmd.args(["-F", "-q", "-E", "nodiscard"])
            .arg(disk.loop_dev());
        let out = run_with_timeout(cmd, Duration::from_secs(120))?;
        if !out.success() {
            bail!("mkfs.ext4 failed ({}):\n{}", out.status, out.output);
        }
        Self::mount_as(disk, "ext4", mount_opts)
    }

    fn mount_as(
        disk: &'d FaultyDisk,
        fstype: &str,
        mount_opts: Option<&str>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bindsto-xfs-")
            .tempdir()
            .context("creating a mount point")?;
        let path = dir.path().canonicalize()?;
        let mut m = XfsMount {
            disk,
            dir: Some(dir),
            path,
            mounted: false,
        };
        let dev = disk.loop_dev().to_string_lossy().into_owned();
        let target = m.path.to_string_lossy().into_owned();
        let mut args = vec!["-t", fstype];
        if let Some(o) = mount_opts {
            args.extend(["-o", o]);
        }
        args.extend([dev.as_str(), target.as_str()]);
        // Mark it mounted before checking the result: a mount that failed half-way (timeout)
        // may still complete later, and Drop checks mountinfo anyway.
        m.mounted = true;
        run_cmd("mount", &args, Duration::from_secs(60))?;
        if !m.is_mounted() {
            bail!("mount {dev} {target} succeeded but mountinfo does not show it");
        }
        Ok(m)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The disk under it.
    pub fn disk(&self) -> &'d FaultyDisk {
        self.disk
    }

    /// Whether mountinfo shows the disk mounted at our mount point.
    pub fn is_mounted(&self) -> bool {
        let dev = self.disk.dev_id();
        mounts_at(&self.path).iter().any(|m| m.dev == dev)
    }

    /// Shuts the filesystem down like a log I/O error would (`xfs_io -x -c shutdown`,
    /// FAULTS.md recipe 1); the mount stays.
    pub fn shutdown(&self) -> anyhow::Result<()> {
        let p = self.path.to_string_lossy().into_owned();
        run_cmd(
            "xfs_io",
            &["-x", "-c", "shutdown", &p],
            Duration::from_secs(30),
        )
        .map(|_| ())
    }

    /// `umount -l` of our mount (a watched mount vanishing while in use); the mount point
    /// stays, so [`XfsMount::mount_again`] can mount the disk there again.
    pub fn unmount_lazy(&self) -> anyhow::Result<()> {
        if !self.is_mounted() {
            bail!("{} is not mounted", self.path.display());
        }
        let p = self.path.to_string_lossy().into_owned();
        run_cmd("umount", &["-l", &p], Duration::from_secs(30)).map(|_| ())
    }

    /// `umount` of our mount (not lazy: a shut-down XFS must be gone before the disk mounts
    /// again), keeping the mount point for [`XfsMount::mount_again`].
    pub fn unmount_in_place(&self) -> anyhow::Result<()> {
        let p = self.path.to_string_lossy().into_owned();
        run_cmd("umount", &[&p], Duration::from_secs(30))?;
        if self.is_mounted() {
            bail!("umount {p} succeeded but mountinfo still shows it");
        }
        Ok(())
    }

    /// Mounts the disk again at the same mount point (after [`XfsMount::unmount_lazy`] or
    /// [`XfsMount::unmount_in_place`]).
    pub fn mount_again(&self) -> anyhow::Result<()> {
        let dev = self.disk.loop_dev().to_string_lossy().into_owned();
        let p = self.path.to_string_lossy().into_owned();
        run_cmd("mount", &["-t", "xfs", &dev, &p], Duration::from_secs(60))?;
        if !self.is_mounted() {
            bail!("mount {dev} {p} succeeded but mountinfo does not show it");
        }
        Ok(())
    }

    /// `mount -o remount,<opts>` of our mount, e.g. `ro` or `rw`.
    pub fn remount(&self, opts: &str) -> anyhow::Result<()> {
        if !self.is_mounted() {
            bail!("{} is not mounted", self.path.display());
        }
        let p = self.path.to_string_lossy().into_owned();
        let o = format!("remount,{opts}");
        run_cmd("mount", &["-o", &o, &p], Duration::from_secs(30)).map(|_| ())
    }

    /// Unmounts now (same steps as Drop) and reports whether it worked.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.cleanup();
        if self.is_mounted() {
            bail!("{} is still mounted", self.path.display());
        }
        Ok(())
    }

    fn cleanup(&mut self) {
        if self.mounted && self.is_mounted() {
            if let Err(e) = self.disk.set_mode(Mode::Pass) {
                eprintln!("bindsto-tests: XfsMount drop: set pass: {e:#}");
            }
            let target = self.path.to_string_lossy().into_owned();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut last_err = None;
            while self.is_mounted() {
                match run_cmd("umount", &[&target], Duration::from_secs(30)) {
                    Ok(_) => {}
                    Err(e) => last_err = Some(e),
                }
                if !self.is_mounted() || Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if self.is_mounted() {
                eprintln!(
                    "bindsto-tests: XfsMount drop: umount {target} failed ({:#}), lazy unmount",
                    last_err.unwrap_or_else(|| anyhow::anyhow!("still mounted"))
                );
                if let Err(e) = run_cmd("umount", &["-l", &target], Duration::from_secs(30)) {
                    eprintln!("bindsto-tests: XfsMount drop: {e:#}");
                }
            }
        }
        self.mounted = false;
        if let Some(dir) = self.dir.take() {
            if mounts_at(&self.path).is_empty() {
                let _ = dir.close();
            } else {
                eprintln!(
                    "bindsto-tests: XfsMount drop: keeping {} (something is mounted there)",
                    self.path.display()
                );
                let _ = dir.keep();
            }
        }
    }
}

impl Drop for XfsMount<'_> {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// `mkfs.xfs -f -K <extra> <loop device>`. `-K` skips the discard pass (it would go through
/// faultyfs as fallocate(PUNCH_HOLE) and is pointless on a sparse file).
pub fn mkfs_xfs(disk: &FaultyDisk, extra: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new("mkfs.xfs");
    cmd.args(["-f", "-K"]).args(extra).arg(disk.loop_dev());
    let out = run_with_timeout(cmd, Duration::from_secs(120))?;
    if !out.success() {
        bail!(
            "mkfs.xfs on {} failed ({}):\n{}",
            disk.loop_dev().display(),
            out.status,
            out.output
        );
    }
    Ok(())
}

impl FaultyDisk {
    /// `XfsMount::new(self)`.
    pub fn mkfs_xfs_and_mount(&self) -> anyhow::Result<XfsMount<'_>> {
        XfsMount::new(self)
    }
}
