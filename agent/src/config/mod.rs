//! Configuration (TOML): schema, defaults, parsing and validation. Depends on nothing else of
//! the crate; every stage may use it.
//!
//! Every key is optional; [`DEFAULT_TOML`] documents them all and is what runs without a file.
//! Errors name the line and the dotted key (`config FILE: line N: key detect.scan_interval: ...`)
//! because whoever fixes a config is usually on a host that is already in trouble.
//!
//! Flow: serde deserializes straight into the typed sections (one file each), refusing bad
//! values as it goes; `serde_path_to_error` names the key and toml's span gives the line.
//! [`validate`] then checks the rules across keys, locating them with [`locate::KeyLines`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

mod de;
mod detect;
pub mod file_safety;
mod fleet;
mod locate;
mod remediate;
mod watch;

pub use detect::Detect;
pub use fleet::Fleet;
pub use remediate::{Action, AsgUnhealthy, EcsDrain, Exec, Remediate, StopUnits};
pub use watch::Watch;

use de::{BadValue, checked_str};
use locate::{KeyLines, key_at, line_of};

/// The embedded default configuration, printed by `bindsto config default`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// `origin` in messages about the embedded default.
const DEFAULT_ORIGIN: &str = "(embedded default)";

/// The effective configuration. Serializable so `/status` can show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct Config {
    #[serde(deserialize_with = "listen")]
    pub listen: SocketAddr,
    pub dry_run: bool,
    pub detect: Detect,
    /// A file without `[[watch]]` watches no path: the default's watch is not implied.
    #[serde(default)]
    pub watch: Vec<Watch>,
    pub remediate: Remediate,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {}: cannot read: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Unsafe(#[from] crate::config::file_safety::UnsafeFile),
    #[error("config {origin}: {}{}{message}", line_part(.line), key_part(.key))]
    Invalid {
        origin: String,
        line: Option<usize>,
        key: Option<String>,
        message: String,
    },
}

fn line_part(line: &Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

fn key_part(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!("key {k}: "))
        .unwrap_or_default()
}

impl ConfigError {
    /// Process exit code: the CLI contract exits 2 on any error, config errors included.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Read { .. } | ConfigError::Unsafe(_) | ConfigError::Invalid { .. } => 2,
        }
    }
}

/// The embedded default ([`DEFAULT_TOML`]); a test keeps the two equal.
impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 9842)),
            dry_run: true,
            detect: Detect::default(),
            watch: vec![Watch {
                path: PathBuf::from("/var/lib/docker"),
                critical: true,
                require_mountpoint: true,
                must_be_mounted: false,
                read_only_ok: false,
                canary: Duration::from_secs(30),
            }],
            remediate: Remediate::default(),
        }
    }
}

impl Config {
    /// Parses and validates `text`; `origin` names it in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| deserialize_problem(text, &e).at(origin))?;
        validate(&config, &KeyLines::new(text)).map_err(|p| p.at(origin))?;
        Ok(config)
    }

    /// Loads the file at `path`, or the embedded default when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Config::from_toml(DEFAULT_TOML, DEFAULT_ORIGIN);
        };
        crate::config::file_safety::check("config", path)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::from_toml(&text, &path.display().to_string())?;
        tracing::debug!(path = %path.display(), "config loaded");
        Ok(config)
    }
}

fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    checked_str(d, |text| {
        text.parse().map_err(|e| {
            BadValue(format!(
                "invalid socket address {text:?}: {e}; expected IP:PORT such as \"0.0.0.0:9842\""
            ))
        })
    })
}

/// An error before it is tied to its origin.
#[derive(Debug)]
struct Problem {
    line: Option<usize>,
    key: Option<String>,
    message: String,
}

impl Problem {
    fn at(self, origin: &str) -> ConfigError {
        ConfigError::Invalid {
            origin: origin.to_owned(),
            line: self.line,
            key: self.key,
            message: self.message,
        }
    }
}

/// Rules across keys (and across `[[watch]]` blocks), reported at the line of the offending key.
fn validate(config: &Config, lines: &KeyLines) -> Result<(), Problem> {
    detect::validate(&config.detect, lines)?;
    watch::validate(&config.watch, lines)?;
    remediate::validate(&config.remediate, lines)
}

/// Turns a deserialization error into a problem: the line of toml's span, the key of serde's
/// path (or, for a syntax error, where there is no path yet, the key at the span).
fn deserialize_problem(text: &str, err: &serde_path_to_error::Error<toml::de::Error>) -> Problem {
    let inner = err.inner();
    let start = inner.span().map(|s| s.start);
    let path: Vec<&str> = err
        .path()
        .iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    let mut key = if path.is_empty() {
        start.and_then(|s| key_at(text, s))
    } else {
        Some(path.join("."))
    };
    // toml's syntax messages span lines ("invalid table header\nexpected `.`, `]`").
    let raw = inner.message().trim().replace('\n', ": ");
    // Unknown and missing fields: the field name is in the message; append it unless the path
    // already ends with it.
    let message = if let Some(rest) = raw.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        key = Some(join_field(key, field));
        let expected = expected.trim_start_matches(',').trim().replace('`', "");
        format!("unknown key; {expected}")
    } else if let Some(rest) = raw.strip_prefix("missing field `") {
        key = Some(join_field(key, rest.trim_end_matches('`')));
        "missing required key".to_owned()
    } else if raw.starts_with("invalid type") {
        // serde's data-model words, in TOML's terms.
        raw.replace("map", "table")
            .replace("a sequence", "an array")
            .replace("expected f64", "expected a number")
    } else {
        raw
    };
    Problem {
        line: start.map(|s| line_of(text, s)),
        key,
        message,
    }
}

fn join_field(key: Option<String>, field: &str) -> String {
    match key {
        Some(k) if k == field || k.ends_with(&format!(".{field}")) => k,
        Some(k) => format!("{k}.{field}"),
        None => field.to_owned(),
    }
}

#[cfg(test)]
mod tests;
