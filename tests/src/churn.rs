//! XFS on loop devices over plain (sparse) image files, for tests that mount and unmount many
//! times: cheaper than a [`crate::FaultyDisk`] (no FUSE server), made once and attached again
//! for every mount.
//!
//! Drop (also during a panic) unmounts (`umount -l` if busy) the mount at our own mount point
//! and detaches the loop device only when its backing file is our image.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{
    run_cmd,
    sys::{loop_backing_file, mounts_at},
};

/// A sparse image file with an XFS on it.
pub struct XfsImage {
    path: PathBuf,
}

impl XfsImage {
    /// Creates `dir/<name>.img` (sparse, `size_mb`; mkfs.xfs needs 300) and makes an XFS on it.
    pub fn new(dir: &Path, name: &str, size_mb: u64) -> anyhow::Result<XfsImage> {
        let path = dir.join(format!("{name}.img"));
        let f = std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?;
        f.set_len(size_mb << 20)?;
        drop(f);
        let p = path.to_string_lossy().into_owned();
        run_cmd(
            "mkfs.xfs",
            &["-q", "-f", "-K", &p],
            Duration::from_secs(120),
        )?;
        Ok(XfsImage { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The image attached to a free loop device and mounted at `mount_point`.
pub struct LoopXfs<'i> {
    image: &'i XfsImage,
    loop_dev: Option<String>,
    mount_point: PathBuf,
    mounted: bool,
}

impl<'i> LoopXfs<'i> {
    /// `losetup --find --show`, then `mount -t xfs` at `mount_point` (created if missing).
    pub fn mount(image: &'i XfsImage, mount_point: &Path) -> anyhow::Result<LoopXfs<'i>> {
        std::fs::create_dir_all(mount_point)?;
        let img = image.path.to_string_lossy().into_owned();
        let out = run_cmd(
            "losetup",
            &["--find", "--show", &img],
            Duration::from_secs(30),
        )?;
        let dev = out.trim().to_string();
        if !dev.starts_with("/dev/loop") {
            bail!("losetup printed {out:?}");
        }
        let m = LoopXfs {
            image,
            loop_dev: Some(dev.clone()),
            mount_point: mount_point.to_path_buf(),
            mounted: true,
        };
        let target = m.mount_point.to_string_lossy().into_owned();
        run_cmd(
            "mount",
            &["-t", "xfs", &dev, &target],
            Duration::from_secs(60),
        )?;
        Ok(m)
    }

    /// `loopN`.
    pub fn loop_name(&self) -> String {
        self.loop_dev
            .as_deref()
            .and_then(|d| d.strip_prefix("/dev/"))
            .unwrap_or_default()
            .to_string()
    }

    /// `(major, minor)` of the loop device.
    pub fn dev(&self) -> anyhow::Result<(u32, u32)> {
        let name = self.loop_name();
        let text = std::fs::read_to_string(format!("/sys/block/{name}/dev"))?;
        let (ma, mi) = text.trim().split_once(':').context("malformed dev file")?;
        Ok((ma.parse()?, mi.parse()?))
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// Unmounts and detaches now, reporting failures.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.cleanup();
        if self.is_mounted() {
            bail!("{} is still mounted", self.mount_point.display());
        }
        Ok(())
    }

    fn is_mounted(&self) -> bool {
        let Ok((ma, mi)) = self.dev() else {
            return false;
        };
        let id = format!("{ma}:{mi}");
        mounts_at(&self.mount_point).iter().any(|m| m.dev == id)
    }

    fn cleanup(&mut self) {
        if self.mounted {
            let target = self.mount_point.to_string_lossy().into_owned();
            for _ in 0..20 {
                if !self.is_mounted() {
                    break;
                }
                if run_cmd("umount", &[&target], Duration::from_secs(30)).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            if self.is_mounted() {
                let _ = run_cmd("umount", &["-l", &target], Duration::from_secs(30));
            }
            self.mounted = false;
        }
        if let Some(dev) = self.loop_dev.take() {
            let name = dev.trim_start_matches("/dev/").to_string();
            // Only our own attachment: the device may have been reused by someone else.
            if loop_backing_file(&name).is_some_and(|b| b == self.image.path) {
                let _ = run_cmd("losetup", &["-d", &dev], Duration::from_secs(30));
            }
        }
    }
}

impl Drop for LoopXfs<'_> {
    fn drop(&mut self) {
        self.cleanup();
    }
}
