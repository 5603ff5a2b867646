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
mod tests {
    use super::*;

    macro_rules! fixture {
        ($rel:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests-fixtures/tracefs/",
                $rel,
                "/format"
            ))
        };
    }

    const RQ_ISSUE_618: &str = fixture!("6.18/block/block_rq_issue");
    const RQ_COMPLETE_618: &str = fixture!("6.18/block/block_rq_complete");
    const RQ_ERROR_618: &str = fixture!("6.18/block/block_rq_error");
    const SHUTDOWN_618: &str = fixture!("6.18/xfs/xfs_force_shutdown");
    const BUF_IOERROR_618: &str = fixture!("6.18/xfs/xfs_buf_ioerror");
    const ENTER_MOUNT_618: &str = fixture!("6.18/syscalls/sys_enter_mount");
    const ENTER_FSCONFIG_618: &str = fixture!("6.18/syscalls/sys_enter_fsconfig");
    const RQ_ISSUE_61: &str = fixture!("6.1/block/block_rq_issue");
    const RQ_COMPLETE_61: &str = fixture!("6.1/block/block_rq_complete");
    const EXT4: &[(&str, &str)] = &[
        (
            fixture!("6.18/ext4/ext4_shutdown"),
            fixture!("6.18/ext4/ext4_error"),
        ),
        (
            fixture!("6.12/ext4/ext4_shutdown"),
            fixture!("6.12/ext4/ext4_error"),
        ),
        (
            fixture!("6.1/ext4/ext4_shutdown"),
            fixture!("6.1/ext4/ext4_error"),
        ),
        (
            fixture!("5.10/ext4/ext4_shutdown"),
            fixture!("5.10/ext4/ext4_error"),
        ),
    ];

    #[test]
    fn ext4_shutdown_and_error_on_every_kernel_line() {
        for (shutdown, error) in EXT4 {
            let f = parse(shutdown).unwrap();
            assert_eq!(f.name, "ext4_shutdown");
            assert_common(&f);
            assert_eq!(at(&f, "dev"), (8, 4));
            assert_eq!(at(&f, "flags"), (12, 4));
            let f = parse(error).unwrap();
            assert_eq!(f.name, "ext4_error");
            assert_eq!(at(&f, "dev"), (8, 4));
            assert_eq!(at(&f, "line"), (24, 4));
        }
    }

    /// (offset, size) of a field, panicking with the event name if it is missing.
    fn at(f: &EventFormat, name: &str) -> (u16, u16) {
        let field = f
            .field(name)
            .unwrap_or_else(|| panic!("{} has no field {name}", f.name));
        (field.offset, field.size)
    }

    fn assert_common(f: &EventFormat) {
        assert_eq!(at(f, "common_type"), (0, 2));
        assert_eq!(at(f, "common_flags"), (2, 1));
        assert_eq!(at(f, "common_preempt_count"), (3, 1));
        assert_eq!(at(f, "common_pid"), (4, 4));
        assert!(f.field("common_pid").unwrap().signed);
    }

    #[test]
    fn block_rq_issue_618() {
        let f = parse(RQ_ISSUE_618).unwrap();
        assert_eq!(f.name, "block_rq_issue");
        assert_eq!(f.id, 2104);
        assert_eq!(f.fields.len(), 12);
        assert_common(&f);
        assert_eq!(at(&f, "dev"), (8, 4));
        assert_eq!(at(&f, "sector"), (16, 8));
        assert_eq!(at(&f, "nr_sector"), (24, 4));
        assert_eq!(at(&f, "bytes"), (28, 4));
        assert_eq!(at(&f, "ioprio"), (32, 2));
        assert_eq!(at(&f, "rwbs"), (34, 10));
        assert_eq!(at(&f, "comm"), (44, 16));
        assert_eq!(at(&f, "cmd"), (60, 4));
        let rwbs = f.field("rwbs").unwrap();
        assert_eq!(rwbs.type_decl, "char[10]");
        assert!(!rwbs.signed);
        assert_eq!(f.field("dev").unwrap().type_decl, "dev_t");
        assert!(f.field("cmd").unwrap().is_data_loc());
        assert!(!rwbs.is_data_loc());
    }

    #[test]
    fn block_rq_complete_and_error_618() {
        for (text, name) in [
            (RQ_COMPLETE_618, "block_rq_complete"),
            (RQ_ERROR_618, "block_rq_error"),
        ] {
            let f = parse(text).unwrap();
            assert_eq!(f.name, name);
            assert_common(&f);
            assert_eq!(at(&f, "dev"), (8, 4));
            assert_eq!(at(&f, "sector"), (16, 8));
            assert_eq!(at(&f, "nr_sector"), (24, 4));
            assert_eq!(at(&f, "error"), (28, 4));
            assert!(f.field("error").unwrap().signed);
            assert_eq!(at(&f, "ioprio"), (32, 2));
            assert_eq!(at(&f, "rwbs"), (34, 10));
            assert_eq!(at(&f, "cmd"), (44, 4));
            assert!(f.field("comm").is_none());
        }
        assert_eq!(parse(RQ_COMPLETE_618).unwrap().id, 2107);
        assert_eq!(parse(RQ_ERROR_618).unwrap().id, 2106);
    }

    #[test]
    fn block_rq_issue_61() {
        let f = parse(RQ_ISSUE_61).unwrap();
        assert_eq!(f.name, "block_rq_issue");
        assert_common(&f);
        assert_eq!(at(&f, "dev"), (8, 4));
        assert_eq!(at(&f, "sector"), (16, 8));
        assert_eq!(at(&f, "nr_sector"), (24, 4));
        assert_eq!(at(&f, "bytes"), (28, 4));
        assert_eq!(at(&f, "rwbs"), (32, 8));
        assert_eq!(at(&f, "comm"), (40, 16));
        assert_eq!(at(&f, "cmd"), (56, 4));
        assert!(f.field("ioprio").is_none());
        assert_eq!(f.field("rwbs").unwrap().type_decl, "char[8]");
        assert!(f.field("cmd").unwrap().is_data_loc());
    }

    #[test]
    fn block_rq_complete_61() {
        let f = parse(RQ_COMPLETE_61).unwrap();
        assert_eq!(f.name, "block_rq_complete");
        assert_common(&f);
        assert_eq!(at(&f, "dev"), (8, 4));
        assert_eq!(at(&f, "sector"), (16, 8));
        assert_eq!(at(&f, "nr_sector"), (24, 4));
        assert_eq!(at(&f, "error"), (28, 4));
        assert_eq!(at(&f, "rwbs"), (32, 8));
        assert_eq!(at(&f, "cmd"), (40, 4));
        assert!(f.field("ioprio").is_none());
    }

    #[test]
    fn xfs_events_618() {
        let f = parse(SHUTDOWN_618).unwrap();
        assert_eq!(f.name, "xfs_force_shutdown");
        assert_common(&f);
        assert_eq!(at(&f, "dev"), (8, 4));
        assert_eq!(at(&f, "ptag"), (12, 4));
        assert_eq!(at(&f, "flags"), (16, 4));
        assert_eq!(at(&f, "line_num"), (24, 4));
        let fname = f.field("fname").unwrap();
        assert_eq!((fname.offset, fname.size), (20, 4));
        assert_eq!(fname.type_decl, "__data_loc char[]");
        assert!(fname.is_data_loc());

        let f = parse(BUF_IOERROR_618).unwrap();
        assert_eq!(f.name, "xfs_buf_ioerror");
        assert_eq!(at(&f, "dev"), (8, 4));
        assert_eq!(at(&f, "bno"), (16, 8));
        assert!(f.field("bno").unwrap().signed);
        assert_eq!(at(&f, "error"), (44, 4));
        assert_eq!(at(&f, "caller_ip"), (48, 8));
        // `unsigned flags;`: the type is a bare qualifier.
        assert_eq!(f.field("flags").unwrap().type_decl, "unsigned");
    }

    #[test]
    fn syscall_events_618() {
        let f = parse(ENTER_MOUNT_618).unwrap();
        assert_eq!(f.name, "sys_enter_mount");
        assert_common(&f);
        assert_eq!(at(&f, "__syscall_nr"), (8, 4));
        let dev_name = f.field("dev_name").unwrap();
        assert_eq!((dev_name.offset, dev_name.size), (16, 8));
        assert_eq!(dev_name.type_decl, "char *");
        assert_eq!(at(&f, "dir_name"), (24, 8));
        assert_eq!(at(&f, "type"), (32, 8));
        assert_eq!(at(&f, "data"), (48, 8));

        let f = parse(ENTER_FSCONFIG_618).unwrap();
        assert_eq!(f.name, "sys_enter_fsconfig");
        // Syscall arguments are stored as 8-byte longs whatever their C type.
        assert_eq!(at(&f, "cmd"), (24, 8));
        assert_eq!(at(&f, "fd"), (16, 8));
        let key = f.field("_key").unwrap();
        assert_eq!(key.type_decl, "const char *");
        assert_eq!(key.offset, 32);
    }

    #[test]
    fn require_names_event_and_field() {
        let f = parse(RQ_ISSUE_61).unwrap();
        assert_eq!(f.require("dev").unwrap().offset, 8);
        let err = f.require("ioprio").unwrap_err().to_string();
        assert_eq!(err, "event block_rq_issue has no field ioprio");
    }

    #[test]
    fn declarations() {
        let cases = [
            ("char rwbs[10]", "rwbs", "char[10]"),
            ("__data_loc char[] fname", "fname", "__data_loc char[]"),
            ("const char * dev_name", "dev_name", "const char *"),
            ("const char *dev_name", "dev_name", "const char *"),
            ("unsigned long args[6]", "args", "unsigned long[6]"),
            ("u8 addr[2][16]", "addr", "u8[2][16]"),
            ("int common_pid", "common_pid", "int"),
        ];
        for (decl, name, ty) in cases {
            assert_eq!(
                split_declaration(decl).unwrap(),
                (name.to_owned(), ty.to_owned()),
                "{decl}"
            );
        }
        for bad in ["", "int", "char [10]", "int 5x", "char x]"] {
            assert!(split_declaration(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Asserts that `text` fails to parse with a message containing `needle`.
    fn parse_err(text: &str, needle: &str) {
        let err = parse(text).expect_err(text).to_string();
        assert!(err.contains(needle), "{err:?} does not contain {needle:?}");
    }

    #[test]
    fn garbage_is_rejected_with_line_numbers() {
        parse_err("", "no `name:` line");
        parse_err("hello world\n", "line 1: unexpected line \"hello world\"");
        parse_err("\u{0}\u{1}binary\n", "line 1: unexpected line");
        parse_err(
            "name: x\nID: abc\n",
            "line 2: event ID \"abc\" is not a number",
        );
        parse_err(
            "name: x\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\n",
            "no `ID:` line",
        );
        parse_err("name: x\nID: 1\nformat:\n", "no field");
        parse_err("name:\n", "line 1: empty event name");
        parse_err("name: x\nname: y\n", "line 2: second `name:` line");
        parse_err(
            "name: x\nID: 1\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n",
            "line 3: field line before `format:`",
        );
        parse_err(
            "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:8x;\tsize:4;\tsigned:1;\n",
            "line 4: field a: offset \"8x\" is not a number",
        );
        parse_err(
            "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:70000;\tsize:4;\tsigned:1;\n",
            "line 4: field a: offset \"70000\"",
        );
        parse_err(
            "name: x\nID: 1\nformat:\n\n\tfield:int a;\tsize:4;\tsigned:1;\n",
            "line 5: field a: no offset",
        );
        parse_err(
            "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:8;\tsigned:1;\n",
            "line 4: field a: no size",
        );
        parse_err(
            "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:2;\n",
            "line 4: field a: signed:2 is not 0 or 1",
        );
        parse_err(
            "name: x\nID: 1\nformat:\n\tfield:int;\toffset:8;\tsize:4;\tsigned:1;\n",
            "line 4: declaration \"int\" has no type",
        );
        parse_err(
            "name: x\nID: 1\nformat:\n\tfield:int a;\toffset 8;\tsize:4;\n",
            "line 4: field a: attribute \"offset 8\" has no `:`",
        );
        // A truncated copy of a real file: the header survives, the field line is cut.
        let cut = &RQ_ISSUE_618[..RQ_ISSUE_618.find("offset:16").unwrap()];
        parse_err(cut, "line 10: field sector: no offset");
    }

    #[test]
    fn lenient_where_old_or_new_kernels_differ() {
        // No `signed:` (pre-2.6.32), an unknown attribute, CRLF line ends, nothing after fields.
        let text =
            "name: x\r\nID: 7\r\nformat:\r\n\tfield:int a;\toffset:8;\tsize:4;\tfuture:1;\r\n";
        let f = parse(text).unwrap();
        assert_eq!(f.id, 7);
        assert_eq!(
            f.fields,
            vec![Field {
                name: "a".into(),
                type_decl: "int".into(),
                offset: 8,
                size: 4,
                signed: false,
            }]
        );
        // Anything after `print fmt:` is ignored, even if it would not parse.
        let f = parse("name: x\nID: 7\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\nprint fmt: \"%d\"\ngarbage\n").unwrap();
        assert_eq!(f.fields.len(), 1);
    }

    #[test]
    fn read_from_a_tracefs_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // No `events`: not a tracefs, which must not look like "tracepoint missing".
        assert!(matches!(
            read(root, "block", "block_rq_issue"),
            Err(FormatError::NotTracefs(_))
        ));

        let event_dir = root.join("events/block/block_rq_issue");
        fs::create_dir_all(&event_dir).unwrap();
        fs::write(event_dir.join("format"), RQ_ISSUE_618).unwrap();
        let f = read(root, "block", "block_rq_issue").unwrap().unwrap();
        assert_eq!(f, parse(RQ_ISSUE_618).unwrap());

        // Missing event in an existing system, and a whole missing system (xfs not loaded).
        assert_eq!(read(root, "block", "block_io_start").unwrap(), None);
        assert_eq!(read(root, "xfs", "xfs_force_shutdown").unwrap(), None);

        // An event directory without a readable format file is an I/O error naming the path.
        fs::create_dir_all(root.join("events/block/block_rq_error")).unwrap();
        let err = read(root, "block", "block_rq_error").unwrap_err();
        assert!(matches!(err, FormatError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("block_rq_error/format"), "{err}");

        // A parse error names the file and the line.
        let bad = root.join("events/block/block_rq_requeue");
        fs::create_dir_all(&bad).unwrap();
        fs::write(bad.join("format"), "name: block_rq_requeue\nID: x\n").unwrap();
        let err = read(root, "block", "block_rq_requeue")
            .unwrap_err()
            .to_string();
        assert!(err.contains("block_rq_requeue/format: line 2"), "{err}");
    }

    #[test]
    fn first_mounted_picks_the_first_with_events() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(b.join("events")).unwrap();
        assert_eq!(first_mounted(&[&a, &b]), Some(b.clone()));
        fs::create_dir_all(a.join("events")).unwrap();
        assert_eq!(first_mounted(&[&a, &b]), Some(a));
        assert_eq!(first_mounted(&[]), None);
    }

    /// The live files on the machine running the tests, when tracefs is readable (root): they
    /// must parse, whatever the kernel.
    #[test]
    fn live_tracefs_parses_when_available() {
        let Some(root) = tracefs_root() else { return };
        if fs::read_dir(root.join("events")).is_err() {
            return;
        }
        for (sys, ev) in [
            ("block", "block_rq_issue"),
            ("block", "block_rq_complete"),
            ("syscalls", "sys_enter_mount"),
        ] {
            match read(&root, sys, ev) {
                Ok(Some(f)) => assert!(f.field("common_type").is_some()),
                Ok(None) => {}
                // Unprivileged runs cannot read format files; nothing to check then.
                Err(FormatError::Io { source, .. })
                    if source.kind() == io::ErrorKind::PermissionDenied => {}
                Err(e) => panic!("{sys}/{ev}: {e}"),
            }
        }
    }

    /// Fuzz regression: a multi-byte character right before the field name panicked (byte
    /// index inside the character).
    #[test]
    fn multibyte_character_before_the_name_is_no_panic() {
        let text = "name: sys_enter_mount\nID: 880\nformat:\n\tfield:unsigned short\u{5dc}ommon_type;\toffset:1;\tsize:2;\tsigned:0;\n";
        let f = parse(text).expect("parses");
        assert_eq!(f.fields[0].name, "ommon_type");
        assert_eq!(f.fields[0].type_decl, "unsigned short\u{5dc}");
        // The fuzzer's own input, byte for byte.
        let crash = "name: sys_enter_mount\nID: 880\nformat:\n\tfield:unsigned short\u{5dc}ommon_type;\toffset:1;\tsize:2;\tsignedname: sys_enter_rmit:";
        assert_eq!(parse(crash).expect("parses").fields[0].name, "ommon_type");
        let _ = parse("format:\nfield:\u{e9};offset:0;size:1;\n");
    }
}
