//! `/api/accounts/{id}/token`: what a mail worker asks just before it logs in.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde_json::json;

use super::auth::Service;
use super::error::ApiError;
use crate::app::App;
use crate::domain::AccountId;
use crate::tokens;
use crate::xoauth2::xoauth2;

pub fn router() -> Router<App> {
    Router::new().route("/api/accounts/{id}/token", post(token))
}

/// Carries a live token: never cached by anything in between.
async fn token(
    State(app): State<App>,
    Path(raw_id): Path<String>,
    Service(caller): Service,
) -> Result<impl IntoResponse, ApiError> {
    let id = AccountId::parse(&raw_id).map_err(|_| ApiError::account_not_found())?;
    let g = tokens::fresh_token(&app, caller.tenant.as_str(), &id.to_string()).await?;
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    Ok((
        no_store,
        Json(json!({
            "access_token": g.access_token.expose_secret(),
            "expires_at": crate::rfc3339(g.expires_at),
            "email": g.email,
            "xoauth2": xoauth2(&g.email, &g.access_token).expose_secret(),
            "imap": {"host": g.servers.imap.host, "port": g.servers.imap.port, "tls": true},
            "smtp": {"host": g.servers.smtp.host, "port": g.servers.smtp.port, "starttls": true},
        })),
    ))
}
