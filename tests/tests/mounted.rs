//! BindsTo= itself: a critical watch whose mount goes away (`not_mounted`), or that cannot be
//! written (`read_only`), fails the host. The real agent binary against real unmounts and
//! remounts of an XFS on the faulty disk, observed only through `/healthz`, `/status` and
//! `/metrics`. Latencies are printed as `LATENCY <test>: <ms>` lines.
//!
//! Needs root. Run: `cargo test -p bindsto-tests --test mounted -- --test-threads=1` after
//! `cargo build -p bindsto`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use bindsto_tests::status::{has_reason, state, target};
use bindsto_tests::{Agent, FaultyDisk, XfsMount, faultyfs_bin, privileged};
use serde_json::Value;

const POLL: Duration = Duration::from_millis(20);
/// The default scan interval: "within one scan" is within this.
const SCAN: Duration = Duration::from_secs(1);

/// One critical watch with `extra` keys, the default 1 s scans.
fn config(watch: &Path, extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:9842"
dry_run = true

[detect]
scan_interval = "1s"
fstypes = ["xfs"]

[[watch]]
path = "{}"
critical = true
{extra}
"#,
        watch.display()
    )
}

fn latency(name: &str, d: Duration) {
    eprintln!("LATENCY {name}: {} ms", d.as_millis());
}

fn start_observing(cfg: &str, m: &str) -> Agent {
    let mut agent = Agent::start(cfg);
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            state(s, "mount", m) == "healthy"
        })
        .unwrap_or_else(|e| panic!("the agent never observed {m}: {e}"));
    assert_eq!(agent.healthz().0, 200);
    agent
}

fn detail(s: &Value, m: &str, signal: &str) -> String {
    target(s, "mount", m)
        .and_then(|t| t["reasons"].as_array())
        .and_then(|rs| rs.iter().find(|r| r["signal"] == signal))
        .and_then(|r| r["detail"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The 503 body names the target.
fn assert_503_names(agent: &Agent, m: &str) {
    let (code, body) = agent.healthz();
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).expect("503 body is JSON");
    assert!(
        v["failed"]
            .as_array()
            .is_some_and(|f| f.iter().any(|t| t["id"] == m)),
        "{body}"
    );
}

fn disk() -> FaultyDisk {
    FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("FaultyDisk")
}

#[test]
fn lazy_unmount_of_a_critical_watch_fails_until_mounted_again() {
    let _g = privileged();
    let disk = disk();
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let mut agent = start_observing(&config(xfs.path(), ""), &m);

    let t0 = Instant::now();
    xfs.unmount_lazy().expect("umount -l");
    let took = agent
        .wait_for(Duration::from_secs(5), POLL, |s| {
            state(s, "mount", &m) == "failed" && has_reason(s, "mount", &m, "not_mounted")
        })
        .unwrap_or_else(|e| panic!("no not_mounted after umount -l: {e}"));
    let took = t0.elapsed().max(took);
    latency("lazy_unmount_not_mounted", took);
    assert!(took < SCAN, "took {took:?}, more than one scan");
    assert_503_names(&agent, &m);
    let s = agent.status();
    assert!(
        detail(&s, &m, "not_mounted").contains("unmounted while watched"),
        "{s}"
    );
    let t = target(&s, "mount", &m).expect("target");
    assert!(t["device"].is_null(), "{t}");
    let metrics = agent.metrics();
    assert!(
        metrics.contains(&format!(
            "bindsto_target_healthy{{kind=\"mount\",target=\"{m}\",critical=\"true\"}} 0"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "bindsto_target_reason{{kind=\"mount\",target=\"{m}\",critical=\"true\",signal=\"not_mounted\"}} 1"
        )),
        "{metrics}"
    );

    // Held while unmounted (several scans).
    std::thread::sleep(3 * SCAN);
    assert_503_names(&agent, &m);
    assert!(has_reason(&agent.status(), "mount", &m, "not_mounted"));

    let t0 = Instant::now();
    xfs.mount_again().expect("mount again");
    agent
        .wait_for(Duration::from_secs(5), POLL, |s| {
            state(s, "mount", &m) == "healthy"
                && target(s, "mount", &m).is_some_and(|t| t["device"].is_string())
        })
        .unwrap_or_else(|e| panic!("no recovery after mounting again: {e}"));
    latency("mount_again_recovery", t0.elapsed());
    assert_eq!(agent.healthz().0, 200);
}

#[test]
fn must_be_mounted_on_a_plain_directory_fails_from_the_start() {
    let _g = privileged();
    let dir = tempfile::Builder::new()
        .prefix("bindsto-not-a-mount-")
        .tempdir()
        .expect("tempdir");
    let path = dir.path().canonicalize().expect("canonical");
    let p = path.display().to_string();
    let agent = Agent::start(&config(&path, "must_be_mounted = true"));
    // The first answer already says so.
    assert_503_names(&agent, &p);
    let s = agent.status();
    assert_eq!(state(&s, "mount", &p), "failed", "{s}");
    let d = detail(&s, &p, "not_mounted");
    assert!(
        d.contains("not a mount point") && d.contains("must_be_mounted"),
        "{d}"
    );
    let w = s["watches"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["path"] == p.as_str()))
        .expect("watch in /status");
    assert!(w["not_mounted"].is_string(), "{w}");
}

#[test]
fn remount_read_only_fails_a_critical_watch_and_rw_recovers() {
    let _g = privileged();
    let disk = disk();
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let mut agent = start_observing(&config(xfs.path(), ""), &m);

    let t0 = Instant::now();
    xfs.remount("ro").expect("remount,ro");
    let took = agent
        .wait_for(Duration::from_secs(5), POLL, |s| {
            state(s, "mount", &m) == "failed" && has_reason(s, "mount", &m, "read_only")
        })
        .unwrap_or_else(|e| panic!("no read_only after remount,ro: {e}"));
    let took = t0.elapsed().max(took);
    latency("remount_ro_read_only", took);
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_503_names(&agent, &m);
    let s = agent.status();
    assert!(detail(&s, &m, "read_only").contains("read-only"), "{s}");

    let t0 = Instant::now();
    xfs.remount("rw").expect("remount,rw");
    agent
        .wait_for(Duration::from_secs(5), POLL, |s| {
            state(s, "mount", &m) == "healthy"
        })
        .unwrap_or_else(|e| panic!("no recovery after remount,rw: {e}"));
    latency("remount_rw_recovery", t0.elapsed());
    assert_eq!(agent.healthz().0, 200);
}

#[test]
fn read_only_ok_keeps_a_read_only_watch_healthy() {
    let _g = privileged();
    let disk = disk();
    let xfs = XfsMount::new(&disk).expect("xfs");
    let m = xfs.path().display().to_string();
    let agent = start_observing(&config(xfs.path(), "read_only_ok = true"), &m);
    xfs.remount("ro").expect("remount,ro");
    // Well past the mount table's re-read.
    std::thread::sleep(3 * SCAN);
    let s = agent.status();
    assert_eq!(state(&s, "mount", &m), "healthy", "{s}");
    assert!(!has_reason(&s, "mount", &m, "read_only"), "{s}");
    assert_eq!(agent.healthz().0, 200);
    xfs.remount("rw").expect("remount,rw");
}
