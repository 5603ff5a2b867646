//! Refuses config and state files others could have written: a world-writable file, or one
//! owned by a user other than root and the agent's own, could steer what the agent does (the
//! config names the command `exec` runs; the incident history decides whether the ladder runs).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeFile {
    #[error(
        "{what} {} is world-writable (mode {mode:04o}); refusing it. Fix: chmod o-w {}",
        .path.display(),
        .path.display()
    )]
    WorldWritable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error(
        "{what} {} is owned by uid {owner}, not by root or the agent (uid {euid}); refusing it. Fix: chown {euid} {}",
        .path.display(),
        .path.display()
    )]
    ForeignOwner {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
}

/// Checks one file or directory's owner and mode. A missing path is not this check's business
/// (`Ok`): whoever opens it reports that.
pub fn check(what: &'static str, path: &Path) -> Result<(), UnsafeFile> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let euid = nix::unistd::geteuid().as_raw();
    check_meta(what, path, meta.mode(), meta.uid(), euid)
}

fn check_meta(
    what: &'static str,
    path: &Path,
    mode: u32,
    owner: u32,
    euid: u32,
) -> Result<(), UnsafeFile> {
    if owner != 0 && owner != euid {
        return Err(UnsafeFile::ForeignOwner {
            what,
            path: path.into(),
            owner,
            euid,
        });
    }
    if mode & 0o002 != 0 {
        return Err(UnsafeFile::WorldWritable {
            what,
            path: path.into(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_mode_rules() {
        let p = Path::new("/etc/bindsto/config.toml");
        assert_eq!(check_meta("config", p, 0o100644, 0, 0), Ok(()));
        assert_eq!(check_meta("config", p, 0o100600, 1000, 1000), Ok(()));
        assert_eq!(check_meta("config", p, 0o100640, 0, 1000), Ok(()));
        let e = check_meta("config", p, 0o100666, 0, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config /etc/bindsto/config.toml is world-writable (mode 0666); refusing it. Fix: chmod o-w /etc/bindsto/config.toml"
        );
        let e = check_meta("config", p, 0o100644, 1000, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config /etc/bindsto/config.toml is owned by uid 1000, not by root or the agent (uid 0); refusing it. Fix: chown 0 /etc/bindsto/config.toml"
        );
        // A sticky world-writable directory (/tmp) is still world-writable.
        assert!(check_meta("state directory", Path::new("/tmp"), 0o41777, 0, 0).is_err());
    }

    #[test]
    fn real_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(check("config", &f), Ok(()));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o646)).unwrap();
        assert!(matches!(
            check("config", &f),
            Err(UnsafeFile::WorldWritable { mode: 0o646, .. })
        ));
        assert_eq!(check("config", &dir.path().join("missing")), Ok(()));
    }
}
