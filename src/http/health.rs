//! Liveness and readiness for load balancers and Kubernetes probes, and
//! the Prometheus scrape endpoint.

use crate::core::refresh::WarmWindow;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The body of `/healthz` and `/readyz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` (readiness only).
    #[schema(value_type = String, example = "ok")]
    pub status: &'static str,
    /// Why the service is not ready: `database_unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false, example = "database_unavailable")]
    pub error: Option<&'static str>,
}

/// Prometheus metrics
///
/// Connects and disconnects, refreshes by provider and outcome, provider
/// request latency, accounts by status, provider configuration errors,
/// refresher lag and webhook delivery, in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4",
         body = String, content_type = "text/plain",
         example = "# TYPE mailconnect_accounts gauge\nmailconnect_accounts{status=\"connected\"} 3\n"),
    )
)]
async fn metrics(State(app): State<App>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(
            &app.db,
            match app.schedule.warm_window {
                WarmWindow::All => None,
                window => Some(window.warm_since(crate::now())),
            },
        )
        .await,
    )
}

/// Liveness
///
/// The process is up and serving HTTP; touches nothing else.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Alive", body = Health, example = json!({"status": "ok"})),
    )
)]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        error: None,
    })
}

/// Readiness
///
/// Ready when the database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The database answers", body = Health,
         example = json!({"status": "ok"})),
        (status = 503, description = "The database does not answer", body = Health,
         example = json!({"status": "unavailable", "error": "database_unavailable"})),
    )
)]
async fn readyz(State(app): State<App>) -> (StatusCode, Json<Health>) {
    if app.db.ping().await {
        (
            StatusCode::OK,
            Json(Health {
                status: "ok",
                error: None,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unavailable",
                error: Some("database_unavailable"),
            }),
        )
    }
}
