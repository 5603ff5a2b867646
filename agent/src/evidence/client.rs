//! The agent's side of the privileged reader (see [`super::helper`]): starts it and asks it,
//! waiting no longer than the capture's deadline and skipping late answers by request id.

use std::{
    io::{Read, Write},
    os::fd::AsRawFd,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Instant,
};

use super::helper::{Request, Response, SUBCOMMAND};

/// The agent's side: the running helper and its pipes.
pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    pending: Vec<u8>,
    next_id: u64,
    /// Set once the helper is gone: every later capture says why.
    dead: Option<String>,
}

impl Helper {
    /// Starts the helper from this executable. Call it while the process still holds
    /// `CAP_SYS_ADMIN` (the child cannot gain what the parent has dropped).
    pub fn spawn() -> std::io::Result<Helper> {
        let exe = std::fs::read_link("/proc/self/exe")?;
        let mut child = Command::new(exe)
            .arg(SUBCOMMAND)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("helper pipes missing"));
        };
        Ok(Helper {
            child,
            stdin,
            stdout,
            pending: Vec::new(),
            next_id: 0,
            dead: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks for stacks and log lines; waits until `deadline` at most.
    pub fn ask(
        &mut self,
        tids: Vec<u32>,
        kmsg_since_us: Option<u64>,
        deadline: Instant,
    ) -> Result<Response, String> {
        if let Some(why) = &self.dead {
            return Err(why.clone());
        }
        self.next_id += 1;
        let id = self.next_id;
        let since_unix = kmsg_since_us.map(|since| {
            let ago = crate::scan::monotonic_ns() / 1_000
                - since.min(crate::scan::monotonic_ns() / 1_000);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            now.as_secs().saturating_sub(ago / 1_000_000)
        });
        let req = Request {
            id,
            tids,
            kmsg_since_us,
            since_unix,
        };
        let mut line = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
        line.push(b'\n');
        if let Err(e) = self
            .stdin
            .write_all(&line)
            .and_then(|()| self.stdin.flush())
        {
            return Err(self.died(format!("cannot write to it: {e}")));
        }
        loop {
            while let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=nl).collect();
                match serde_json::from_slice::<Response>(&line) {
                    Ok(r) if r.id == id => return Ok(r),
                    // A late answer to an earlier request.
                    Ok(_) => {}
                    Err(e) => return Err(format!("unreadable answer: {e}")),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no answer within the capture budget".into());
            }
            let mut pfd = libc::pollfd {
                fd: self.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {e}"));
            }
            if r == 0 {
                continue;
            }
            let mut buf = [0u8; 65536];
            match self.stdout.read(&mut buf) {
                Ok(0) => return Err(self.died("it exited".into())),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.died(format!("cannot read from it: {e}"))),
            }
        }
    }

    fn died(&mut self, why: String) -> String {
        let status = self.child.try_wait().ok().flatten();
        let why = match status {
            Some(s) => format!("the privileged reader is gone ({why}; {s})"),
            None => format!("the privileged reader is gone ({why})"),
        };
        self.dead = Some(why.clone());
        why
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Ours, by its PID: closing stdin ends it; kill in case a read hangs.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
