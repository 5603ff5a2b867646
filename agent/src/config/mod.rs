//! Configuration (TOML): schema, defaults, parsing and validation.
//!
//! Every key is optional; [`DEFAULT_TOML`] documents them all and is what runs without a file.
//! Errors name the line and the dotted key (`config FILE: line N: key detect.scan_interval: ...`)
//! because whoever fixes a config is usually on a host that is already in trouble.
//!
//! Flow: `toml` deserializes into private raw structs (strings and spans), [`RawConfig::resolve`]
//! applies defaults and parses durations and the address, [`validate`] checks cross-field rules.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

pub mod file_safety;
mod remediate;
use remediate::RawRemediate;
pub use remediate::{Action, AsgUnhealthy, EcsDrain, Exec, Remediate, StopUnits};

/// The embedded default configuration, printed by `bindsto config default`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// `origin` in messages about the embedded default.
const DEFAULT_ORIGIN: &str = "(embedded default)";

/// The effective configuration. Serializable so `/status` can show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub dry_run: bool,
    pub detect: Detect,
    pub watch: Vec<Watch>,
    pub remediate: Remediate,
}

/// `[detect]`: thresholds of the detectors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detect {
    #[serde(serialize_with = "humantime_str")]
    pub scan_interval: Duration,
    #[serde(serialize_with = "humantime_str")]
    pub io_stall_after: Duration,
    #[serde(serialize_with = "humantime_str")]
    pub mount_blocked_after: Duration,
    #[serde(serialize_with = "humantime_str")]
    pub probe_timeout: Duration,
    #[serde(serialize_with = "humantime_str")]
    pub nfs_stall_after: Duration,
    #[serde(serialize_with = "humantime_str")]
    pub io_errors_window: Duration,
    pub fs_full_percent: f64,
    pub inodes_full_percent: f64,
    pub fstypes: Vec<String>,
    pub mount_calls_critical: bool,
}

/// One `[[watch]]` block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Watch {
    pub path: PathBuf,
    pub critical: bool,
    pub require_mountpoint: bool,
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

impl Default for Detect {
    fn default() -> Self {
        Detect {
            scan_interval: Duration::from_secs(1),
            io_stall_after: Duration::from_secs(30),
            mount_blocked_after: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(5),
            nfs_stall_after: Duration::from_secs(60),
            io_errors_window: Duration::from_secs(5 * 60),
            fs_full_percent: 95.0,
            inodes_full_percent: 95.0,
            fstypes: ["xfs", "ext4", "nfs", "nfs4"].map(String::from).to_vec(),
            mount_calls_critical: true,
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
            }],
            remediate: Remediate::default(),
        }
    }
}

impl Config {
    /// Parses and validates `text`; `origin` names it in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| deserialize_problem(text, &e).at(origin))?;
        let mut spans = Spans::new(text);
        let config = raw.resolve(&mut spans).map_err(|p| p.at(origin))?;
        validate(&config, &spans).map_err(|p| p.at(origin))?;
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

fn humantime_str<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

// ---- raw layer: what the file says, with spans so later errors can point at a line ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawConfig {
    listen: Option<Spanned<String>>,
    dry_run: Option<bool>,
    detect: Option<RawDetect>,
    #[serde(default)]
    watch: Vec<RawWatch>,
    remediate: Option<RawRemediate>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawDetect {
    scan_interval: Option<Spanned<DurationText>>,
    io_stall_after: Option<Spanned<DurationText>>,
    mount_blocked_after: Option<Spanned<DurationText>>,
    probe_timeout: Option<Spanned<DurationText>>,
    nfs_stall_after: Option<Spanned<DurationText>>,
    io_errors_window: Option<Spanned<DurationText>>,
    fs_full_percent: Option<Spanned<f64>>,
    inodes_full_percent: Option<Spanned<f64>>,
    fstypes: Option<Vec<Spanned<String>>>,
    mount_calls_critical: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawWatch {
    path: Spanned<String>,
    critical: Option<bool>,
    require_mountpoint: Option<bool>,
}

/// A duration as written. Parsed after deserialization, where its key is known exactly; a
/// custom visitor only so a wrong type says what is expected.
struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration string such as \"30s\" or \"250ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_owned()))
            }
        }
        d.deserialize_str(Visitor)
    }
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

/// Lines of the keys the file sets, recorded while resolving, for validation messages.
struct Spans<'a> {
    text: &'a str,
    keys: HashMap<&'static str, usize>,
    fstypes: Vec<usize>,
    watch_paths: Vec<usize>,
}

impl<'a> Spans<'a> {
    fn new(text: &'a str) -> Self {
        Spans {
            text,
            keys: HashMap::new(),
            fstypes: Vec::new(),
            watch_paths: Vec::new(),
        }
    }

    fn line(&self, span: Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    /// Unwraps an optional spanned value, remembering the line of `key`.
    fn take<T>(&mut self, key: &'static str, raw: Option<Spanned<T>>) -> Option<T> {
        let raw = raw?;
        self.keys.insert(key, self.line(raw.span()));
        Some(raw.into_inner())
    }

    fn problem(&self, key: &str, message: String) -> Problem {
        Problem {
            line: self.keys.get(key).copied(),
            key: Some(key.to_owned()),
            message,
        }
    }

    fn duration(
        &mut self,
        key: &'static str,
        raw: Option<Spanned<DurationText>>,
        default: Duration,
    ) -> Result<Duration, Problem> {
        let Some(DurationText(text)) = self.take(key, raw) else {
            return Ok(default);
        };
        humantime::parse_duration(&text)
            .map_err(|e| self.problem(key, format!("invalid duration {text:?}: {e}")))
    }
}

impl RawConfig {
    /// Applies defaults and parses typed values. An absent key takes its schema default, except
    /// `watch`: a file without `[[watch]]` watches no path (the default's watch is not implied).
    fn resolve(self, spans: &mut Spans) -> Result<Config, Problem> {
        let defaults = Config::default();
        let listen = match spans.take("listen", self.listen) {
            None => defaults.listen,
            Some(text) => text.parse().map_err(|e| {
                spans.problem(
                    "listen",
                    format!("invalid socket address {text:?}: {e}; expected IP:PORT such as \"0.0.0.0:9842\""),
                )
            })?,
        };
        let d = self.detect.unwrap_or_default();
        let dd = defaults.detect;
        let detect = Detect {
            scan_interval: spans.duration(
                "detect.scan_interval",
                d.scan_interval,
                dd.scan_interval,
            )?,
            io_stall_after: spans.duration(
                "detect.io_stall_after",
                d.io_stall_after,
                dd.io_stall_after,
            )?,
            mount_blocked_after: spans.duration(
                "detect.mount_blocked_after",
                d.mount_blocked_after,
                dd.mount_blocked_after,
            )?,
            probe_timeout: spans.duration(
                "detect.probe_timeout",
                d.probe_timeout,
                dd.probe_timeout,
            )?,
            nfs_stall_after: spans.duration(
                "detect.nfs_stall_after",
                d.nfs_stall_after,
                dd.nfs_stall_after,
            )?,
            io_errors_window: spans.duration(
                "detect.io_errors_window",
                d.io_errors_window,
                dd.io_errors_window,
            )?,
            fs_full_percent: spans
                .take("detect.fs_full_percent", d.fs_full_percent)
                .unwrap_or(dd.fs_full_percent),
            inodes_full_percent: spans
                .take("detect.inodes_full_percent", d.inodes_full_percent)
                .unwrap_or(dd.inodes_full_percent),
            fstypes: match d.fstypes {
                None => dd.fstypes,
                Some(list) => list
                    .into_iter()
                    .map(|s| {
                        spans.fstypes.push(spans.line(s.span()));
                        s.into_inner()
                    })
                    .collect(),
            },
            mount_calls_critical: d.mount_calls_critical.unwrap_or(dd.mount_calls_critical),
        };
        let watch = self
            .watch
            .into_iter()
            .map(|w| {
                spans.watch_paths.push(spans.line(w.path.span()));
                Watch {
                    // Rebuilt from components so "/a/b/" and "/a//b" both become "/a/b", the
                    // spelling mountinfo uses.
                    path: Path::new(w.path.get_ref()).components().collect(),
                    critical: w.critical.unwrap_or(false),
                    require_mountpoint: w.require_mountpoint.unwrap_or(false),
                }
            })
            .collect();
        Ok(Config {
            listen,
            dry_run: self.dry_run.unwrap_or(defaults.dry_run),
            detect,
            watch,
            remediate: self.remediate.unwrap_or_default().resolve(spans)?,
        })
    }
}

// ---- validation: rules across keys, reported at the line of the offending key ----

fn validate(config: &Config, spans: &Spans) -> Result<(), Problem> {
    let d = &config.detect;
    for (key, value) in [
        ("detect.scan_interval", d.scan_interval),
        ("detect.probe_timeout", d.probe_timeout),
    ] {
        if value.is_zero() {
            return Err(spans.problem(key, "must be greater than 0".into()));
        }
    }
    // A threshold shorter than the sampling period could never be observed as configured.
    for (key, value) in [
        ("detect.io_stall_after", d.io_stall_after),
        ("detect.mount_blocked_after", d.mount_blocked_after),
        ("detect.nfs_stall_after", d.nfs_stall_after),
        ("detect.io_errors_window", d.io_errors_window),
    ] {
        if value < d.scan_interval {
            // Point at the key the file sets; if it relies on the default, blame scan_interval.
            let blame = if spans.keys.contains_key(key) {
                key
            } else {
                "detect.scan_interval"
            };
            return Err(spans.problem(
                blame,
                format!(
                    "{key} ({}) must not be shorter than detect.scan_interval ({})",
                    humantime::format_duration(value),
                    humantime::format_duration(d.scan_interval)
                ),
            ));
        }
    }
    for (key, value) in [
        ("detect.fs_full_percent", d.fs_full_percent),
        ("detect.inodes_full_percent", d.inodes_full_percent),
    ] {
        if !(0.0..=100.0).contains(&value) {
            return Err(spans.problem(key, format!("{value} is outside 0..=100 (0 disables)")));
        }
    }
    for (i, fstype) in d.fstypes.iter().enumerate() {
        if fstype.is_empty() || fstype.contains(char::is_whitespace) {
            return Err(Problem {
                line: spans.fstypes.get(i).copied(),
                key: Some("detect.fstypes".into()),
                message: format!("invalid filesystem type {fstype:?}"),
            });
        }
    }
    let mut seen: HashMap<&Path, usize> = HashMap::new();
    for (i, w) in config.watch.iter().enumerate() {
        let problem = |message: String| Problem {
            line: spans.watch_paths.get(i).copied(),
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
        if let Some(first) = seen.insert(&w.path, i) {
            let at = match spans.watch_paths.get(first) {
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

// ---- locating deserialization errors: toml gives a span and a message, not the key ----

/// Turns a `toml` error into a problem with the line of its span and the dotted key there.
fn deserialize_problem(text: &str, err: &toml::de::Error) -> Problem {
    let start = err.span().map(|s| s.start);
    let mut key = start.and_then(|s| key_at(text, s));
    // toml's syntax messages span lines ("invalid table header\nexpected `.`, `]`").
    let raw = err.message().trim().replace('\n', ": ");
    // Unknown and missing fields: the span may cover a whole table, so take the field name from
    // the message and append it unless the span already pointed at it.
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

/// 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key at byte `offset`: the enclosing `[table]` / `[[array]]` header joined with the
/// (dotted) key of the assignment whose key or value covers `offset`, following inline tables and
/// multi-line arrays. On a header line, the header itself. A tolerant scanner, not a parser: it
/// runs on text toml may have rejected.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let b = text.as_bytes();
    let mut table: Vec<String> = Vec::new();
    let mut key: Vec<String> = Vec::new();
    // Open `[` (None) and `{` (Some(key path of the inline table)) inside a value.
    let mut nest: Vec<Option<Vec<String>>> = Vec::new();
    let mut expect_key = true;
    let mut i = 0;
    while i < b.len() && i <= offset {
        match b[i] {
            b'\n' => {
                // Only arrays continue across lines.
                expect_key |= nest.is_empty();
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'[' if expect_key && nest.is_empty() => {
                let open = if b.get(i + 1) == Some(&b'[') { 2 } else { 1 };
                let (path, end) = parse_key(b, i + open);
                table = path.clone();
                key = path;
                expect_key = false;
                i = end;
            }
            b'}' | b']' => {
                if let Some(Some(path)) = nest.pop() {
                    key = path;
                }
                expect_key = false;
                i += 1;
            }
            _ if expect_key => {
                let (path, end) = parse_key(b, i);
                key = match nest.last() {
                    Some(Some(base)) => base.clone(),
                    _ => table.clone(),
                };
                key.extend(path);
                expect_key = false;
                i = end.max(i + 1);
            }
            b'"' | b'\'' => i = skip_string(b, i),
            b'[' => {
                nest.push(None);
                i += 1;
            }
            b'{' => {
                nest.push(Some(key.clone()));
                expect_key = true;
                i += 1;
            }
            b',' => {
                if let Some(Some(base)) = nest.last() {
                    key = base.clone();
                    expect_key = true;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    (!key.is_empty()).then(|| key.join("."))
}

/// Parses a (dotted, possibly quoted) key from `i`; returns its segments and where it ended.
fn parse_key(b: &[u8], mut i: usize) -> (Vec<String>, usize) {
    let mut segments = Vec::new();
    loop {
        while matches!(b.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        let start = i;
        match b.get(i) {
            Some(&q @ (b'"' | b'\'')) => {
                i = skip_string(b, i);
                // An unterminated quote at the end of a line or the file ends right after
                // the opening quote (found by the config fuzz target).
                let end = if i >= start + 2 && b.get(i - 1) == Some(&q) {
                    i - 1
                } else {
                    i
                };
                segments.push(String::from_utf8_lossy(&b[start + 1..end]).into_owned());
            }
            _ => {
                while matches!(b.get(i), Some(c) if c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
                {
                    i += 1;
                }
                if i == start {
                    return (segments, i);
                }
                segments.push(String::from_utf8_lossy(&b[start..i]).into_owned());
            }
        }
        while matches!(b.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        if b.get(i) != Some(&b'.') {
            return (segments, i);
        }
        i += 1;
    }
}

/// Skips the string starting at `i` (basic, literal, or their multi-line forms); returns the
/// index after its closing quote, or where the line or text ends if it is unterminated.
fn skip_string(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let triple = b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q);
    let mut j = i + if triple { 3 } else { 1 };
    while j < b.len() {
        match b[j] {
            b'\\' if q == b'"' => j += 2,
            b'\n' if !triple => return j,
            c if c == q && (!triple || (b.get(j + 1) == Some(&q) && b.get(j + 2) == Some(&q))) => {
                return j + if triple { 3 } else { 1 };
            }
            _ => j += 1,
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::from_toml(text, "test.toml") {
            Ok(c) => panic!("accepted {text:?}: {c:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2);
                e.to_string()
            }
        }
    }

    fn ok(text: &str) -> Config {
        match Config::from_toml(text, "test.toml") {
            Ok(c) => c,
            Err(e) => panic!("rejected {text:?}: {e}"),
        }
    }

    /// Asserts the error names the line and the key, and returns the message.
    fn err_at(text: &str, line: usize, key: &str) -> String {
        let e = err(text);
        let want = format!("config test.toml: line {line}: key {key}: ");
        assert!(e.starts_with(&want), "{e:?} does not start with {want:?}");
        e
    }

    #[test]
    fn default_matches_embedded_toml() {
        assert_eq!(ok(DEFAULT_TOML), Config::default());
        assert_eq!(Config::load(None).ok(), Some(Config::default()));
        let d = Config::default();
        assert!(d.dry_run);
        assert_eq!(d.listen.to_string(), "0.0.0.0:9842");
        assert_eq!(d.watch.len(), 1);
    }

    #[test]
    fn empty_file_takes_schema_defaults_without_watches() {
        let c = ok("");
        assert_eq!(c.detect, Detect::default());
        assert_eq!(c.listen, Config::default().listen);
        assert!(c.dry_run);
        assert!(c.watch.is_empty());
        assert_eq!(c.remediate, Remediate::default());
    }

    #[test]
    fn full_custom_file() {
        let c = ok(r#"
listen = "127.0.0.1:9000"
dry_run = false

[detect]
scan_interval = "250ms"
io_stall_after = "3s"
mount_blocked_after = "1m"
probe_timeout = "2s"
nfs_stall_after = "90s"
io_errors_window = "10m"
fs_full_percent = 90
inodes_full_percent = 0.0
fstypes = ["xfs", "fuse.sshfs"]
mount_calls_critical = false

[[watch]]
path = "/var/lib/docker/"
critical = true
require_mountpoint = true

[[watch]]
path = "/data"
"#);
        let want = Config {
            listen: "127.0.0.1:9000".parse().expect("addr"),
            dry_run: false,
            detect: Detect {
                scan_interval: Duration::from_millis(250),
                io_stall_after: Duration::from_secs(3),
                mount_blocked_after: Duration::from_secs(60),
                probe_timeout: Duration::from_secs(2),
                nfs_stall_after: Duration::from_secs(90),
                io_errors_window: Duration::from_secs(600),
                fs_full_percent: 90.0,
                inodes_full_percent: 0.0,
                fstypes: vec!["xfs".into(), "fuse.sshfs".into()],
                mount_calls_critical: false,
            },
            watch: vec![
                Watch {
                    path: "/var/lib/docker".into(),
                    critical: true,
                    require_mountpoint: true,
                },
                Watch {
                    path: "/data".into(),
                    critical: false,
                    require_mountpoint: false,
                },
            ],
            remediate: Remediate::default(),
        };
        assert_eq!(c, want);
    }

    #[test]
    fn watch_defaults() {
        let c = ok("[[watch]]\npath = \"/srv\"\n");
        assert_eq!(
            c.watch,
            vec![Watch {
                path: "/srv".into(),
                critical: false,
                require_mountpoint: false,
            }]
        );
        // Inline form too.
        let c = ok("watch = [{ path = \"/a\" }, { path = \"/b\", critical = true }]\n");
        assert_eq!(c.watch.len(), 2);
        assert!(c.watch[1].critical);
    }

    #[test]
    fn remediate_section_is_typed() {
        let c = ok(r#"
[remediate]
actions = ["stop-units", "exec", "ecs-drain"]
hold_down = "2m"
max_per_hour = 5
state_dir = "/run/bindsto-test"

[remediate.stop_units]
units = ["ecs.service", "docker.service"]
mask_units = true

[remediate.asg_unhealthy]
imds_url = "http://127.0.0.1:1234/"
endpoint_url = "http://127.0.0.1:5000"
region = "eu-west-1"
fleet_max_unhealthy_percent = 50

[remediate.exec]
command = ["/bin/cat"]
timeout = "3s"
"#);
        let r = &c.remediate;
        assert_eq!(
            r.actions,
            vec![Action::StopUnits, Action::Exec, Action::EcsDrain]
        );
        assert_eq!(r.hold_down, Duration::from_secs(120));
        assert_eq!(r.max_per_hour, 5);
        assert_eq!(r.state_dir, PathBuf::from("/run/bindsto-test"));
        assert!(r.stop_units.mask_units);
        assert_eq!(r.stop_units.units.len(), 2);
        assert_eq!(r.asg_unhealthy.imds_url, "http://127.0.0.1:1234");
        assert_eq!(r.asg_unhealthy.region.as_deref(), Some("eu-west-1"));
        assert_eq!(r.asg_unhealthy.fleet_max_unhealthy_percent, 50.0);
        assert_eq!(r.exec.command, vec!["/bin/cat".to_string()]);
        assert_eq!(r.exec.timeout, Duration::from_secs(3));
        assert_eq!(r.ecs_drain, Remediate::default().ecs_drain);
    }

    #[test]
    fn remediate_errors_name_key_and_line() {
        let e = err_at(
            "[remediate]\nactions = [\n  \"ecs-drain\",\n  \"reboot\",\n]\n",
            4,
            "remediate.actions",
        );
        assert!(e.contains("unknown action \"reboot\""), "{e}");
        err_at(
            "[remediate]\nactions = [\"exec\", \"exec\"]\n[remediate.exec]\ncommand = [\"/bin/true\"]\n",
            2,
            "remediate.actions",
        );
        let e = err_at(
            "[remediate]\nactions = [\"exec\"]\n",
            2,
            "remediate.actions",
        );
        assert!(e.contains("needs remediate.exec.command"), "{e}");
        let e = err_at(
            "[remediate]\nactions = [\"exec\"]\n[remediate.exec]\ncommand = [\"notify\"]\n",
            4,
            "remediate.exec.command",
        );
        assert!(e.contains("absolute path"), "{e}");
        err_at(
            "[remediate]\nhold_down = \"soon\"\n",
            2,
            "remediate.hold_down",
        );
        err_at(
            "[remediate]\nmax_per_hour = 0\n",
            2,
            "remediate.max_per_hour",
        );
        err_at(
            "[remediate]\nstate_dir = \"state\"\n",
            2,
            "remediate.state_dir",
        );
        err_at(
            "[remediate.asg_unhealthy]\nfleet_max_unhealthy_percent = 101.0\n",
            2,
            "remediate.asg_unhealthy.fleet_max_unhealthy_percent",
        );
        err_at(
            "[remediate.asg_unhealthy]\nimds_url = \"169.254.169.254\"\n",
            2,
            "remediate.asg_unhealthy.imds_url",
        );
        err_at(
            "[remediate.stop_units]\nunits = [\"ecs\"]\n",
            2,
            "remediate.stop_units.units",
        );
        err_at("[remediate]\nladder = []\n", 2, "remediate.ladder");
        err_at(
            "[remediate.stop_units]\ntimeout = \"0s\"\n",
            2,
            "remediate.stop_units.timeout",
        );
    }

    #[test]
    fn serializes_with_humantime_durations_and_round_trips() {
        let text = toml::to_string(&Config::default()).expect("serialize");
        assert!(text.contains("io_errors_window = \"5m\""), "{text}");
        assert!(text.contains("listen = \"0.0.0.0:9842\""), "{text}");
        assert_eq!(ok(&text), Config::default());
    }

    #[test]
    fn bad_duration_message() {
        let text =
            "# bindsto\nlisten = \"0.0.0.0:9842\"\n[detect]\nscan_interval = \"3 parsecs\"\n";
        let e = err(text).replace("test.toml", "/etc/bindsto/config.toml");
        assert!(
            e.starts_with(
                "config /etc/bindsto/config.toml: line 4: key detect.scan_interval: invalid duration \"3 parsecs\": unknown time unit \"parsecs\""
            ),
            "{e}"
        );
        err_at(
            "[detect]\nio_errors_window = \"\"\n",
            2,
            "detect.io_errors_window",
        );
        err_at("detect.probe_timeout = \"5\"\n", 1, "detect.probe_timeout");
    }

    #[test]
    fn syntax_errors() {
        let e = err_at("[detect]\nscan_interval = 3s\n", 2, "detect.scan_interval");
        assert!(e.contains("expected"), "{e}");
        err_at("dry_run = true\n\n[detect\n", 3, "detect");
        err_at("dry_run = true\ndry_run = false\n", 2, "dry_run");
        err_at("[detect]\nfs_full_percent = 1\n[detect]\n", 3, "detect");
        err_at("listen = \"0.0.0.0:1\n", 1, "listen");
    }

    #[test]
    fn unknown_keys() {
        let e = err_at(
            "[detect]\nscan_intervall = \"1s\"\n",
            2,
            "detect.scan_intervall",
        );
        assert!(
            e.ends_with("unknown key; expected one of scan_interval, io_stall_after, mount_blocked_after, probe_timeout, nfs_stall_after, io_errors_window, fs_full_percent, inodes_full_percent, fstypes, mount_calls_critical"),
            "{e}"
        );
        err_at("dry_run = true\nbogus = 1\n", 2, "bogus");
        err_at("[detects]\nscan_interval = \"1s\"\n", 1, "detects");
        err_at("[detect.deep]\n", 1, "detect.deep");
        err_at(
            "[[watch]]\npath = \"/a\"\ncritcal = true\n",
            3,
            "watch.critcal",
        );
        err_at(
            "detect = { scan_interval = \"1s\", stall = 1 }\n",
            1,
            "detect.stall",
        );
        err_at("detect.foo = 1\n", 1, "detect.foo");
    }

    #[test]
    fn wrong_types() {
        let e = err_at("dry_run = \"yes\"\n", 1, "dry_run");
        assert!(e.ends_with("expected a boolean"), "{e}");
        let e = err_at("[detect]\nscan_interval = 5\n", 2, "detect.scan_interval");
        assert!(e.contains("a duration string"), "{e}");
        err_at(
            "[detect]\nfstypes = [\n  \"xfs\",\n  3,\n]\n",
            4,
            "detect.fstypes",
        );
        let e = err_at(
            "[detect]\nfs_full_percent = \"a\"\n",
            2,
            "detect.fs_full_percent",
        );
        assert!(e.ends_with("expected a number"), "{e}");
        err_at("detect = 5\n", 1, "detect");
        let e = err_at("[watch]\npath = \"/a\"\n", 1, "watch");
        assert!(e.ends_with("invalid type: table, expected an array"), "{e}");
        err_at("remediate = 1\n", 1, "remediate");
        err_at("watch = [{ path = 1 }]\n", 1, "watch.path");
        err_at(
            "detect = { scan_interval = \"1s\", mount_calls_critical = 1 }\n",
            1,
            "detect.mount_calls_critical",
        );
    }

    #[test]
    fn missing_watch_path_names_the_block() {
        let e = err_at(
            "[[watch]]\npath = \"/a\"\n\n[[watch]]\ncritical = true\n",
            4,
            "watch.path",
        );
        assert!(e.ends_with("missing required key"), "{e}");
        err_at("watch = [{ critical = true }]\n", 1, "watch.path");
    }

    #[test]
    fn bad_listen_address() {
        let e = err_at("dry_run = false\nlisten = \"localhost\"\n", 2, "listen");
        assert!(e.contains("invalid socket address \"localhost\""), "{e}");
        err_at("listen = 9842\n", 1, "listen");
    }

    #[test]
    fn validation_errors() {
        let e = err_at(
            "[detect]\nscan_interval = \"0s\"\n",
            2,
            "detect.scan_interval",
        );
        assert!(e.ends_with("must be greater than 0"), "{e}");
        err_at(
            "[detect]\nprobe_timeout = \"0ms\"\n",
            2,
            "detect.probe_timeout",
        );
        let e = err_at(
            "[detect]\nscan_interval = \"10s\"\nio_stall_after = \"5s\"\n",
            3,
            "detect.io_stall_after",
        );
        assert!(
            e.ends_with(
                "detect.io_stall_after (5s) must not be shorter than detect.scan_interval (10s)"
            ),
            "{e}"
        );
        // The threshold left at its default: blame the key the file does set.
        let e = err_at(
            "[detect]\nscan_interval = \"2m\"\n",
            2,
            "detect.scan_interval",
        );
        assert!(e.contains("detect.io_stall_after (30s)"), "{e}");
        let e = err_at(
            "[detect]\nfs_full_percent = 101\n",
            2,
            "detect.fs_full_percent",
        );
        assert!(e.ends_with("101 is outside 0..=100 (0 disables)"), "{e}");
        err_at(
            "[detect]\ninodes_full_percent = -1\n",
            2,
            "detect.inodes_full_percent",
        );
        err_at(
            "[detect]\nfs_full_percent = nan\n",
            2,
            "detect.fs_full_percent",
        );
        err_at(
            "[detect]\nfstypes = [\n  \"xfs\",\n  \"\",\n]\n",
            4,
            "detect.fstypes",
        );
    }

    #[test]
    fn watch_validation_points_at_the_nth_block() {
        let text = "[[watch]]\npath = \"/a\"\n\n[[watch]]\npath = \"relative/b\"\n";
        let e = err_at(text, 5, "watch.path");
        assert!(
            e.ends_with("[[watch]] #2: path \"relative/b\" is not absolute"),
            "{e}"
        );
        let text = "[[watch]]\npath = \"/var/lib/docker\"\n\n[[watch]]\ncritical = true\npath = \"/var/lib/docker/\"\n";
        let e = err_at(text, 6, "watch.path");
        assert!(
            e.ends_with("[[watch]] #2: duplicate path \"/var/lib/docker\", already watched by [[watch]] #1 at line 2"),
            "{e}"
        );
        err_at("[[watch]]\npath = \"/a/../b\"\n", 2, "watch.path");
        err_at("[[watch]]\npath = \"\"\n", 2, "watch.path");
    }

    #[test]
    fn bad_key_on_line_seven() {
        let text = r#"# bindsto config
listen = "0.0.0.0:9842"
dry_run = true

[detect]
scan_interval = "1s"
io_stall_aftr = "30s"
mount_blocked_after = "60s"
"#;
        let e = err_at(text, 7, "detect.io_stall_aftr");
        assert!(
            e.contains("unknown key; expected one of scan_interval"),
            "{e}"
        );
    }

    #[test]
    fn load_reads_files_and_reports_read_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "dry_run = false\n[detect]\nscan_interval = \"x\"\n").expect("write");
        let e = Config::load(Some(&path)).expect_err("bad duration");
        assert!(
            e.to_string().starts_with(&format!(
                "config {}: line 3: key detect.scan_interval: invalid duration \"x\"",
                path.display()
            )),
            "{e}"
        );
        std::fs::write(&path, "dry_run = false\n").expect("write");
        assert!(!Config::load(Some(&path)).expect("load").dry_run);

        let missing = dir.path().join("missing.toml");
        let e = Config::load(Some(&missing)).expect_err("missing file");
        assert!(matches!(e, ConfigError::Read { .. }));
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .starts_with(&format!("config {}: cannot read: ", missing.display())),
            "{e}"
        );
    }

    #[test]
    fn key_at_follows_structure() {
        let text =
            "a = 1\n[t]\nb = [\n  1,\n  { c = 2, 'd.e' = \"x # y\" },\n]\n[[u]]\nv.w = 3 # z\n";
        let at = |needle: &str| key_at(text, text.find(needle).expect("needle"));
        assert_eq!(at("1\n[").as_deref(), Some("a"));
        assert_eq!(at("t]").as_deref(), Some("t"));
        assert_eq!(at("  1,").as_deref(), Some("t.b"));
        assert_eq!(at("2,").as_deref(), Some("t.b.c"));
        assert_eq!(at("x #").as_deref(), Some("t.b.d.e"));
        assert_eq!(at("u]]").as_deref(), Some("u"));
        assert_eq!(at("3 #").as_deref(), Some("u.v.w"));
        assert_eq!(at("# z").as_deref(), Some("u.v.w"));
        assert_eq!(key_at("", 0), None);
    }

    /// Fuzz regression: a lone quote where a key was expected (at the end of a line or of the
    /// file) panicked while locating the key for the error message.
    #[test]
    fn unterminated_quoted_key_is_an_error_not_a_panic() {
        for text in [
            "\"",
            "'",
            "\"\n",
            "x = 1\n'\n",
            "[detect]\n\"\n",
            "[remediate]\n\"a\n",
        ] {
            assert!(Config::from_toml(text, "t.toml").is_err(), "{text:?}");
        }
        assert_eq!(parse_key(b"\"", 0), (vec![String::new()], 1));
    }
}
