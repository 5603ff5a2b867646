//! Bundles on disk: `<state_dir>/evidence/<incident>.json`, replaced atomically, the newest
//! [`KEEP`] kept. Callers run these on a blocking thread under a timeout.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use super::bundle::{Bundle, MAX_BYTES};

/// Bundles kept (the newest by incident id, which starts with its opening time).
pub const KEEP: usize = 50;
/// The folder under the state directory.
pub const DIR: &str = "evidence";

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a bundle: {source}", .path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: larger than {MAX_BYTES} bytes", .path.display())]
    TooBig { path: PathBuf },
    #[error("{id:?} is not an incident id")]
    BadId { id: String },
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

/// Incident ids are `<ms>-<hostname>`: digits, a dash, hostname characters. Nothing that
/// could name another file.
pub fn valid_id(id: &str) -> bool {
    let Some((ms, host)) = id.split_once('-') else {
        return false;
    };
    !ms.is_empty()
        && ms.bytes().all(|b| b.is_ascii_digit())
        && id.len() <= 128
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !host.starts_with('.')
}

/// The host part of an incident id: the hostname with anything [`valid_id`] refuses turned
/// into `_` (a host with no name set reports `(none)`), never empty, at most 100 bytes.
pub fn id_host(hostname: &str) -> String {
    let mut h: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if h.starts_with('.') {
        h.replace_range(..1, "_");
    }
    if h.is_empty() { "host".into() } else { h }
}

pub fn path(dir: &Path, id: &str) -> Result<PathBuf, FileError> {
    if !valid_id(id) {
        return Err(FileError::BadId { id: id.to_owned() });
    }
    Ok(dir.join(format!("{id}.json")))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the bundle (write, fsync, rename) and removes the oldest beyond [`KEEP`]. Returns
/// its path and size.
pub fn write(dir: &Path, b: &Bundle) -> Result<(PathBuf, usize), FileError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let path = path(dir, &b.incident)?;
    let body = serde_json::to_vec_pretty(b).map_err(|source| FileError::Json {
        path: path.clone(),
        source,
    })?;
    let tmp = dir.join(format!(".{}.tmp", b.incident));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(&body).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    prune(dir, KEEP).map_err(io(dir))?;
    Ok((path, body.len()))
}

/// The ids of the bundles, newest first.
pub fn list(dir: &Path) -> Result<Vec<String>, FileError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut ids: Vec<String> = rd
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let id = name.strip_suffix(".json")?;
            valid_id(id).then(|| id.to_owned())
        })
        .collect();
    ids.sort_by(|a, b| newest_first(a, b));
    Ok(ids)
}

fn opened_ms(id: &str) -> u128 {
    id.split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or(0)
}

fn newest_first(a: &str, b: &str) -> std::cmp::Ordering {
    opened_ms(b).cmp(&opened_ms(a)).then_with(|| b.cmp(a))
}

fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let Ok(ids) = list(dir) else { return Ok(()) };
    for id in ids.iter().skip(keep) {
        std::fs::remove_file(dir.join(format!("{id}.json")))?;
    }
    Ok(())
}

/// Reads one bundle, refusing anything larger than the cap (with room for pretty printing).
pub fn read(dir: &Path, id: &str) -> Result<Bundle, FileError> {
    let path = path(dir, id)?;
    let body = read_bounded(&path)?;
    serde_json::from_slice(&body).map_err(|source| FileError::Json { path, source })
}

/// The raw bytes of one bundle, bounded.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, FileError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(io(path))?;
    let mut body = Vec::new();
    f.take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(io(path))?;
    if body.len() > MAX_BYTES {
        return Err(FileError::TooBig {
            path: path.to_path_buf(),
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::bundle::tests::{bundle, capture};

    #[test]
    fn ids_that_could_name_another_file_are_refused() {
        assert!(valid_id("1764720000000-ip-10-0-1-2.ec2.internal"));
        for bad in [
            "",
            "../x",
            "1-../../etc/passwd",
            "abc-host",
            "1-.hidden",
            "1-a/b",
            "-host",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn only_the_newest_are_kept_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(DIR);
        for i in 0..(KEEP + 5) {
            let mut b = bundle(vec![capture(1, 2, 1)]);
            // Ids of different lengths: the order is by time, not by text.
            b.incident = format!("{}-host", 900 + i);
            write(&dir, &b).unwrap();
        }
        let ids = list(&dir).unwrap();
        assert_eq!(ids.len(), KEEP);
        assert_eq!(ids[0], format!("{}-host", 900 + KEEP + 4));
        assert!(!ids.contains(&"904-host".to_string()));
        let b = read(&dir, &ids[0]).unwrap();
        assert_eq!(b.incident, ids[0]);
        assert!(matches!(read(&dir, "1-../x"), Err(FileError::BadId { .. })));
        std::fs::write(dir.join("7-big.json"), vec![b' '; MAX_BYTES + 10]).unwrap();
        assert!(matches!(read(&dir, "7-big"), Err(FileError::TooBig { .. })));
    }

    #[test]
    fn any_hostname_makes_a_valid_id() {
        for h in [
            "(none)",
            "",
            ".hidden",
            "ip-10-0-0-1.ec2.internal",
            "héllo wörld",
            &"x".repeat(300),
        ] {
            let id = format!("1796312629706-{}", id_host(h));
            assert!(valid_id(&id), "{h:?} -> {id}");
        }
        assert_eq!(id_host("(none)"), "_none_");
        assert_eq!(
            id_host("ip-10-0-0-1.ec2.internal"),
            "ip-10-0-0-1.ec2.internal"
        );
    }
}
