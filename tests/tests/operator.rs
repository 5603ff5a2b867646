//! What an operator sees: `doctor` verdicts and fixes when a requirement is missing (no
//! capabilities, a kernel without a tracepoint), journald-friendly logs, `--help` for every
//! subcommand, and `status` rendering a blocked mount call from a running agent.
//!
//! Needs root. Run: `cargo xtask test` (or `cargo test -p bindsto-tests --test operator --
//! --test-threads=1` after `cargo build -p bindsto`).

use std::{
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use bindsto_tests::{
    Agent, BgProcess, FaultyDisk, Mode, agent::default_agent_bin, faultyfs_bin, privileged,
    xfs::mkfs_xfs,
};
use serde_json::Value;

fn bindsto() -> Command {
    Command::new(default_agent_bin().expect("agent binary"))
}

fn doctor_json(cmd: &mut Command) -> (Option<i32>, Value) {
    let out = cmd.output().expect("doctor");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

fn find<'a>(report: &'a Value, requirement: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["requirement"] == requirement))
        .unwrap_or_else(|| panic!("no check {requirement:?} in {report:#}"))
}

/// Run with an empty capability bounding set (root without privileges): the privilege check
/// and loading fail, each with a fix, and the exit code says so.
#[test]
fn doctor_without_capabilities_fails_with_fixes() {
    let _g = privileged();
    let bin = default_agent_bin().expect("bin");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set=-all", "--inh-caps=-all"])
        .arg(&bin)
        .args(["doctor", "--json"]);
    let (code, report) = doctor_json(&mut cmd);
    assert_eq!(code, Some(1), "{report:#}");
    let privs = find(&report, "privileges (CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN)");
    assert_eq!(privs["verdict"], "fail", "{privs}");
    assert!(privs["fix"].as_str().is_some_and(|f| f.contains("CAP_BPF")));
    let load = find(&report, "load kernel programs");
    assert_eq!(load["verdict"], "fail", "{load}");
    assert!(load["fix"].is_string());
    let dac = find(&report, "capability CAP_DAC_READ_SEARCH");
    assert_eq!(dac["verdict"], "warn");
    assert!(
        dac["fix"]
            .as_str()
            .is_some_and(|f| f.contains("CapabilityBoundingSet"))
    );

    let human = Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all"])
        .arg(&bin)
        .arg("doctor")
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("[FAIL] privileges"), "{text}");
    assert!(text.contains("fix: "), "{text}");
    assert!(
        text.contains("verdict: bindsto cannot fully run here"),
        "{text}"
    );
}

/// The agent confined to exactly the unit's `CapabilityBoundingSet=` (as systemd would start
/// it: root, that bounding set, no inheritable set, `NoNewPrivileges=`) attaches every probe
/// and serves its API: the unit grants enough. `setpriv` stands in for systemd here; the
/// systemd guest of `vm-tests` runs the unit itself.
#[test]
fn the_units_capabilities_are_enough_to_run() {
    let _g = privileged();
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/bindsto.service"),
    )
    .expect("unit");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet=")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(caps.contains(&"+bpf".to_string()), "{caps:?}");
    // Capabilities this machine's own bounding set lacks cannot be raised; keep the rest.
    let host = Command::new("setpriv")
        .arg("--dump")
        .output()
        .expect("setpriv --dump");
    let host = String::from_utf8_lossy(&host.stdout).to_string();
    let bounding = host
        .lines()
        .find_map(|l| l.strip_prefix("Capability bounding set: "))
        .unwrap_or("")
        .to_string();
    let usable: Vec<&String> = caps
        .iter()
        .filter(|c| bounding.split(',').any(|b| b == c.trim_start_matches('+')))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = dir.path().join("confined-bindsto");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh
exec setpriv --bounding-set=-all,{} --inh-caps=-all --no-new-privs {} \"$@\"\n",
            usable
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(","),
            default_agent_bin().expect("bin").display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(
        &wrapper,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .expect("chmod");
    let mut agent = Agent::start_with(&wrapper, "listen = \"127.0.0.1:9842\"\n", &[])
        .expect("the agent under the unit's capabilities");
    agent
        .wait_for(Duration::from_secs(10), Duration::from_millis(100), |s| {
            // Probes this kernel lacks (kprobes, the sunrpc module) are `missing` either way,
            // the bio programs on `standby` without a dm device; a missing capability shows as
            // `failed`, and the core probes must be attached.
            let ok = |p: &Value| p["state"] == "attached" || p["state"] == "standby";
            s["probes"].as_array().is_some_and(|ps| {
                !ps.is_empty()
                    && ps.iter().all(|p| ok(p) || p["state"] == "missing")
                    && ps
                        .iter()
                        .filter(|p| {
                            let name = p["probe"].as_str().unwrap_or_default();
                            name.starts_with("block:") || name.starts_with("syscalls:")
                        })
                        .all(ok)
            })
        })
        .unwrap_or_else(|e| panic!("probes not attached with {usable:?}: {e}"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let eff = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .expect("CapEff")
        .to_string();
    println!("confined agent {eff} with {usable:?}");
    let eff = u64::from_str_radix(eff.trim_start_matches("CapEff:").trim(), 16).expect("hex");
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_BPF: u32 = 39;
    assert!(eff & (1 << CAP_BPF) != 0, "{eff:#x}");
    assert!(
        eff & ((1 << CAP_NET_ADMIN) | (1 << CAP_SYS_PTRACE)) == 0,
        "the agent was not confined: {eff:#x}"
    );
    assert_eq!(agent.healthz().0, 200);
}

/// A kernel without `xfs:xfs_force_shutdown` (as on 5.10): a warning with what replaces it,
/// not a failure.
#[test]
fn doctor_names_a_missing_tracepoint_and_its_fallback() {
    let _g = privileged();
    let dir = tempfile::tempdir().expect("tempdir");
    let real = Path::new("/sys/kernel/tracing/events");
    for sys in ["xfs", "block", "syscalls"] {
        for e in std::fs::read_dir(real.join(sys)).expect("tracefs") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let format = e.path().join("format");
            if (sys == "xfs" && name == "xfs_force_shutdown") || !format.exists() {
                continue;
            }
            let to = dir.path().join("events").join(sys).join(&name);
            std::fs::create_dir_all(&to).expect("mkdir");
            std::fs::copy(&format, to.join("format")).expect("copy");
        }
    }
    let (code, report) = doctor_json(
        bindsto()
            .args(["doctor", "--json"])
            .env("BINDSTO_TRACEFS", dir.path()),
    );
    assert_eq!(
        code,
        Some(0),
        "a missing tracepoint is a warning: {report:#}"
    );
    let tp = find(&report, "tracepoint xfs:xfs_force_shutdown");
    assert_eq!(tp["verdict"], "warn", "{tp}");
    assert!(
        tp["fix"].as_str().is_some_and(|f| f.contains("statx")),
        "the fix must say what replaces it: {tp}"
    );
    assert_eq!(
        find(&report, "tracepoint block:block_rq_issue")["verdict"],
        "ok"
    );
}

/// Under systemd (JOURNAL_STREAM naming our stderr) lines carry no timestamp and no colour;
/// elsewhere they are timestamped; a stale JOURNAL_STREAM (another stream) is ignored.
#[test]
fn logs_are_plain_for_the_journal() {
    let _g = privileged();
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |journal: Option<&dyn Fn(&std::fs::File) -> String>| -> String {
        let path = dir.path().join("log");
        let f = std::fs::File::create(&path).expect("log");
        let mut cmd = bindsto();
        cmd.args(["check", "--duration", "300ms"])
            .stdout(Stdio::null())
            .stderr(f.try_clone().expect("clone"));
        if let Some(j) = journal {
            cmd.env("JOURNAL_STREAM", j(&f));
        } else {
            cmd.env_remove("JOURNAL_STREAM");
        }
        cmd.status().expect("check");
        std::fs::read_to_string(&path).expect("read log")
    };
    let ours = |f: &std::fs::File| {
        let m = f.metadata().expect("meta");
        format!("{}:{}", m.dev(), m.ino())
    };
    let journal = run(Some(&ours));
    let first = journal.lines().next().expect("a log line");
    assert!(first.trim_start().starts_with("INFO"), "{journal}");
    assert!(!journal.contains('\x1b'), "ANSI colour in: {journal}");

    let plain = run(None);
    let first = plain.lines().next().expect("a log line");
    assert!(
        first.starts_with("20") && first.contains('T'),
        "expected a timestamp: {plain}"
    );
    assert!(!plain.contains('\x1b'));

    let stale = run(Some(&|_: &std::fs::File| "1:1".to_string()));
    assert!(
        stale.lines().next().is_some_and(|l| l.starts_with("20")),
        "{stale}"
    );
}

#[test]
fn every_subcommand_has_a_manual_style_help() {
    for (args, needles) in [
        (
            vec![],
            vec![
                "EXAMPLES:",
                "FILES:",
                "ENVIRONMENT:",
                "/etc/bindsto/config.toml",
            ],
        ),
        (
            vec!["run"],
            vec!["SIGNALS:", "SIGHUP", "EXIT STATUS:", "SYSTEMD:", "/healthz"],
        ),
        (
            vec!["check"],
            vec!["EXIT STATUS:", "1 unhealthy", "EXAMPLES:"],
        ),
        (vec!["status"], vec!["EXIT STATUS:", "EXAMPLES:", "--json"]),
        (vec!["doctor"], vec!["EXIT STATUS:", "fix", "EXAMPLES:"]),
        (vec!["config"], vec!["line and key"]),
        (vec!["config", "default"], vec!["EXAMPLES:"]),
    ] {
        let out = bindsto().args(&args).arg("--help").output().expect("help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {text}");
        for n in needles {
            assert!(
                text.contains(n),
                "`bindsto {args:?} --help` lacks {n:?}:\n{text}"
            );
        }
    }
}

/// `bindsto status` on a host where `mount` hangs on a hung disk: the blocked call is in the
/// table with its source, target and fstype, and the exit code says unhealthy.
#[test]
fn status_table_shows_a_blocked_mount_call() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("FaultyDisk");
    mkfs_xfs(&disk, &[]).expect("mkfs");
    let mnt = tempfile::tempdir().expect("mountpoint");
    let cfg = "listen = \"127.0.0.1:9842\"\n[detect]\nscan_interval = \"250ms\"\n\
               mount_blocked_after = \"1s\"\nfstypes = [\"xfs\"]\n";
    let mut agent = Agent::start(cfg);
    let mnt_path = mnt.path().canonicalize().expect("canonical");
    // Dropped after the `mount` process (declared later, dropped earlier, SIGKILLed if still
    // hung): unmounts what that mount made, if it got that far.
    let _unmount = UnmountOurs {
        path: mnt_path.clone(),
        source: disk.loop_dev().display().to_string(),
    };
    disk.set_mode(Mode::Hang).expect("hang");
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "xfs"]).arg(disk.loop_dev()).arg(&mnt_path);
    let mut mount = BgProcess::spawn(cmd).expect("mount");
    agent
        .wait_for(Duration::from_secs(20), Duration::from_millis(100), |s| {
            s["blocked_mount_calls"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
        })
        .unwrap_or_else(|e| panic!("no blocked call: {e}"));
    let out = bindsto()
        .args(["status", "--addr", &agent.addr().to_string()])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert_eq!(out.status.code(), Some(1), "unhealthy: {text}");
    assert!(text.contains("UNHEALTHY"), "{text}");
    assert!(text.contains("BLOCKED MOUNT CALLS (1)"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains(&mnt_path.display().to_string()))
        .unwrap_or_else(|| panic!("no row with the mount target:\n{text}"));
    assert!(row.contains("mount") && row.contains("xfs"), "{row}");
    assert!(
        row.contains(&disk.loop_dev().display().to_string()),
        "{row}"
    );
    assert!(
        text.lines().any(|l| l.contains("subsystem")
            && l.contains("FAILED")
            && l.contains("mount_blocked")),
        "{text}"
    );

    // Release the disk: the mount completes; unmount what we mounted.
    disk.set_mode(Mode::Pass).expect("pass");
    assert!(
        mount.wait_timeout(Duration::from_secs(30)).is_some(),
        "mount did not finish after release"
    );
    agent.stop();
}

struct UnmountOurs {
    path: std::path::PathBuf,
    source: String,
}

impl Drop for UnmountOurs {
    fn drop(&mut self) {
        let ours = bindsto_tests::sys::mounts_at(&self.path)
            .iter()
            .any(|e| e.source == self.source);
        if ours {
            let ok = Command::new("umount")
                .arg(&self.path)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            }
        }
    }
}
