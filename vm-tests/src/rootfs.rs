//! A Debian bookworm root filesystem with real systemd and dbus, for scenarios that need a
//! service manager (the project's own unit, stopping `ecs.service` over D-Bus). Built once
//! with debootstrap from the machine's Debian archive and cached as an ext4 image; each boot
//! gets a sparse copy.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{kernel::archive_url, run_cmd};

/// Packages on top of minbase: the service manager and bus, the XFS tools the scenario uses
/// to shut a filesystem down, and `ip`.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,xfsprogs,iproute2,kmod";
const IMAGE_MIB: u64 = 1024;

/// Returns the cached image, building it first if needed (a few minutes, once).
pub fn image(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("rootfs");
    let image = dir.join("bookworm-systemd.ext4");
    if image.exists() {
        return Ok(image);
    }
    fs::create_dir_all(&dir)?;
    let tree = dir.join("tree");
    let _ = fs::remove_dir_all(&tree);
    eprintln!(
        "vm-test: debootstrap bookworm (systemd, dbus) into {}",
        tree.display()
    );
    run_cmd(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}")])
            .arg("bookworm")
            .arg(&tree)
            .arg(archive_url()?),
    )
    .context("debootstrap (cargo xtask setup installs it)")?;
    // Settle what a first boot would otherwise ask for or wait on.
    fs::write(tree.join("etc/hostname"), "vmtest\n")?;
    fs::write(tree.join("etc/machine-id"), "")?;
    let _ = fs::remove_file(tree.join("var/cache/apt/pkgcache.bin"));
    let _ = fs::remove_dir_all(tree.join("var/cache/apt/archives"));
    let tmp = dir.join("image.tmp");
    let _ = fs::remove_file(&tmp);
    run_cmd(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .arg(&tmp)
            .arg(format!("{IMAGE_MIB}M")),
    )?;
    fs::rename(&tmp, &image)?;
    let _ = fs::remove_dir_all(&tree);
    Ok(image)
}

/// A sparse per-boot copy, so the cached image stays pristine.
pub fn copy_for_boot(image: &Path, to: &Path) -> Result<()> {
    run_cmd(Command::new("cp").arg("--sparse=always").arg(image).arg(to))
}
