//! Slow and idle clients are cut off by the HTTP limits, and the service
//! keeps answering everyone else meanwhile.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

async fn spawn_with_limits(limits: &[(&'static str, &str)]) -> TestApp {
    TestApp::spawn_with(Options {
        env: limits.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        ..Options::default()
    })
    .await
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Whether the server has closed `stream`: a read sees EOF or a reset
/// (anything but a timeout).
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a response (e.g. 408): keep reading to EOF
        }
    }
}

async fn healthz_answers(app: &TestApp) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    matches!(client.get(app.url("/healthz")).send().await, Ok(r) if r.status() == 200)
}

#[tokio::test]
async fn connections_that_trickle_header_bytes_are_closed_while_healthz_answers() {
    let app = spawn_with_limits(&[
        ("MAILCONNECT_HTTP_HEADER_TIMEOUT_SECS", "1"),
        ("MAILCONNECT_HTTP_IDLE_TIMEOUT_SECS", "30"),
    ])
    .await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: mailconnect\r\nX-Slow: ";
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        s.write_all(&request[..5]).await.unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    // Keep trickling: one byte per connection every 200 ms, never ending
    // the head. The service must answer others all the while.
    let mut answered = 0;
    let mut closed = vec![false; slow.len()];
    for round in 0.. {
        for (i, s) in slow.iter_mut().enumerate() {
            if !closed[i] && s.write_all(b"a").await.is_err() {
                closed[i] = true;
            }
        }
        if healthz_answers(&app).await {
            answered += 1;
        }
        if closed.iter().all(|c| *c) || round > 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, s) in slow.iter_mut().enumerate() {
        if !closed[i] {
            closed[i] = closed_by_server(s, Duration::from_secs(3)).await;
        }
    }
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} trickling connections are still open");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed only after {:?}",
        started.elapsed()
    );
    assert!(answered >= 3, "healthz answered only {answered} times");
    assert!(healthz_answers(&app).await);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout_not_before() {
    let app = spawn_with_limits(&[
        ("MAILCONNECT_HTTP_HEADER_TIMEOUT_SECS", "1"),
        ("MAILCONNECT_HTTP_IDLE_TIMEOUT_SECS", "3"),
    ])
    .await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: mailconnect\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    s.write_all(request).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Idle for longer than the header timeout: still open (the header
    // clock runs only while a head is arriving).
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    s.write_all(request).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "the kept-alive connection was closed before the idle timeout"
    );
    // Then idle past the idle timeout: closed.
    let idle_from = Instant::now();
    assert!(closed_by_server(&mut s, Duration::from_secs(6)).await);
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(2_500),
        "closed after {idle:?}"
    );

    // A connection opened and never used is closed the same way.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    assert!(closed_by_server(&mut silent, Duration::from_secs(6)).await);
}

#[tokio::test]
async fn a_body_that_trickles_in_is_answered_408_in_json() {
    let app = spawn_with_limits(&[("MAILCONNECT_HTTP_BODY_TIMEOUT_SECS", "1")]).await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    let head = format!(
        "POST /api/oauth/microsoft/authorize HTTP/1.1\r\nHost: mailconnect\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 200\r\n\r\n{{\"login_hint\":",
        app.admin()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    // One byte every 300 ms: each arrives well within any per-read limit,
    // but the whole body never does.
    loop {
        let _ = s.write_all(b" ").await;
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                response.extend_from_slice(&buf[..n]);
                if response.windows(4).any(|w| w == b"\r\n\r\n") && response.ends_with(b"}") {
                    break;
                }
            }
            Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no answer");
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"], "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let app = spawn_with_limits(&[("MAILCONNECT_HTTP_MAX_CONNECTIONS", "3")]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // A fourth connection is not served while three are open ...
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    assert!(client.get(app.url("/healthz")).send().await.is_err());
    // ... and is as soon as one of them goes away.
    held.pop();
    assert!(healthz_answers(&app).await);
}
