//! Mounts and block devices.
//!
//! The block tracepoints report the *whole disk* a request went to, XFS tracepoints and
//! `/proc/self/mountinfo` report the device a filesystem is mounted from (a partition, a
//! device-mapper or md device). This module connects the two: it parses mountinfo and walks
//! sysfs (partition -> disk, dm/md -> slaves) so that "disk 259:1 is hung" becomes "these mounts
//! are affected".
//!
//! Nothing here touches a watched filesystem: mountinfo and sysfs are kernel-generated, and
//! [`mount_for_path`] is purely lexical.

use std::{
    collections::HashSet,
    ffi::OsString,
    fmt, fs, io,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Where the agent reads its own mount table from.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// How deep [`Sysfs::disks_for`] follows slaves (dm on dm on md ...) before giving up; real
/// stacks are 2-3 deep, the limit only guards against loops in a broken tree.
const MAX_STACK_DEPTH: usize = 16;

#[derive(Debug, Error)]
pub enum TopologyError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A mountinfo line that does not have the documented shape (1-based line number).
    #[error("mountinfo line {line}: {what}")]
    Mountinfo { line: usize, what: String },
}

/// A block device number as major:minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct DevId {
    pub major: u32,
    pub minor: u32,
}

impl DevId {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// Decodes the kernel-internal `dev_t` that tracepoints record (20-bit minor). This is not
    /// the userspace `st_dev` encoding; see [`DevId::from_user`] for that.
    pub const fn from_kernel(dev: u32) -> DevId {
        DevId {
            major: dev >> 20,
            minor: dev & 0xfffff,
        }
    }

    /// The kernel-internal encoding, for matching against values the programs report.
    pub const fn to_kernel(self) -> u32 {
        (self.major << 20) | (self.minor & 0xfffff)
    }

    /// Decodes a userspace `dev_t` (`st_dev` from stat/statx), glibc's `major()`/`minor()`.
    pub const fn from_user(dev: u64) -> DevId {
        DevId {
            major: (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32,
            minor: ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32,
        }
    }

    /// Parses "MAJ:MIN" as found in mountinfo and sysfs `dev` files.
    pub fn parse(s: &str) -> Option<DevId> {
        let (major, minor) = s.split_once(':')?;
        Some(DevId {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl fmt::Display for DevId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of `/proc/<pid>/mountinfo` (proc(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `st_dev` of the filesystem: equals the `dev` of XFS tracepoints; anonymous `0:N` for
    /// NFS, overlay, tmpfs.
    pub dev: DevId,
    /// The directory of the filesystem mounted here (not `/` for bind mounts), unescaped.
    pub root: String,
    /// Unescaped.
    pub mount_point: PathBuf,
    /// Per-mount options, as written by the kernel (not unescaped).
    pub options: String,
    /// Unescaped.
    pub fstype: String,
    /// Unescaped; may be empty.
    pub source: String,
    /// Per-superblock options, as written by the kernel (not unescaped).
    pub super_options: String,
}

/// Reads and parses this process's mount table.
pub fn read_mountinfo() -> Result<Vec<MountEntry>, TopologyError> {
    let text = fs::read_to_string(MOUNTINFO).map_err(|source| TopologyError::Io {
        path: PathBuf::from(MOUNTINFO),
        source,
    })?;
    parse_mountinfo(&text)
}

/// Parses the text of a mountinfo file:
///
/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
///
/// Fields are separated by single spaces and never contain one (the kernel escapes spaces, tabs,
/// newlines and backslashes as `\ooo`). Splitting on single spaces, not runs of whitespace, keeps
/// an empty source (`- tmpfs  rw`) in its place. Any number of optional fields may precede the
/// ` - ` separator; they are skipped.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>, TopologyError> {
    let mut entries = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let entry = parse_mountinfo_line(line).map_err(|what| TopologyError::Mountinfo {
            line: idx + 1,
            what,
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

fn parse_mountinfo_line(line: &str) -> Result<MountEntry, String> {
    let tokens: Vec<&str> = line.split(' ').collect();
    if tokens.len() < 10 {
        return Err(format!(
            "{} fields, expected at least 10: {line:?}",
            tokens.len()
        ));
    }
    // The separator is the first "-" after the six fixed fields; optional fields are
    // `tag[:value]` and never a lone dash.
    let sep = tokens[6..]
        .iter()
        .position(|t| *t == "-")
        .map(|p| p + 6)
        .ok_or_else(|| format!("no \" - \" separator: {line:?}"))?;
    if tokens.len() < sep + 4 {
        return Err(format!(
            "expected fstype, source and super options after \" - \": {line:?}"
        ));
    }
    let id = |i: usize, what: &str| -> Result<u32, String> {
        tokens[i]
            .parse()
            .map_err(|_| format!("{what} {:?} is not a number", tokens[i]))
    };
    let mount_id = id(0, "mount ID")?;
    let parent_id = id(1, "parent ID")?;
    let dev =
        DevId::parse(tokens[2]).ok_or_else(|| format!("device {:?} is not MAJ:MIN", tokens[2]))?;
    let root = lossy(unescape(tokens[3]));
    let mount_point = PathBuf::from(OsString::from_vec(unescape(tokens[4])));
    if !mount_point.is_absolute() {
        return Err(format!("mount point {:?} is not absolute", tokens[4]));
    }
    Ok(MountEntry {
        mount_id,
        parent_id,
        dev,
        root,
        mount_point,
        options: tokens[5].to_owned(),
        fstype: lossy(unescape(tokens[sep + 1])),
        source: lossy(unescape(tokens[sep + 2])),
        super_options: tokens[sep + 3].to_owned(),
    })
}

/// Undoes the kernel's `\ooo` octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash). A backslash not followed by three octal digits is kept as is.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(digits) = b.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            // `\377` is the largest byte; anything above is not an escape the kernel wrote.
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The mount that `path` lives on: the entry whose mount point is the longest prefix of `path`,
/// compared component by component (`/var/lib/dockerx` is not under `/var/lib/docker`).
///
/// Purely lexical, never touching the filesystem, because the filesystem in question may hang.
/// So `path` should be absolute and free of `..` and symlinks. When several entries share a
/// mount point (stacked mounts) the last one in mountinfo order wins: it is the one on top.
/// Limitation: a mount hidden by a later mount on an *ancestor* directory is still reported.
pub fn mount_for_path<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let mut best: Option<(usize, &MountEntry)> = None;
    for m in mounts {
        if !path.starts_with(&m.mount_point) {
            continue;
        }
        let depth = m.mount_point.components().count();
        // `>=`: a later entry on the same mount point is stacked on top of the earlier one.
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, m));
        }
    }
    best.map(|(_, m)| m)
}

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
mod tests {
    use super::*;

    #[test]
    fn devid_encodings() {
        let d = DevId::from_kernel((259 << 20) | 3);
        assert_eq!(d, DevId::new(259, 3));
        assert_eq!(d.to_string(), "259:3");
        assert_eq!(d.to_kernel(), (259 << 20) | 3);
        // Minor numbers above 255 use the full 20 bits in the kernel encoding.
        let big = DevId::from_kernel((8 << 20) | 0xfffff);
        assert_eq!(big, DevId::new(8, 0xfffff));
        assert_eq!(DevId::from_kernel(0), DevId::new(0, 0));
        assert_eq!(DevId::from_kernel(u32::MAX), DevId::new(0xfff, 0xfffff));

        // Userspace st_dev: 8:1 is 0x801; 259:3 is 0x10303; minor 256 spills above bit 20.
        assert_eq!(DevId::from_user(0x801), DevId::new(8, 1));
        assert_eq!(DevId::from_user(0x10303), DevId::new(259, 3));
        assert_eq!(DevId::from_user(0x100700), DevId::new(7, 256));
        assert_eq!(
            DevId::from_user(libc::makedev(4000, 1 << 19)),
            DevId::new(4000, 1 << 19)
        );

        assert_eq!(DevId::parse("8:1"), Some(DevId::new(8, 1)));
        assert_eq!(DevId::parse("254:0"), Some(DevId::new(254, 0)));
        for bad in ["", "8", "8:", ":1", "8:1:2", "a:b", "-1:2", " 8:1"] {
            assert_eq!(DevId::parse(bad), None, "{bad:?}");
        }
        assert!(DevId::new(8, 1) < DevId::new(8, 2));
        assert!(DevId::new(8, 99) < DevId::new(9, 0));
    }

    const MOUNTINFO_FIXTURE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
61 27 259:1 / /var/lib/docker rw,noatime shared:1 master:2 - xfs /dev/nvme1n1 rw,attr2,inode64
70 27 0:40 /data\\040dir /mnt/with\\040space\\011tab\\012nl\\134bs rw propagation_from:3 unbindable - nfs4 fs-1.efs:/a\\040b rw,vers=4.1
71 27 0:41 / /mnt/empty-source rw - tmpfs  rw,size=4k
";

    #[test]
    fn mountinfo_fields_and_escapes() {
        let m = parse_mountinfo(MOUNTINFO_FIXTURE).unwrap();
        assert_eq!(m.len(), 5);

        assert_eq!(
            m[0],
            MountEntry {
                mount_id: 22,
                parent_id: 27,
                dev: DevId::new(0, 21),
                root: "/".into(),
                mount_point: "/proc".into(),
                options: "rw,relatime".into(),
                fstype: "proc".into(),
                source: "proc".into(),
                super_options: "rw".into(),
            }
        );
        // One optional field.
        assert_eq!(m[1].mount_point, Path::new("/"));
        assert_eq!(m[1].fstype, "ext4");
        assert_eq!(m[1].source, "/dev/vda");
        assert_eq!(m[1].super_options, "rw,discard");
        // Two optional fields.
        assert_eq!(m[2].mount_id, 61);
        assert_eq!(m[2].dev, DevId::new(259, 1));
        assert_eq!(m[2].options, "rw,noatime");
        assert_eq!(m[2].fstype, "xfs");
        assert_eq!(m[2].super_options, "rw,attr2,inode64");
        // Escapes in root, mount point and source.
        assert_eq!(m[3].root, "/data dir");
        assert_eq!(m[3].mount_point, Path::new("/mnt/with space\ttab\nnl\\bs"));
        assert_eq!(m[3].source, "fs-1.efs:/a b");
        assert_eq!(m[3].fstype, "nfs4");
        assert_eq!(m[3].super_options, "rw,vers=4.1");
        // An empty source keeps the following fields in place.
        assert_eq!(m[4].source, "");
        assert_eq!(m[4].super_options, "rw,size=4k");
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape(r"a\040b"), b"a b");
        assert_eq!(unescape(r"\134\134"), b"\\\\");
        assert_eq!(unescape(r"end\04"), b"end\\04");
        assert_eq!(unescape(r"\"), b"\\");
        assert_eq!(unescape(r"\089"), b"\\089");
        assert_eq!(unescape(r"\777"), b"\\777");
        assert_eq!(unescape("\\303\\251"), "é".as_bytes());
    }

    #[test]
    fn malformed_mountinfo_names_the_line() {
        let err = |text: &str| parse_mountinfo(text).unwrap_err().to_string();
        let good = "22 27 0:21 / /proc rw,relatime - proc proc rw\n";

        let e = err(&format!(
            "{good}{good}23 27 0:22 / /sys rw,relatime sysfs sysfs rw\n"
        ));
        assert!(e.starts_with("mountinfo line 3: "), "{e}");
        assert!(e.contains("9 fields"), "{e}");

        let e = err(&format!("{good}23 27 0:22 / /sys rw x y z - sysfs sysfs\n"));
        assert!(e.starts_with("mountinfo line 2: expected fstype"), "{e}");

        let e = err("23 27 0:22 / /sys rw x y z w sysfs sysfs rw\n");
        assert!(e.contains("line 1: no \" - \" separator"), "{e}");

        let e = err("x 27 0:22 / /sys rw - sysfs sysfs rw\n");
        assert!(e.contains("line 1: mount ID \"x\" is not a number"), "{e}");

        let e = err("23 27 0-22 / /sys rw - sysfs sysfs rw\n");
        assert!(e.contains("device \"0-22\" is not MAJ:MIN"), "{e}");

        let e = err("23 27 0:22 / sys rw - sysfs sysfs rw\n");
        assert!(e.contains("mount point \"sys\" is not absolute"), "{e}");

        assert!(parse_mountinfo("").unwrap().is_empty());
    }

    fn entry(id: u32, mount_point: &str) -> MountEntry {
        MountEntry {
            mount_id: id,
            parent_id: 1,
            dev: DevId::new(0, id),
            root: "/".into(),
            mount_point: mount_point.into(),
            options: "rw".into(),
            fstype: "ext4".into(),
            source: "/dev/x".into(),
            super_options: "rw".into(),
        }
    }

    #[test]
    fn mount_for_path_longest_component_prefix() {
        let mounts = vec![
            entry(1, "/"),
            entry(2, "/var"),
            entry(3, "/var/lib/docker"),
            entry(4, "/var/lib/docker/overlay2/abc/merged"),
            entry(5, "/mnt/data"),
            entry(6, "/mnt/data"),
            entry(7, "/var/lib/docker/volumes"),
        ];
        let id = |p: &str| mount_for_path(&mounts, Path::new(p)).map(|m| m.mount_id);
        assert_eq!(id("/"), Some(1));
        assert_eq!(id("/etc/passwd"), Some(1));
        assert_eq!(id("/var"), Some(2));
        assert_eq!(id("/var/log/syslog"), Some(2));
        assert_eq!(id("/var/lib/docker"), Some(3));
        assert_eq!(id("/var/lib/docker/"), Some(3));
        assert_eq!(id("/var/lib/docker/image"), Some(3));
        assert_eq!(id("/var/lib/dockerx"), Some(2));
        assert_eq!(id("/var/lib/docker/overlay2/abc/merged/etc"), Some(4));
        assert_eq!(id("/var/lib/docker/overlay2/abc/mergedx"), Some(3));
        assert_eq!(id("/var/lib/docker/volumes/v1/_data"), Some(7));
        // Stacked: the later entry is on top.
        assert_eq!(id("/mnt/data/file"), Some(6));
        assert_eq!(id("/mnt"), Some(1));
        // Relative paths have no mount.
        assert_eq!(id("var/lib/docker"), None);
        assert_eq!(mount_for_path(&[], Path::new("/")), None);
        // Without a root mount, paths outside every mount have none.
        assert_eq!(
            mount_for_path(&mounts[1..], Path::new("/etc")).map(|m| m.mount_id),
            None
        );
    }

    #[test]
    fn real_mountinfo_has_root() {
        let mounts = read_mountinfo().unwrap();
        let root = mount_for_path(&mounts, Path::new("/")).expect("no mount for /");
        assert_eq!(root.mount_point, Path::new("/"));
        let proc_mount = mount_for_path(&mounts, Path::new("/proc/self/mountinfo")).unwrap();
        assert_eq!(proc_mount.fstype, "proc");
    }

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
}
