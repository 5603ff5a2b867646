//! Security of the real agent: capabilities after attach, read-only HTTP, a loopback-only
//! `listen`, config and state files with unsafe permissions refused, and AWS credentials never
//! in the logs, /status or the state files (a moto ladder run at trace level).
//!
//! Needs root (BPF, chown) and moto for the credentials test.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use bindsto::daemon::privileges::{CapSet, perf_event_paranoid, runtime_set};
use bindsto_tests::{
    Agent, XfsMount,
    agent::{default_agent_bin, free_port},
    faultyfs_bin,
    ladder::{World, metric, phase, wait_identified},
    privileged,
};

const POLL: Duration = Duration::from_millis(50);

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// CapInh/CapPrm/CapEff/CapBnd/CapAmb of one task's status file.
fn caps(status: &str) -> [(String, CapSet); 5] {
    ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"].map(|k| {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap_or_else(|| panic!("no {k}"));
        (
            k.to_owned(),
            CapSet(u64::from_str_radix(v.trim(), 16).unwrap()),
        )
    })
}

/// Every thread of `pid`: (tid, caps).
fn thread_caps(pid: u32) -> Vec<(String, [(String, CapSet); 5])> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let tid = e.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(e.path().join("status")).ok()?;
            Some((tid, caps(&text)))
        })
        .collect()
}

fn assert_caps(agent: &Agent, want_bounding: CapSet) {
    let keep = runtime_set(last_cap(), perf_event_paranoid());
    let threads = thread_caps(agent.pid());
    assert!(threads.len() > 1, "expected the runtime's threads");
    for (tid, c) in threads {
        let get = |k: &str| c.iter().find(|(n, _)| n == k).unwrap().1;
        assert_eq!(get("CapEff"), keep, "task {tid} CapEff {}", get("CapEff"));
        assert_eq!(get("CapPrm"), keep, "task {tid} CapPrm {}", get("CapPrm"));
        assert_eq!(get("CapInh"), CapSet(0), "task {tid} CapInh");
        assert_eq!(get("CapAmb"), CapSet(0), "task {tid} CapAmb");
        assert_eq!(
            get("CapBnd"),
            want_bounding,
            "task {tid} CapBnd {}",
            get("CapBnd")
        );
    }
}

fn detects_a_shutdown(agent: &mut Agent, xfs: &XfsMount) {
    let m = xfs.path().display().to_string();
    agent
        .wait_for(Duration::from_secs(15), POLL, |s| {
            s["targets"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| t["id"] == m.as_str()))
        })
        .unwrap_or_else(|e| panic!("mount not watched: {e}\n{}", agent.log()));
    xfs.shutdown().expect("shutdown");
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            s["targets"].as_array().is_some_and(|ts| {
                ts.iter()
                    .any(|t| t["id"] == m.as_str() && t["state"] == "failed")
            })
        })
        .unwrap_or_else(|e| panic!("shutdown not detected after the drop: {e}\n{}", agent.log()));
}

fn watch_config(mount: &Path, state: &Path) -> String {
    format!(
        r#"[detect]
scan_interval = "250ms"
fstypes = ["xfs"]
[[watch]]
path = "{}"
critical = true
[remediate]
actions = []
state_dir = "{}"
"#,
        mount.display(),
        state.display()
    )
}

/// Run as root with every capability: after attach the agent keeps exactly CAP_BPF,
/// CAP_PERFMON and CAP_DAC_READ_SEARCH (CAP_SYS_ADMIN instead of the first two on kernels
/// before 5.8) on every thread, the bounding set narrowed to the same, and still detects.
#[test]
fn capabilities_are_dropped_after_attach_on_every_thread() {
    let _g = privileged();
    let disk = bindsto_tests::FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let state = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&watch_config(xfs.path(), state.path()));
    assert_caps(&agent, runtime_set(last_cap(), perf_event_paranoid()));
    assert!(
        agent.log().contains("capabilities dropped after attaching"),
        "{}",
        agent.log()
    );
    // Probes attached before the drop and late-attach still possible: every core probe up.
    let s = agent.status();
    let attached = s["probes"]
        .as_array()
        .map(|p| p.iter().filter(|p| p["state"] == "attached").count())
        .unwrap_or(0);
    assert!(attached >= 3, "{s:#}");
    detects_a_shutdown(&mut agent, &xfs);
}

/// Started as systemd starts it (the unit's bounding set, no CAP_SETPCAP, no new privileges):
/// the same runtime set, and the bounding set stays the unit's.
#[test]
fn under_the_units_bounding_set_the_same_set_is_kept() {
    let _g = privileged();
    let names = bindsto_tests::unit::bounding_names().expect("unit");
    let number = |n: &str| match n {
        "dac_read_search" => 2,
        "sys_admin" => 21,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("unexpected capability {other} in the unit"),
    };
    let unit_set = CapSet(names.iter().fold(0u64, |m, n| m | 1 << number(n)));
    // Capabilities this machine's own bounding set lacks cannot be raised (as in operator.rs).
    let own = caps(&std::fs::read_to_string("/proc/self/status").unwrap());
    let host_bounding = own.iter().find(|(k, _)| k == "CapBnd").unwrap().1;
    // The runtime set is within the unit's: what the agent keeps, the unit grants.
    let keep = runtime_set(last_cap(), perf_event_paranoid());
    assert_eq!(keep.0 & unit_set.0, keep.0, "unit lacks {keep}");
    let dir = tempfile::tempdir().unwrap();
    let wrapper =
        bindsto_tests::unit::confined_wrapper(dir.path(), &default_agent_bin().unwrap()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let disk = bindsto_tests::FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let mut agent = Agent::start_with(&wrapper, &watch_config(xfs.path(), state.path()), &[])
        .expect("confined agent starts");
    assert_caps(&agent, CapSet(unit_set.0 & host_bounding.0));
    assert!(agent.log().contains("no CAP_SETPCAP"), "{}", agent.log());
    detects_a_shutdown(&mut agent, &xfs);
}

/// One raw request with any method; returns the status code.
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"))
}

/// No endpoint changes state: every write method on every endpoint is 405 (4xx elsewhere), and
/// the agent's config, verdict and counters are the same afterwards.
#[test]
fn http_is_read_only() {
    let _g = privileged();
    let state = tempfile::tempdir().unwrap();
    let cfg = format!(
        "dry_run = true\n[remediate]\nactions = []\nstate_dir = \"{}\"\n",
        state.path().display()
    );
    let mut agent = Agent::start(&cfg);
    // The remediation task publishes its status a moment after /healthz answers.
    agent
        .wait_for(Duration::from_secs(10), Duration::from_millis(20), |s| {
            !s["remediation"]["dry_run"].is_null()
        })
        .expect("remediation status");
    let before = agent.status();
    let body = r#"{"dry_run": false, "healthy": false, "listen": "0.0.0.0:1"}"#;
    for path in ["/healthz", "/metrics", "/status"] {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let code = request(agent.addr(), method, path, body);
            assert_eq!(code, 405, "{method} {path}");
        }
    }
    for path in ["/", "/config", "/reload", "/status/remediation", "/quit"] {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let code = request(agent.addr(), method, path, body);
            assert!((400..500).contains(&code), "{method} {path}: {code}");
        }
    }
    let after = agent.status();
    assert_eq!(before["config"], after["config"]);
    assert_eq!(before["healthy"], after["healthy"]);
    assert_eq!(
        before["remediation"]["dry_run"],
        after["remediation"]["dry_run"]
    );
    assert_eq!(agent.healthz().0, 200);
    assert_eq!(
        metric(&agent, "bindsto_config_reloads_total{outcome=\"applied\"}"),
        0
    );
}

/// The host's other local addresses: 127.0.0.2 (all of 127/8 is local) and any non-loopback
/// IPv4 address of an interface.
fn other_local_addrs() -> Vec<std::net::IpAddr> {
    let mut out = vec![std::net::IpAddr::from([127, 0, 0, 2])];
    // `ip -o -4 addr`: "2: eth0    inet 10.0.2.15/24 brd ...".
    let text = bindsto_tests::run_cmd("ip", &["-o", "-4", "addr", "show"], Duration::from_secs(10))
        .unwrap_or_default();
    for line in text.lines() {
        let addr = line
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok());
        if let Some(ip) = addr.filter(|ip| !ip.is_loopback()) {
            out.push(ip.into());
        }
    }
    out
}

#[test]
fn listen_on_loopback_is_not_reachable_on_other_local_addresses() {
    let _g = privileged();
    let state = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    // Agent::start sets listen to 127.0.0.1 on a free port; the address itself is what counts.
    let agent = Agent::start(&format!(
        "[remediate]\nactions = []\nstate_dir = \"{}\"\n",
        state.path().display()
    ));
    assert_eq!(agent.addr().ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    assert_eq!(agent.healthz().0, 200);
    let others = other_local_addrs();
    for ip in &others {
        let other = SocketAddr::new(*ip, agent.addr().port());
        let r = TcpStream::connect_timeout(&other, Duration::from_secs(2));
        assert!(
            r.is_err(),
            "{other} reached an agent listening on {}",
            agent.addr()
        );
    }
    // Control: the same check sees a wildcard listener from those addresses.
    let wildcard = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
    for ip in &others {
        TcpStream::connect_timeout(&SocketAddr::new(*ip, port), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("control: {ip}:{port} not reachable: {e}"));
    }
    drop(wildcard);
    println!("listen 127.0.0.1: unreachable on {others:?}");
}

fn bindsto(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(default_agent_bin().unwrap())
        .args(args)
        .output()
        .expect("bindsto");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

fn chown(path: &Path, uid: u32) {
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
}

/// World-writable or foreign-owned config: exit 2 naming the path, the problem and the fix, at
/// `run` and `check`; on SIGHUP the running config stays.
#[test]
fn config_with_unsafe_permissions_is_refused() {
    let _g = privileged();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{}\"\n[remediate]\nactions = []\nstate_dir = \"{}\"\n",
            free_port().unwrap(),
            state.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
    for cmd in ["run", "check"] {
        let (code, out) = bindsto(&[cmd, "--config", c]);
        assert_eq!(code, Some(2), "{cmd}: {out}");
        assert!(
            out.contains(c) && out.contains("world-writable") && out.contains("chmod o-w"),
            "{cmd}: {out}"
        );
    }
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    chown(&cfg, 4242);
    let (code, out) = bindsto(&["run", "--config", c]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(c) && out.contains("owned by uid 4242") && out.contains("chown"),
        "{out}"
    );
    chown(&cfg, 0);

    // Reload: a running agent keeps its config when the file turns unsafe.
    let mut agent = Agent::start(&std::fs::read_to_string(&cfg).unwrap());
    let path = agent.config_path().to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("[remediate]", "dry_run = false\n[remediate]"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o646)).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&agent, "bindsto_config_reloads_total{outcome=\"rejected\"}") == 0 {
        assert!(Instant::now() < deadline, "no rejection: {}", agent.log());
        std::thread::sleep(POLL);
    }
    assert!(agent.log().contains("world-writable"), "{}", agent.log());
    assert_eq!(agent.status()["config"]["dry_run"], true);
    assert!(agent.is_running());
}

/// A state dir others can write, or an incident history owned by another user: remediation is
/// unavailable with the reason in /status and the log; detection goes on.
#[test]
fn state_dir_and_files_with_unsafe_permissions_are_refused() {
    let _g = privileged();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let cfg = format!(
        "[remediate]\nactions = [\"exec\"]\nstate_dir = \"{}\"\n[remediate.exec]\ncommand = [\"/bin/true\"]\n",
        state.display()
    );
    // The remediation task publishes its status a moment after /healthz answers.
    let problems = |agent: &mut Agent| {
        agent
            .wait_for(Duration::from_secs(10), Duration::from_millis(20), |s| {
                !s["remediation"]["dry_run"].is_null()
            })
            .expect("remediation status");
        agent.status()["remediation"]["problems"].to_string()
    };

    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut agent = Agent::start(&cfg);
    let p = problems(&mut agent);
    assert!(
        p.contains("remediation unavailable")
            && p.contains("world-writable")
            && p.contains("chmod o-w"),
        "{p}"
    );
    assert_eq!(agent.healthz().0, 200);
    drop(agent);

    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let history = state.join("incidents.json");
    std::fs::write(&history, "{\"incidents\": []}").unwrap();
    chown(&history, 4242);
    let mut agent = Agent::start(&cfg);
    let p = problems(&mut agent);
    assert!(
        p.contains("owned by uid 4242") && p.contains("incidents.json"),
        "{p}"
    );
    assert!(agent.log().contains("owned by uid 4242"), "{}", agent.log());
    drop(agent);

    chown(&history, 0);
    let mut agent = Agent::start(&cfg);
    let p = problems(&mut agent);
    assert!(!p.contains("unavailable"), "{p}");
}

/// AWS credentials from the environment (as sentinels) through a real ladder run against moto
/// with every log at trace level, the SDK's included: no sentinel in the log, /status, the
/// state files or what `exec` received.
#[test]
fn aws_credentials_are_never_logged() {
    let _g = privileged();
    let w = World::new(faultyfs_bin!());
    let xfs = XfsMount::new(&w.disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let exec_out = w.state.path().join("exec-runs.jsonl");
    let cfg = w.config(xfs.path(), "1s", &exec_out);
    const KEY: &str = "AKIASENTINEL7KEYID42";
    const SECRET: &str = "SeNtInElSeCrEtAcCeSsKeY0123456789abcdefg";
    const TOKEN: &str = "SeNtInElSeSsIoNtOkEn0123456789ZYXWVUTSRQ";
    let env = [
        ("AWS_ACCESS_KEY_ID", KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_SESSION_TOKEN", TOKEN),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        // Even naming the SDK's crates explicitly does not lift the agent's cap on them.
        (
            "BINDSTO_LOG",
            "trace,aws_smithy_runtime=trace,aws_sigv4=trace,aws_config=trace",
        ),
        ("RUST_LOG", "trace"),
    ];
    let mut agent =
        Agent::start_with_env(default_agent_bin().unwrap(), &cfg, &[], &env).expect("agent starts");
    wait_identified(&mut agent, &m);
    xfs.shutdown().expect("shutdown");
    agent
        .wait_for(Duration::from_secs(60), POLL, |s| phase(s) == "done")
        .unwrap_or_else(|e| panic!("ladder did not finish: {e}"));
    assert_eq!(w.recorder.count("SetInstanceHealth"), 1);
    let log = agent.log();
    // The log really is at trace level (the AWS SDK's own debug and trace lines are capped
    // by the agent, since they dump the resolved credentials), so the check bites.
    assert!(log.contains("TRACE"), "not at trace level");
    assert!(
        log.contains("TRACE hyper_util::client"),
        "the AWS calls' HTTP not traced"
    );
    let mut places: Vec<(String, String)> = vec![
        ("log".into(), log),
        ("/status".into(), agent.status().to_string()),
        ("/metrics".into(), agent.metrics()),
    ];
    // The state directory's files, and those one level down (the evidence bundles).
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for e in std::fs::read_dir(w.state.path()).unwrap().flatten() {
        if e.path().is_dir() {
            files.extend(
                std::fs::read_dir(e.path())
                    .unwrap()
                    .flatten()
                    .map(|f| f.path()),
            );
        } else {
            files.push(e.path());
        }
    }
    for f in files {
        places.push((
            f.display().to_string(),
            String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned(),
        ));
    }
    assert!(
        places.len() >= 5,
        "{:?}",
        places.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    for (place, text) in &places {
        for (name, secret) in [
            ("key id", KEY),
            ("secret", SECRET),
            ("session token", TOKEN),
        ] {
            assert!(
                !text.contains(secret),
                "the {name} appears in {place} at: {}",
                text.find(secret)
                    .map(|i| &text[i.saturating_sub(300)..i])
                    .unwrap_or("")
            );
        }
    }
}
