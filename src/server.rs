//! Start-up and shutdown: open and migrate the database, build the app,
//! serve until SIGTERM/ctrl-c with the background refresher, the webhook
//! deliverer and the housekeeping task beside it, then drain.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use tokio::sync::watch;

use crate::app::App;
use crate::config::{Config, Serving};
use crate::core::app_tokens::Renewer;
use crate::core::refresh::sweep::Sweeper;
use crate::db::{states, Db};
use crate::oauth::client::OAuthHttp;
use crate::webhooks::deliver::Deliverer;

pub use crate::config::PROVIDER_TIMEOUT;

/// Opens the database, migrates it and builds the shared state.
pub async fn build(config: &Config, provider_timeout: Duration) -> anyhow::Result<App> {
    anyhow::ensure!(
        config.schedule.lease_outlasts(provider_timeout),
        "MAILCONNECT_REFRESH_LEASE_SECS ({} s) must be longer than twice the provider timeout ({:?})",
        config.schedule.lease_secs,
        provider_timeout
    );
    crate::metrics::handle();
    let db = Db::connect(&config.database_url).await?;
    db.migrate().await?;
    Ok(App::new(
        config,
        db,
        OAuthHttp::new(provider_timeout, &config.extra_roots),
    ))
}

/// How long shutdown waits for refreshes in flight to be stored.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Serves on `listener` (and runs the background refresher, if enabled)
/// until `shutdown` resolves; then drains requests and refreshes in flight.
pub async fn serve(
    app: App,
    listener: TcpListener,
    serving: Serving,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let housekeeping = tokio::spawn(housekeeping(app.clone()));
    let metrics_upkeep = tokio::spawn(crate::metrics::upkeep());
    let core = app.core().clone();
    let unsaved = {
        let (core, stop) = (core.clone(), stop_rx.clone());
        tokio::spawn(async move { core.unsaved.run(&core, stop).await })
    };
    let uses = {
        let (core, stop, every) = (core.clone(), stop_rx.clone(), serving.use_flush);
        tokio::spawn(async move { core.uses.run(&core, every, stop).await })
    };
    let background = serving.refresher.enabled.then(|| {
        tokio::spawn(Sweeper::new(core.clone(), serving.refresher.clone()).run(stop_rx.clone()))
    });
    let app_renewer = serving.refresher.enabled.then(|| {
        tokio::spawn(Renewer::new(core.clone(), serving.refresher.poll).run(stop_rx.clone()))
    });
    let deliverer = if core.webhooks.enabled() {
        let d = Deliverer::new(core.db.clone(), core.webhooks.clone(), core.owner())
            .context("building the webhook HTTP client")?;
        Some(tokio::spawn(d.run(stop_rx.clone())))
    } else {
        None
    };
    let router = crate::http::router(app.clone());
    let server = crate::http::listener::serve(listener, router, serving.http, stop_rx.clone());
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    server.await;
    signal.abort();
    if let Some(task) = background {
        if tokio::time::timeout(DRAIN_LIMIT, task).await.is_err() {
            tracing::warn!("refreshes in flight did not finish in time; their leases will lapse");
        }
    }
    if let Some(task) = app_renewer {
        if tokio::time::timeout(DRAIN_LIMIT, task).await.is_err() {
            tracing::warn!(
                "an app token request in flight did not finish in time; its lease will lapse"
            );
        }
    }
    // Token uses noted since the last write: requests have drained now.
    let last_uses = async {
        let _ = uses.await;
        core.uses.flush(&core).await
    };
    if tokio::time::timeout(DRAIN_LIMIT, last_uses).await.is_err() {
        tracing::warn!(
            "token uses could not be recorded in time; those accounts may be treated as idle"
        );
    }
    // Refresh answers the database did not take: a last chance to store them.
    let _ = unsaved.await;
    core.unsaved.drain(&core, DRAIN_LIMIT).await;
    if let Some(task) = deliverer {
        if tokio::time::timeout(DRAIN_LIMIT, task).await.is_err() {
            tracing::warn!(
                "webhook deliveries in flight did not finish in time; they will be sent again"
            );
        }
    }
    housekeeping.abort();
    metrics_upkeep.abort();
    Ok(())
}

/// Drops OAuth states long past expiry, every few minutes; a failure (the
/// database is away) waits for the next round.
async fn housekeeping(app: App) {
    let mut tick = tokio::time::interval(Duration::from_secs(300));
    loop {
        tick.tick().await;
        match states::purge_expired(&app.db, crate::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired OAuth states purged"),
            Err(e) => tracing::warn!(error = %e, "could not purge expired OAuth states"),
        }
        crate::core::credentials::check_expiry(app.core(), crate::now()).await;
        // The budget's counts: the status route shows the last hour.
        if let Err(e) = crate::db::pace::purge(&app.db, crate::now() - 3_700).await {
            tracing::warn!(error = %e, "could not drop old provider request counts");
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
