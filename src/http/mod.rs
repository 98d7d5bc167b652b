//! The HTTP API: one module per area, each exposing its routes, assembled
//! here with the layers every request goes through.
//!
//! - [`auth`]: caller JWTs and role extractors.
//! - [`error`]: the JSON error type.
//! - [`body`]: JSON bodies with clear 4xx answers.
//! - [`params`]: path parameters with JSON 404s.
//! - [`oauth`]: status, authorize, callback, disconnect.
//! - [`accounts`]: the token route for workers.
//! - [`audit`]: the tenant's audit events, paginated.
//! - [`links`]: connect links (admin routes) and their owner's pages.
//! - [`health`]: liveness and readiness.
//! - [`ui`]: the admin page at `/`.
//! - [`listener`]: the connection loop with its timeouts and limits.
//! - [`openapi`]: the OpenAPI document, generated from the routes.
//! - [`responses`]: the error responses many routes share, described once.

pub mod accounts;
pub mod audit;
pub mod auth;
pub mod body;
pub mod error;
pub mod health;
pub mod links;
pub mod listener;
pub mod oauth;
pub mod openapi;
pub mod params;
pub mod responses;
pub mod ui;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderName;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::app::App;
use error::ApiError;

/// Bodies are small JSON objects; anything larger is refused with 413.
pub const BODY_LIMIT: usize = 16 * 1024;

pub fn router(app: App) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let (routes, _documented) = openapi::routes().split_for_parts();
    routes
        .merge(links::pages())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("a handler panicked")).into_response()
        }))
        .layer(
            // The span names the path only: a callback's query holds the
            // authorization code and state.
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %logged_path(req.uri().path()),
                        request_id = %id,
                        tenant_id = tracing::field::Empty,
                    )
                })
                // One line per request at info: status and latency.
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                ),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unfit_request_id))
}

/// The path as logged: a connect link's token is a credential, so
/// `/connect/{token}…` is logged as `/connect/…`.
fn logged_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.strip_prefix("/connect/") {
        Some(rest) => {
            let tail = rest.find('/').map_or("", |i| &rest[i..]);
            format!("/connect/\u{2026}{tail}").into()
        }
        None => path.into(),
    }
}

/// A caller's `x-request-id` is kept only if it is a plain token (letters,
/// digits, `-_.:`, at most 128): it is logged and echoed, so anything else
/// is replaced by a fresh id rather than written into a log line.
async fn drop_unfit_request_id(mut req: Request) -> Request {
    let fit = req.headers().get("x-request-id").map(|v| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    });
    if fit == Some(false) {
        req.headers_mut().remove("x-request-id");
    }
    req
}

async fn not_found() -> Response {
    ApiError::NotFound("no such route").into_response()
}

async fn method_not_allowed() -> Response {
    let mut r = ApiError::bad_request("method not allowed on this route").into_response();
    *r.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    r
}

#[cfg(test)]
mod tests {
    use super::logged_path;

    #[test]
    fn a_connect_links_token_is_never_a_logged_path() {
        assert_eq!(logged_path("/connect/s3cr3t"), "/connect/\u{2026}");
        assert_eq!(
            logged_path("/connect/s3cr3t/start"),
            "/connect/\u{2026}/start"
        );
        assert_eq!(logged_path("/api/audit"), "/api/audit");
    }
}
