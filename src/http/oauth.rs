//! `/api/oauth/...`: the tenant's status, and the three steps of the flow.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::Admin;
use super::body::{JsonBody, OptionalJsonBody};
use super::error::ApiError;
use crate::app::App;
use crate::db::{accounts, audit};
use crate::domain::ProviderKind;
use crate::flow::{self, AuthorizeBody, CallbackOutcome, CallbackQuery};

pub fn router() -> Router<App> {
    Router::new()
        .route("/api/oauth/status", get(status))
        .route("/api/oauth/{provider}/authorize", post(authorize))
        .route("/api/oauth/{provider}/callback", get(callback))
        .route("/api/oauth/{provider}/disconnect", post(disconnect))
}

/// An unknown provider is 404; a known, unconfigured one is 409.
fn provider(app: &App, raw: &str) -> Result<ProviderKind, ApiError> {
    let kind = ProviderKind::parse(raw).ok_or(ApiError::NotFound("no such provider"))?;
    if app.providers.get(kind).is_none() {
        return Err(ApiError::provider_not_configured(kind.as_str()));
    }
    Ok(kind)
}

fn time(unix: Option<i64>) -> Value {
    unix.map(crate::rfc3339)
        .map(Value::from)
        .unwrap_or(Value::Null)
}

#[tracing::instrument(skip_all, fields(tenant_id))]
async fn status(State(app): State<App>, Admin(caller): Admin) -> Result<Json<Value>, ApiError> {
    let mut providers = Map::new();
    for kind in ProviderKind::ALL {
        let mut entry = Map::new();
        match app.providers.get(kind) {
            Some(p) => {
                entry.insert("configured".into(), true.into());
                entry.extend(p.status_fields());
                entry.insert(
                    "last_error".into(),
                    app.providers
                        .error(kind)
                        .map(Value::from)
                        .unwrap_or(Value::Null),
                );
            }
            None => {
                entry.insert("configured".into(), false.into());
            }
        }
        providers.insert(kind.as_str().into(), Value::Object(entry));
    }
    let mut last_events: std::collections::HashMap<String, Value> =
        audit::last_per_account(&app.db, caller.tenant.as_str())
            .await?
            .into_iter()
            .map(|(id, action, outcome, at)| {
                (
                    id,
                    json!({"action": action, "outcome": outcome, "at": crate::rfc3339(at)}),
                )
            })
            .collect();
    let accounts: Vec<Value> = accounts::list_for_tenant(&app.db, caller.tenant.as_str())
        .await?
        .into_iter()
        .map(|a| {
            let last_event = last_events.remove(&a.id).unwrap_or(Value::Null);
            json!({
                "id": a.id,
                "provider": a.provider,
                "email": a.email,
                "auth_type": a.auth_type,
                "status": a.status,
                "scopes": a.scopes.split_whitespace().collect::<Vec<_>>(),
                "token_expires_at": time(a.token_expires_at),
                "connected_at": time(a.connected_at),
                "last_refresh_at": time(a.last_refresh_at),
                "last_error": a.last_error,
                "consecutive_failures": a.consecutive_failures,
                "last_event": last_event,
            })
        })
        .collect();
    Ok(Json(json!({"providers": providers, "accounts": accounts})))
}

#[tracing::instrument(skip_all, fields(tenant_id, provider = %provider_raw))]
async fn authorize(
    State(app): State<App>,
    Path(provider_raw): Path<String>,
    Admin(caller): Admin,
    OptionalJsonBody(body): OptionalJsonBody<AuthorizeBody>,
) -> Result<Response, ApiError> {
    let kind = provider(&app, &provider_raw)?;
    let out = flow::authorize(&app, &caller, kind, body).await?;
    Ok(Json(out).into_response())
}

#[tracing::instrument(skip_all, fields(provider = %provider_raw))]
async fn callback(
    State(app): State<App>,
    Path(provider_raw): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let kind = provider(&app, &provider_raw)?;
    // Read by hand: the first value of each name wins, and no shape of
    // query can make the extractor itself fail.
    let mut q = CallbackQuery::default();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match k.as_ref() {
            "code" => &mut q.code,
            "state" => &mut q.state,
            "error" => &mut q.error,
            "error_description" => &mut q.error_description,
            _ => continue,
        };
        slot.get_or_insert_with(|| v.into_owned());
    }
    Ok(match flow::callback(&app, kind, q).await {
        CallbackOutcome::Redirect(location) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, location),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
        )
            .into_response(),
        CallbackOutcome::Refused(why) => (
            StatusCode::BAD_REQUEST,
            [(header::CACHE_CONTROL, "no-store")],
            Html(error_page(why)),
        )
            .into_response(),
    })
}

/// The page for a callback whose state cannot be trusted: there is no
/// trusted place to send the browser, so it says what happened instead.
fn error_page(why: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Sign-in not completed</title></head>\
         <body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem\">\
         <h1>Sign-in not completed</h1><p>{why}</p>\
         <p>Nothing was changed. Close this tab and start the connection again from the admin page.</p>\
         </body></html>"
    )
}

#[derive(Deserialize)]
struct DisconnectBody {
    account_id: String,
}

#[tracing::instrument(skip_all, fields(tenant_id, provider = %provider_raw))]
async fn disconnect(
    State(app): State<App>,
    Path(provider_raw): Path<String>,
    Admin(caller): Admin,
    JsonBody(body): JsonBody<DisconnectBody>,
) -> Result<Response, ApiError> {
    let kind = provider(&app, &provider_raw)?;
    let out = flow::disconnect(&app, &caller, kind, &body.account_id).await?;
    Ok(Json(out).into_response())
}
