//! Issue 15, the HTTP findings, against a real node process: connections that never send a
//! request are closed after the header timeout and cannot crowd out a client; SSE streams are
//! capped; on loopback a request naming another host (DNS rebinding) is refused; a write whose
//! body trickles in is answered 408 at its deadline.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use chorus_node::http::{BODY_TIMEOUT, MAX_STREAMS, serve::HEADER_TIMEOUT, serve::MAX_CONNECTIONS};
use common::*;

/// One HTTP/1.1 request on a fresh connection with `host` as its Host; the status code and
/// the start of the answer.
fn request(addr: &str, host: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, answer)
}

/// Opens an SSE stream and reads only its status line.
fn open_stream(addr: &str) -> (TcpStream, u16) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /v1/events?stream=true HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    let code = String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0);
    (s, code)
}

#[test]
fn silent_connections_time_out_streams_are_capped_and_foreign_hosts_refused() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 1, 1);
    let n0 = Node::start("n0", &dirs[0], "127.0.0.51", &[]);
    let addr = n0.api.trim_start_matches("http://").to_string();

    // More silent connections than the node serves at once: a client still gets an answer
    // once the silent ones time out, and the server closes them.
    let silent: Vec<TcpStream> = (0..MAX_CONNECTIONS + 8)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let t0 = Instant::now();
    let (code, answer) = request(&addr, &addr, "/health");
    assert_eq!(code, 200, "{answer}");
    let waited = t0.elapsed();
    assert!(
        waited < HEADER_TIMEOUT + Duration::from_secs(10),
        "a client waited {waited:?} behind silent connections"
    );
    let mut closed = 0;
    for mut s in silent {
        s.set_read_timeout(Some(HEADER_TIMEOUT + Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        // The server closes the connection (EOF, or a reset after an error answer).
        match s.read(&mut b) {
            Ok(_) => closed += 1,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(closed, MAX_CONNECTIONS + 8, "silent connections left open");
    eprintln!(
        "a client behind {} silent connections: answered after {waited:?}",
        MAX_CONNECTIONS + 8
    );

    // SSE streams: the cap, then a slot again once one ends.
    let mut streams = vec![];
    for _ in 0..MAX_STREAMS {
        let (s, code) = open_stream(&addr);
        assert_eq!(code, 200);
        streams.push(s);
    }
    let (_, code) = open_stream(&addr);
    assert_eq!(code, 503, "stream {} past the cap", MAX_STREAMS + 1);
    drop(streams.pop());
    // The node notices the closed stream when it next writes to it: give it events to send.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        n0.append("wake the streams {i}", 1).unwrap();
        let (_s, code) = open_stream(&addr);
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no stream slot came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(streams);

    // DNS rebinding: a loopback API answers loopback names only.
    let port = addr.rsplit(':').next().unwrap();
    let (code, answer) = request(&addr, &format!("evil.example:{port}"), "/v1/status");
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("loopback"), "{answer}");
    for host in [addr.clone(), format!("localhost:{port}")] {
        let (code, answer) = request(&addr, &host, "/v1/status");
        assert_eq!(code, 200, "{host}: {answer}");
    }
}

/// A client that sends a write's headers, then its body a byte now and then, held its
/// connection for as long as it liked: now the body must arrive whole within
/// [`BODY_TIMEOUT`], and the answer says so (408); nothing is written.
#[test]
fn a_trickled_body_is_refused_at_its_deadline() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 1, 1);
    let n0 = Node::start("n0", &dirs[0], "127.0.0.52", &[]);
    let addr = n0.api.trim_start_matches("http://").to_string();
    let events_before = n0.status().unwrap()["events"].clone();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(900)))
        .unwrap();
    let body = r#"{"kind": "stimulus", "text": "slowly"}"#;
    write!(
        s,
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let t0 = Instant::now();
    let mut answer = Vec::new();
    // One byte a second, never the whole body before the deadline.
    for b in body.bytes().take(body.len() - 1) {
        if s.write_all(&[b]).is_err() {
            break;
        }
        let mut chunk = [0u8; 512];
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => {
                answer.extend_from_slice(&chunk[..k]);
                break;
            }
            Err(_) => {}
        }
        assert!(
            t0.elapsed() < BODY_TIMEOUT * 3,
            "the trickle went on unbounded"
        );
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut answer);
    let took = t0.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive whole"), "{answer}");
    assert!(
        took >= BODY_TIMEOUT && took < BODY_TIMEOUT + Duration::from_secs(5),
        "answered after {took:?}"
    );
    assert_eq!(
        n0.status().unwrap()["events"],
        events_before,
        "nothing is written"
    );
    eprintln!("a trickled body: 408 after {took:?}");
}
