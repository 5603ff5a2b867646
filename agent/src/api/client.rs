//! The project's one HTTP/1.1 client: `bindsto status` and GameDay ask a running agent
//! ([`get`]), the ladder reads IMDSv2 and the ECS agent's introspection API ([`request`]), and
//! the test suite and the bench use [`get`] too. Plain HTTP over a fresh `std::net` socket, one
//! request per connection, every step under one deadline, so a request costs what a socket
//! costs and a silent peer cannot hold the caller past its timeout. The AWS calls themselves go
//! through the SDK.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

/// [`request`] refuses larger answers: both link-local APIs answer with a few hundred bytes.
const MAX_RESPONSE: usize = 1 << 20;
/// [`get`] reads the agent's own `/status` and `/metrics`, which grow with the number of
/// targets: a bound against a runaway peer, not a size anyone expects.
const MAX_GET_RESPONSE: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {0:?}: expected http://HOST[:PORT][/PATH]")]
    Url(String),
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: malformed response")]
    Malformed { url: String },
    #[error("{url}: HTTP {code}: {body}")]
    Status {
        url: String,
        code: u16,
        body: String,
    },
}

/// One request: where it goes and what it says.
struct Call<'a> {
    url: &'a str,
    host: &'a str,
    method: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    timeout: Duration,
    limit: usize,
}

/// Blocking `GET path` at `addr` -> (status code, body), whatever the code. Handles
/// `Content-Length`, chunked and read-to-EOF bodies.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    let url = format!("http://{addr}{path}");
    let host = addr.to_string();
    let call = Call {
        url: &url,
        host: &host,
        method: "GET",
        path,
        headers: &[],
        timeout,
        limit: MAX_GET_RESPONSE,
    };
    let raw = call.exchange(&[addr])?;
    parse_reply(&url, &raw)
}

/// Blocking `method url` with `headers`; the body of a 2xx answer, other codes are errors.
pub fn request_blocking(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<String, HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(url.into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(HttpError::Url(url.into()));
    }
    let target = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|source| HttpError::Io {
            url: url.into(),
            source,
        })?
        .collect();
    let call = Call {
        url,
        host: authority,
        method,
        path,
        headers,
        timeout,
        limit: MAX_RESPONSE,
    };
    let raw = call.exchange(&addrs)?;
    parse_response(url, &raw)
}

/// [`request_blocking`] on tokio's blocking pool, for async callers: the socket work stays
/// off the runtime's worker threads, and the caller never waits longer than `timeout`.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<String, HttpError> {
    let (m, u) = (method.to_owned(), url.to_owned());
    let owned: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let work = tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (&**k, &**v)).collect();
        request_blocking(&m, &u, &headers, timeout)
    });
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(HttpError::Io {
            url: url.into(),
            source: std::io::Error::other(join),
        }),
        Err(_) => Err(HttpError::Timeout {
            url: url.into(),
            timeout,
        }),
    }
}

impl Call<'_> {
    /// Connects, sends, and reads the raw answer until the peer closes, all before the deadline.
    fn exchange(&self, addrs: &[SocketAddr]) -> Result<Vec<u8>, HttpError> {
        let deadline = Instant::now() + self.timeout;
        let mut stream = self.connect(addrs, deadline)?;
        let mut req = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n",
            self.method, self.path, self.host
        );
        for (k, v) in self.headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream
            .set_write_timeout(Some(self.remaining(deadline)?))
            .and_then(|()| stream.write_all(req.as_bytes()))
            .map_err(|e| self.io(e))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let read = stream
                .set_read_timeout(Some(self.remaining(deadline)?))
                .and_then(|()| stream.read(&mut chunk));
            match read {
                Ok(0) => return Ok(buf),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(self.timed_out()),
                // A reset after a complete answer (the server closed with unread input) is
                // still an answer.
                Err(e) => {
                    return parse_reply(self.url, &buf)
                        .map(|_| buf)
                        .map_err(|_| self.io(e));
                }
            }
            if buf.len() > self.limit {
                return Err(HttpError::Malformed {
                    url: self.url.into(),
                });
            }
        }
    }

    fn connect(&self, addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, HttpError> {
        let mut last = std::io::Error::new(ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(addr, self.remaining(deadline)?) {
                Ok(s) => return Ok(s),
                Err(e) if is_timeout(&e) => return Err(self.timed_out()),
                Err(e) => last = e,
            }
        }
        Err(self.io(last))
    }

    /// Time left before `deadline`; past it, the request has timed out.
    fn remaining(&self, deadline: Instant) -> Result<Duration, HttpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out());
        }
        Ok(left)
    }

    fn timed_out(&self) -> HttpError {
        HttpError::Timeout {
            url: self.url.into(),
            timeout: self.timeout,
        }
    }

    fn io(&self, source: std::io::Error) -> HttpError {
        HttpError::Io {
            url: self.url.into(),
            source,
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The body of a 2xx answer; other codes are [`HttpError::Status`] with the body's start.
fn parse_response(url: &str, raw: &[u8]) -> Result<String, HttpError> {
    let (code, mut body) = parse_reply(url, raw)?;
    if !(200..300).contains(&code) {
        body.truncate(200);
        return Err(HttpError::Status {
            url: url.into(),
            code,
            body,
        });
    }
    Ok(body)
}

/// (status code, body) of a raw answer.
fn parse_reply(url: &str, raw: &[u8]) -> Result<(u16, String), HttpError> {
    let malformed = || HttpError::Malformed { url: url.into() };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(malformed)?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let code: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(malformed)?;
    let mut chunked = false;
    let mut length = None;
    for h in lines {
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let body = if chunked {
        dechunk(body).ok_or_else(malformed)?
    } else if let Some(n) = length {
        body.get(..n).ok_or_else(malformed)?.to_vec()
    } else {
        body.to_vec()
    };
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let r = parse_response("u", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!(r, "hi");
        let r = parse_response(
            "u",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r, "abcde");
    }

    #[test]
    fn parses_replies_of_any_code() {
        let (c, b) =
            parse_reply("u", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA").unwrap();
        assert_eq!((c, b.as_str()), (200, "ok"));
        let (c, b) = parse_reply(
            "u",
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\n{\"a\r\n2;x=y\r\n\":\r\n1\r\n1\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((c, b.as_str()), (503, "{\"a\":1"));
        let (c, b) = parse_reply("u", b"HTTP/1.0 404 Not Found\r\n\r\nnope").unwrap();
        assert_eq!((c, b.as_str()), (404, "nope"));
    }

    #[test]
    fn non_2xx_and_garbage_are_errors() {
        let e = parse_response("u", b"HTTP/1.1 401 Unauthorized\r\n\r\nno token").unwrap_err();
        assert!(matches!(e, HttpError::Status { code: 401, .. }), "{e}");
        assert!(parse_response("u", b"garbage").is_err());
        assert!(matches!(
            futures_lite_block(request("GET", "ftp://x", &[], Duration::from_secs(1))),
            Err(HttpError::Url(_))
        ));
    }

    #[test]
    fn get_against_a_local_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8_lossy(&req).into_owned();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong")
                .unwrap();
            req
        });
        let (code, body) = get(addr, "/healthz", Duration::from_secs(5)).unwrap();
        assert_eq!((code, body.as_str()), (200, "pong"));
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Connection: close"), "{req}");
    }

    #[tokio::test]
    async fn talks_to_a_real_socket_and_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            // First connection: answer after reading the request head.
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(
                req.starts_with("PUT /latest/api/token HTTP/1.1\r\n"),
                "{req}"
            );
            assert!(req.contains("X-Test: 1\r\n"), "{req}");
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\ntoken").await.unwrap();
            drop(s);
            // Second connection: never answer.
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let url = format!("http://{addr}/latest/api/token");
        let body = request("PUT", &url, &[("X-Test", "1")], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(body, "token");
        let e = request("GET", &url, &[], Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
    }

    fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }
}
