use std::fs;

use super::*;
use crate::topology::mountinfo::tests::entry;

/// A fixture sysfs tree laid out like the real one, with relative symlinks.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Self {
        Tree {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn sysfs(&self) -> Sysfs {
        Sysfs::new(self.root())
    }

    /// A device directory at `rel` (under the root) with its `dev` file and the
    /// `dev/block/MAJ:MIN` and `class/block/<name>` links; disks also get `block/<name>`.
    fn device(&self, rel: &str, dev: &str, partition: bool) {
        let dir = self.root().join(rel);
        fs::create_dir_all(dir.join("holders")).unwrap();
        fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
        if partition {
            fs::write(dir.join("partition"), "1\n").unwrap();
        } else {
            fs::create_dir_all(dir.join("slaves")).unwrap();
        }
        let name = Path::new(rel).file_name().unwrap().to_str().unwrap();
        self.link(&format!("dev/block/{dev}"), rel);
        self.link(&format!("class/block/{name}"), rel);
        if !partition {
            self.link(&format!("block/{name}"), rel);
        }
    }

    /// A relative symlink at `link` (relative to the root) pointing at `target` (same).
    fn link(&self, link: &str, target: &str) {
        let link_path = self.root().join(link);
        let parent = link_path.parent().unwrap();
        fs::create_dir_all(parent).unwrap();
        let up = Path::new(link).components().count() - 1;
        let rel: PathBuf = std::iter::repeat_n(Path::new(".."), up)
            .collect::<PathBuf>()
            .join(target);
        std::os::unix::fs::symlink(rel, link_path).unwrap();
    }

    /// Makes `slave` (a device path) a slave of the stacked device at `holder`.
    fn slave(&self, holder: &str, slave: &str) {
        let name = Path::new(slave).file_name().unwrap().to_str().unwrap();
        self.link(&format!("{holder}/slaves/{name}"), slave);
    }
}

const SDA: &str = "devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda";
const NVME: &str = "devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1";
const DM0: &str = "devices/virtual/block/dm-0";
const DM1: &str = "devices/virtual/block/dm-1";
const LOOP0: &str = "devices/virtual/block/loop0";

/// sda (8:0) with sda1 (8:1), sda2 (8:2); nvme0n1 (259:0) with nvme0n1p1 (259:1);
/// dm-0 (253:0) over sda2 and nvme0n1p1; dm-1 (253:1) over dm-0; loop0 (7:0).
fn fixture() -> Tree {
    let t = Tree::new();
    t.device(SDA, "8:0", false);
    t.device(&format!("{SDA}/sda1"), "8:1", true);
    t.device(&format!("{SDA}/sda2"), "8:2", true);
    t.device(NVME, "259:0", false);
    t.device(&format!("{NVME}/nvme0n1p1"), "259:1", true);
    t.device(DM0, "253:0", false);
    t.slave(DM0, &format!("{SDA}/sda2"));
    t.slave(DM0, &format!("{NVME}/nvme0n1p1"));
    t.device(DM1, "253:1", false);
    t.slave(DM1, DM0);
    t.device(LOOP0, "7:0", false);
    fs::write(t.root().join(SDA).join("inflight"), "       3        1\n").unwrap();
    fs::write(
            t.root().join(SDA).join("stat"),
            "   31739     5643  2995922    11132    63431    37473  7947280    30477        4     9492    42806     8044       57  1220504      936     4556      261\n",
        )
        .unwrap();
    t
}

fn names(devs: &[BlockDevice]) -> Vec<&str> {
    devs.iter().map(|d| d.name.as_str()).collect()
}

#[test]
fn block_device_lookup() {
    let t = fixture();
    let s = t.sysfs();
    let sda = s.block_device(DevId::new(8, 0)).unwrap();
    assert_eq!(sda.name, "sda");
    assert_eq!(sda.dev, DevId::new(8, 0));
    assert!(!sda.is_partition);
    assert_eq!(sda.sysfs_dir, fs::canonicalize(t.root().join(SDA)).unwrap());

    let sda1 = s.block_device(DevId::new(8, 1)).unwrap();
    assert_eq!(sda1.name, "sda1");
    assert!(sda1.is_partition);
    assert_eq!(sda1.sysfs_dir.parent(), Some(sda.sysfs_dir.as_path()));

    assert_eq!(s.block_device(DevId::new(0, 21)), None);
    assert_eq!(
        Sysfs::new(t.root().join("nope")).block_device(DevId::new(8, 0)),
        None
    );
}

#[test]
fn disks_for_disk_partition_dm_loop() {
    let t = fixture();
    let s = t.sysfs();
    assert_eq!(names(&s.disks_for(DevId::new(8, 0))), ["sda"]);
    assert_eq!(names(&s.disks_for(DevId::new(8, 1))), ["sda"]);
    let via_partition = s.disks_for(DevId::new(259, 1));
    assert_eq!(names(&via_partition), ["nvme0n1"]);
    assert_eq!(via_partition[0].dev, DevId::new(259, 0));
    assert!(!via_partition[0].is_partition);
    // dm over partitions of two disks; order follows the sorted slave names.
    let dm = s.disks_for(DevId::new(253, 0));
    assert_eq!(names(&dm), ["nvme0n1", "sda"]);
    assert_eq!(dm[1].dev, DevId::new(8, 0));
    // dm over dm.
    assert_eq!(names(&s.disks_for(DevId::new(253, 1))), ["nvme0n1", "sda"]);
    // A loop device is a request-based disk of its own.
    assert_eq!(names(&s.disks_for(DevId::new(7, 0))), ["loop0"]);
    // Not a block device.
    assert!(s.disks_for(DevId::new(0, 40)).is_empty());
}

#[test]
fn disks_for_deduplicates_and_survives_cycles() {
    let t = fixture();
    // dm-2 over both partitions of sda: sda once.
    let dm2 = "devices/virtual/block/dm-2";
    t.device(dm2, "253:2", false);
    t.slave(dm2, &format!("{SDA}/sda1"));
    t.slave(dm2, &format!("{SDA}/sda2"));
    // md0 over dm-0 and sda1 (sda reached twice through different paths).
    let md0 = "devices/virtual/block/md0";
    t.device(md0, "9:0", false);
    t.slave(md0, DM0);
    t.slave(md0, &format!("{SDA}/sda1"));
    // dm-3 and dm-4 slaves of each other: a broken tree must not loop forever.
    let (dm3, dm4) = ("devices/virtual/block/dm-3", "devices/virtual/block/dm-4");
    t.device(dm3, "253:3", false);
    t.device(dm4, "253:4", false);
    t.slave(dm3, dm4);
    t.slave(dm4, dm3);

    let s = t.sysfs();
    assert_eq!(names(&s.disks_for(DevId::new(253, 2))), ["sda"]);
    assert_eq!(names(&s.disks_for(DevId::new(9, 0))), ["nvme0n1", "sda"]);
    assert!(s.disks_for(DevId::new(253, 3)).is_empty());
}

#[test]
fn slave_resolved_through_class_block_when_link_is_dangling() {
    let t = fixture();
    let dm5 = "devices/virtual/block/dm-5";
    t.device(dm5, "253:5", false);
    // A slave entry that does not resolve by itself; the name is found in class/block.
    std::os::unix::fs::symlink("../../nowhere/sda1", t.root().join(dm5).join("slaves/sda1"))
        .unwrap();
    assert_eq!(names(&t.sysfs().disks_for(DevId::new(253, 5))), ["sda"]);
}

#[test]
fn partition_of_a_stacked_disk() {
    let t = fixture();
    // md1 over sda1 and nvme0n1p1, partitioned: md1p1 -> md1 -> both disks.
    let md1 = "devices/virtual/block/md1";
    t.device(md1, "9:1", false);
    t.device(&format!("{md1}/md1p1"), "259:7", true);
    t.slave(md1, &format!("{SDA}/sda1"));
    t.slave(md1, &format!("{NVME}/nvme0n1p1"));
    assert_eq!(
        names(&t.sysfs().disks_for(DevId::new(259, 7))),
        ["nvme0n1", "sda"]
    );
}

#[test]
fn disks_listing() {
    let t = fixture();
    assert_eq!(
        names(&t.sysfs().disks()),
        ["dm-0", "dm-1", "loop0", "nvme0n1", "sda"]
    );
    assert!(Sysfs::new(t.root().join("nope")).disks().is_empty());
}

#[test]
fn mounts_on_disk_through_the_stack() {
    let t = fixture();
    let mut mounts = vec![
        entry(1, "/"),
        entry(2, "/var/lib/docker"),
        entry(3, "/data"),
        entry(4, "/boot"),
    ];
    mounts[0].dev = DevId::new(259, 1);
    mounts[1].dev = DevId::new(253, 1);
    mounts[2].dev = DevId::new(7, 0);
    mounts[3].dev = DevId::new(8, 1);
    let s = t.sysfs();
    let ids = |disk: DevId| -> Vec<u32> {
        s.mounts_on_disk(&mounts, disk)
            .iter()
            .map(|m| m.mount_id)
            .collect()
    };
    assert_eq!(ids(DevId::new(8, 0)), [2, 4]);
    assert_eq!(ids(DevId::new(259, 0)), [1, 2]);
    assert_eq!(ids(DevId::new(7, 0)), [3]);
    assert!(ids(DevId::new(8, 16)).is_empty());
}

#[test]
fn inflight_and_stat() {
    let t = fixture();
    let s = t.sysfs();
    let sda = s.block_device(DevId::new(8, 0)).unwrap();
    assert_eq!(s.inflight(&sda.sysfs_dir), Some((3, 1)));
    let st = s.stat(&sda.sysfs_dir).unwrap();
    assert_eq!(
        st,
        DiskStat {
            reads_completed: 31739,
            writes_completed: 63431,
            in_flight: 4,
            discards_completed: 8044,
            flushes_completed: 4556,
        }
    );
    assert_eq!(st.completed(), 31739 + 63431 + 8044 + 4556);
    // No files (loop0 in the fixture): None, not zeros.
    let loop0 = s.block_device(DevId::new(7, 0)).unwrap();
    assert_eq!(s.inflight(&loop0.sysfs_dir), None);
    assert_eq!(s.stat(&loop0.sysfs_dir), None);
}

#[test]
fn stat_field_counts() {
    // 11 fields (before 4.18): no discards, no flushes.
    let st = DiskStat::parse("1 0 8 0 2 0 16 0 5 0 0\n").unwrap();
    assert_eq!(
        st,
        DiskStat {
            reads_completed: 1,
            writes_completed: 2,
            in_flight: 5,
            discards_completed: 0,
            flushes_completed: 0,
        }
    );
    // 15 fields (4.18 to 5.4): discards, no flushes.
    let st = DiskStat::parse("1 0 8 0 2 0 16 0 5 0 0 7 0 0 0").unwrap();
    assert_eq!((st.discards_completed, st.flushes_completed), (7, 0));
    assert_eq!(st.completed(), 10);
    // Wrapping sum.
    let st = DiskStat {
        reads_completed: u64::MAX,
        writes_completed: 2,
        ..DiskStat::default()
    };
    assert_eq!(st.completed(), 1);
    assert_eq!(DiskStat::parse("1 2 3"), None);
    assert_eq!(DiskStat::parse("1 0 8 0 2 0 16 0 x 0 0"), None);
    assert_eq!(DiskStat::parse(""), None);
}

/// This machine's sysfs, when it has block devices: every disk listed resolves to itself.
#[test]
fn real_sysfs_disks_resolve_to_themselves() {
    let s = Sysfs::default();
    for disk in s.disks() {
        assert!(!disk.is_partition, "{disk:?}");
        let found = s.disks_for(disk.dev);
        if disk
            .sysfs_dir
            .join("slaves")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_none())
        {
            assert_eq!(names(&found), [disk.name.as_str()]);
        }
        assert!(s.stat(&disk.sysfs_dir).is_some(), "{disk:?}");
    }
}
