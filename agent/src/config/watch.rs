//! `[[watch]]`: the paths whose storage the host depends on.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::Problem;
use super::locate::KeyLines;

/// One `[[watch]]` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct Watch {
    #[serde(deserialize_with = "canonical_path")]
    pub path: PathBuf,
    #[serde(default)]
    pub critical: bool,
    /// Only a mount at `path` itself is watched, never the one containing it; while there is
    /// none the watch waits.
    #[serde(default)]
    pub require_mountpoint: bool,
    /// Like `require_mountpoint`, but no mount at `path` fails the watch (`not_mounted`) from
    /// the start instead of waiting: nothing mounted there means the runtime writes elsewhere.
    #[serde(default)]
    pub must_be_mounted: bool,
    /// The mount is meant to be read-only: `read_only` is not raised for this watch.
    #[serde(default)]
    pub read_only_ok: bool,
    /// How often the write canary runs under `path` (create, write 4 KiB, `fsync`, remove);
    /// zero (the default) runs none. A write that fails or hangs is `not_writable`.
    #[serde(default, with = "super::de::duration")]
    pub canary: Duration,
}

/// Rebuilt from components so "/a/b/" and "/a//b" both become "/a/b", the spelling mountinfo
/// uses.
fn canonical_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    Ok(Path::new(&String::deserialize(d)?).components().collect())
}

/// Paths must be absolute, without "..", and watched once; errors name the block's number.
pub(super) fn validate(watch: &[Watch], lines: &KeyLines) -> Result<(), Problem> {
    let mut seen: HashMap<&Path, usize> = HashMap::new();
    for (i, w) in watch.iter().enumerate() {
        let problem = |message: String| Problem {
            line: lines.watch_path(i),
            key: Some("watch.path".into()),
            message: format!("[[watch]] #{}: {message}", i + 1),
        };
        if !w.path.is_absolute() {
            return Err(problem(format!("path {:?} is not absolute", w.path)));
        }
        // Mount points are matched by their canonical spelling; ".." would never match.
        if w.path.components().any(|c| c == Component::ParentDir) {
            return Err(problem(format!("path {:?} contains \"..\"", w.path)));
        }
        if !w.canary.is_zero() && w.read_only_ok {
            return Err(Problem {
                line: lines.watch_key(i, "canary"),
                key: Some("watch.canary".into()),
                message: format!(
                    "[[watch]] #{}: canary writes, but read_only_ok says {:?} is meant to be read-only",
                    i + 1,
                    w.path
                ),
            });
        }
        if !w.canary.is_zero() && w.canary < Duration::from_secs(1) {
            return Err(Problem {
                line: lines.watch_key(i, "canary"),
                key: Some("watch.canary".into()),
                message: format!(
                    "[[watch]] #{}: canary {} is too often (at least 1s; \"0s\" turns it off)",
                    i + 1,
                    humantime::format_duration(w.canary)
                ),
            });
        }
        if let Some(first) = seen.insert(&w.path, i) {
            let at = match lines.watch_path(first) {
                Some(line) => format!(" at line {line}"),
                None => String::new(),
            };
            return Err(problem(format!(
                "duplicate path {:?}, already watched by [[watch]] #{}{at}",
                w.path,
                first + 1
            )));
        }
    }
    Ok(())
}
