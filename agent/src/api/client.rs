//! A minimal HTTP/1.1 client for the two link-local APIs the ladder reads before it acts:
//! IMDSv2 and the ECS agent's introspection API. Plain HTTP, one request per connection, every
//! step under one deadline; the AWS calls themselves go through the SDK.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Responses larger than this are refused: both APIs answer with a few hundred bytes.
const MAX_RESPONSE: usize = 1 << 20;

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

/// Sends `method url` with `headers` and returns the body of a 2xx answer.
pub async fn request(
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
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let io = |source| HttpError::Io {
        url: url.into(),
        source,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(&addr).await.map_err(io)?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: 0\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_RESPONSE {
                return Err(HttpError::Malformed { url: url.into() });
            }
        }
        Ok(buf)
    };
    let buf = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout {
            url: url.into(),
            timeout,
        })??;
    parse_response(url, &buf)
}

fn parse_response(url: &str, buf: &[u8]) -> Result<String, HttpError> {
    let malformed = || HttpError::Malformed { url: url.into() };
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(malformed)?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body).ok_or_else(malformed)?
    } else {
        body.to_owned()
    };
    if !(200..300).contains(&code) {
        let mut body = body;
        body.truncate(200);
        return Err(HttpError::Status {
            url: url.into(),
            code,
            body,
        });
    }
    Ok(body)
}

fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        s = rest.get(n..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
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
    fn non_2xx_and_garbage_are_errors() {
        let e = parse_response("u", b"HTTP/1.1 401 Unauthorized\r\n\r\nno token").unwrap_err();
        assert!(matches!(e, HttpError::Status { code: 401, .. }), "{e}");
        assert!(parse_response("u", b"garbage").is_err());
        assert!(matches!(
            futures_lite_block(request("GET", "ftp://x", &[], Duration::from_secs(1))),
            Err(HttpError::Url(_))
        ));
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
