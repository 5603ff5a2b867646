//! The HTTP server loop under the API: hyper's HTTP/1 connection with limits, because the
//! endpoints face the network and `axum::serve` has none. Oversized heads get 431, bodies
//! (the API is GET-only) over [`Limits::max_body`] get 413, slow or idle clients are cut off,
//! and the number of open connections is capped so a flood cannot exhaust memory or fds.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{Request, Response, StatusCode, header},
    response::IntoResponse,
};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tower::ServiceExt;
use tracing::{debug, warn};

/// The server's limits; [`Limits::default`] is what the agent serves with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, in bytes (hyper's read buffer; 8 KiB is its minimum).
    pub max_head: usize,
    /// Number of request headers.
    pub max_headers: usize,
    /// Request body bytes; the endpoints take none, so anything but a token body is refused.
    pub max_body: usize,
    /// Time for a client to send a whole request head, from connect or from the previous
    /// response (so it is also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Hard cap on a connection's life: one that is still open is asked to close after its
    /// current response, and dropped [`SHUTDOWN_GRACE`] later (a client that never reads).
    pub max_connection_age: Duration,
    /// Open connections; past this a new one is closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 8 * 1024,
            max_headers: 64,
            max_body: 1024,
            header_timeout: Duration::from_secs(5),
            max_connection_age: Duration::from_secs(60),
            max_connections: 256,
        }
    }
}

/// How long connections get to finish when the server stops or a connection is too old.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` within `limits` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow with every one served.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            // Out of fds or a connection reset before accept: back off briefly, keep serving.
            Err(e) => {
                warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            debug!(%peer, max = limits.max_connections, "HTTP connection limit reached; closing");
            drop(stream);
            continue;
        };
        let router = router.clone();
        let stop = stop_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            connection(stream, router, limits, stop).await;
        });
    }
    let _ = stop_tx.send(true);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        conns.abort_all();
    }
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    router: Router,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let router = router.clone();
        async move {
            Ok::<_, Infallible>(handle(req, router, limits.max_body, limits.header_timeout).await)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head.max(8192))
        .max_headers(limits.max_headers);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let age = tokio::time::sleep(limits.max_connection_age);
    tokio::pin!(age);
    tokio::select! {
        r = conn.as_mut() => return log_end(r),
        () = &mut age => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    // Too old, or the server is stopping: finish the response in hand, then close; a client
    // that does not read it is dropped after the grace period.
    conn.as_mut().graceful_shutdown();
    if let Ok(r) = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
        log_end(r);
    }
}

fn log_end(r: Result<(), hyper::Error>) {
    // Timeouts, resets and malformed requests are the client's problem, answered already.
    if let Err(e) = r {
        debug!(error = %e, "HTTP connection ended");
    }
}

/// The body check in front of the router: GET endpoints take no body, so a declared or
/// streamed body past `max_body` is refused without buffering it.
async fn handle(
    req: Request<Incoming>,
    router: Router,
    max_body: usize,
    body_timeout: Duration,
) -> Response<Body> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, max_body);
    }
    let (parts, body) = req.into_parts();
    // A body trickled byte by byte must not hold the connection: same deadline as the head.
    let collect = Limited::new(body, max_body).collect();
    let body = match tokio::time::timeout(body_timeout, collect).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, max_body),
        Err(_) => return refuse(StatusCode::REQUEST_TIMEOUT, max_body),
    };
    let req = Request::from_parts(parts, Body::from(body));
    match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

fn refuse(code: StatusCode, max_body: usize) -> Response<Body> {
    let msg = if code == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request body over {max_body} bytes\n")
    } else {
        "request body too slow\n".to_string()
    };
    let mut r = (code, msg).into_response();
    // The unread rest of the body makes the connection unusable.
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}
