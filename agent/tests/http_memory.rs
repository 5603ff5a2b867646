//! A barrage of oversized requests leaves the server's memory where it was. Its own test binary:
//! RSS is per process, and the other HTTP tests (a 4 MiB response, 256 idle connections) would
//! move it while they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod http_common;

use http_common::*;

#[test]
fn oversized_barrage_keeps_memory_bounded() {
    let srv = Server::quick();
    let huge_head = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(256 * 1024)
    );
    let huge_body = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 4000000\r\n\r\n{}",
        "b".repeat(256 * 1024)
    );
    let mut chunked =
        String::from("GET /status HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..64 {
        chunked.push_str(&format!("{:x}\r\n{}\r\n", 4096, "c".repeat(4096)));
    }
    let round = |n: usize| {
        for _ in 0..n {
            assert_eq!(raw(srv.addr, huge_head.as_bytes()), 431);
            assert_eq!(raw(srv.addr, huge_body.as_bytes()), 413);
            assert_eq!(raw(srv.addr, chunked.as_bytes()), 413);
        }
    };
    // Warm-up: allocator arenas and the runtime's buffers settle.
    round(50);
    let before = rss_kib();
    round(300);
    let after = rss_kib();
    eprintln!("RSS around 900 oversized requests: {before} KiB -> {after} KiB");
    // The server and the client share this process; 900 requests of 256 KiB or more each
    // would be 230 MiB if anything were kept.
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}
