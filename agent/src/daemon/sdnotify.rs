//! systemd's notification protocol (sd_notify(3)), spoken directly over the `NOTIFY_SOCKET`
//! unix datagram socket: one datagram of newline-separated `KEY=value` assignments. No
//! libsystemd, so the binary stays static-friendly and the protocol stays visible here.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op, so the agent runs the same way
//! from a shell, a test or a unit.

use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
    path::PathBuf,
    time::Duration,
};

/// Where to send notifications, read from the environment systemd sets up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an abstract name (@...)")]
    BadAddress(String),
    #[error("sending to NOTIFY_SOCKET {addr}: {source}")]
    Send { addr: String, source: io::Error },
}

/// A handle on the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    label: String,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` from the environment.
    /// `Ok(None)` when not started by a service manager.
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let path = path.to_string_lossy().into_owned();
        let watchdog = watchdog_from(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Notifier::connect(&path, watchdog).map(Some)
    }

    /// A notifier for an explicit socket address (`/path` or `@abstract`).
    pub fn connect(path: &str, watchdog: Option<Duration>) -> Result<Notifier, NotifyError> {
        let addr = parse_address(path)?;
        let socket = UnixDatagram::unbound().map_err(|source| NotifyError::Send {
            addr: path.to_string(),
            source,
        })?;
        // A datagram to a receiver that stopped reading (a stuck PID 1) waits for room in its
        // queue; a notification that cannot go now is dropped instead (EAGAIN, logged), so
        // the task sending it never stalls.
        socket
            .set_nonblocking(true)
            .map_err(|source| NotifyError::Send {
                addr: path.to_string(),
                source,
            })?;
        Ok(Notifier {
            socket,
            addr,
            label: path.to_string(),
            watchdog,
        })
    }

    /// The watchdog interval systemd expects pings within, if it enabled one for us.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one message (several `KEY=value` lines). A datagram is atomic: systemd sees all
    /// assignments or none.
    pub fn send(&self, state: &str) -> Result<(), NotifyError> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(|_| ())
            .map_err(|source| NotifyError::Send {
                addr: self.label.clone(),
                source,
            })
    }

    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    pub fn watchdog_ping(&self) -> Result<(), NotifyError> {
        self.send("WATCHDOG=1")
    }

    /// Tells systemd a reload started; `MONOTONIC_USEC` lets newer systemd (notify-reload)
    /// match it to the signal it sent. Must be followed by [`Notifier::ready`].
    pub fn reloading(&self) -> Result<(), NotifyError> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| {
                u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                    + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000
            })
            .unwrap_or(0);
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={now}"))
    }

    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1")
    }
}

/// `WATCHDOG_USEC` applies to us only when `WATCHDOG_PID` is unset or is our pid (a child
/// that inherited the environment must not think the watchdog is its own).
fn watchdog_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

fn parse_address(path: &str) -> Result<SocketAddr, NotifyError> {
    let bad = || NotifyError::BadAddress(path.to_string());
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad())
    } else if path.starts_with('/') {
        SocketAddr::from_pathname(PathBuf::from(path)).map_err(|_| bad())
    } else {
        Err(bad())
    }
}

/// STATUS= is a single line; a newline would start a new assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_arrive_on_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).expect("bind");
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = Notifier::connect(path.to_str().expect("utf8"), None).expect("connect");
        n.ready("watching 3 targets\nall healthy").expect("ready");
        assert_eq!(
            recv(&server),
            "READY=1\nSTATUS=watching 3 targets all healthy"
        );
        n.watchdog_ping().expect("ping");
        assert_eq!(recv(&server), "WATCHDOG=1");
        n.reloading().expect("reloading");
        let msg = recv(&server);
        assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");
        let usec: u64 = msg.rsplit('=').next().unwrap_or("").parse().expect("usec");
        assert!(usec > 0);
        n.stopping().expect("stopping");
        assert_eq!(recv(&server), "STOPPING=1");
    }

    #[test]
    fn messages_arrive_on_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("bindsto-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let server = UnixDatagram::bind_addr(&addr).expect("bind");
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = Notifier::connect(&format!("@{name}"), None).expect("connect");
        n.status("ok").expect("status");
        assert_eq!(recv(&server), "STATUS=ok");
    }

    #[test]
    fn a_vanished_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gone");
        let n = Notifier::connect(path.to_str().expect("utf8"), None).expect("connect");
        let err = n.watchdog_ping().expect_err("nobody listens");
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn a_receiver_that_stops_reading_never_blocks_the_sender() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let _server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::connect(path.to_str().expect("utf8"), None).expect("connect");
        let (tx, rx) = std::sync::mpsc::channel();
        // On its own thread: a blocking send would hang here, and the test fails instead.
        std::thread::spawn(move || {
            let full = (0..100_000).find_map(|_| n.watchdog_ping().err());
            let _ = tx.send(full.map(|e| e.to_string()));
        });
        let err = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the sender blocked on a full queue")
            .expect("the queue never filled up");
        assert!(err.contains("notify"), "{err}");
    }

    #[test]
    fn bad_addresses_are_rejected() {
        assert!(matches!(
            Notifier::connect("relative/path", None),
            Err(NotifyError::BadAddress(_))
        ));
    }

    #[test]
    fn watchdog_applies_only_to_its_pid() {
        assert_eq!(
            watchdog_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_from(None, None, 7), None);
    }
}
