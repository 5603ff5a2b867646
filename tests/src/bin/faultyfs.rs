//! `faultyfs`: a one-file FUSE filesystem for fault injection under a loop device.
//!
//! It serves a single regular file, `disk.img`, whose bytes live in a real file
//! (`<backing-dir>/disk.img`). A control socket that lives OUTSIDE the FUSE mount accepts one
//! command per line and answers one line:
//!
//! | command  | effect                                                                        |
//! |----------|-------------------------------------------------------------------------------|
//! | `pass`   | pass-through; requests parked by `hang` are served now, in arrival order      |
//! | `error`  | every read/write/fsync/fallocate answers `EIO` (parked requests too)          |
//! | `hang`   | every read/write/fsync/fallocate is parked (reply kept, answered later)      |
//! | `status` | `ok mode=.. parked=.. reads=.. writes=.. fsyncs=.. eio=.. size=..`            |
//! | `quit`   | release parked requests (served), unmount, exit                               |
//!
//! Metadata operations (lookup, getattr, setattr, open, flush, release, statfs, readdir) always
//! pass, so `losetup` can attach and detach the file in every mode. The FUSE loop is never
//! blocked: a parked request is a closure owning the reply object, run when the mode changes.
//!
//! Usage:
//!   faultyfs --workdir DIR
//!       (= --backing-dir DIR/backing --mountpoint DIR/mnt --control DIR/ctl.sock)
//!   faultyfs --backing-dir DIR --mountpoint DIR --control SOCKET [--size-mb N] [--page-cache]
//!
//! By default files are opened with `FOPEN_DIRECT_IO` so every read and write of the loop
//! driver reaches this process (no FUSE page cache serving reads behind our back).
//! SIGTERM, SIGINT and SIGHUP behave like `quit`.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, Session, SessionACL, TimeOrNow,
    WriteFlags,
};

const FILE_NAME: &str = "disk.img";
const FILE_INO: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Error,
    Hang,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Pass => "pass",
            Mode::Error => "error",
            Mode::Hang => "hang",
        }
    }
}

/// What to do with a data request: serve it against the backing file or fail it with EIO.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Disposition {
    Serve,
    Fail,
}

/// A data request with its reply object, runnable now or later (when parked).
type Job = Box<dyn FnOnce(&Shared, Disposition) + Send>;

struct State {
    mode: Mode,
    parked: VecDeque<Job>,
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    fsyncs: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    eio: AtomicU64,
    parked_total: AtomicU64,
}

struct Shared {
    backing: File,
    state: Mutex<State>,
    counters: Counters,
    direct_io: bool,
    verbose: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` now (pass/error) or parks it (hang). Parking happens under the state lock,
    /// so a concurrent mode switch never loses a request.
    fn submit(&self, what: &str, job: Job) {
        let mut st = self.lock();
        match st.mode {
            Mode::Pass => {
                drop(st);
                job(self, Disposition::Serve);
            }
            Mode::Error => {
                drop(st);
                job(self, Disposition::Fail);
            }
            Mode::Hang => {
                if self.verbose {
                    eprintln!("faultyfs: parking {what}");
                }
                self.counters.parked_total.fetch_add(1, Ordering::Relaxed);
                st.parked.push_back(job);
            }
        }
    }

    /// Switches mode. Leaving `hang` runs the parked jobs while still holding the lock, so a
    /// request arriving after the switch is served only after every parked one.
    fn set_mode(&self, mode: Mode) -> usize {
        let mut st = self.lock();
        let old = st.mode;
        st.mode = mode;
        let mut released = 0;
        if mode != Mode::Hang {
            let disposition = if mode == Mode::Pass {
                Disposition::Serve
            } else {
                Disposition::Fail
            };
            while let Some(job) = st.parked.pop_front() {
                job(self, disposition);
                released += 1;
            }
        }
        drop(st);
        eprintln!(
            "faultyfs: {} mode {} -> {} (released {released})",
            timestamp(),
            old.name(),
            mode.name()
        );
        released
    }

    fn status_line(&self) -> String {
        let st = self.lock();
        let c = &self.counters;
        let size = self.backing.metadata().map(|m| m.len()).unwrap_or(0);
        format!(
            "ok mode={} parked={} parked_total={} reads={} writes={} fsyncs={} read_bytes={} \
             written_bytes={} eio={} size={} direct_io={}",
            st.mode.name(),
            st.parked.len(),
            c.parked_total.load(Ordering::Relaxed),
            c.reads.load(Ordering::Relaxed),
            c.writes.load(Ordering::Relaxed),
            c.fsyncs.load(Ordering::Relaxed),
            c.read_bytes.load(Ordering::Relaxed),
            c.written_bytes.load(Ordering::Relaxed),
            c.eio.load(Ordering::Relaxed),
            size,
            self.direct_io,
        )
    }

    fn file_attr(&self) -> std::io::Result<FileAttr> {
        let m = self.backing.metadata()?;
        let t = |secs: i64, nsecs: i64| {
            if secs >= 0 {
                UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
            } else {
                UNIX_EPOCH
            }
        };
        Ok(FileAttr {
            ino: FILE_INO,
            size: m.len(),
            blocks: m.blocks(),
            atime: t(m.atime(), m.atime_nsec()),
            mtime: t(m.mtime(), m.mtime_nsec()),
            ctime: t(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0o644,
            nlink: 1,
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn eio(&self) -> Errno {
        self.counters.eio.fetch_add(1, Ordering::Relaxed);
        Errno::EIO
    }
}

fn dir_attr() -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo::ROOT,
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind: FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

struct FaultyFs {
    shared: Arc<Shared>,
}

impl Filesystem for FaultyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT || name != FILE_NAME {
            reply.error(Errno::ENOENT);
            return;
        }
        match self.shared.file_attr() {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            reply.attr(&TTL, &dir_attr());
        } else if ino == FILE_INO {
            match self.shared.file_attr() {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(errno_of(&e)),
            }
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino == INodeNo::ROOT {
            reply.attr(&TTL, &dir_attr());
            return;
        }
        if ino != FILE_INO {
            reply.error(Errno::ENOENT);
            return;
        }
        // Size changes are metadata: they pass in every mode (mode, owner and times are
        // accepted and ignored).
        if let Some(size) = size {
            if let Err(e) = self.shared.backing.set_len(size) {
                reply.error(errno_of(&e));
                return;
            }
            eprintln!("faultyfs: {} size set to {size}", timestamp());
        }
        match self.shared.file_attr() {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        let flags = if self.shared.direct_io {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(0), flags);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        if self.shared.verbose {
            eprintln!("faultyfs: read off={offset} len={size}");
        }
        self.shared.submit(
            "read",
            Box::new(move |sh: &Shared, d| {
                if d == Disposition::Fail {
                    reply.error(sh.eio());
                    return;
                }
                let mut buf = vec![0u8; size as usize];
                match read_full_at(&sh.backing, &mut buf, offset) {
                    Ok(n) => {
                        sh.counters.reads.fetch_add(1, Ordering::Relaxed);
                        sh.counters
                            .read_bytes
                            .fetch_add(n as u64, Ordering::Relaxed);
                        reply.data(&buf[..n]);
                    }
                    Err(e) => reply.error(errno_of(&e)),
                }
            }),
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        if self.shared.verbose {
            eprintln!("faultyfs: write off={offset} len={}", data.len());
        }
        // The request buffer is reused by the FUSE loop: a parked write owns a copy.
        let data = data.to_vec();
        self.shared.submit(
            "write",
            Box::new(move |sh: &Shared, d| {
                if d == Disposition::Fail {
                    reply.error(sh.eio());
                    return;
                }
                match sh.backing.write_all_at(&data, offset) {
                    Ok(()) => {
                        sh.counters.writes.fetch_add(1, Ordering::Relaxed);
                        sh.counters
                            .written_bytes
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        reply.written(data.len() as u32);
                    }
                    Err(e) => reply.error(errno_of(&e)),
                }
            }),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) must never hang or fail: nothing is buffered here.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino != FILE_INO {
            reply.ok();
            return;
        }
        self.shared.submit(
            "fsync",
            Box::new(move |sh: &Shared, d| {
                if d == Disposition::Fail {
                    reply.error(sh.eio());
                    return;
                }
                let res = if datasync {
                    sh.backing.sync_data()
                } else {
                    sh.backing.sync_all()
                };
                sh.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                match res {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno_of(&e)),
                }
            }),
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        // Discards of the loop device arrive here (punch hole / zero range).
        self.shared.submit(
            "fallocate",
            Box::new(move |sh: &Shared, d| {
                if d == Disposition::Fail {
                    reply.error(sh.eio());
                    return;
                }
                // SAFETY: plain syscall on an fd we own.
                let rc = unsafe {
                    libc::fallocate(
                        sh.backing.as_raw_fd(),
                        mode,
                        offset as libc::off_t,
                        length as libc::off_t,
                    )
                };
                if rc == 0 {
                    reply.ok();
                } else {
                    reply.error(errno_of(&std::io::Error::last_os_error()));
                }
            }),
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, FILE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let size = self.shared.backing.metadata().map(|m| m.len()).unwrap_or(0);
        let blocks = size.div_ceil(4096);
        reply.statfs(blocks, 0, 0, 1, 0, 4096, 255, 4096);
    }
}

fn timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

struct Args {
    backing_dir: PathBuf,
    mountpoint: PathBuf,
    control: PathBuf,
    size_mb: Option<u64>,
    direct_io: bool,
}

fn usage() -> &'static str {
    "usage: faultyfs --workdir DIR\n       \
     faultyfs --backing-dir DIR --mountpoint DIR --control SOCKET [--size-mb N] [--page-cache]\n\
     control commands (one per line on SOCKET): pass | error | hang | status | quit"
}

fn parse_args() -> anyhow::Result<Args> {
    let mut workdir: Option<PathBuf> = None;
    let mut backing_dir = None;
    let mut mountpoint = None;
    let mut control = None;
    let mut size_mb = None;
    let mut direct_io = true;
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        let arg = arg.to_string_lossy().into_owned();
        let mut value = |name: &str| {
            it.next()
                .map(PathBuf::from)
                .with_context(|| format!("{name} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--workdir" => workdir = Some(value("--workdir")?),
            "--backing-dir" => backing_dir = Some(value("--backing-dir")?),
            "--mountpoint" => mountpoint = Some(value("--mountpoint")?),
            "--control" => control = Some(value("--control")?),
            "--size-mb" => {
                let v = value("--size-mb")?;
                size_mb = Some(
                    v.to_string_lossy()
                        .parse()
                        .context("--size-mb takes an integer")?,
                );
            }
            "--page-cache" => direct_io = false,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    if let Some(w) = workdir {
        backing_dir.get_or_insert_with(|| w.join("backing"));
        mountpoint.get_or_insert_with(|| w.join("mnt"));
        control.get_or_insert_with(|| w.join("ctl.sock"));
    }
    Ok(Args {
        backing_dir: backing_dir.with_context(|| format!("--backing-dir missing\n{}", usage()))?,
        mountpoint: mountpoint.with_context(|| format!("--mountpoint missing\n{}", usage()))?,
        control: control.with_context(|| format!("--control missing\n{}", usage()))?,
        size_mb,
        direct_io,
    })
}

enum Stop {
    Quit(Option<UnixStream>),
    Signal(i32),
}

fn handle_client(shared: &Shared, stream: UnixStream, stop: &mpsc::Sender<Stop>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut out = stream;
    let reader = BufReader::new(read_half);
    for line in reader.lines() {
        let Ok(line) = line else { return };
        let cmd = line.trim();
        if cmd.is_empty() {
            continue;
        }
        let answer = match cmd {
            "pass" => format!("ok mode=pass released={}", shared.set_mode(Mode::Pass)),
            "error" => format!("ok mode=error released={}", shared.set_mode(Mode::Error)),
            "hang" => {
                shared.set_mode(Mode::Hang);
                "ok mode=hang".to_string()
            }
            "status" => shared.status_line(),
            "ping" => "ok pong".to_string(),
            "quit" => {
                // The answer is written by the main thread once unmounted.
                let _ = stop.send(Stop::Quit(Some(out)));
                return;
            }
            other => format!("err unknown command {other:?} (pass|error|hang|status|quit)"),
        };
        if writeln!(out, "{answer}").is_err() {
            return;
        }
    }
}

fn control_server(listener: UnixListener, shared: Arc<Shared>, stop: mpsc::Sender<Stop>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let shared = shared.clone();
                let stop = stop.clone();
                std::thread::spawn(move || handle_client(&shared, stream, &stop));
            }
            Err(e) => eprintln!("faultyfs: control accept: {e}"),
        }
    }
}

fn is_mountpoint(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(|mp| bindsto_tests::sys::unescape_mountinfo(mp) == want)
            .unwrap_or(false)
    })
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("faultyfs: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let verbose = std::env::var_os("FAULTYFS_VERBOSE").is_some();

    // Block the stop signals in every thread; one thread waits for them.
    let mut sigs = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        sigs.add(s);
    }
    sigs.thread_block().context("blocking signals")?;

    std::fs::create_dir_all(&args.backing_dir)
        .with_context(|| format!("creating {}", args.backing_dir.display()))?;
    std::fs::create_dir_all(&args.mountpoint)
        .with_context(|| format!("creating {}", args.mountpoint.display()))?;
    let mountpoint = args.mountpoint.canonicalize()?;
    let backing_path = args.backing_dir.join(FILE_NAME);
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&backing_path)
        .with_context(|| format!("opening {}", backing_path.display()))?;
    if let Some(mb) = args.size_mb {
        backing.set_len(mb * 1024 * 1024)?;
    }

    let shared = Arc::new(Shared {
        backing,
        state: Mutex::new(State {
            mode: Mode::Pass,
            parked: VecDeque::new(),
        }),
        counters: Counters::default(),
        direct_io: args.direct_io,
        verbose,
    });

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("faultyfs".into()),
        MountOption::Subtype("faultyfs".into()),
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(2);
    let session = Session::new(
        FaultyFs {
            shared: shared.clone(),
        },
        &mountpoint,
        &config,
    )
    .with_context(|| format!("mounting FUSE at {}", mountpoint.display()))?;
    let bg = session.spawn().context("starting the FUSE session")?;

    let (stop_tx, stop_rx) = mpsc::channel::<Stop>();
    let _ = std::fs::remove_file(&args.control);
    let listener = UnixListener::bind(&args.control)
        .with_context(|| format!("binding control socket {}", args.control.display()))?;
    {
        let shared = shared.clone();
        let stop = stop_tx.clone();
        std::thread::spawn(move || control_server(listener, shared, stop));
    }
    {
        let stop = stop_tx.clone();
        std::thread::spawn(move || {
            if let Ok(sig) = sigs.wait() {
                let _ = stop.send(Stop::Signal(sig as i32));
            }
        });
    }
    eprintln!(
        "faultyfs: {} serving {} at {} (backing {}, control {}, direct_io {}), pid {}",
        timestamp(),
        FILE_NAME,
        mountpoint.display(),
        backing_path.display(),
        args.control.display(),
        args.direct_io,
        std::process::id()
    );

    // Wait for quit, a signal, or the session ending by itself (external unmount).
    let stop = loop {
        match stop_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(stop) => break Some(stop),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if bg.guard.is_finished() {
                    break None;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
        }
    };
    let mut requester = match stop {
        Some(Stop::Quit(s)) => {
            eprintln!("faultyfs: {} quit requested", timestamp());
            s
        }
        Some(Stop::Signal(sig)) => {
            eprintln!("faultyfs: {} signal {sig}, quitting", timestamp());
            None
        }
        None => {
            eprintln!("faultyfs: {} session ended (unmounted)", timestamp());
            None
        }
    };

    // Release everything parked: the writers behind it get served, not failed.
    shared.set_mode(Mode::Pass);
    let _ = std::fs::remove_file(&args.control);

    let mut lazy = false;
    if is_mountpoint(&mountpoint) {
        match nix::mount::umount2(&mountpoint, nix::mount::MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EBUSY) => {
                // Still in use (a loop device still attached?): detach it from the namespace;
                // the connection lives on until its last user goes away.
                eprintln!(
                    "faultyfs: {} {} busy, lazy unmount",
                    timestamp(),
                    mountpoint.display()
                );
                lazy = true;
                if let Err(e) = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH) {
                    eprintln!("faultyfs: lazy unmount failed: {e}");
                }
            }
            Err(e) => eprintln!("faultyfs: unmount {} failed: {e}", mountpoint.display()),
        }
    }
    // Wait for the session to see the connection close; a lazily detached mount still in use
    // keeps it alive, in which case we give the users a grace period and then exit anyway.
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(bg.join());
    });
    let grace = if lazy {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(10)
    };
    match done_rx.recv_timeout(grace) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("faultyfs: session ended with {e}"),
        Err(_) => eprintln!("faultyfs: session still referenced; exiting anyway"),
    }
    if let Some(s) = requester.as_mut() {
        let _ = writeln!(s, "ok quit");
    }
    eprintln!("faultyfs: {} exit", timestamp());
    Ok(())
}
