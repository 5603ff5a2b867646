//! The scenario catalogue, shared by the host harness (what to boot, with which disks and
//! programs) and the guest runner (what to do). One scenario per boot: a scenario that hangs
//! NFS client initialisation or leaves a dm device suspended cannot spoil the next one.

/// A kernel line of the fleet and the Debian suite that carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLine {
    /// `5.10`, `6.1`, `6.12`: what `--kernel` takes.
    pub name: &'static str,
    /// Debian suite whose `linux-image-cloud-amd64` is this line.
    pub suite: &'static str,
    /// The Amazon Linux release that runs this line, for the table.
    pub fleet: &'static str,
}

pub const KERNELS: &[KernelLine] = &[
    KernelLine {
        name: "5.10",
        suite: "bullseye",
        fleet: "AL2",
    },
    KernelLine {
        name: "6.1",
        suite: "bookworm",
        fleet: "AL2023",
    },
    KernelLine {
        name: "6.12",
        suite: "bookworm-backports",
        fleet: "AL2023 (newer)",
    },
];

/// What a scenario needs from the guest image.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    /// Kernel modules loaded before the scenario (dependencies are resolved from modules.dep).
    pub modules: &'static [&'static str],
    /// Modules put into the image but not loaded at boot: the scenario loads them itself
    /// (after the agent started, to see it attach the module's tracepoints late).
    pub late_modules: &'static [&'static str],
    /// Host binaries copied into the initramfs with the libraries `ldd` lists.
    pub programs: &'static [&'static str],
    /// Debian packages (of [`USERSPACE_SUITE`]) unpacked into the cache, and the programs
    /// copied from them into the image (same paths) with their libraries.
    pub debs: &'static [&'static str],
    pub deb_programs: &'static [&'static str],
    /// Virtio disks: (size in MiB, make an XFS filesystem on it on the host).
    pub disks: &'static [(u64, bool)],
    /// Index of a disk whose reads of sector [`FAILING_SECTOR`] fail with EIO at the request
    /// level (QEMU's blkdebug driver), for block errors that are not dm errors.
    pub failing_disk: Option<usize>,
    /// Boot the cached debootstrap root filesystem (systemd, dbus) as /dev/vda: /init
    /// prepares it and switches root to systemd; the scenario runs as a unit in there.
    pub rootfs: bool,
    /// Wall-clock limit for the whole boot, seconds (TCG is slow).
    pub time_limit_s: u64,
}

/// The sector of `failing_disk` that fails (inside a 320 MiB XFS, in AG 0 data space: mount never reads it).
pub const FAILING_SECTOR: u64 = 100_000;

const NFS_MODULES: &[&str] = &["nfsv4", "nfs", "sunrpc"];

/// The suite of [`Scenario::debs`]: the host's own (Debian 12), so what `ldd` finds on the
/// host for the rest matches.
pub const USERSPACE_SUITE: &str = "bookworm";
const DM_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "dm_mod", "xfs"];
const DM_EXT4_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "dm_mod", "ext4"];

/// The NFS client alone, mounting a blackhole server: the mount-hang scenarios.
const NFS_CLIENT: Scenario = Scenario {
    name: "",
    modules: NFS_MODULES,
    late_modules: &[],
    programs: &[],
    debs: &[],
    deb_programs: &[],
    disks: &[],
    failing_disk: None,
    rootfs: false,
    time_limit_s: 300,
};

/// One XFS on dm-linear over a virtio disk: the EBS scenarios differ only in what they do to it.
const DM_ONE_DISK: Scenario = Scenario {
    name: "",
    modules: DM_MODULES,
    late_modules: &[],
    programs: &["/usr/sbin/dmsetup"],
    debs: &[],
    deb_programs: &[],
    disks: &[(512, true)],
    failing_disk: None,
    rootfs: false,
    time_limit_s: 300,
};

/// The debootstrap root with real systemd (vda) and the watched XFS (vdb): the systemd
/// scenarios differ only in the fault they inject into the critical watch.
const SYSTEMD_GUEST: Scenario = Scenario {
    name: "",
    modules: &["virtio_pci", "virtio_blk", "ext4", "xfs"],
    late_modules: &[],
    programs: &[],
    debs: &[],
    deb_programs: &[],
    // vda is the root filesystem (added by the harness); vdb the watched XFS.
    disks: &[(320, true)],
    failing_disk: None,
    rootfs: true,
    time_limit_s: 420,
};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "nfs-mount-hang",
        time_limit_s: 240,
        ..NFS_CLIENT
    },
    Scenario {
        name: "efs-parallel-mounts",
        ..NFS_CLIENT
    },
    Scenario {
        name: "nfs-server-gone",
        // The NFS server and client modules load after the agent (the scenario does it).
        modules: &[],
        late_modules: &["nfsd", "nfsv4", "nfs", "sunrpc"],
        programs: &[],
        // With the libraries a clean Debian 12 host may lack (libtirpc and its Kerberos
        // dependencies), so nothing but busybox and libc comes from the host.
        debs: &[
            "nfs-kernel-server",
            "libwrap0",
            "libtirpc3",
            "libtirpc-common",
            "libgssapi-krb5-2",
            "libkrb5-3",
            "libk5crypto3",
            "libkrb5support0",
            "libkeyutils1",
            "netbase",
        ],
        deb_programs: &[
            "/usr/sbin/rpc.nfsd",
            "/usr/sbin/rpc.mountd",
            "/usr/sbin/exportfs",
        ],
        disks: &[],
        failing_disk: None,
        rootfs: false,
        time_limit_s: 420,
    },
    Scenario {
        name: "ebs-detach",
        ..DM_ONE_DISK
    },
    Scenario {
        name: "ebs-detach-ext4",
        modules: DM_EXT4_MODULES,
        // The ext4 is made in the guest, on the dm device (the host's e2fsprogs, with the
        // libraries ldd lists): the disk stays raw.
        programs: &["/usr/sbin/dmsetup", "/usr/sbin/mkfs.ext4"],
        disks: &[(512, false)],
        ..DM_ONE_DISK
    },
    Scenario {
        name: "ebs-stall",
        ..DM_ONE_DISK
    },
    Scenario {
        name: "xfs-shutdown-5.10",
        modules: DM_MODULES,
        late_modules: &[],
        programs: &["/usr/sbin/dmsetup", "/usr/sbin/xfs_io"],
        debs: &[],
        deb_programs: &[],
        disks: &[(512, true), (320, true)],
        failing_disk: Some(1),
        rootfs: false,
        time_limit_s: 300,
    },
    Scenario {
        name: "systemd-ecs-stop",
        ..SYSTEMD_GUEST
    },
    Scenario {
        name: "unmount-critical",
        ..SYSTEMD_GUEST
    },
];

/// Where the initramfs carries the `.deb` that the systemd guest installs with `dpkg -i`.
pub const DEB_IN_INITRAMFS: &str = "/vmtest/bindsto.deb";

pub fn scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// Why a scenario does not apply to a kernel line (shown in the table), or None when it does.
pub fn not_applicable(scenario: &str, kernel: &str) -> Option<&'static str> {
    match (scenario, kernel) {
        ("xfs-shutdown-5.10", "6.1" | "6.12") => Some(
            "n/a: kernel has xfs:xfs_force_shutdown and block:block_rq_error (covered by ebs-detach)",
        ),
        _ => None,
    }
}

/// The line the guest prints for each verdict; the host reads nothing else as a result.
pub const RESULT_PREFIX: &str = "VMTEST-RESULT";
/// Printed by the guest after the last result, just before powering off.
pub const END_LINE: &str = "VMTEST-END";

/// Scenarios of the issue that this harness does not run yet, with the reason the table shows.
pub const NOT_RUN: &[(&str, &str)] = &[];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_is_known_once_and_the_5_10_one_only_runs_on_5_10() {
        let mut names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        names.extend(NOT_RUN.iter().map(|(n, _)| *n));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(not_applicable("xfs-shutdown-5.10", "5.10").is_none());
        assert!(not_applicable("xfs-shutdown-5.10", "6.12").is_some());
        assert!(not_applicable("ebs-stall", "6.1").is_none());
        for k in KERNELS {
            assert!(not_applicable("ebs-detach-ext4", k.name).is_none());
            assert!(not_applicable("unmount-critical", k.name).is_none());
        }
        assert!(scenario("unmount-critical").is_some_and(|s| s.rootfs));
        assert!(scenario("ebs-detach-ext4").is_some_and(|s| !s.rootfs));
    }
}
