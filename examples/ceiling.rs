//! The benchmark ceiling: a bare axum route on the same runtime settings as
//! mailconnect (`#[tokio::main]`, multi-threaded), answering `GET /` with
//! `{"status":"ok"}`. `bench/run.sh` measures it next to mailconnect's routes
//! so their numbers read as a fraction of what this machine can serve at all.
//!
//! ```text
//! cargo build --release --example ceiling
//! target/release/examples/ceiling 127.0.0.1:9102
//! ```

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9102".into());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("http://{}", listener.local_addr()?);
    let app = Router::new().route(
        "/",
        get(|| async { Json::<Value>(json!({"status": "ok"})) }),
    );
    axum::serve(listener, app).await?;
    Ok(())
}
