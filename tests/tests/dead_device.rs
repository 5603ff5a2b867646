//! A device that only fails (`detect.io_dead_after`): `io_errors` fails the device and its
//! mounts once every request has failed for that long, while a device where every second
//! request fails (and the others succeed) stays degraded. The real agent binary on an ext4
//! over the FUSE-backed faulty disk, observed only through `/status` and `/healthz`; latencies
//! are printed as `LATENCY <test>: <ms>` lines.
//!
//! The flaky and dead reads are O_DIRECT reads of the loop device itself, so the filesystem
//! does no I/O of its own and the device's requests are exactly the reader's. Needs root.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::{FileExt, OpenOptionsExt},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bindsto_tests::status::{critical_watch_config, has_reason, reasons, state};
use bindsto_tests::{Agent, FaultyDisk, Mode, XfsMount, faultyfs_bin, privileged};

const POLL: Duration = Duration::from_millis(50);
const DEAD_AFTER: Duration = Duration::from_secs(2);
const SCAN: Duration = Duration::from_millis(250);

fn config(watch: &str) -> String {
    critical_watch_config(watch, "io_dead_after = \"2s\"\nfstypes = [\"ext4\"]", "")
}

/// Reads 4 KiB blocks of the raw device with O_DIRECT, round and round, counting answers.
struct Reader {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    fn start(dev: &std::path::Path, blocks: u64) -> Reader {
        let f: File = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(dev)
            .expect("open the loop device O_DIRECT");
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, o, e) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let thread = std::thread::spawn(move || {
            // O_DIRECT wants an aligned buffer.
            let mut raw = vec![0u8; 8192];
            let off = raw.as_ptr().align_offset(4096);
            let buf = &mut raw[off..off + 4096];
            let mut i = 0;
            while !s.load(Ordering::SeqCst) {
                match f.read_at(buf, (i % blocks) * 4096) {
                    Ok(_) => o.fetch_add(1, Ordering::SeqCst),
                    Err(_) => e.fetch_add(1, Ordering::SeqCst),
                };
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Reader {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(m: &str, dev: &str) -> Agent {
    let mut agent = Agent::start(&config(m));
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            state(s, "mount", m) == "healthy" && state(s, "device", dev) == "healthy"
        })
        .unwrap_or_else(|e| panic!("the agent never observed {m} on {dev}: {e}"));
    agent
}

#[test]
fn every_second_request_failing_degrades_only_failing_all_fails_and_one_success_revives() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 64).expect("FaultyDisk");
    // No background writes of ext4's own (inode-table zeroing) during the test.
    let fs = XfsMount::ext4(&disk, Some("errors=continue,noinit_itable")).expect("ext4");
    let m = fs.path().display().to_string();
    let dev = disk.loop_name();
    let mut agent = start(&m, &dev);

    // Every second request fails: degraded, never failed, for 5 times io_dead_after.
    disk.set_mode(Mode::Flaky).expect("flaky");
    let reader = Reader::start(&disk.loop_dev(), 64 * 256);
    let until = Instant::now() + DEAD_AFTER * 5;
    let mut degraded = false;
    while Instant::now() < until {
        let s = agent.status();
        let (d, mt) = (state(&s, "device", &dev), state(&s, "mount", &m));
        assert_ne!(
            d,
            "failed",
            "flaky device failed: {}",
            reasons(&s, "device", &dev)
        );
        assert_ne!(mt, "failed", "mount failed: {}", reasons(&s, "mount", &m));
        degraded |= d == "degraded" && has_reason(&s, "device", &dev, "io_errors");
        assert_eq!(agent.healthz().0, 200);
        std::thread::sleep(POLL);
    }
    let (ok, failed) = reader.counts();
    eprintln!("flaky reads: {ok} ok, {failed} failed");
    assert!(
        ok > 100 && failed > 100,
        "not flaky: {ok} ok, {failed} failed"
    );
    assert!(degraded, "never degraded: {:#}", agent.status());

    // Every request fails: the device and the mount fail within io_dead_after and two scans.
    let t0 = Instant::now();
    disk.set_mode(Mode::Error).expect("error");
    agent
        .wait_for(Duration::from_secs(15), POLL, |s| {
            state(s, "device", &dev) == "failed" && state(s, "mount", &m) == "failed"
        })
        .unwrap_or_else(|e| panic!("a dead device did not fail: {e}\n{}", agent.log()));
    let took = t0.elapsed();
    eprintln!(
        "LATENCY dead_device: {} ms (io_dead_after {} ms, scan {} ms)",
        took.as_millis(),
        DEAD_AFTER.as_millis(),
        SCAN.as_millis()
    );
    let s = agent.status();
    let why = reasons(&s, "device", &dev);
    assert!(
        why.contains("io_errors") && why.contains("none completed successfully"),
        "{why}"
    );
    assert!(
        reasons(&s, "mount", &m).contains("none completed successfully"),
        "{}",
        reasons(&s, "mount", &m)
    );
    assert_eq!(agent.healthz().0, 503);
    // Not before io_dead_after: the first error needs that long to prove the device dead.
    assert!(took >= DEAD_AFTER, "failed after {took:?}");
    // Slack for a shared 2-core machine on top of io_dead_after plus two scans.
    assert!(
        took <= DEAD_AFTER + SCAN * 2 + Duration::from_secs(2),
        "{took:?}"
    );

    // The disk answers again: successes revive it (degraded while the errors are recent).
    disk.set_mode(Mode::Pass).expect("pass");
    agent
        .wait_for(Duration::from_secs(10), POLL, |s| {
            state(s, "device", &dev) == "degraded" && state(s, "mount", &m) == "degraded"
        })
        .unwrap_or_else(|e| panic!("no revival: {e}\n{:#}", agent.status()));
    assert_eq!(agent.healthz().0, 200);
    drop(reader);
}

#[test]
fn ext4_with_writes_on_a_dead_disk_fails_the_mount() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 64).expect("FaultyDisk");
    let fs = XfsMount::ext4(&disk, Some("errors=continue,noinit_itable")).expect("ext4");
    let m = fs.path().display().to_string();
    let dev = disk.loop_name();
    let mut agent = start(&m, &dev);

    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let file = fs.path().join("writes");
    let writer = std::thread::spawn(move || {
        while !s2.load(Ordering::SeqCst) {
            if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&file) {
                let _ = std::io::Write::write_all(&mut f, &[7u8; 4096]);
                let _ = f.sync_all();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    disk.set_mode(Mode::Error).expect("error");
    agent
        .wait_for(Duration::from_secs(15), POLL, |s| {
            state(s, "mount", &m) == "failed"
        })
        .unwrap_or_else(|e| panic!("the mount did not fail: {e}\n{}", agent.log()));
    let took = t0.elapsed();
    let s = agent.status();
    let why = reasons(&s, "mount", &m);
    eprintln!(
        "LATENCY ext4_dead_disk_writes: {} ms ({why})",
        took.as_millis()
    );
    // Whichever comes first: the dead device, the journal abort or the read-only remount.
    assert!(
        ["none completed successfully", "fs_shutdown", "read_only"]
            .iter()
            .any(|w| why.contains(w)),
        "{why}"
    );
    assert!(
        took <= DEAD_AFTER + SCAN * 2 + Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(agent.healthz().0, 503);
    stop.store(true, Ordering::SeqCst);
    let _ = writer.join();
}
