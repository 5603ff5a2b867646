//! Small readers for /proc and /sys used by the fixtures and the tests.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u64,
    /// `major:minor` of the mounted device (`7:3` for a loop device, `0:NN` for FUSE).
    pub dev: String,
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes the octal escapes (`\040` for a space, ...) of mountinfo fields.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo`.
pub fn mountinfo() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    Some(MountEntry {
        mount_id: l.first()?.parse().ok()?,
        dev: l.get(2)?.to_string(),
        root: unescape_mountinfo(l.get(3)?),
        mount_point: PathBuf::from(unescape_mountinfo(l.get(4)?)),
        fstype: r.first()?.to_string(),
        source: unescape_mountinfo(r.get(1)?),
    })
}

/// Mounts whose mount point is exactly `path`.
pub fn mounts_at(path: &Path) -> Vec<MountEntry> {
    mountinfo()
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect()
}

/// Mounts at `path` or anywhere below it.
pub fn mounts_under(path: &Path) -> Vec<MountEntry> {
    mountinfo()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(path))
        .collect()
}

/// `/sys/block/<name>/stat`, the fields of Documentation/block/stat.rst.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockStat {
    pub read_ios: u64,
    pub read_sectors: u64,
    pub write_ios: u64,
    pub write_sectors: u64,
    pub in_flight: u64,
    pub io_ticks_ms: u64,
    /// All fields as read.
    pub raw: Vec<u64>,
}

pub fn block_stat(name: &str) -> anyhow::Result<BlockStat> {
    let path = format!("/sys/block/{name}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let raw: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let f = |i: usize| raw.get(i).copied().unwrap_or(0);
    Ok(BlockStat {
        read_ios: f(0),
        read_sectors: f(2),
        write_ios: f(4),
        write_sectors: f(6),
        in_flight: f(8),
        io_ticks_ms: f(9),
        raw,
    })
}

/// `/sys/block/<name>/inflight`: (reads, writes) in flight.
pub fn block_inflight(name: &str) -> anyhow::Result<(u64, u64)> {
    let path = format!("/sys/block/{name}/inflight");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut it = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0));
    Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
}

/// The backing file of an attached loop device (`/sys/block/loopN/loop/backing_file`), or
/// `None` when the device is not attached.
pub fn loop_backing_file(name: &str) -> Option<PathBuf> {
    std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .ok()
        .map(|s| PathBuf::from(s.trim_end_matches('\n')))
}

/// Names (`loop3`) of the loop devices whose backing file is `path`, from sysfs.
pub fn loop_devices_backed_by(path: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("loop"))
        .filter(|n| loop_backing_file(n).is_some_and(|b| b == path))
        .collect();
    out.sort();
    out
}

/// The state letter of a process (`R`, `S`, `D`, `Z`, ...) from `/proc/<pid>/stat`.
pub fn proc_state(pid: u32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the state follows the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// `/proc/<pid>/wchan` (where a blocked process sleeps), if readable.
pub fn proc_wchan(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_line() {
        let m = parse_mountinfo_line(
            "43 27 0:39 / /tmp/a\\040b rw,nosuid shared:1 - fuse faultyfs rw,user_id=0",
        )
        .expect("parsed");
        assert_eq!(m.mount_id, 43);
        assert_eq!(m.dev, "0:39");
        assert_eq!(m.mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(m.fstype, "fuse");
        assert_eq!(m.source, "faultyfs");
    }

    #[test]
    fn own_mountinfo_has_root() {
        assert!(mountinfo().iter().any(|m| m.mount_point == Path::new("/")));
    }
}
