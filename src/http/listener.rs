//! The HTTP connection loop: the router on hyper, with the limits that
//! `axum::serve` leaves out (it runs hyper without a timer, so a client
//! that trickles header bytes keeps its connection forever).
//!
//! Per connection, a small tracker sees every byte read and written and
//! every request the router starts and finishes; a task beside the
//! connection enforces, from it:
//! - **header timeout**: a request head whose first byte arrived must be
//!   complete within it, or the connection is dropped (slowloris);
//! - **idle timeout**: a connection with no request in flight and no byte
//!   either way for this long is closed gracefully (kept-alive connections,
//!   and ones opened and never used);
//! - **body timeout**: a JSON body must be read completely within it (see
//!   [`super::body`], which answers 408);
//! - **max connections**: at most this many connections are open; further
//!   ones wait in the listen backlog until one closes.
//!
//! These are hand-written because hyper's own header timer also starts
//! while a kept-alive connection waits for its next request, which would
//! make the idle limit and the header limit one setting.

use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

pub use crate::config::HttpLimits;

/// How long a read of a request body may take in all; put into every
/// request's extensions for [`super::body`].
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeout(pub Duration);

/// How long shutdown waits for open connections to finish their requests.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `stop` turns true, then stops
/// accepting, lets requests in flight finish (up to [`DRAIN_LIMIT`]) and
/// returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let router = router.layer(axum::Extension(BodyTimeout(limits.body_timeout)));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = stopped(&mut stop) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(e) => {
                    // Out of file descriptors and the like: back off a
                    // little instead of spinning on the error.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        let tracker = Arc::new(Tracker::new());
        let service = {
            let router = router.clone();
            let tracker = tracker.clone();
            tower::service_fn(move |req: Request<Incoming>| {
                let in_flight = InFlight::start(tracker.clone());
                let mut req = req.map(Body::new);
                // The client's address, for per-address limits.
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let call = router.clone().oneshot(req);
                async move {
                    let response = call.await;
                    drop(in_flight);
                    response
                }
            })
        };
        let io = TokioIo::new(Tracked {
            inner: stream,
            tracker: tracker.clone(),
        });
        let conn = builder
            .serve_connection(io, TowerToHyperService::new(service))
            .into_owned();
        let (stop, limits) = (stop.clone(), limits.clone());
        tokio::spawn(async move {
            let mut conn = pin!(conn);
            let mut watch = Watch::new(tracker, limits, stop);
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    verdict = watch.next() => match verdict {
                        Verdict::Drop => break,
                        Verdict::Close => conn.as_mut().graceful_shutdown(),
                    },
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_LIMIT, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("open HTTP connections did not finish in time; closing them");
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What a connection's limits call for.
enum Verdict {
    /// Too slow a request head: close at once.
    Drop,
    /// Idle, or the server is stopping: close after any request in flight.
    Close,
}

/// Watches one connection's tracker against the limits and the stop signal.
struct Watch {
    tracker: Arc<Tracker>,
    limits: HttpLimits,
    stop: watch::Receiver<bool>,
    closing: bool,
}

impl Watch {
    fn new(tracker: Arc<Tracker>, limits: HttpLimits, stop: watch::Receiver<bool>) -> Watch {
        Watch {
            tracker,
            limits,
            stop,
            closing: false,
        }
    }

    /// Resolves when the connection must be closed; after a `Close` it only
    /// resolves again for a `Drop`.
    async fn next(&mut self) -> Verdict {
        loop {
            let now = self.tracker.elapsed_ms();
            let deadline = self.tracker.deadline_ms(&self.limits);
            if deadline.is_some_and(|at| at <= now) {
                if self.tracker.head_started_ms() != 0 {
                    tracing::debug!("a request head took longer than the header timeout");
                    return Verdict::Drop;
                }
                if !self.closing {
                    self.closing = true;
                    tracing::debug!("closing an idle connection");
                    return Verdict::Close;
                }
            }
            // Re-check at least every second: the state changes under us.
            let wait = deadline
                .map(|at| at.saturating_sub(now))
                .unwrap_or(1_000)
                .clamp(10, 1_000);
            let closing = self.closing;
            tokio::select! {
                _ = stopped(&mut self.stop), if !closing => {
                    self.closing = true;
                    return Verdict::Close;
                }
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
    }
}

/// One connection's activity, in milliseconds since it opened (0 = never).
struct Tracker {
    opened: Instant,
    last_io_ms: AtomicU64,
    /// When the first byte of a request head arrived with no request in
    /// flight; cleared when the router receives the request.
    head_started_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Tracker {
    fn new() -> Tracker {
        Tracker {
            opened: Instant::now(),
            last_io_ms: AtomicU64::new(1),
            head_started_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Never 0, so that 0 can mean "not set".
    fn elapsed_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64 + 1
    }

    fn head_started_ms(&self) -> u64 {
        self.head_started_ms.load(Ordering::Acquire)
    }

    fn read(&self) {
        let now = self.elapsed_ms();
        self.last_io_ms.store(now, Ordering::Release);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_started_ms
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn wrote(&self) {
        self.last_io_ms.store(self.elapsed_ms(), Ordering::Release);
    }

    /// When the connection must be closed as things stand: the head's
    /// deadline while one is being read, else the idle deadline while no
    /// request is in flight.
    fn deadline_ms(&self, limits: &HttpLimits) -> Option<u64> {
        let head = self.head_started_ms();
        if head != 0 {
            return Some(head + limits.header_timeout.as_millis() as u64);
        }
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| {
            self.last_io_ms.load(Ordering::Acquire) + limits.idle_timeout.as_millis() as u64
        })
    }
}

/// A request the router is handling; counted until dropped.
struct InFlight(Arc<Tracker>);

impl InFlight {
    fn start(tracker: Arc<Tracker>) -> InFlight {
        tracker.in_flight.fetch_add(1, Ordering::AcqRel);
        tracker.head_started_ms.store(0, Ordering::Release);
        InFlight(tracker)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.wrote();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The TCP stream, reporting its traffic to the tracker.
struct Tracked {
    inner: TcpStream,
    tracker: Arc<Tracker>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.tracker.read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.tracker.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.tracker.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
