//! Helpers shared by the HTTP server tests: a server on an ephemeral port, raw requests.
#![allow(dead_code)] // each test binary uses a part

use std::{
    future::Future,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bindsto::{api, api::server as httpd, metrics::Metrics, publish::shared::Shared};

/// A server on an ephemeral port, stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What stops a server: resolves when the test drops it.
pub type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Server {
    /// Runs `serve(listener, stop)` on a runtime of its own, on a listener bound to an
    /// ephemeral port of 127.0.0.1.
    pub fn spawn<F, Fut>(serve: F) -> Server
    where
        F: FnOnce(tokio::net::TcpListener, Stop) -> Fut + Send + 'static,
        Fut: Future<Output = std::io::Result<()>>,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx.send(listener.local_addr().expect("addr")).ok();
                let stop: Stop = Box::pin(async {
                    let _ = stop_rx.await;
                });
                serve(listener, stop).await.expect("serve");
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server address");
        Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The agent's router (healthy, no targets) under `limits`.
    pub fn start(limits: httpd::Limits) -> Server {
        Server::spawn(move |listener, stop| {
            httpd::serve(listener, api::router(healthy()), limits, stop)
        })
    }

    /// Short timeouts so the tests run in seconds; sizes are the defaults.
    pub fn quick() -> Server {
        Server::start(httpd::Limits {
            header_timeout: Duration::from_secs(1),
            ..httpd::Limits::default()
        })
    }
}

/// What the HTTP side reads from an engine that has published nothing: healthy, no targets.
pub fn healthy() -> Arc<Shared> {
    Arc::new(Shared::new(Metrics::new(), SystemTime::now(), true))
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    s
}

/// Sends `req` and returns the status code of the response (0 when the server closed the
/// connection without one).
pub fn raw(addr: SocketAddr, req: &[u8]) -> u16 {
    let mut s = connect(addr);
    // The server may answer and close before reading everything; a reset then is fine.
    let _ = s.write_all(req);
    status_of(&mut s)
}

pub fn status_of(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Reads until EOF or error; returns how long that took, or None if the connection was still
/// open after `limit`.
pub fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).ok();
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .expect("VmRSS in /proc/self/status")
}
