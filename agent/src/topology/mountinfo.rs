//! `/proc/self/mountinfo`: parsing it, and finding the mount a path lives on (lexically).

use std::{
    ffi::OsString,
    fs,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
};

use super::{MOUNTINFO, TopologyError};
use crate::probes::dev::DevId;

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

impl MountEntry {
    /// Why the filesystem cannot be written, if it cannot: `ro` in the superblock options,
    /// which a `remount,ro`, ext4's `errors=remount-ro` and a filesystem the kernel turned
    /// read-only all set. The per-mount `ro` is not a signal: the agent's own sandbox
    /// (`ProtectSystem=strict` in its unit) makes every mount `ro` in its namespace, and a
    /// read-only bind mount leaves the filesystem writable elsewhere.
    pub fn read_only(&self) -> Option<&'static str> {
        self.super_options
            .split(',')
            .any(|o| o == "ro")
            .then_some("the filesystem is read-only (ro in the superblock options)")
    }

    /// Whether this namespace's view of the mount is read-only (the per-mount `ro`: a
    /// read-only bind such as the agent's sandbox), whatever the filesystem is.
    pub fn view_read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const MOUNTINFO_FIXTURE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
61 27 259:1 / /var/lib/docker rw,noatime shared:1 master:2 - xfs /dev/nvme1n1 rw,attr2,inode64
70 27 0:40 /data\\040dir /mnt/with\\040space\\011tab\\012nl\\134bs rw propagation_from:3 unbindable - nfs4 fs-1.efs:/a\\040b rw,vers=4.1
71 27 0:41 / /mnt/empty-source rw - tmpfs  rw,size=4k
";

    #[test]
    fn read_only_is_the_superblock_not_the_sandboxed_mount() {
        // As the agent sees its watched XFS under ProtectSystem=strict: ro per mount, rw below.
        let sandboxed = "61 27 259:1 / /data ro,nosuid,nodev,noatime - xfs /dev/vdb rw,attr2";
        let remounted = "61 27 259:1 / /data ro,noatime - xfs /dev/vdb ro,attr2";
        let aborted = "62 27 259:2 / /d2 rw,relatime - ext4 /dev/vdc ro,errors=remount-ro";
        let m = parse_mountinfo(&format!("{sandboxed}\n")).unwrap();
        assert_eq!(m[0].read_only(), None);
        for line in [remounted, aborted] {
            let m = parse_mountinfo(line).unwrap();
            assert!(m[0].read_only().is_some(), "{line}");
        }
    }

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

    pub(in crate::topology) fn entry(id: u32, mount_point: &str) -> MountEntry {
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
}
