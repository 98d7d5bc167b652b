//! `healthcheck`: the container image's HEALTHCHECK client.
//!
//! The final image is distroless (no shell, no curl, no wget), so the
//! Dockerfile compiles this std-only file with plain `rustc` in the builder
//! stage and ships it beside `mailconnect` (a few hundred KB). It is not
//! part of the Cargo workspace.
//!
//! Usage: `healthcheck [PATH]` (default `/healthz`). It sends
//! `GET PATH HTTP/1.1` to the address in `MAILCONNECT_BIND` (an unspecified
//! address such as `0.0.0.0` becomes loopback) and exits 0 on a 200 answer
//! within 3 seconds, 1 otherwise, with one line on stderr saying why.
//! Kubernetes ignores HEALTHCHECK and uses the probes in
//! `deploy/deployment.yaml` instead.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let path = std::env::args().nth(1).unwrap_or_else(|| "/healthz".into());
    let bind = std::env::var("MAILCONNECT_BIND")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let result = target(&bind).and_then(|addr| probe(addr, &path));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

fn target(bind: &str) -> Result<SocketAddr, String> {
    let mut addr: SocketAddr = bind
        .trim()
        .parse()
        .map_err(|_| format!("MAILCONNECT_BIND {bind:?} is not host:port"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

fn probe(addr: SocketAddr, path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.contains(['\r', '\n', ' ']) {
        return Err(format!("bad path {path:?}"));
    }
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("socket: {e}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: mailconnect-healthcheck\r\n\
         Connection: close\r\n\r\n"
    )
    .map_err(|e| format!("cannot send to {addr}: {e}"))?;

    // Only the status line matters: read until its end (or 1 KB, or EOF).
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("no answer from {addr}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some("200")) if v.starts_with("HTTP/1.") => Ok(()),
        _ => Err(format!("GET {path} at {addr} answered {status_line:?}")),
    }
}
