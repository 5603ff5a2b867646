//! The write canary (`[[watch]] canary`) under the real agent binary, on XFS over the FUSE-backed
//! faulty disk: a hung disk fails the watch with `not_writable` after `probe_timeout` and
//! leaves one thread at most, not one per attempt; a full filesystem names the errno; a
//! canary file left by a killed agent is gone after the next start. Observed only through
//! `/status`, `/healthz` and `/metrics`; latencies are printed as `LATENCY <test>: <ms>` lines.
//!
//! Needs root.

use std::time::{Duration, Instant};

use bindsto_tests::status::{critical_watch_config, has_reason, reasons, state};
use bindsto_tests::{Agent, FaultyDisk, Mode, XfsMount, faultyfs_bin, privileged};
use serde_json::Value;

const POLL: Duration = Duration::from_millis(50);
const CANARY_FILE: &str = ".bindsto-canary";

fn config(watch: &str) -> String {
    critical_watch_config(
        watch,
        "io_stall_after = \"60s\"\nfs_full_percent = 0.0\ninodes_full_percent = 0.0\n\
         fstypes = [\"xfs\"]",
        "canary = \"1s\"\n",
    )
}

fn detail(s: &Value, m: &str) -> String {
    reasons(s, "mount", m)
}

fn canaries(agent: &Agent, m: &str, outcome: &str) -> u64 {
    let want = format!("bindsto_canary_writes_total{{target=\"{m}\",outcome=\"{outcome}\"}} ");
    agent
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&want).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn start(m: &str) -> Agent {
    let mut agent = Agent::start(&config(m));
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            state(s, "mount", m) == "healthy"
        })
        .unwrap_or_else(|e| panic!("the agent never observed {m}: {e}"));
    let t = Instant::now();
    while canaries(&agent, m, "ok") < 2 {
        assert!(t.elapsed() < Duration::from_secs(10), "no canary ran");
        std::thread::sleep(POLL);
    }
    agent
}

#[test]
fn a_hung_disk_fails_the_canary_after_the_timeout_with_one_thread_at_most() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("FaultyDisk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let mut agent = start(&m);
    let baseline = threads(agent.pid());

    let t0 = Instant::now();
    disk.set_mode(Mode::Hang).expect("hang");
    agent
        .wait_for(Duration::from_secs(15), POLL, |s| {
            has_reason(s, "mount", &m, "not_writable")
        })
        .unwrap_or_else(|e| panic!("no not_writable: {e}\n{}", agent.log()));
    let took = t0.elapsed();
    eprintln!(
        "LATENCY canary_hung: {} ms (canary 1 s, probe_timeout 2 s)",
        took.as_millis()
    );
    let s = agent.status();
    assert!(detail(&s, &m).contains("timed out"), "{}", detail(&s, &m));
    assert_eq!(state(&s, "mount", &m), "failed");
    assert_eq!(agent.healthz().0, 503);
    // Not before the timeout (the canary answers within ms on a healthy disk).
    assert!(took >= Duration::from_secs(2), "{took:?}");
    // Ten more canary periods: one attempt stays outstanding, no thread per attempt.
    let mut most = 0;
    for _ in 0..40 {
        most = most.max(threads(agent.pid()));
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("THREADS canary_hung: baseline {baseline}, most {most}");
    // The hung canary, the mount check that may hang behind it, and the runtime's slack.
    assert!(most <= baseline + 4, "threads {baseline} -> {most}");
    assert_eq!(canaries(&agent, &m, "timeout"), 1);

    // Released: the parked canary answers, the watch is writable again.
    disk.set_mode(Mode::Pass).expect("pass");
    agent
        .wait_for(Duration::from_secs(15), POLL, |s| {
            state(s, "mount", &m) == "healthy"
        })
        .unwrap_or_else(|e| panic!("not_writable did not clear: {e}\n{}", agent.log()));
    assert_eq!(agent.healthz().0, 200);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!xfs.path().join(CANARY_FILE).exists(), "canary file left");
}

#[test]
fn a_full_filesystem_reports_the_errno() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("FaultyDisk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let mut agent = start(&m);
    // Fill it: a file as large as the free space allows, then small files until nothing fits.
    let fill = xfs.path().join("fill");
    let _ = bindsto_tests::run_cmd(
        "sh",
        &[
            "-c",
            &format!(
                "dd if=/dev/zero of={f} bs=1M 2>/dev/null; sync; \
                 i=0; while [ $i -lt 10000 ] && head -c 4096 /dev/zero > {m}/f$i 2>/dev/null; do i=$((i+1)); done; sync; true",
                f = fill.display()
            ),
        ],
        Duration::from_secs(120),
    );
    let t0 = Instant::now();
    agent
        .wait_for(Duration::from_secs(15), POLL, |s| {
            has_reason(s, "mount", &m, "not_writable")
        })
        .unwrap_or_else(|e| panic!("no not_writable on a full fs: {e}\n{}", agent.log()));
    let s = agent.status();
    let why = detail(&s, &m);
    eprintln!(
        "LATENCY canary_full: {} ms ({why})",
        t0.elapsed().as_millis()
    );
    assert!(why.contains("ENOSPC"), "{why}");
    assert_eq!(agent.healthz().0, 503);
    assert!(canaries(&agent, &m, "failed") >= 1);
    // Space again: writable again.
    let _ = bindsto_tests::run_cmd(
        "sh",
        &["-c", &format!("rm -f {m}/fill {m}/f*")],
        Duration::from_secs(60),
    );
    agent
        .wait_for(Duration::from_secs(15), POLL, |s| {
            state(s, "mount", &m) == "healthy"
        })
        .unwrap_or_else(|e| panic!("not_writable did not clear: {e}"));
    assert!(!xfs.path().join(CANARY_FILE).exists(), "canary file left");
}

#[test]
fn a_canary_file_left_by_a_killed_agent_is_removed_at_the_next_start() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("FaultyDisk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let file = xfs.path().join(CANARY_FILE);
    let mut agent = start(&m);
    // The canary parks in fsync with its file created; kill -9 lands while it waits.
    disk.set_mode(Mode::Hang).expect("hang");
    let t = Instant::now();
    while !file.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no canary file while hung"
        );
        std::thread::sleep(POLL);
    }
    std::thread::sleep(Duration::from_millis(500));
    agent
        .signal(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL");
    // The thread in fsync dies when its wait ends.
    disk.set_mode(Mode::Pass).expect("pass");
    agent.kill9();
    assert!(
        file.exists(),
        "the killed canary left no file: nothing to prove"
    );
    let agent = Agent::start(&config(&m));
    let t = Instant::now();
    while file.exists() || canaries(&agent, &m, "ok") < 1 {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "stale canary file still there\n{}",
            agent.log()
        );
        std::thread::sleep(POLL);
    }
    eprintln!(
        "LATENCY canary_stale_removed: {} ms after start",
        t.elapsed().as_millis()
    );
    let s = agent.status();
    assert_eq!(state(&s, "mount", &m), "healthy", "{}", detail(&s, &m));
    // Nothing else written on the watched filesystem.
    let entries: Vec<String> = std::fs::read_dir(xfs.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(entries.is_empty(), "{entries:?}");
}
