//! The agent as a systemd service, without systemd: the test plays the service manager's
//! side of the notification socket (a real unix datagram socket in `NOTIFY_SOCKET`) and sends
//! SIGHUP itself. The systemd guest of `vm-tests` runs the real unit.
//!
//! Needs root. Run: `cargo xtask test` (or `cargo test -p bindsto-tests --test service --
//! --test-threads=1` after `cargo build -p bindsto`).

use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use bindsto_tests::status::target;
use bindsto_tests::{
    Agent, FaultyDisk, XfsMount,
    agent::{default_agent_bin, free_port, set_listen},
    faultyfs_bin, privileged,
};
use nix::{sys::signal, unistd::Pid};

const POLL: Duration = Duration::from_millis(50);

fn hup(agent: &Agent) {
    signal::kill(Pid::from_raw(agent.pid() as i32), signal::Signal::SIGHUP).expect("SIGHUP");
}

/// Waits until the agent's log contains `needle` (after `skip` bytes).
fn wait_log(agent: &mut Agent, skip: usize, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = agent.log();
        let tail = log.get(skip..).unwrap_or("").to_string();
        if tail.contains(needle) {
            return tail;
        }
        assert!(agent.is_running(), "the agent exited; log:\n{log}");
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log within 10 s:\n{tail}"
        );
        std::thread::sleep(POLL);
    }
}

fn config(stall: &str, watch: Option<&str>) -> String {
    let mut c = format!(
        "listen = \"127.0.0.1:9842\"\n\n[detect]\nscan_interval = \"250ms\"\n\
         io_stall_after = \"{stall}\"\nfstypes = [\"xfs\"]\n"
    );
    if let Some(w) = watch {
        c.push_str(&format!("\n[[watch]]\npath = \"{w}\"\ncritical = true\n"));
    }
    c
}

/// SIGHUP with a changed threshold and a new critical watch: both apply without a restart.
/// Then a broken file: rejected with the key and line, counted, and the old config runs on.
#[test]
fn sighup_applies_a_good_config_and_keeps_the_old_one_on_a_bad_one() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("FaultyDisk");
    let xfs = XfsMount::new(&disk).expect("XFS");
    let mp = xfs.path().display().to_string();

    let mut agent = Agent::start(&config("30s", None));
    let path = agent.config_path().to_path_buf();
    let addr = agent.addr();
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            target(s, "mount", &mp).is_some_and(|t| t["critical"] == false)
        })
        .unwrap_or_else(|e| panic!("mount not observed: {e}"));
    assert_eq!(agent.status()["config"]["detect"]["io_stall_after"], "30s");

    // A good config: new threshold, the mount now critical, and a new listen address (which
    // needs a restart and is said to).
    let other = std::net::SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    std::fs::write(&path, set_listen(&config("7s", Some(&mp)), other)).expect("write");
    let mark = agent.log().len();
    let t0 = Instant::now();
    hup(&agent);
    let took = agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            s["config"]["detect"]["io_stall_after"] == "7s"
                && target(s, "mount", &mp).is_some_and(|t| t["critical"] == true)
        })
        .unwrap_or_else(|e| panic!("reload not applied: {e}"));
    println!("LATENCY sighup_reload_applied: {}", took.as_millis());
    let log = wait_log(&mut agent, mark, "config reloaded and applied");
    assert!(
        log.contains("restart bindsto to apply"),
        "listen change not reported:\n{log}"
    );
    assert_eq!(agent.addr(), addr);
    assert_eq!(agent.healthz().0, 200, "still serving on the old address");
    assert_eq!(
        agent.status()["config"]["listen"],
        addr.to_string(),
        "/status must show the listen address in effect"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));

    // A bad config: rejected, logged with key and line, counted; the old one stays.
    std::fs::write(
        &path,
        "[detect]\nscan_interval = \"250ms\"\nio_stall_after = \"soonish\"\n",
    )
    .expect("write");
    let mark = agent.log().len();
    hup(&agent);
    let log = wait_log(&mut agent, mark, "config reload rejected");
    assert!(
        log.contains("detect.io_stall_after") && log.contains("line 3"),
        "the rejection must name the key and line:\n{log}"
    );
    let metrics = agent.metrics();
    assert!(
        metrics.contains("bindsto_config_reloads_total{outcome=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bindsto_config_reloads_total{outcome=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bindsto_config_last_reload_successful 0"),
        "{metrics}"
    );
    let s = agent.status();
    assert_eq!(s["config"]["detect"]["io_stall_after"], "7s");
    assert!(target(&s, "mount", &mp).is_some_and(|t| t["critical"] == true));
    assert!(agent.is_running());
    agent.stop();
    drop(xfs);
}

fn recv_until(
    sock: &UnixDatagram,
    timeout: Duration,
    mut want: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = want(&m);
                seen.push(m);
                if done {
                    return seen;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!("not seen within {timeout:?}; got {seen:?}");
}

/// READY=1 only once the HTTP server answers; WATCHDOG=1 at a third of WATCHDOG_USEC;
/// RELOADING=1 then READY=1 around a SIGHUP; STOPPING=1 on SIGTERM.
#[test]
fn notifies_systemd_ready_watchdog_reload_and_stop() {
    let _g = privileged();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let notify = sock_path.display().to_string();

    // Agent::start waits for /healthz itself; READY must have come before or with it.
    let mut agent = Agent::start_with_env(
        default_agent_bin().expect("bin"),
        &config("30s", None),
        &[],
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "1500000")],
    )
    .expect("agent");
    let first = recv_until(&sock, Duration::from_secs(10), |m| m.starts_with("READY=1"));
    let ready = first.last().expect("READY");
    assert!(ready.contains("\nSTATUS=healthy;"), "{ready}");
    assert!(ready.contains("probes attached"), "{ready}");
    assert_eq!(agent.healthz().0, 200);

    // Pings every 500 ms: at least four in 2.5 s.
    let t0 = Instant::now();
    let mut pings = 0;
    recv_until(&sock, Duration::from_secs(5), |m| {
        pings += usize::from(m == "WATCHDOG=1");
        pings >= 4
    });
    let per_ping = t0.elapsed() / 4;
    println!("LATENCY watchdog_ping_period: {}", per_ping.as_millis());
    assert!(per_ping <= Duration::from_millis(800), "{per_ping:?}");

    hup(&agent);
    let mut reloading = false;
    recv_until(&sock, Duration::from_secs(10), |m| {
        reloading |= m.starts_with("RELOADING=1\nMONOTONIC_USEC=");
        reloading && m.starts_with("READY=1")
    });

    let st = agent.stop().expect("exit status");
    assert!(st.success(), "{st}");
    recv_until(&sock, Duration::from_secs(2), |m| m == "STOPPING=1");
}
