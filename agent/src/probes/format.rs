//! tracefs format files.
//!
//! Every classic tracepoint describes its record layout in
//! `<tracefs>/events/<system>/<event>/format`. The kernel programs are written in Rust and have no
//! CO-RE relocations, so the agent reads the offsets from these files at start-up and hands them
//! to the programs instead of compiling them in: the block events moved fields twice between 6.1
//! and 6.18 (`ioprio` inserted, `rwbs` grown from 8 to 10 bytes).
//!
//! A format file looks like this (tabs between the `;`-separated attributes):
//!
//! ```text
//! name: block_rq_complete
//! ID: 2107
//! format:
//!     field:unsigned short common_type;    offset:0;    size:2;    signed:0;
//!     ...
//!     field:char rwbs[10];    offset:34;    size:10;    signed:0;
//!     field:__data_loc char[] cmd;    offset:44;    size:4;    signed:0;
//!
//! print fmt: "%d,%d %s (%s) %llu + %u %s,%u,%u [%d]", ...
//! ```

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use nix::mount::MsFlags;
use thiserror::Error;

/// Where tracefs lives on kernels since 4.1.
const TRACEFS: &str = "/sys/kernel/tracing";
/// Where older setups (and debugfs automounting tracefs) put it.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Errors from reading or parsing a format file, or from mounting tracefs.
#[derive(Debug, Error)]
pub enum FormatError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A line that does not have the expected shape (1-based line number).
    #[error("line {line}: {what}")]
    Syntax { line: usize, what: String },
    /// The file ended without a required header line (`name:`, `ID:`) or without any field.
    #[error("no {0} in the format file")]
    Missing(&'static str),
    /// A parse error, with the file it came from.
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<FormatError>,
    },
    /// The tracefs root has no `events` directory: tracefs is not mounted there.
    #[error("{0} is not a tracefs mount (no events directory)")]
    NotTracefs(PathBuf),
    /// An event lacks a field the agent needs.
    #[error("event {event} has no field {field}")]
    NoField { event: String, field: String },
    #[error("mounting tracefs on {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// A `field:` line that does not parse (1-based line number).
    #[error("line {line}: {source}")]
    Field {
        line: usize,
        #[source]
        source: FieldError,
    },
}

/// Why one `field:` line does not parse.
#[derive(Debug, Error)]
pub enum FieldError {
    #[error("field {field}: attribute {part:?} has no `:`")]
    NoColon { field: String, part: String },
    #[error("field {field}: signed:{value} is not 0 or 1")]
    Signed { field: String, value: String },
    #[error("field {field}: no {what}")]
    MissingAttribute { field: String, what: &'static str },
    #[error("field {field}: {what} {value:?} is not a number below 65536")]
    NotU16 {
        field: String,
        what: &'static str,
        value: String,
    },
    #[error("declaration {0:?} has an unmatched `]`")]
    UnmatchedBracket(String),
    #[error("declaration {0:?} does not end in a field name")]
    NoName(String),
    #[error("declaration {0:?} has no type")]
    NoType(String),
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The last identifier of the declaration, array suffix stripped (`char rwbs[10]` -> `rwbs`).
    pub name: String,
    /// The declaration without the name, array suffix kept: `char[10]`, `__data_loc char[]`,
    /// `const char *`, `dev_t`.
    pub type_decl: String,
    /// Byte offset from the start of the record (common header included).
    pub offset: u16,
    /// Size in bytes; for `__data_loc` fields the 4-byte locator, not the string.
    pub size: u16,
    pub signed: bool,
}

impl Field {
    /// A `__data_loc` field is a u32 locator: low 16 bits the offset of the data from the start
    /// of the record, high 16 bits its length.
    pub fn is_data_loc(&self) -> bool {
        self.type_decl.starts_with("__data_loc")
    }
}

/// A parsed format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFormat {
    pub name: String,
    pub id: u32,
    /// In file order, common fields (`common_type`, `common_pid`, ...) included.
    pub fields: Vec<Field>,
}

impl EventFormat {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Like [`EventFormat::field`], but a missing field is an error naming the event, for
    /// callers that cannot attach a program without it.
    pub fn require(&self, name: &str) -> Result<&Field, FormatError> {
        self.field(name).ok_or_else(|| FormatError::NoField {
            event: self.name.clone(),
            field: name.to_owned(),
        })
    }
}

/// Parses the text of a format file.
///
/// Unknown `key:value` attributes on a field line are ignored (later kernels may add some); a
/// missing `signed:` is accepted as unsigned because very old kernels did not print it. Parsing
/// stops at `print fmt:`, which the agent does not need.
pub fn parse(text: &str) -> Result<EventFormat, FormatError> {
    let mut name: Option<String> = None;
    let mut id: Option<u32> = None;
    let mut in_format = false;
    let mut fields = Vec::new();

    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let syntax = |what: String| FormatError::Syntax {
            line: line_no,
            what,
        };
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("name:") {
            if name.is_some() {
                return Err(syntax("second `name:` line".into()));
            }
            let rest = rest.trim();
            if rest.is_empty() {
                return Err(syntax("empty event name".into()));
            }
            name = Some(rest.to_owned());
        } else if let Some(rest) = line.strip_prefix("ID:") {
            if id.is_some() {
                return Err(syntax("second `ID:` line".into()));
            }
            let rest = rest.trim();
            id = Some(
                rest.parse()
                    .map_err(|_| syntax(format!("event ID {rest:?} is not a number")))?,
            );
        } else if line == "format:" {
            in_format = true;
        } else if line.starts_with("print fmt:") {
            break;
        } else if let Some(rest) = line
            .strip_prefix("field:")
            // Very old kernels marked some fields `field special:`.
            .or_else(|| line.strip_prefix("field special:"))
        {
            if !in_format {
                return Err(syntax("field line before `format:`".into()));
            }
            fields.push(parse_field(rest).map_err(|source| FormatError::Field {
                line: line_no,
                source,
            })?);
        } else {
            return Err(syntax(format!("unexpected line {:?}", truncate(line))));
        }
    }

    let name = name.ok_or(FormatError::Missing("`name:` line"))?;
    let id = id.ok_or(FormatError::Missing("`ID:` line"))?;
    if fields.is_empty() {
        return Err(FormatError::Missing("field"));
    }
    Ok(EventFormat { name, id, fields })
}

/// Parses what follows `field:`: `DECL;\toffset:N;\tsize:N;\tsigned:N;`.
fn parse_field(rest: &str) -> Result<Field, FieldError> {
    let mut parts = rest.split(';');
    // `split` always yields at least one item.
    let decl = parts.next().unwrap_or_default().trim();
    let (name, type_decl) = split_declaration(decl)?;

    let mut offset = None;
    let mut size = None;
    let mut signed = None;
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((key, value)) = part.split_once(':') else {
            return Err(FieldError::NoColon {
                field: name,
                part: part.to_owned(),
            });
        };
        let value = value.trim();
        match key.trim() {
            "offset" => offset = Some(parse_u16(&name, "offset", value)?),
            "size" => size = Some(parse_u16(&name, "size", value)?),
            "signed" => {
                signed = Some(match value {
                    "0" => false,
                    "1" => true,
                    _ => {
                        return Err(FieldError::Signed {
                            field: name,
                            value: value.to_owned(),
                        });
                    }
                });
            }
            _ => {}
        }
    }
    Ok(Field {
        offset: offset.ok_or_else(|| missing(&name, "offset"))?,
        size: size.ok_or_else(|| missing(&name, "size"))?,
        signed: signed.unwrap_or(false),
        name,
        type_decl,
    })
}

fn missing(field: &str, what: &'static str) -> FieldError {
    FieldError::MissingAttribute {
        field: field.to_owned(),
        what,
    }
}

fn parse_u16(field: &str, what: &'static str, value: &str) -> Result<u16, FieldError> {
    value.parse().map_err(|_| FieldError::NotU16 {
        field: field.to_owned(),
        what,
        value: value.to_owned(),
    })
}

/// Splits a C declaration into (name, type): the name is the last identifier once any array
/// suffix is stripped; the type is the rest with the array suffix kept.
fn split_declaration(decl: &str) -> Result<(String, String), FieldError> {
    // Strip `[N]` suffixes (possibly several, possibly empty) from the end.
    let mut base = decl.trim_end();
    while let Some(stripped) = base.strip_suffix(']') {
        let Some(open) = stripped.rfind('[') else {
            return Err(FieldError::UnmatchedBracket(decl.to_owned()));
        };
        base = stripped[..open].trim_end();
    }
    let suffix = &decl.trim_end()[base.len()..];
    // Past the last character that cannot be in a name; that character may be multi-byte
    // (found by the tracefs_format fuzz target).
    let start = base
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let name = &base[start..];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(FieldError::NoName(decl.to_owned()));
    }
    let ty = base[..start].trim();
    if ty.is_empty() {
        return Err(FieldError::NoType(decl.to_owned()));
    }
    Ok((name.to_owned(), format!("{ty}{}", suffix.trim())))
}

/// Keeps error messages readable when fed a binary or a huge line.
fn truncate(line: &str) -> String {
    const MAX: usize = 60;
    match line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_owned(),
    }
}

/// Reads and parses `<tracefs_root>/events/<system>/<event>/format`.
///
/// `Ok(None)` when the event (or its whole system, e.g. `xfs` before xfs.ko is loaded) does not
/// exist on this kernel: callers probe for optional tracepoints this way. A root without an
/// `events` directory is an error rather than "every event missing", so an unmounted tracefs is
/// not mistaken for an old kernel.
pub fn read(
    tracefs_root: &Path,
    system: &str,
    event: &str,
) -> Result<Option<EventFormat>, FormatError> {
    let events = tracefs_root.join("events");
    if !events.is_dir() {
        return Err(FormatError::NotTracefs(tracefs_root.to_path_buf()));
    }
    let dir = events.join(system).join(event);
    match fs::metadata(&dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(FormatError::Io { path: dir, source }),
    }
    let path = dir.join("format");
    let text = fs::read_to_string(&path).map_err(|source| FormatError::Io {
        path: path.clone(),
        source,
    })?;
    parse(&text).map(Some).map_err(|e| FormatError::InFile {
        path,
        source: Box::new(e),
    })
}

/// The first of `candidates` that has an `events` directory, i.e. a mounted tracefs.
fn first_mounted(candidates: &[&Path]) -> Option<PathBuf> {
    candidates
        .iter()
        .find(|p| p.join("events").is_dir())
        .map(|p| p.to_path_buf())
}

/// Finds a mounted tracefs: `/sys/kernel/tracing`, else `/sys/kernel/debug/tracing`.
pub fn tracefs_root() -> Option<PathBuf> {
    first_mounted(&[Path::new(TRACEFS), Path::new(DEBUGFS_TRACING)])
}

/// Returns a mounted tracefs, mounting it on `/sys/kernel/tracing` when none is found (minimal
/// hosts and some containers do not mount it). Needs CAP_SYS_ADMIN for the mount.
pub fn mount_tracefs() -> Result<PathBuf, FormatError> {
    if let Some(root) = tracefs_root() {
        return Ok(root);
    }
    let target = PathBuf::from(TRACEFS);
    // Same flags systemd uses for its tracefs mount unit.
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(
        Some("nodev"),
        target.as_path(),
        Some("tracefs"),
        flags,
        None::<&str>,
    )
    .map_err(|source| FormatError::Mount {
        path: target.clone(),
        source,
    })?;
    if target.join("events").is_dir() {
        Ok(target)
    } else {
        Err(FormatError::NotTracefs(target))
    }
}

#[cfg(test)]
mod tests;
