//! The HTTP server's limits against real sockets: oversized and malformed requests get a 4xx,
//! slow and idle clients are cut off, a crowd of idle connections does not stop /healthz, and
//! a barrage of oversized requests leaves memory where it was. No BPF needed: the server
//! answers from an engine::Shared that nothing publishes into (healthy, no targets).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod http_common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use bindsto::{api, api::server as httpd};

use http_common::*;

#[test]
fn endpoints_answer_and_others_are_refused() {
    let srv = Server::quick();
    assert_eq!(raw(srv.addr, &get("/healthz")), 200);
    assert_eq!(raw(srv.addr, &get("/status")), 200);
    assert_eq!(raw(srv.addr, &get("/metrics")), 200);
    assert_eq!(raw(srv.addr, &get("/nope")), 404);
    assert_eq!(raw(srv.addr, &get("/healthz/../status")), 404);
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let req = format!("{method} /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(raw(srv.addr, req.as_bytes()), 405, "{method}");
    }
}

#[test]
fn malformed_requests_get_400() {
    let srv = Server::quick();
    for req in [
        &b"\x00\x01\x02 garbage\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost t\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n",
        b"\xff\xfe\xfd\xfc\r\n\r\n",
    ] {
        assert_eq!(
            raw(srv.addr, req),
            400,
            "{:?}",
            String::from_utf8_lossy(req)
        );
    }
}

#[test]
fn oversized_heads_get_431() {
    let srv = Server::quick();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(raw(srv.addr, big.as_bytes()), 431);
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw(srv.addr, many.as_bytes()), 431);
    // A long URI alone fills the head too.
    let uri = format!("/{}", "x".repeat(32 * 1024));
    let code = raw(srv.addr, &get(&uri));
    assert!(code == 431 || code == 414, "long URI got {code}");
}

#[test]
fn bodies_over_the_limit_get_413() {
    let srv = Server::quick();
    let max = httpd::Limits::default().max_body;
    // Declared: refused before any of it is read.
    let req = "GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n";
    assert_eq!(raw(srv.addr, req.as_bytes()), 413);
    // Sent in full.
    let body = "b".repeat(max * 4);
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw(srv.addr, req.as_bytes()), 413);
    // Chunked, with no length to check up front.
    let mut req =
        String::from("GET /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..16 {
        req.push_str(&format!("{:x}\r\n{}\r\n", 512, "c".repeat(512)));
    }
    req.push_str("0\r\n\r\n");
    assert_eq!(raw(srv.addr, req.as_bytes()), 413);
    // A small body on a GET is tolerated.
    let req =
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
    assert_eq!(raw(srv.addr, req.as_bytes()), 200);
}

#[test]
fn slowloris_is_cut_off() {
    let srv = Server::quick();
    let timeout = Duration::from_secs(1);
    // Head trickled a header line at a time, never finished.
    let mut s = connect(srv.addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .expect("write");
    let start = Instant::now();
    let mut cut = false;
    for i in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .is_err()
        {
            cut = true;
            break;
        }
    }
    let elapsed = start.elapsed();
    assert!(
        cut || closed_within(&mut s, Duration::from_millis(500)).is_some(),
        "trickling client still connected after {elapsed:?}"
    );
    assert!(elapsed < timeout * 3, "cut after {elapsed:?}");
    // Connected and silent.
    let mut idle = connect(srv.addr);
    let t = closed_within(&mut idle, timeout * 3).expect("idle connection closed");
    assert!(t >= timeout / 2, "closed too early: {t:?}");
    // Idle between keep-alive requests.
    let mut ka = connect(srv.addr);
    ka.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    assert_eq!(status_of(&mut ka), 200);
    closed_within(&mut ka, timeout * 3).expect("idle keep-alive connection closed");
    // A body trickled after a complete head.
    let mut b = connect(srv.addr);
    b.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nx")
        .expect("write");
    assert_eq!(status_of(&mut b), 408);
}

#[test]
fn idle_crowd_does_not_stop_healthz() {
    let srv = Server::start(httpd::Limits {
        header_timeout: Duration::from_secs(3),
        ..httpd::Limits::default()
    });
    let max = httpd::Limits::default().max_connections;
    // Most of the slots taken by connections that send nothing or half a head.
    let mut crowd: Vec<TcpStream> = (0..max - 16)
        .map(|i| {
            let mut s = connect(srv.addr);
            if i % 2 == 0 {
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n");
            }
            s
        })
        .collect();
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(raw(srv.addr, &get("/healthz")), 200);
        worst = worst.max(t.elapsed());
    }
    eprintln!(
        "healthz with {} idle connections: worst {worst:?}",
        crowd.len()
    );
    assert!(worst < Duration::from_millis(500), "worst {worst:?}");
    // Past the cap a new connection is closed at once instead of queueing.
    crowd.extend((0..32).map(|_| connect(srv.addr)));
    let mut extra = connect(srv.addr);
    assert!(
        closed_within(&mut extra, Duration::from_secs(1)).is_some(),
        "connection past the cap left open"
    );
    // Once the idle ones time out, /healthz is back.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(raw(srv.addr, &get("/healthz")), 200);
    drop(crowd);
}

#[test]
fn agent_defaults_close_idle_connections() {
    // api::serve is what the agent runs: the default header timeout applies.
    let srv = Server::spawn(|listener, stop| api::serve(listener, healthy(), stop));
    let addr = srv.addr;
    assert_eq!(raw(addr, &get("/healthz")), 200);
    let limit = httpd::Limits::default().header_timeout;
    let mut idle = connect(addr);
    let took = closed_within(&mut idle, limit + Duration::from_secs(2)).expect("closed");
    assert!(took >= limit - Duration::from_millis(500), "{took:?}");
}

#[test]
fn large_responses_are_not_cut_by_the_head_limit() {
    // /status grows with the number of targets: the 8 KiB read buffer must not limit what
    // the server writes.
    let srv = Server::spawn(|listener, stop| {
        let router =
            axum::Router::new().route("/big", axum::routing::get(|| async { "x".repeat(4 << 20) }));
        httpd::serve(listener, router, httpd::Limits::default(), stop)
    });
    let addr = srv.addr;
    let (code, body) = api::client::get(addr, "/big", Duration::from_secs(20)).expect("GET /big");
    assert_eq!(code, 200);
    assert_eq!(body.len(), 4 << 20);
}

#[test]
fn old_connections_are_closed_and_non_readers_dropped() {
    let limits = httpd::Limits {
        max_connection_age: Duration::from_secs(1),
        ..httpd::Limits::default()
    };
    let srv = Server::spawn(move |listener, stop| {
        let router = axum::Router::new()
            .route("/small", axum::routing::get(|| async { "ok" }))
            .route(
                "/big",
                axum::routing::get(|| async { "x".repeat(64 << 20) }),
            );
        httpd::serve(listener, router, limits, stop)
    });
    let addr = srv.addr;
    // A keep-alive client asking every 200 ms is closed after the age limit, between
    // responses.
    let mut ka = connect(addr);
    let start = Instant::now();
    let mut answered = 0;
    loop {
        if ka
            .write_all(b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n")
            .is_err()
        {
            break;
        }
        let mut buf = [0u8; 4096];
        match ka.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => answered += 1,
        }
        assert!(start.elapsed() < Duration::from_secs(5), "still open");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answered >= 3, "only {answered} responses before the close");
    // A client that asks for a large response and never reads it is dropped after the age
    // limit plus the grace period.
    let mut lazy = connect(addr);
    lazy.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    std::thread::sleep(
        Duration::from_secs(1) + httpd::SHUTDOWN_GRACE + Duration::from_millis(1500),
    );
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    lazy.set_read_timeout(Some(Duration::from_secs(2))).ok();
    loop {
        match lazy.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(
        got < 64 << 20,
        "the whole response arrived: the connection was not dropped"
    );
}
