//! The engine against fixture mountinfo and sysfs trees and synthetic kernel events (no
//! BPF): what each signal does to mounts and devices, and how state follows remounts.

use std::{fs, os::unix::fs::symlink, path::Path};

use nix::errno::Errno;

use super::*;
use crate::{
    config::Watch,
    health::{Signal, State},
    metrics::limits::{self, BoundedTable},
    probes::events::KernelEvent,
    publish::{
        shared::Shared,
        snapshot::StatusPublisher,
        status::{Status, TargetStatus},
    },
    scan::check::{CheckKind, CheckOutcome, Usage},
};

struct Fixture {
    _dir: tempfile::TempDir,
    engine: Engine,
    shared: Arc<Shared>,
    sysfs_root: PathBuf,
    _checks: mpsc::UnboundedReceiver<CheckDone>,
}

const LOOP0: DevId = DevId { major: 7, minor: 0 };

fn mountinfo(mount_id: u32) -> String {
    format!(
        "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
         {mount_id} 22 7:0 / /mnt/data rw - xfs /dev/loop0 rw\n\
         31 22 0:40 / /mnt/nfs rw - nfs4 srv:/x rw\n"
    )
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    let dev_dir = root.join("devices/virtual/block/loop0");
    fs::create_dir_all(&dev_dir).unwrap();
    fs::write(dev_dir.join("dev"), "7:0\n").unwrap();
    fs::write(dev_dir.join("inflight"), "0 0\n").unwrap();
    fs::write(dev_dir.join("stat"), "1 0 8 0 1 0 8 0 0 0 0 0 0 0 0 0 0\n").unwrap();
    fs::create_dir_all(root.join("dev/block")).unwrap();
    symlink(
        "../../devices/virtual/block/loop0",
        root.join("dev/block/7:0"),
    )
    .unwrap();
    let cfg = Config {
        watch: vec![Watch {
            path: "/mnt/data".into(),
            critical: true,
            require_mountpoint: false,
            must_be_mounted: false,
            read_only_ok: false,
            canary: Duration::ZERO,
        }],
        ..Config::default()
    };
    let metrics = Metrics::new();
    let shared = Arc::new(Shared::new(metrics, SystemTime::now(), true));
    let (tx, rx) = mpsc::unbounded_channel();
    let publisher = Arc::new(StatusPublisher::new(Arc::clone(&shared)));
    let mut engine = Engine::new(
        Arc::new(cfg),
        Sysfs::new(&root),
        shared.metrics.clone(),
        publisher,
        tx,
    );
    engine.refresh_topology(&mountinfo(30), &|_| Some(true));
    Fixture {
        _dir: dir,
        engine,
        shared,
        sysfs_root: root,
        _checks: rx,
    }
}

fn target<'a>(s: &'a Status, kind: &str, id: &str) -> &'a TargetStatus {
    s.targets
        .iter()
        .find(|t| t.kind == kind && t.id == id)
        .unwrap_or_else(|| panic!("no {kind} {id} in {:?}", s.targets))
}

fn status(f: &Fixture) -> Arc<Status> {
    f.engine.publish();
    f.shared.status()
}

#[test]
fn subdirectory_bind_mounts_of_observed_filesystems_are_not_targets() {
    let mut f = fixture();
    let with_binds = format!(
        "{}40 22 254:0 /var/lib/bindsto /var/lib/bindsto rw - ext4 /dev/vda rw\n\
         41 22 7:1 /sub /mnt/only-bind rw - xfs /dev/loop1 rw\n",
        mountinfo(30)
    );
    f.engine.refresh_topology(&with_binds, &|_| Some(true));
    let s = status(&f);
    assert!(
        !s.targets.iter().any(|t| t.id == "/var/lib/bindsto"),
        "{:?}",
        s.targets
    );
    // A filesystem seen only through a bind mount is still observed.
    target(&s, "mount", "/mnt/only-bind");
    target(&s, "mount", "/");
}

#[test]
fn observes_configured_fstypes_and_the_devices_below() {
    let f = fixture();
    let s = status(&f);
    assert!(target(&s, "mount", "/mnt/data").critical);
    assert!(!target(&s, "mount", "/").critical);
    assert_eq!(
        target(&s, "mount", "/mnt/nfs").fstype.as_deref(),
        Some("nfs4")
    );
    assert!(
        target(&s, "device", "loop0").critical,
        "a critical mount's disk is critical"
    );
    assert_eq!(s.devices.len(), 1);
    assert!(s.healthy);
}

#[test]
fn shutdown_event_fails_only_its_mount() {
    let mut f = fixture();
    f.engine.on_event(&KernelEvent::XfsShutdown {
        dev: LOOP0,
        ptag: 0x40,
        flags: 0x6,
        ts_ns: 0,
    });
    let s = status(&f);
    let t = target(&s, "mount", "/mnt/data");
    assert_eq!(t.state, State::Failed);
    assert_eq!(t.reasons[0].signal, Signal::XfsShutdown);
    assert!(t.reasons[0].detail.contains("log_io|force_umount"));
    assert_eq!(target(&s, "mount", "/").state, State::Healthy);
    assert!(!s.healthy);
    assert_eq!(s.failed_critical().count(), 1);
}

// Errors start a check of the mounts on the disk, which needs a runtime.
#[tokio::test]
async fn block_errors_degrade_disk_and_mounts_on_it() {
    let mut f = fixture();
    f.engine.on_event(&KernelEvent::BlockError {
        dev: LOOP0,
        error: -5,
        sector: 8,
        ts_ns: 0,
    });
    let s = status(&f);
    assert_eq!(target(&s, "device", "loop0").state, State::Degraded);
    assert_eq!(target(&s, "mount", "/mnt/data").state, State::Degraded);
    assert_eq!(s.devices[0].io_errors, 1);
    assert!(s.healthy, "errors alone degrade, they do not fail");
}

fn check_of(mount_id: u32, statx: Result<(), Errno>, usage: Option<Usage>) -> CheckDone {
    CheckDone {
        mount_point: "/mnt/data".into(),
        mount_id,
        kind: CheckKind::Mount(CheckOutcome {
            statx,
            usage,
            elapsed: Duration::ZERO,
        }),
    }
}

#[test]
fn statx_eio_confirms_a_shutdown_and_remount_starts_fresh() {
    let mut f = fixture();
    f.engine.on_check_done(check_of(30, Err(Errno::EIO), None));
    assert_eq!(
        target(&status(&f), "mount", "/mnt/data").state,
        State::Failed
    );
    // A result for an older mount at the same place is ignored.
    f.engine.refresh_topology(&mountinfo(40), &|_| Some(true));
    f.engine.on_check_done(check_of(30, Err(Errno::EIO), None));
    let s = status(&f);
    assert_eq!(target(&s, "mount", "/mnt/data").state, State::Healthy);
    assert!(s.healthy);
}

fn shutdowns_counted(f: &Fixture) -> u64 {
    f.engine
        .metrics
        .xfs_shutdowns
        .get_or_create(&metrics::device_labels("loop0"))
        .get()
}

fn shutdown_event() -> KernelEvent {
    KernelEvent::XfsShutdown {
        dev: LOOP0,
        ptag: 0x40,
        flags: 0x6,
        ts_ns: 0,
    }
}

#[test]
fn a_shutdown_seen_by_check_and_event_counts_once_in_either_order() {
    // The check first (EIO before the event is read), then the event.
    let mut f = fixture();
    f.engine.on_check_done(check_of(30, Err(Errno::EIO), None));
    assert_eq!(
        shutdowns_counted(&f),
        0,
        "a confirmation waits for its event"
    );
    f.engine.on_event(&shutdown_event());
    f.engine.count_unevented_shutdowns(u64::MAX);
    assert_eq!(shutdowns_counted(&f), 1);
    // The event first, then the check.
    let mut f = fixture();
    f.engine.on_event(&shutdown_event());
    f.engine.on_check_done(check_of(30, Err(Errno::EIO), None));
    f.engine.count_unevented_shutdowns(u64::MAX);
    assert_eq!(shutdowns_counted(&f), 1);
    // A reload keeps the mount (same id): still one.
    f.engine.set_config(Arc::clone(&f.engine.cfg));
    f.engine.refresh_topology(&mountinfo(30), &|_| Some(true));
    f.engine.on_check_done(check_of(30, Err(Errno::EIO), None));
    f.engine.count_unevented_shutdowns(u64::MAX);
    assert_eq!(shutdowns_counted(&f), 1);
    // A remount whose shutdown event is read before the mount table shows it: two in all.
    f.engine.on_event(&shutdown_event());
    f.engine.refresh_topology(&mountinfo(40), &|_| Some(true));
    f.engine.on_check_done(check_of(40, Err(Errno::EIO), None));
    f.engine.count_unevented_shutdowns(u64::MAX);
    assert_eq!(shutdowns_counted(&f), 2);
    // A confirmation whose event never comes counts once its grace is over.
    f.engine.refresh_topology(&mountinfo(50), &|_| Some(true));
    f.engine.on_check_done(check_of(50, Err(Errno::EIO), None));
    f.engine.count_unevented_shutdowns(0);
    assert_eq!(shutdowns_counted(&f), 2);
    f.engine.count_unevented_shutdowns(u64::MAX);
    assert_eq!(shutdowns_counted(&f), 3);
}

#[test]
fn full_filesystem_degrades_and_clears() {
    let mut f = fixture();
    let check = |space: f64| {
        let usage = Usage {
            space_used_percent: space,
            inodes_used_percent: Some(1.0),
        };
        check_of(30, Ok(()), Some(usage))
    };
    f.engine.on_check_done(check(97.0));
    assert_eq!(
        target(&status(&f), "mount", "/mnt/data").state,
        State::Degraded
    );
    f.engine.on_check_done(check(50.0));
    assert_eq!(
        target(&status(&f), "mount", "/mnt/data").state,
        State::Healthy
    );
}

/// Check results are never read here, so every check stays outstanding, as hung ones do.
#[tokio::test]
async fn outstanding_checks_are_one_per_mount_and_capped_across_remounts() {
    let mut f = fixture();
    let skipped = |f: &Fixture| {
        f.engine
            .metrics
            .mount_checks
            .get_or_create(&metrics::OutcomeLabels {
                outcome: "skipped".into(),
            })
            .get()
    };
    // Three mounts (/, /mnt/data, /mnt/nfs): one check each, however many scans.
    for _ in 0..5 {
        f.engine.scan(None);
    }
    assert_eq!(f.engine.checks_outstanding, 3);
    assert_eq!(skipped(&f), 0);
    // /mnt/data comes back as a new mount while its check hangs: a second one starts for
    // the new mount, up to the cap; past it, checks wait and are counted.
    f.engine.checks_max = 4;
    f.engine.refresh_topology(&mountinfo(40), &|_| Some(true));
    f.engine.scan(None);
    assert_eq!(f.engine.checks_outstanding, 4);
    f.engine.refresh_topology(&mountinfo(50), &|_| Some(true));
    f.engine.scan(None);
    f.engine.scan(None);
    assert_eq!(f.engine.checks_outstanding, 4);
    assert_eq!(skipped(&f), 2);
    // An answer, even a stale one, frees a slot: the waiting mount is checked.
    f.engine.on_check_done(check_of(30, Ok(()), None));
    f.engine.scan(None);
    assert_eq!(f.engine.checks_outstanding, 4);
    assert_eq!(skipped(&f), 2);
    assert!(
        f.engine.mounts[Path::new("/mnt/data")]
            .check_since
            .is_some()
    );
}

#[tokio::test]
async fn sysfs_inflight_without_progress_is_a_stall_only_after_the_threshold() {
    let mut f = fixture();
    let dir = f.sysfs_root.join("devices/virtual/block/loop0");
    fs::write(dir.join("inflight"), "0 1\n").unwrap();
    f.engine.scan(None);
    assert_eq!(target(&status(&f), "device", "loop0").state, State::Healthy);
    // Pretend the threshold passed: the same counters, still in flight.
    let mut cfg = (*f.engine.cfg).clone();
    cfg.detect.io_stall_after = Duration::from_millis(1);
    f.engine.cfg = Arc::new(cfg);
    std::thread::sleep(Duration::from_millis(5));
    f.engine.scan(None);
    let s = status(&f);
    assert_eq!(target(&s, "device", "loop0").state, State::Failed);
    assert_eq!(target(&s, "mount", "/mnt/data").state, State::Failed);
    assert!(s.devices[0].stalled);
    // A completion is progress: the stall clears.
    fs::write(dir.join("stat"), "2 0 16 0 1 0 8 0 1 0 0 0 0 0 0 0 0\n").unwrap();
    f.engine.scan(None);
    let s = status(&f);
    assert_eq!(target(&s, "device", "loop0").state, State::Healthy);
    assert_eq!(target(&s, "mount", "/mnt/data").state, State::Healthy);
}

// Scans start mount checks, which need a runtime.
#[tokio::test]
async fn ext4_errors_degrade_from_the_counters_and_a_shutdown_fails() {
    let mut f = fixture();
    // A mount id no real mount of the test process has: the confirmation reads mountinfo.
    let ext4 = mountinfo(4_000_000).replace("xfs /dev/loop0", "ext4 /dev/loop0");
    f.engine.refresh_topology(&ext4, &|_| Some(true));
    let counters = f.sysfs_root.join("fs/ext4/loop0");
    fs::create_dir_all(&counters).unwrap();
    fs::write(counters.join("errors_count"), "3\n").unwrap();
    f.engine.scan(None);
    // Errors of earlier mounts are the baseline.
    assert_eq!(
        target(&status(&f), "mount", "/mnt/data").state,
        State::Healthy
    );
    fs::write(counters.join("errors_count"), "4\n").unwrap();
    fs::write(counters.join("last_error_func"), "ext4_lookup\n").unwrap();
    fs::write(counters.join("last_error_time"), "1796164560\n").unwrap();
    f.engine.scan(None);
    let s = status(&f);
    let t = target(&s, "mount", "/mnt/data");
    assert_eq!(t.state, State::Degraded);
    assert_eq!(t.reasons[0].signal, Signal::FsErrors);
    assert!(
        t.reasons[0].detail.contains("ext4_lookup"),
        "{:?}",
        t.reasons
    );
    assert!(s.healthy, "errors that leave ext4 writable only degrade");

    f.engine.on_event(&KernelEvent::Ext4Shutdown {
        dev: LOOP0,
        flags: 2,
        ts_ns: 0,
    });
    let s = status(&f);
    let t = target(&s, "mount", "/mnt/data");
    assert_eq!(t.state, State::Failed);
    assert!(
        t.reasons
            .iter()
            .any(|r| r.signal == Signal::FsShutdown && r.detail.contains("nologflush"))
    );
    assert!(!s.healthy);
}

// Scans start mount checks, which need a runtime.
#[tokio::test]
async fn ext4_stopped_before_the_agent_started_fails_from_the_super_options() {
    let mut f = fixture();
    let ext4 = mountinfo(4_000_001).replace("xfs /dev/loop0 rw", "ext4 /dev/loop0 rw,shutdown");
    f.engine.refresh_topology(&ext4, &|_| Some(true));
    f.engine.scan(None);
    let s = status(&f);
    let t = target(&s, "mount", "/mnt/data");
    assert_eq!(
        (t.state, t.reasons[0].signal),
        (State::Failed, Signal::FsShutdown)
    );
}

mod bindsto;
mod bounded;
