//! Is this an EC2 instance? What the firmware says (DMI) and, on Xen instances, the
//! hypervisor: read once when IMDS does not answer, so a machine that is not on EC2 stops
//! asking IMDS instead of retrying it forever.

use std::path::Path;

/// Where Nitro (`sys_vendor` "Amazon EC2", `board_asset_tag` the instance id) and Xen
/// (`uuid`s beginning with "ec2") instances say so.
const MARKERS: [(&str, Marker); 4] = [
    (
        "sys/class/dmi/id/sys_vendor",
        Marker::Contains("Amazon EC2"),
    ),
    ("sys/class/dmi/id/board_asset_tag", Marker::Prefix("i-")),
    ("sys/hypervisor/uuid", Marker::Prefix("ec2")),
    ("sys/class/dmi/id/product_uuid", Marker::Prefix("ec2")),
];

#[derive(Clone, Copy)]
enum Marker {
    Contains(&'static str),
    Prefix(&'static str),
}

/// `Some(what DMI says)` when nothing marks this machine as an EC2 instance.
pub fn says_not_ec2() -> Option<String> {
    says_not_ec2_at(Path::new("/"))
}

fn says_not_ec2_at(root: &Path) -> Option<String> {
    let mut seen = Vec::new();
    for (file, marker) in MARKERS {
        let Ok(text) = std::fs::read_to_string(root.join(file)) else {
            continue;
        };
        let v = text.trim();
        let hit = match marker {
            Marker::Contains(s) => v.contains(s),
            Marker::Prefix(p) => v.to_ascii_lowercase().starts_with(p),
        };
        if hit {
            return None;
        }
        seen.push(format!("/{file} is {v:?}"));
    }
    Some(if seen.is_empty() {
        "no DMI or hypervisor identification".into()
    } else {
        format!("DMI: {}", seen.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (f, text) in files {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    #[test]
    fn nitro_and_xen_instances_are_ec2_and_others_are_not() {
        let nitro = root(&[("sys/class/dmi/id/sys_vendor", "Amazon EC2\n")]);
        assert_eq!(says_not_ec2_at(nitro.path()), None);
        let xen = root(&[(
            "sys/hypervisor/uuid",
            "ec2e1916-9099-7caf-fd21-012345abcdef\n",
        )]);
        assert_eq!(says_not_ec2_at(xen.path()), None);
        let tag = root(&[("sys/class/dmi/id/board_asset_tag", "i-0123456789abcdef0\n")]);
        assert_eq!(says_not_ec2_at(tag.path()), None);
        let qemu = root(&[("sys/class/dmi/id/sys_vendor", "QEMU\n")]);
        let why = says_not_ec2_at(qemu.path()).unwrap();
        assert!(why.contains("\"QEMU\""), "{why}");
        let bare = root(&[]);
        assert_eq!(
            says_not_ec2_at(bare.path()).as_deref(),
            Some("no DMI or hypervisor identification")
        );
    }
}
