//! Device numbers as the kernel programs report them.

use std::{fmt, path::Path};

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

/// The block major of `device-mapper` in /proc/devices, if dm is loaded (the bio programs
/// track that major only).
pub fn device_mapper_major(proc_devices: &Path) -> Option<u32> {
    parse_block_major(
        &std::fs::read_to_string(proc_devices).ok()?,
        "device-mapper",
    )
}

/// Whether any device-mapper device exists (`dm-N` under `/sys/block`).
pub fn device_mapper_present(sys_block: &Path) -> bool {
    std::fs::read_dir(sys_block).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("dm-"))
    })
}

fn parse_block_major(text: &str, name: &str) -> Option<u32> {
    text.split("Block devices:")
        .nth(1)?
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse::<u32>().ok()?, w.next()?))
        })
        .find(|(_, n)| *n == name)
        .map(|(m, _)| m)
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

    #[test]
    fn finds_the_device_mapper_major() {
        let text = "Character devices:\n  1 mem\n 10 misc\n\nBlock devices:\n  7 loop\n 253 device-mapper\n254 virtblk\n";
        assert_eq!(parse_block_major(text, "device-mapper"), Some(253));
        assert_eq!(
            parse_block_major("Block devices:\n  7 loop\n", "device-mapper"),
            None
        );
    }
}
