//! `faultyfs`: a one-file FUSE filesystem for fault injection under a loop device. The file
//! system itself is the agent library's `bindsto::gameday::faultfile` (which `bindsto gameday`
//! runs in-process); this binary adds a control socket and runs it as a separate process.
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
//! | `flaky`  | every second read/write/fsync/fallocate answers `EIO`, the others pass        |
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

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::{Context, bail};
use bindsto::gameday::faultfile::{
    FILE_NAME, FaultFile, FaultOptions as Options, FaultShared as Shared, Mode, log_mode_change,
    timestamp,
};

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
     control commands (one per line on SOCKET): pass | error | flaky | hang | status | quit"
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
        let switch = |mode: Mode| {
            let old = shared.mode();
            let released = shared.set_mode(mode);
            if !shared.verbose() {
                log_mode_change(old, mode, released);
            }
            released
        };
        let answer = match cmd {
            "pass" => format!("ok mode=pass released={}", switch(Mode::Pass)),
            "error" => format!("ok mode=error released={}", switch(Mode::Error)),
            "flaky" => format!("ok mode=flaky released={}", switch(Mode::Flaky)),
            "hang" => {
                switch(Mode::Hang);
                "ok mode=hang".to_string()
            }
            "status" => shared.status_line(),
            "ping" => "ok pong".to_string(),
            "quit" => {
                // The answer is written by the main thread once unmounted.
                let _ = stop.send(Stop::Quit(Some(out)));
                return;
            }
            other => format!("err unknown command {other:?} (pass|error|flaky|hang|status|quit)"),
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
    if let Some(mb) = args.size_mb {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&backing_path)
            .and_then(|f| f.set_len(mb * 1024 * 1024))
            .with_context(|| format!("sizing {}", backing_path.display()))?;
    }
    let mut fault = FaultFile::mount(
        &backing_path,
        &mountpoint,
        Options {
            direct_io: args.direct_io,
            verbose,
        },
    )?;
    let shared = fault.shared();

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
                if fault.session_ended() {
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

    // Release everything parked (the writers behind it get served, not failed), unmount
    // (lazily when a loop device still holds the file) and wait for the FUSE threads.
    let _ = std::fs::remove_file(&args.control);
    fault.unmount(Duration::from_secs(10));
    if let Some(s) = requester.as_mut() {
        let _ = writeln!(s, "ok quit");
    }
    eprintln!("faultyfs: {} exit", timestamp());
    Ok(())
}
