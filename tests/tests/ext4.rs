//! ext4 under the real agent binary: an explicit shutdown fails the mount (`fs_shutdown`), an
//! error that leaves it writable degrades it (`fs_errors`), and an error that aborts the
//! journal (`errors=remount-ro`) fails it. Observed only through `/status`, `/healthz` and
//! `/metrics`; latencies are printed as `LATENCY <test>: <ms>` lines.
//!
//! The errors are raised with ext4's own `/sys/fs/ext4/<dev>/trigger_fs_error` knob: the
//! kernel's `ext4_error()` path (tracepoint, `errors_count`, `errors=` behaviour) without
//! corrupting anything. Needs root.

use std::time::{Duration, Instant};

use bindsto_tests::status::{critical_watch_config, has_reason, state};
use bindsto_tests::{Agent, FaultyDisk, XfsMount, faultyfs_bin, privileged};

const SIZE_MB: u64 = 64;
const POLL: Duration = Duration::from_millis(20);

fn config(watch: &str) -> String {
    critical_watch_config(watch, "fstypes = [\"ext4\"]", "")
}

fn start(m: &str) -> Agent {
    let mut agent = Agent::start(&config(m));
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            state(s, "mount", m) == "healthy"
        })
        .unwrap_or_else(|e| panic!("the agent never observed {m}: {e}"));
    assert!(
        agent
            .metrics()
            .contains("bindsto_probe_attached{probe=\"ext4:ext4_error\"} 1"),
        "ext4 tracepoints not attached"
    );
    agent
}

fn trigger_error(disk: &FaultyDisk) {
    let knob = format!("/sys/fs/ext4/{}/trigger_fs_error", disk.loop_name());
    std::fs::write(&knob, "bindsto test error\n").unwrap_or_else(|e| panic!("{knob}: {e}"));
}

fn latency(name: &str, d: Duration) {
    eprintln!("LATENCY {name}: {} ms", d.as_millis());
}

#[test]
fn ext4_shutdown_fails_the_mount_within_a_second() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), SIZE_MB).expect("FaultyDisk");
    let fs = XfsMount::ext4(&disk, None).expect("ext4");
    let m = fs.path().display().to_string();
    let mut agent = start(&m);
    assert_eq!(agent.healthz().0, 200);

    let t0 = Instant::now();
    fs.shutdown().expect("xfs_io -x -c shutdown on ext4");
    let took = agent
        .wait_for(Duration::from_secs(5), POLL, |s| {
            state(s, "mount", &m) == "failed" && has_reason(s, "mount", &m, "fs_shutdown")
        })
        .unwrap_or_else(|e| panic!("no fs_shutdown: {e}"));
    let took = t0.elapsed().max(took);
    latency("ext4_shutdown", took);
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let (code, body) = agent.healthz();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("ext4_shutdown"), "{body}");
    let metrics = agent.metrics();
    assert!(
        metrics.contains(&format!(
            "bindsto_target_healthy{{kind=\"mount\",target=\"{m}\",critical=\"true\"}} 0"
        )),
        "{metrics}"
    );
}

#[test]
fn ext4_error_that_leaves_it_writable_degrades_the_mount() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), SIZE_MB).expect("FaultyDisk");
    let fs = XfsMount::ext4(&disk, Some("errors=continue")).expect("ext4");
    let m = fs.path().display().to_string();
    let mut agent = start(&m);

    let t0 = Instant::now();
    trigger_error(&disk);
    let took = agent
        .wait_for(Duration::from_secs(5), POLL, |s| {
            state(s, "mount", &m) == "degraded" && has_reason(s, "mount", &m, "fs_errors")
        })
        .unwrap_or_else(|e| panic!("no fs_errors: {e}"));
    latency("ext4_error_degrades", t0.elapsed().max(took));
    // Still writable, so still serving: 200, and it stays degraded, not failed.
    std::fs::write(fs.path().join("after-error"), b"x").expect("ext4 still writable");
    std::thread::sleep(Duration::from_secs(1));
    let s = agent.status();
    assert_eq!(state(&s, "mount", &m), "degraded", "{s:#}");
    assert_eq!(agent.healthz().0, 200);
}

#[test]
fn ext4_error_that_aborts_the_journal_fails_the_mount() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), SIZE_MB).expect("FaultyDisk");
    let fs = XfsMount::ext4(&disk, Some("errors=remount-ro")).expect("ext4");
    let m = fs.path().display().to_string();
    let mut agent = start(&m);

    let t0 = Instant::now();
    trigger_error(&disk);
    let took = agent
        .wait_for(Duration::from_secs(5), POLL, |s| {
            state(s, "mount", &m) == "failed" && has_reason(s, "mount", &m, "fs_shutdown")
        })
        .unwrap_or_else(|e| panic!("no fs_shutdown after the journal abort: {e}"));
    latency("ext4_journal_abort", t0.elapsed().max(took));
    let s = agent.status();
    assert!(has_reason(&s, "mount", &m, "fs_errors"), "{s:#}");
    assert_eq!(agent.healthz().0, 503);
}
