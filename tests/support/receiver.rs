//! A webhook receiver for the tests: a small axum server on a loopback
//! port that verifies every request with the published Standard Webhooks
//! verifier (the `standardwebhooks` crate, not mailconnect's signer), drops
//! duplicates by `webhook-id`, records the order of events per account,
//! and can be made to fail: 500s, hanging past the sender's timeout, or
//! being down (connections refused).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use rand::RngCore;
use serde_json::Value;
use tokio::sync::oneshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Accept,
    Fail500,
    /// Answers only after the sender has given up.
    Hang,
    /// Accepts, after this long (keep it under the sender's timeout).
    Slow(Duration),
}

#[derive(Default)]
pub struct Seen {
    /// Accepted events, first delivery of each id, in arrival order.
    pub events: Vec<Value>,
    ids: HashSet<String>,
    pub duplicates: usize,
    pub bad_signatures: usize,
    pub requests: usize,
    /// The last accepted event id per ordering key (account or provider).
    last_by_key: HashMap<String, String>,
    pub order_violations: Vec<String>,
    /// Requests that broke the contract in another way (a body whose `id`
    /// is not the `webhook-id`, a body that is not JSON). Recorded rather
    /// than asserted in the handler: a panic there would only be a 500,
    /// which the sender retries.
    pub violations: Vec<String>,
}

struct Shared {
    secret: String,
    mode: Mutex<Mode>,
    seen: Mutex<Seen>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub secret: String,
    shared: Arc<Shared>,
    server: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

fn key_of(event: &Value) -> String {
    match (event["account_id"].as_str(), event["directory"].as_str()) {
        (Some(id), _) => id.to_owned(),
        (None, Some(_)) => format!("tenant:{}", event["tenant_id"].as_str().unwrap_or("")),
        (None, None) => format!("provider:{}", event["provider"].as_str().unwrap_or("")),
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let verified = standardwebhooks::Webhook::new(&shared.secret)
        .expect("test secret")
        .verify(&body, &headers)
        .is_ok();
    let mode = *shared.mode.lock().unwrap();
    {
        let mut seen = shared.seen.lock().unwrap();
        seen.requests += 1;
        if !verified {
            seen.bad_signatures += 1;
            return StatusCode::BAD_REQUEST;
        }
    }
    match mode {
        Mode::Fail500 => return StatusCode::INTERNAL_SERVER_ERROR,
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::Accept => {}
    }
    let id = headers["webhook-id"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    let mut seen = shared.seen.lock().unwrap();
    let event: Value = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            seen.violations
                .push(format!("{id}: the body is not JSON: {e}"));
            return StatusCode::NO_CONTENT;
        }
    };
    if event["id"] != id.as_str() {
        seen.violations
            .push(format!("{id}: the body's id is {}", event["id"]));
    }
    if !seen.ids.insert(id.clone()) {
        seen.duplicates += 1;
        return StatusCode::OK;
    }
    let key = key_of(&event);
    if let Some(last) = seen.last_by_key.get(&key) {
        if *last > id {
            let v = format!("{key}: {id} arrived after {last}");
            seen.order_violations.push(v);
        }
    }
    seen.last_by_key.insert(key, id);
    seen.events.push(event);
    StatusCode::NO_CONTENT
}

impl Receiver {
    pub async fn start(mode: Mode) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = Receiver {
            addr,
            secret: new_secret(),
            shared: Arc::new(Shared {
                secret: String::new(),
                mode: Mutex::new(mode),
                seen: Mutex::default(),
            }),
            server: None,
        };
        r.shared = Arc::new(Shared {
            secret: r.secret.clone(),
            mode: Mutex::new(mode),
            seen: Mutex::default(),
        });
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let router = Router::new()
            .route("/hooks", post(receive))
            .with_state(self.shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        self.server = Some((tx, task));
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Down: connections to the port are refused.
    pub async fn go_down(&mut self) {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// Up again on the same port.
    pub async fn come_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    pub fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.shared.seen.lock().unwrap())
    }

    pub fn events(&self) -> Vec<Value> {
        self.with(|s| s.events.clone())
    }

    pub fn requests(&self) -> usize {
        self.with(|s| s.requests)
    }

    /// Waits until `n` distinct events were accepted.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.events();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} events arrived: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every request verified, nothing out of order, nothing malformed.
    pub fn assert_clean(&self) {
        self.with(|s| {
            assert_eq!(
                s.bad_signatures, 0,
                "requests whose signature did not verify"
            );
            assert!(s.order_violations.is_empty(), "{:?}", s.order_violations);
            assert!(s.violations.is_empty(), "{:?}", s.violations);
        });
    }

    /// The types of the events about one account (or provider key), in
    /// arrival order.
    pub fn types_for(&self, key: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| key_of(e) == key)
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }
}
