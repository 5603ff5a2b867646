//! Self-test of the privileged fixtures (no agent): faultyfs + loop + XFS in pass, error and
//! hang modes, and cleanup, also after a panic.
//!
//! Needs root. Run: `cargo test -p bindsto-tests -- --test-threads=1`

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bindsto_tests::sys::{loop_backing_file, mounts_under};
use bindsto_tests::{
    BgProcess, FaultyDisk, Mode, XfsMount, block_inflight, faultyfs_bin, loop_devices_backed_by,
    privileged, run_cmd,
};

/// 300 MiB: the smallest XFS mkfs.xfs 6.x makes without test-only environment variables.
const SIZE_MB: u64 = 300;

fn disk() -> FaultyDisk {
    FaultyDisk::with_binary(faultyfs_bin!(), SIZE_MB).expect("FaultyDisk")
}

fn dd(args: &[&str]) -> Command {
    let mut c = Command::new("dd");
    c.args(args);
    c
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn pass_through_mkfs_mount_write_read_back() {
    let _g = privileged();
    let disk = disk();
    assert!(disk.loop_name().starts_with("loop"), "{}", disk.loop_name());
    assert!(
        disk.dev_id().starts_with("7:"),
        "loop devices are major 7: {}",
        disk.dev_id()
    );
    assert_eq!(
        std::fs::metadata(disk.image_path()).unwrap().len(),
        SIZE_MB * 1024 * 1024,
        "the FUSE file has the real size"
    );
    assert_eq!(
        std::fs::read_to_string(format!("/sys/block/{}/size", disk.loop_name()))
            .unwrap()
            .trim(),
        (SIZE_MB * 1024 * 1024 / 512).to_string(),
        "the loop device sees the whole file"
    );
    assert_eq!(
        std::fs::read_to_string(format!("/sys/block/{}/loop/dio", disk.loop_name()))
            .unwrap()
            .trim(),
        "0",
        "loop attached with --direct-io=off"
    );

    let data = pattern(3 * 1024 * 1024 + 123, 7);
    {
        let xfs = XfsMount::new(&disk).expect("mkfs + mount");
        let st = std::fs::metadata(xfs.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let dev = format!("{}:{}", libc::major(st.dev()), libc::minor(st.dev()));
        assert_eq!(dev, disk.dev_id(), "the XFS is on our loop device");

        let mut f = std::fs::File::create(xfs.path().join("buffered")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        // Direct I/O of a few sizes, as XFS and databases issue it.
        let mut d = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(xfs.path().join("direct"))
            .unwrap();
        let block = AlignedBuf::new(&pattern(1 << 20, 9));
        d.write_all(block.as_slice()).unwrap();
        d.sync_all().unwrap();
        drop(d);
        drop(f);
        let before = disk.status().unwrap();
        assert_eq!(before.mode, Mode::Pass);
        assert!(before.writes > 0, "writes reached faultyfs: {before:?}");
        xfs.unmount().expect("unmount");
    }
    // Mount again: the data must come back from the FUSE backing file, not from a cache.
    let reads_before = disk.status().unwrap().reads;
    let xfs = XfsMount::mount_existing(&disk, None).expect("mount again");
    assert_eq!(std::fs::read(xfs.path().join("buffered")).unwrap(), data);
    assert_eq!(
        std::fs::read(xfs.path().join("direct")).unwrap(),
        pattern(1 << 20, 9)
    );
    let after = disk.status().unwrap();
    assert!(
        after.reads > reads_before,
        "reads reached faultyfs: {after:?}"
    );
    // The backing file really holds the XFS.
    let mut magic = [0u8; 4];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(disk.backing_path())
        .unwrap()
        .read_exact_at(&mut magic, 0)
        .unwrap();
    assert_eq!(&magic, b"XFSB");
}

#[test]
fn error_mode_fails_writes_with_eio() {
    let _g = privileged();
    let disk = disk();
    let xfs = XfsMount::new(&disk).expect("mkfs + mount");
    std::fs::write(xfs.path().join("before"), b"fine").unwrap();
    let stat_before = disk.block_stat().expect("/sys/block/<loop>/stat");

    disk.set_mode(Mode::Error).unwrap();
    assert_eq!(disk.status().unwrap().mode, Mode::Error);
    // In a child: a test thread never blocks on I/O to the faulty disk.
    let target = xfs.path().join("after");
    let mut w = BgProcess::sh(&format!(
        "dd if=/dev/urandom of={} bs=64k count=16 conv=fsync",
        target.display()
    ))
    .unwrap();
    let st = w
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("dd did not finish in error mode: {}", w.output()));
    assert!(!st.success(), "write+fsync must fail: {}", w.output());
    assert!(
        w.output().contains("Input/output error"),
        "EIO expected: {}",
        w.output()
    );

    let stat_after = disk.block_stat().unwrap();
    // Failed requests are counted too. XFS may fail on a metadata read (free space btree for
    // the delayed allocation) before any data write is issued, so count both directions.
    assert!(
        stat_after.read_ios + stat_after.write_ios > stat_before.read_ios + stat_before.write_ios,
        "the failed I/O was issued to {}: {stat_before:?} -> {stat_after:?}",
        disk.loop_name()
    );
    let status = disk.status().unwrap();
    assert!(status.eio > 0, "faultyfs answered EIO: {status:?}");

    // Reads fail too (O_DIRECT: not from the page cache), and stay failed until `pass`.
    let dev = disk.loop_dev();
    let r = BgProcess::sh(&format!(
        "dd if={} of=/dev/null bs=4k count=1 skip=1000 iflag=direct",
        dev.display()
    ))
    .unwrap();
    let mut r = r;
    let st = r.wait_timeout(Duration::from_secs(30)).expect("dd read");
    assert!(!st.success(), "direct read must fail: {}", r.output());

    disk.set_mode(Mode::Pass).unwrap();
    let mut r = BgProcess::sh(&format!(
        "dd if={} of=/dev/null bs=4k count=1 skip=1000 iflag=direct",
        dev.display()
    ))
    .unwrap();
    let st = r.wait_timeout(Duration::from_secs(30)).expect("dd read");
    assert!(st.success(), "direct read works again: {}", r.output());
}

#[test]
fn hang_mode_parks_io_until_pass() {
    let _g = privileged();
    let disk = disk();
    let xfs = XfsMount::new(&disk).expect("mkfs + mount");
    assert_eq!(disk.inflight().unwrap(), (0, 0));

    disk.set_mode(Mode::Hang).unwrap();
    let target = xfs.path().join("stuck");
    // dd itself, not `sh -c`: its state is the one that must be D.
    let mut w = BgProcess::spawn(dd(&[
        "if=/dev/zero",
        &format!("of={}", target.display()),
        "bs=1M",
        "count=4",
        "oflag=direct",
    ]))
    .unwrap();
    assert!(
        w.wait_timeout(Duration::from_secs(2)).is_none(),
        "dd finished although the disk hangs: {}",
        w.output()
    );
    let (r, wr) = block_inflight(&disk.loop_name()).unwrap();
    assert!(r + wr > 0, "requests in flight on {}", disk.loop_name());
    let state = w.proc_state();
    assert_eq!(
        state,
        Some('D'),
        "dd sleeps uninterruptibly (wchan {:?})",
        w.wchan()
    );
    let st = disk.status().unwrap();
    assert_eq!(st.mode, Mode::Hang);
    assert!(st.parked > 0, "faultyfs holds the request: {st:?}");

    // The control path works while I/O hangs, and the in-flight count does not drain.
    std::thread::sleep(Duration::from_millis(500));
    let (r2, w2) = disk.inflight().unwrap();
    assert!(r2 + w2 > 0);
    assert!(w.is_running());

    let released_at = Instant::now();
    disk.set_mode(Mode::Pass).unwrap();
    let st = w
        .wait_timeout(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("dd still blocked after pass: {}", w.output()));
    assert!(st.success(), "dd completes after pass: {}", w.output());
    eprintln!("dd finished {:?} after pass", released_at.elapsed());
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 4 << 20);
    let deadline = Instant::now() + Duration::from_secs(5);
    while disk.inflight().unwrap() != (0, 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(disk.inflight().unwrap(), (0, 0), "in-flight drains");
    assert_eq!(disk.status().unwrap().parked, 0);
}

#[test]
fn hang_then_error_fails_parked_requests() {
    let _g = privileged();
    let disk = disk();
    let dev = disk.loop_dev();
    disk.set_mode(Mode::Hang).unwrap();
    let mut r = BgProcess::sh(&format!(
        "dd if={} of=/dev/null bs=4k count=1 iflag=direct",
        dev.display()
    ))
    .unwrap();
    assert!(r.wait_timeout(Duration::from_secs(1)).is_none());
    disk.set_mode(Mode::Error).unwrap();
    let st = r.wait_timeout(Duration::from_secs(20)).expect("released");
    assert!(!st.success(), "parked read failed with EIO: {}", r.output());
}

struct Leftovers {
    workdir: PathBuf,
    image: PathBuf,
    fuse_mnt: PathBuf,
    xfs_mnt: PathBuf,
    loop_name: String,
    faultyfs_pid: u32,
}

fn snapshot(disk: &FaultyDisk, xfs: &XfsMount<'_>) -> Leftovers {
    Leftovers {
        workdir: disk.workdir().to_path_buf(),
        image: disk.image_path().to_path_buf(),
        fuse_mnt: disk.fuse_mountpoint().to_path_buf(),
        xfs_mnt: xfs.path().to_path_buf(),
        loop_name: disk.loop_name(),
        faultyfs_pid: disk.faultyfs_pid(),
    }
}

fn assert_clean(l: &Leftovers) {
    let mounted: Vec<_> = bindsto_tests::sys::mountinfo()
        .into_iter()
        .filter(|m| {
            m.mount_point.starts_with(&l.workdir)
                || m.mount_point == l.xfs_mnt
                || m.mount_point == l.fuse_mnt
        })
        .collect();
    assert!(mounted.is_empty(), "mounts left: {mounted:?}");
    assert!(mounts_under(&l.workdir).is_empty());
    let image = l.image.to_string_lossy().into_owned();
    let out = run_cmd("losetup", &["-j", &image], Duration::from_secs(10)).unwrap();
    assert!(out.trim().is_empty(), "losetup -j {image}: {out}");
    assert!(
        loop_devices_backed_by(&l.image).is_empty(),
        "a loop device still points at {image}"
    );
    assert!(
        loop_backing_file(&l.loop_name).is_none_or(|b| b != l.image),
        "{} still attached to our image",
        l.loop_name
    );
    assert!(!l.workdir.exists(), "{} removed", l.workdir.display());
    assert!(!l.xfs_mnt.exists(), "{} removed", l.xfs_mnt.display());
    // The faultyfs child was reaped: its PID is gone (or reused by something else).
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", l.faultyfs_pid));
    assert!(
        comm.as_deref().map(str::trim).ok() != Some("faultyfs"),
        "faultyfs pid {} still there",
        l.faultyfs_pid
    );
}

#[test]
fn cleanup_leaves_nothing() {
    let _g = privileged();
    let left = {
        let disk = disk();
        let xfs = XfsMount::new(&disk).unwrap();
        std::fs::write(xfs.path().join("f"), b"x").unwrap();
        snapshot(&disk, &xfs)
    };
    assert_clean(&left);
}

#[test]
fn cleanup_after_a_panic_with_io_hanging() {
    let _g = privileged();
    let mut left = None;
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let disk = disk();
        let xfs = XfsMount::new(&disk).unwrap();
        left = Some(snapshot(&disk, &xfs));
        disk.set_mode(Mode::Hang).unwrap();
        let mut w = BgProcess::sh(&format!(
            "dd if=/dev/zero of={} bs=1M count=2 oflag=direct; sync",
            xfs.path().join("g").display()
        ))
        .unwrap();
        assert!(w.wait_timeout(Duration::from_secs(1)).is_none());
        panic!("deliberate panic while a writer hangs in D state");
    }));
    assert!(res.is_err(), "the closure panicked");
    assert_clean(left.as_ref().expect("fixtures were set up"));
}

#[test]
fn cleanup_after_an_error_mode_shutdown() {
    let _g = privileged();
    let left = {
        let disk = disk();
        let xfs = XfsMount::new(&disk).unwrap();
        std::fs::write(xfs.path().join("f"), b"x").unwrap();
        disk.set_mode(Mode::Error).unwrap();
        // Write + sync until the log write fails and XFS shuts down (FAULTS.md recipe 2).
        let mut w = BgProcess::sh(&format!(
            "for i in 1 2 3 4 5; do echo x > {}/h$i; sync; done; stat {}",
            xfs.path().display(),
            xfs.path().display()
        ))
        .unwrap();
        w.wait_timeout(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("writer stuck: {}", w.output()));
        snapshot(&disk, &xfs)
    };
    assert_clean(&left);
}

/// A 4096-aligned buffer for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn new(data: &[u8]) -> Self {
        let layout = std::alloc::Layout::from_size_align(data.len(), 4096).unwrap();
        // SAFETY: non-zero size layout; filled right away.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null());
        // SAFETY: ptr is valid for data.len() bytes and does not overlap data.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, data.len()) };
        Self {
            ptr,
            len: data.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: allocated and initialised for len bytes in new().
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).unwrap();
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

/// `churn::LoopXfs` (XFS on a loop device over a plain image, for mount churn): a panic while
/// mounted leaves no mount and no loop device on the image; the image mounts again after.
#[test]
fn loop_xfs_cleans_up_after_a_panic() {
    use bindsto_tests::churn::{LoopXfs, XfsImage};
    let _g = privileged();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canonical");
    let image = XfsImage::new(&root, "churn", SIZE_MB).expect("image");
    let mp = root.join("m");
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let m = LoopXfs::mount(&image, &mp).expect("mount");
        std::fs::write(m.path().join("f"), b"data").expect("write");
        assert!(!mounts_under(&mp).is_empty(), "mounted");
        assert_eq!(loop_devices_backed_by(image.path()).len(), 1);
        panic!("injected");
    }));
    assert!(res.is_err());
    assert!(
        mounts_under(&mp).is_empty(),
        "still mounted after the panic"
    );
    assert!(
        loop_devices_backed_by(image.path()).is_empty(),
        "loop device left attached"
    );
    let m = LoopXfs::mount(&image, &mp).expect("mount again");
    assert_eq!(
        std::fs::read(m.path().join("f")).expect("read back"),
        b"data"
    );
    m.unmount().expect("unmount");
    assert!(loop_devices_backed_by(image.path()).is_empty());
}
