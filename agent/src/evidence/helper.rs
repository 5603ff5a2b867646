//! The privileged reader: kernel stacks and the kernel log, in a child process.
//!
//! Stacks come from the BPF task iterator (`stacks`) for every task in uninterruptible sleep,
//! and from `/proc/<tid>/stack` for the rest (readable with `CAP_SYS_ADMIN`, and for a task
//! whose capabilities are not a subset of the reader's only with `CAP_SYS_PTRACE`);
//! `/dev/kmsg` needs `CAP_SYSLOG` (or `CAP_SYS_ADMIN` on older kernels) while
//! `kernel.dmesg_restrict` is set, and the journal stands in where it is closed. The agent
//! drops `CAP_SYS_ADMIN` after attaching, so before that it starts `bindsto evidence-helper`:
//! a child that keeps only what it reads with, reads nothing but requests (numeric tids) from
//! its stdin and writes stacks and log lines to its stdout, one JSON line per request. It
//! dies with its parent (`PR_SET_PDEATHSIG`).
//!
//! Reading a stack from `/proc` takes the task's exec lock, which a task stuck in `execve` on
//! dead storage holds: each request's `/proc` stacks are read on their own thread and the
//! answer goes out at the deadline with whatever was read; at most [`MAX_STUCK`] such threads
//! may hang before the helper refuses them. The agent's side (`client`) waits with its own
//! deadline and skips late answers by request id.

use std::{
    collections::HashMap,
    io::{BufRead, Read, Write},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// Frames kept per stack.
pub const MAX_FRAMES: usize = 48;
/// Stacks per request.
pub const MAX_TIDS: usize = 64;
/// Kernel log lines per request (the first and the newest are kept), and bytes per line.
pub const MAX_KMSG_LINES: usize = 200;
const MAX_KMSG_LINE: usize = 400;
/// Iterator runs per request while a task it found asleep has no stack yet.
const ITER_TRIES: usize = 3;
/// Stack threads that may hang before the helper refuses stacks.
const MAX_STUCK: usize = 4;
/// The helper's own budget per request; the agent waits a little longer.
const HELPER_BUDGET: Duration = Duration::from_millis(1200);
/// The hidden subcommand the agent starts.
pub const SUBCOMMAND: &str = "evidence-helper";

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub tids: Vec<u32>,
    /// Kernel log records from this CLOCK_MONOTONIC time on (microseconds); none without it.
    pub kmsg_since_us: Option<u64>,
    /// The same moment as a Unix time in seconds, for the journal when `/dev/kmsg` is closed.
    #[serde(default)]
    pub since_unix: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub stacks: Vec<StackRead>,
    /// Why stacks were not read at all (the whole request).
    pub stacks_error: Option<String>,
    pub kmsg: Vec<String>,
    pub kmsg_omitted: usize,
    pub kmsg_error: Option<String>,
    /// Why the stack iterator is not used (then stacks come from `/proc`).
    #[serde(default)]
    pub iter_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackRead {
    pub tid: u32,
    pub frames: Vec<String>,
    pub error: Option<String>,
    /// `bpf_iter` or `proc`.
    #[serde(default)]
    pub source: Option<String>,
    /// Time since the task last ran (the iterator's reading), seconds.
    #[serde(default)]
    pub waited_seconds: Option<f64>,
}

impl StackRead {
    fn empty(tid: u32) -> Self {
        Self {
            tid,
            frames: Vec::new(),
            error: None,
            source: None,
            waited_seconds: None,
        }
    }
}

/// The child side: serves requests until stdin closes. Capabilities are dropped by the caller.
pub fn serve() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments: SIGKILL when the parent dies.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let stuck = Arc::new(AtomicUsize::new(0));
    let mut iter = super::stacks::StackIter::load();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let Ok(req) = serde_json::from_str::<Request>(&line) else {
            continue;
        };
        let resp = answer(&req, &stuck, &mut iter);
        let mut text = serde_json::to_vec(&resp).map_err(std::io::Error::other)?;
        text.push(b'\n');
        out.write_all(&text)?;
        out.flush()?;
    }
    Ok(())
}

fn answer(
    req: &Request,
    stuck: &Arc<AtomicUsize>,
    iter: &mut Result<super::stacks::StackIter, String>,
) -> Response {
    let deadline = Instant::now() + HELPER_BUDGET;
    let mut resp = Response {
        id: req.id,
        ..Response::default()
    };
    let mut tids: Vec<u32> = req.tids.iter().copied().take(MAX_TIDS).collect();
    let mut walk_failed: HashMap<u32, i64> = HashMap::new();
    if !tids.is_empty() {
        // The iterator first: it reads every D-state task without a per-task permission
        // check and takes no task lock; what it did not list (a task not in D state now)
        // is read from /proc below.
        for _ in 0..ITER_TRIES {
            match iter.as_mut().map(super::stacks::StackIter::read) {
                Ok(Ok(found)) => {
                    tids.retain(|tid| match found.get(tid) {
                        Some(t) if !t.frames.is_empty() => {
                            walk_failed.remove(tid);
                            resp.stacks.push(StackRead {
                                tid: *tid,
                                frames: t.frames.clone(),
                                error: None,
                                source: Some("bpf_iter".into()),
                                waited_seconds: t.waited_ns.map(|ns| ns as f64 / 1e9),
                            });
                            false
                        }
                        Some(t) => {
                            walk_failed.insert(*tid, t.walk_error.unwrap_or(0));
                            true
                        }
                        None => true,
                    });
                }
                Ok(Err(e)) => resp.iter_error = Some(e),
                Err(e) => resp.iter_error = Some(e.clone()),
            }
            // Again only for a task the iterator saw asleep but could not walk (the kernel's
            // per-CPU stack buffer was busy): a task it did not list is not in D state.
            if resp.iter_error.is_some() || !tids.iter().any(|t| walk_failed.contains_key(t)) {
                break;
            }
        }
    }
    if !tids.is_empty() {
        if stuck.load(Ordering::SeqCst) >= MAX_STUCK {
            resp.stacks_error = Some(format!(
                "{MAX_STUCK} earlier stack reads have not returned (a task holds its exec lock); not reading more"
            ));
        } else {
            let mut read = read_stacks(tids, deadline, stuck);
            let iter_ran = resp.iter_error.is_none();
            for s in &mut read {
                let Some(e) = s.error.as_mut() else { continue };
                if let Some(code) = walk_failed.get(&s.tid) {
                    *e = format!(
                        "the stack iterator found the task in uninterruptible sleep but could not walk its stack ({ITER_TRIES} tries, error {code}); {e}"
                    );
                } else if iter_ran {
                    *e = format!(
                        "the task is not in uninterruptible sleep (so the stack iterator skipped it); {e}"
                    );
                }
            }
            resp.stacks.extend(read);
        }
    }
    if let Some(since) = req.kmsg_since_us {
        let read = read_kmsg(since)
            .map_err(|e| format!("/dev/kmsg: {e}"))
            .or_else(|kmsg| {
                // Newer kernels open /dev/kmsg to CAP_SYSLOG only (no CAP_SYS_ADMIN fallback), and
                // the unit's ProtectKernelLogs= hides it: the journal keeps the same lines.
                let unix = req.since_unix.ok_or(kmsg.clone())?;
                read_journal(unix, deadline).map_err(|j| format!("{kmsg}; journal: {j}"))
            });
        match read {
            Ok((lines, omitted)) => {
                resp.kmsg = lines;
                resp.kmsg_omitted = omitted;
            }
            Err(e) => resp.kmsg_error = Some(e),
        }
    }
    resp
}

fn read_stacks(tids: Vec<u32>, deadline: Instant, stuck: &Arc<AtomicUsize>) -> Vec<StackRead> {
    let (tx, rx) = mpsc::channel();
    let count = Arc::clone(stuck);
    count.fetch_add(1, Ordering::SeqCst);
    let todo = tids.clone();
    let spawned = std::thread::Builder::new()
        .name("stacks".into())
        .spawn(move || {
            for tid in todo {
                if tx.send(read_stack(tid)).is_err() {
                    break;
                }
            }
            count.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        stuck.fetch_sub(1, Ordering::SeqCst);
        return tids
            .into_iter()
            .map(|tid| StackRead {
                error: Some(format!("no thread to read it: {e}")),
                ..StackRead::empty(tid)
            })
            .collect();
    }
    let mut got = Vec::new();
    while got.len() < tids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(s) => got.push(s),
            Err(_) => break,
        }
    }
    for tid in tids.into_iter().skip(got.len()) {
        got.push(StackRead {
            error: Some("not read within the capture budget (an earlier read hangs)".into()),
            ..StackRead::empty(tid)
        });
    }
    got
}

fn read_stack(tid: u32) -> StackRead {
    match std::fs::read_to_string(format!("/proc/{tid}/stack")) {
        Ok(text) => StackRead {
            frames: parse_stack(&text),
            source: Some("proc".into()),
            ..StackRead::empty(tid)
        },
        Err(e) => StackRead {
            error: Some(stack_error(&e)),
            ..StackRead::empty(tid)
        },
    }
}

fn stack_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH) => "the task has exited".into(),
        Some(libc::EACCES | libc::EPERM) => format!(
            "{e}: /proc/<tid>/stack of a task with capabilities the reader lacks (a root daemon, a kernel thread) needs CAP_SYS_PTRACE, which the unit's bounding set does not grant"
        ),
        _ => e.to_string(),
    }
}

/// `[<0>] xfs_buf_lock+0x3c/0x120 [xfs]` -> `xfs_buf_lock+0x3c/0x120 [xfs]`.
pub fn parse_stack(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| match l.split_once("] ") {
            Some((_, frame)) => frame.trim(),
            None => l.trim(),
        })
        .filter(|f| !f.is_empty())
        .take(MAX_FRAMES)
        .map(str::to_owned)
        .collect()
}

/// Every kernel log record from `since_us` on, as `[seconds] message`; the first quarter and
/// the newest of the cap are kept when there are more.
fn read_kmsg(since_us: u64) -> std::io::Result<(Vec<String>, usize)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 8192];
    let mut rounds = 0usize;
    loop {
        rounds += 1;
        // A flood cannot keep the helper busy: the ring holds at most a few thousand records.
        if rounds > 100_000 {
            break;
        }
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(line) = parse_kmsg(&buf[..n], since_us) {
                    lines.push(line);
                }
            }
            // Records overwritten while reading: go on with the next.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(keep_ends(lines, MAX_KMSG_LINES))
}

/// The kernel's lines of the journal since `since_unix`, by `journalctl -k` under `deadline`.
fn read_journal(since_unix: u64, deadline: Instant) -> Result<(Vec<String>, usize), String> {
    let exe = ["/usr/bin/journalctl", "/bin/journalctl"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or("journalctl not installed")?;
    let mut child = Command::new(exe)
        .args([
            "-k",
            "-q",
            "--no-pager",
            "-o",
            "short-monotonic",
            "-n",
            "2000",
        ])
        .arg(format!("--since=@{since_unix}"))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let Some(out) = child.stdout.take() else {
        return Err("no pipe".into());
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.take(4 << 20).read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let left = deadline.saturating_duration_since(Instant::now());
    let text = rx.recv_timeout(left);
    // Ours, by its PID: a journal on a hanging disk must not keep it.
    let _ = child.kill();
    let _ = child.wait();
    let text = text.map_err(|_| "journalctl did not answer within the capture budget")?;
    let lines = text
        .lines()
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control())
                .take(MAX_KMSG_LINE)
                .collect()
        })
        .collect();
    Ok(keep_ends(lines, MAX_KMSG_LINES))
}

/// One `/dev/kmsg` record (`prio,seq,usec,flags;message\n KEY=value...`) at or after `since_us`.
pub fn parse_kmsg(record: &[u8], since_us: u64) -> Option<String> {
    let text = String::from_utf8_lossy(record);
    let (head, rest) = text.split_once(';')?;
    let usec: u64 = head.split(',').nth(2)?.parse().ok()?;
    if usec < since_us {
        return None;
    }
    let msg = rest.lines().next().unwrap_or_default();
    let mut msg: String = msg.chars().filter(|c| !c.is_control()).collect();
    if msg.len() > MAX_KMSG_LINE {
        let mut cut = MAX_KMSG_LINE;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
    }
    Some(format!(
        "[{:>5}.{:06}] {msg}",
        usec / 1_000_000,
        usec % 1_000_000
    ))
}

/// At most `max` items: the first quarter and the newest rest; returns how many were left out.
pub fn keep_ends<T>(mut v: Vec<T>, max: usize) -> (Vec<T>, usize) {
    if v.len() <= max {
        return (v, 0);
    }
    let head = max / 4;
    let omitted = v.len() - max;
    v.drain(head..head + omitted);
    (v, omitted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_frames_lose_their_prefix_and_are_capped() {
        let text = "[<0>] xfs_buf_lock+0x3c/0x120 [xfs]\n[<0>] __x64_sys_mount+0x1a/0x30\n\n";
        assert_eq!(
            parse_stack(text),
            vec!["xfs_buf_lock+0x3c/0x120 [xfs]", "__x64_sys_mount+0x1a/0x30"]
        );
        let long = "[<0>] f+0x1/0x2\n".repeat(100);
        assert_eq!(parse_stack(&long).len(), MAX_FRAMES);
    }

    #[test]
    fn kmsg_records_are_filtered_by_time_and_stripped_of_their_dictionary() {
        let rec = b"3,1234,5000000,-;XFS (loop3): log I/O error -5\n SUBSYSTEM=block\n";
        assert_eq!(
            parse_kmsg(rec, 4_000_000).as_deref(),
            Some("[    5.000000] XFS (loop3): log I/O error -5")
        );
        assert_eq!(parse_kmsg(rec, 6_000_000), None);
        assert_eq!(parse_kmsg(b"garbage", 0), None);
        let long = format!("6,1,1,-;{}", "é".repeat(500));
        assert!(parse_kmsg(long.as_bytes(), 0).unwrap().len() < MAX_KMSG_LINE + 20);
    }

    #[test]
    fn keep_ends_keeps_the_first_quarter_and_the_newest() {
        let (v, omitted) = keep_ends((0..10).collect::<Vec<_>>(), 4);
        assert_eq!(v, vec![0, 7, 8, 9]);
        assert_eq!(omitted, 6);
        let (v, omitted) = keep_ends(vec![1, 2], 4);
        assert_eq!((v, omitted), (vec![1, 2], 0));
    }
}
