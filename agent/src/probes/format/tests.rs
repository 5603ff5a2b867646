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
    let text = "name: x\r\nID: 7\r\nformat:\r\n\tfield:int a;\toffset:8;\tsize:4;\tfuture:1;\r\n";
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
