use std::time::Duration;

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
io_dead_after = "20s"
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
            io_dead_after: Duration::from_secs(20),
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
                must_be_mounted: false,
                read_only_ok: false,
                canary: Duration::ZERO,
            },
            Watch {
                path: "/data".into(),
                critical: false,
                require_mountpoint: false,
                must_be_mounted: false,
                read_only_ok: false,
                canary: Duration::ZERO,
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
            must_be_mounted: false,
            read_only_ok: false,
            canary: Duration::ZERO,
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
    let text = "# bindsto\nlisten = \"0.0.0.0:9842\"\n[detect]\nscan_interval = \"3 parsecs\"\n";
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
            e.ends_with("unknown key; expected one of scan_interval, io_stall_after, mount_blocked_after, probe_timeout, nfs_stall_after, io_errors_window, io_dead_after, fs_full_percent, inodes_full_percent, fstypes, mount_calls_critical"),
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
    let text = "a = 1\n[t]\nb = [\n  1,\n  { c = 2, 'd.e' = \"x # y\" },\n]\n[[u]]\nv.w = 3 # z\n";
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
}
