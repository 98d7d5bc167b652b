//! Start-up and shutdown: open and migrate the database, build the app,
//! serve until SIGTERM/ctrl-c, run the housekeeping task beside it.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::Config;
use crate::db::{states, Db};
use crate::oauth::client::OAuthHttp;

/// How long a provider request may take before it counts as failed.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the database, migrates it and builds the shared state.
pub async fn build(config: &Config, provider_timeout: Duration) -> anyhow::Result<App> {
    let db = Db::connect(&config.database_url).await?;
    db.migrate().await?;
    Ok(App::new(config, db, OAuthHttp::new(provider_timeout)))
}

/// Serves on `listener` until `shutdown` resolves, then drains requests.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let housekeeping = tokio::spawn(housekeeping(app.clone()));
    let router = crate::http::router(app);
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("the HTTP server failed");
    housekeeping.abort();
    result
}

/// Drops OAuth states long past expiry, every few minutes.
async fn housekeeping(app: App) {
    let mut tick = tokio::time::interval(Duration::from_secs(300));
    loop {
        tick.tick().await;
        match states::purge_expired(&app.db, crate::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired OAuth states purged"),
            Err(e) => tracing::warn!(error = %e, "could not purge expired OAuth states"),
        }
    }
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
