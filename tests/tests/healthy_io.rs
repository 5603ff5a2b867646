//! No false positives: a minute of heavy mixed I/O on a healthy loop device (fio: random and
//! sequential reads and writes, fsync; fstrim for discards) with a short stall threshold must
//! produce no stall, error or failed verdict, on XFS and on ext4, with the write canary on
//! (every second, its fsync queued behind fio's).
//!
//! Needs root. Run: `cargo xtask test`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bindsto_tests::{Agent, BgProcess, privileged, run_cmd};
use serde_json::Value;

/// A loop device over a sparse file on the root filesystem, with XFS or ext4 mounted;
/// everything is undone on drop (only what this fixture created).
struct PlainFs {
    dir: tempfile::TempDir,
    loop_dev: String,
    mnt: PathBuf,
}

impl PlainFs {
    fn new(fstype: &str, size_mb: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bindsto-plain-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let img = dir.path().join("disk.img");
        let f = std::fs::File::create(&img).expect("image");
        f.set_len(size_mb << 20).expect("size");
        let loop_dev = run_cmd(
            "losetup",
            &["--find", "--show", img.to_str().unwrap()],
            Duration::from_secs(20),
        )
        .expect("losetup")
        .trim()
        .to_string();
        let mnt = dir.path().join("mnt");
        let mut me = Self { dir, loop_dev, mnt };
        std::fs::create_dir(&me.mnt).expect("mount point");
        me.mnt = me.mnt.canonicalize().unwrap();
        let (mkfs, force) = match fstype {
            "ext4" => ("mkfs.ext4", "-F"),
            _ => ("mkfs.xfs", "-f"),
        };
        run_cmd(mkfs, &["-q", force, &me.loop_dev], Duration::from_secs(60)).expect("mkfs");
        run_cmd(
            "mount",
            &["-t", fstype, &me.loop_dev, me.mnt.to_str().unwrap()],
            Duration::from_secs(60),
        )
        .expect("mount");
        me
    }

    fn name(&self) -> String {
        Path::new(&self.loop_dev)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for PlainFs {
    fn drop(&mut self) {
        let mounted = bindsto_tests::sys::mounts_at(&self.mnt)
            .iter()
            .any(|e| e.source == self.loop_dev);
        if mounted
            && !Command::new("umount")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success())
        {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        // Detach only if the loop device still points at our image.
        let img = self.dir.path().join("disk.img");
        if bindsto_tests::sys::loop_backing_file(&self.name()).is_some_and(|b| b == img) {
            let _ = Command::new("losetup")
                .arg("-d")
                .arg(&self.loop_dev)
                .status();
        }
    }
}

#[test]
fn sixty_seconds_of_heavy_io_raise_nothing() {
    heavy_io_raises_nothing("xfs");
}

#[test]
fn sixty_seconds_of_heavy_io_on_ext4_raise_nothing() {
    heavy_io_raises_nothing("ext4");
}

fn heavy_io_raises_nothing(fstype: &str) {
    let _g = privileged();
    let fs = PlainFs::new(fstype, 1024);
    let mnt = fs.mnt.display().to_string();
    let name = fs.name();
    let cfg = format!(
        r#"listen = "127.0.0.1:9842"
[detect]
scan_interval = "250ms"
io_stall_after = "2s"
mount_blocked_after = "3s"
io_dead_after = "2s"
fstypes = ["{fstype}"]
[[watch]]
path = "{mnt}"
critical = true
canary = "1s"
"#
    );
    let mut agent = Agent::start(&cfg);
    agent
        .wait_for(Duration::from_secs(10), Duration::from_millis(50), |s| {
            s["devices"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["name"] == name.as_str()))
        })
        .expect("device observed");
    let before = bindsto_tests::block_stat(&name).expect("stat");

    let secs = 60;
    let fio = format!(
        "fio --name=randrw --directory={mnt} --size=128m --rw=randrw --bs=4k --ioengine=psync \
         --direct=1 --fsync=32 --numjobs=2 --time_based --runtime={secs} --group_reporting \
         --name=seq --directory={mnt} --size=256m --rw=rw --bs=1m --ioengine=psync --fsync=8 \
         --time_based --runtime={secs} --output-format=terse >/dev/null"
    );
    let mut load = BgProcess::sh(&fio).expect("fio");
    let mut trim = BgProcess::sh(&format!(
        "end=$(( $(date +%s) + {secs} )); while [ $(date +%s) -lt $end ]; do fstrim {mnt}; sleep 2; done"
    ))
    .expect("fstrim loop");

    let start = Instant::now();
    let mut polls = 0;
    let mut max_inflight = 0;
    while start.elapsed() < Duration::from_secs(secs + 5) {
        let s: Value = agent.status();
        polls += 1;
        for t in s["targets"].as_array().unwrap() {
            assert_eq!(
                t["state"],
                "healthy",
                "false positive after {:?}: {t}",
                start.elapsed()
            );
        }
        for d in s["devices"].as_array().unwrap() {
            assert_eq!(d["io_errors"], 0, "{d}");
            max_inflight = max_inflight.max(d["inflight"].as_u64().unwrap_or(0));
        }
        assert!(
            s["blocked_mount_calls"].as_array().unwrap().is_empty(),
            "{s}"
        );
        if load.try_status().is_some() && trim.try_status().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        load.wait_timeout(Duration::from_secs(30))
            .is_some_and(|s| s.success()),
        "fio failed: {}",
        load.output()
    );
    trim.wait_timeout(Duration::from_secs(10));
    let after = bindsto_tests::block_stat(&name).expect("stat");
    let done =
        (after.read_ios + after.write_ios).saturating_sub(before.read_ios + before.write_ios);
    let metrics = agent.metrics();
    let canaries = |outcome: &str| {
        let want =
            format!("bindsto_canary_writes_total{{target=\"{mnt}\",outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&want)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (written, failed) = (canaries("ok"), canaries("failed") + canaries("timeout"));
    eprintln!(
        "healthy_io {fstype}: {done} requests completed on {name} in {:?}, {polls} status polls, \
         max inflight seen {max_inflight}, canary writes {written} ok {failed} failed",
        start.elapsed()
    );
    // The canary wrote all along, and never failed (a timeout would have failed the watch).
    assert!(written >= 20, "only {written} canary writes:\n{metrics}");
    assert_eq!(failed, 0);
    // The load was real: far more requests than a quiet device does in a minute.
    assert!(done > 10_000, "only {done} requests");
    assert!(!metrics.contains(&format!(
        "bindsto_block_io_errors_total{{device=\"{name}\"}}"
    )));
    assert!(metrics.contains(&format!(
        "bindsto_target_healthy{{kind=\"device\",target=\"{name}\",critical=\"true\"}} 1"
    )));
}
