//! `/api/oauth/...`: the tenant's status, and the three steps of the flow.

use axum::extract::{RawQuery, State};
use std::collections::HashMap;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::body::{JsonBody, OptionalJsonBody};
use super::error::{ApiError, ErrorBody};
use super::params::ProviderPath;
use super::responses::{
    ForbiddenAdmin, PayloadTooLarge, ProviderUnavailable, Unauthorized, UnsupportedMediaType,
};
use crate::app::App;
use crate::core::consent::{self, AdminConsentBody};
use crate::core::flow::{
    self, AuthorizeBody, AuthorizeResponse, CallbackOutcome, CallbackQuery, DisconnectResponse,
};
use crate::db::accounts::AccountRow;
use crate::db::{self, accounts, audit};
use crate::diagnosis::Diagnosis;
use crate::domain::{AccountKind, AccountStatus, ProviderKind};
use crate::oauth::registry;
use crate::oauth::CallbackFailure;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(authorize))
        .routes(routes!(admin_consent))
        .routes(routes!(callback))
        .routes(routes!(disconnect))
}

/// The status route's body.
#[derive(Serialize, ToSchema)]
pub struct StatusResponse {
    /// Every provider mailconnect knows, configured or not, keyed by
    /// provider (`microsoft`, `google`, `oidc`), in the order to show them.
    #[schema(value_type = HashMap<String, ProviderStatus>)]
    providers: Map<String, Value>,
    /// The tenant's accounts, in every state.
    accounts: Vec<AccountView>,
}

/// One provider's configuration state. (Built from each provider's own
/// fields at run time, so this schema is documentation only.)
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ProviderStatus {
    /// Whether its client id and secret (and, for `oidc`, issuer) are set.
    configured: bool,
    /// Its short name, for buttons ("Connect with Microsoft").
    #[schema(example = "Microsoft")]
    name: String,
    /// What it connects, in plain words.
    #[schema(example = "Microsoft 365 / Outlook")]
    title: String,
    /// Microsoft only: the `MICROSOFT_OAUTH_TENANT_ID` in use.
    #[schema(nullable = false, example = "common")]
    tenant: Option<String>,
    /// `oidc` only: the issuer.
    #[schema(nullable = false, format = "uri", example = "https://id.example.com")]
    issuer: Option<String>,
    /// Present when configured: the provider's configuration error while
    /// it refuses our client (e.g. an expired client secret:
    /// `invalid_client`), else null; the same on every replica.
    #[schema(nullable, example = json!(null))]
    last_error: Option<Option<String>>,
    /// Present when configured: how mailconnect authenticates to it, and
    /// when that credential expires (a certificate's `notAfter`, a
    /// secret's `*_CLIENT_SECRET_EXPIRES_AT`; null when unknown or none).
    #[schema(nullable = false)]
    credential: Option<CredentialView>,
    /// Present when configured: why the provider refuses our client and
    /// what to do, else null.
    #[schema(nullable, example = json!(null))]
    diagnosis: Option<Option<Diagnosis>>,
    /// Microsoft only, when configured: the directory whose admin
    /// consented for the caller's tenant (`POST
    /// /api/oauth/microsoft/admin-consent`), or null.
    #[schema(nullable, example = json!({"directory": "3f2a6c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b", "granted_at": "2026-11-27T09:00:00Z"}))]
    admin_consent: Option<Option<AdminConsentView>>,
    /// Present when configured: token requests sent to it in the last hour
    /// by every replica, for every tenant (refreshes, code redemptions, app
    /// tokens): what the app registration costs the provider.
    #[schema(nullable = false, minimum = 0, example = 1250)]
    requests_last_hour: Option<i64>,
    /// Present when configured: the budget of token requests per second
    /// (`MAILCONNECT_PROVIDER_RATE_LIMIT`), shared by every replica.
    #[schema(nullable = false, minimum = 1, example = 50)]
    rate_limit: Option<i64>,
}

/// A provider's credential, as the status route shows it (never the
/// credential itself).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CredentialView {
    /// `secret`, `certificate`, `federated` or `key`.
    #[schema(example = "certificate")]
    r#type: String,
    #[schema(format = DateTime, example = "2027-06-30T12:00:00Z")]
    expires_at: Option<String>,
}

/// A tenant's admin consent, as the status route shows it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AdminConsentView {
    /// The directory's tenant id (GUID).
    #[schema(format = "uuid")]
    directory: String,
    #[schema(format = DateTime)]
    granted_at: String,
}

/// One account of the tenant, as the status route lists it (no secrets).
#[derive(Serialize, ToSchema)]
pub struct AccountView {
    #[schema(format = "uuid", example = "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b")]
    id: String,
    #[schema(value_type = ProviderKind, example = "microsoft")]
    provider: String,
    #[schema(format = Email, example = "ops@contoso.com")]
    email: String,
    /// `oauth` while connected or awaiting re-authorisation; `password`
    /// once disconnected.
    #[schema(example = "oauth")]
    auth_type: String,
    #[schema(value_type = AccountStatus, example = "connected")]
    status: String,
    /// `delegated` (a user's own mailbox), `shared` (opened through
    /// `via_account_id`) or `app` (opened with the app's token in
    /// `directory`).
    #[schema(example = "delegated")]
    kind: AccountKind,
    /// A `shared` mailbox's delegate: the connected account whose token
    /// opens it; null for other kinds.
    #[schema(value_type = Option<String>, format = "uuid", example = json!(null))]
    via_account_id: Option<String>,
    /// An `app` mailbox's Microsoft directory (tenant id); null for other
    /// kinds.
    #[schema(example = json!(null))]
    directory: Option<String>,
    /// The scopes the provider granted.
    #[schema(example = json!(["https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send"]))]
    scopes: Vec<String>,
    /// When the stored access token expires; null once disconnected.
    #[schema(format = DateTime, example = "2026-11-27T10:00:00Z")]
    token_expires_at: Option<String>,
    #[schema(format = DateTime, example = "2026-11-27T09:00:00Z")]
    connected_at: Option<String>,
    #[schema(format = DateTime, example = json!(null))]
    last_refresh_at: Option<String>,
    /// Why the last refresh failed (an OAuth error code), if it did.
    #[schema(example = json!(null))]
    last_error: Option<String>,
    /// Refresh failures in a row since the last success.
    #[schema(example = 0)]
    consecutive_failures: i64,
    /// Why it broke and what to do (DESIGN.md "Diagnosis"); null while
    /// healthy, cleared by the next success.
    #[schema(example = json!(null))]
    diagnosis: Option<Diagnosis>,
    /// The account's latest audit event, if any.
    last_event: Option<LastEvent>,
}

impl AccountView {
    /// The account as the status route lists it.
    pub fn of(a: AccountRow, last_event: Option<LastEvent>) -> AccountView {
        AccountView {
            scopes: a.scopes.split_whitespace().map(str::to_owned).collect(),
            token_expires_at: time(a.token_expires_at),
            connected_at: time(a.connected_at),
            last_refresh_at: time(a.last_refresh_at),
            id: a.id.to_string(),
            provider: a.provider.as_str().to_owned(),
            email: a.email.to_string(),
            auth_type: a.auth_type,
            status: a.status.as_str().to_owned(),
            kind: a.kind,
            via_account_id: a.via_account_id.map(|v| v.to_string()),
            directory: a.directory,
            last_error: a.last_error,
            consecutive_failures: a.consecutive_failures,
            diagnosis: Diagnosis::stored(a.cause.as_deref(), a.cause_at),
            last_event,
        }
    }
}

/// An account's latest audit event.
#[derive(Serialize, ToSchema)]
pub struct LastEvent {
    /// `connect`, `reconnect`, `reauth`, `disconnect`, `refresh_failed`, …
    #[schema(example = "connect")]
    action: String,
    #[schema(example = "connected")]
    outcome: String,
    #[schema(format = DateTime, example = "2026-11-27T09:00:00Z")]
    at: String,
}

/// The query parameters the callback appends to the return URL
/// (documentation of the `Location` header of its 303).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(examples(
    json!({"oauth": "connected", "provider": "microsoft", "account_id": "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b"}),
    json!({"oauth": "error", "provider": "google", "reason": "access_denied"})
))]
pub struct CallbackResult {
    /// `connected` or `error`.
    #[schema(pattern = "^(connected|error)$")]
    oauth: String,
    provider: ProviderKind,
    /// With `oauth=connected`: the account's id (kept when an address the
    /// tenant already has is connected again).
    #[schema(nullable = false, format = "uuid")]
    account_id: Option<String>,
    /// With `oauth=error`.
    #[schema(nullable = false)]
    reason: Option<CallbackFailure>,
}

/// A known provider (the path already answered 404 for an unknown one)
/// that is not configured is 409.
fn configured(app: &App, kind: ProviderKind) -> Result<ProviderKind, ApiError> {
    if app.provider(kind).is_none() {
        return Err(ApiError::provider_not_configured(kind.as_str()));
    }
    Ok(kind)
}

fn time(unix: Option<i64>) -> Option<String> {
    unix.map(crate::rfc3339)
}

/// Providers and the tenant's accounts
///
/// Admin route (`role=admin`). Every provider mailconnect knows with its
/// configuration state, and every account of the caller's tenant with its
/// status (`connected`, `needs_reauth`, `disconnected`), token expiry, last
/// error and latest audit event.
#[utoipa::path(
    get,
    path = "/api/oauth/status",
    tag = "oauth",
    security(("bearer_jwt" = [])),
    responses(
        (status = 200, description = "The providers and the tenant's accounts", body = StatusResponse,
         example = json!({
             "providers": {
                 "microsoft": {"configured": true, "tenant": "common", "last_error": null},
                 "google": {"configured": false},
                 "oidc": {"configured": true, "issuer": "https://id.example.com", "last_error": null}
             },
             "accounts": [{
                 "id": "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b", "provider": "microsoft",
                 "email": "ops@contoso.com", "auth_type": "oauth", "status": "connected",
                 "kind": "delegated", "via_account_id": null, "directory": null,
                 "scopes": ["https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send"],
                 "token_expires_at": "2026-11-27T10:00:00Z", "connected_at": "2026-11-27T09:00:00Z",
                 "last_refresh_at": null, "last_error": null, "consecutive_failures": 0,
                 "last_event": {"action": "connect", "outcome": "connected", "at": "2026-11-27T09:00:00Z"}
             }]
         })),
        (status = 401, response = Unauthorized),
        (status = 403, response = ForbiddenAdmin),
    )
)]
#[tracing::instrument(skip_all, fields(tenant_id))]
async fn status(
    State(app): State<App>,
    Admin(caller): Admin,
) -> Result<Json<StatusResponse>, ApiError> {
    let health = db::providers::health(&app.db).await?;
    let mut providers = Map::new();
    for kind in ProviderKind::ALL {
        let naming = registry::naming(kind);
        let mut entry = Map::new();
        entry.insert("configured".into(), app.provider(kind).is_some().into());
        entry.insert("name".into(), naming.name.into());
        entry.insert("title".into(), naming.title.into());
        if let Some(p) = app.provider(kind) {
            entry.extend(p.status_fields());
            let credential = p.credential();
            entry.insert(
                "credential".into(),
                serde_json::json!({
                    "type": credential.kind(),
                    "expires_at": credential.expires_at().map(crate::rfc3339),
                }),
            );
            let troubled = health
                .iter()
                .find(|h| h.provider == kind.as_str() && h.state == "misconfigured");
            let error = troubled.map(|h| {
                let code = h.error.as_deref().unwrap_or("invalid_client");
                Value::from(format!(
                    "{code}: the provider refused the client credentials"
                ))
            });
            entry.insert("last_error".into(), error.unwrap_or(Value::Null));
            let diagnosis = troubled.map(|h| {
                let cause = h.cause.as_deref().unwrap_or("client_credentials_invalid");
                Diagnosis::stored(Some(cause), Some(h.changed_at))
            });
            entry.insert("diagnosis".into(), serde_json::json!(diagnosis.flatten()));
            let sent = db::pace::sent_since(&app.db, kind.as_str(), crate::now() - 3_600).await?;
            entry.insert("requests_last_hour".into(), sent.into());
            entry.insert("rate_limit".into(), app.pace.per_second.into());
        }
        if kind == ProviderKind::Microsoft && app.provider(kind).is_some() {
            let consent = db::consents::get(&app.db, caller.tenant.as_str())
                .await?
                .map(|c| {
                    serde_json::json!({
                        "directory": c.directory,
                        "granted_at": crate::rfc3339(c.granted_at),
                    })
                });
            entry.insert("admin_consent".into(), consent.unwrap_or(Value::Null));
        }
        providers.insert(kind.as_str().into(), Value::Object(entry));
    }
    let mut last_events: std::collections::HashMap<String, LastEvent> =
        audit::last_per_account(&app.db, caller.tenant.as_str())
            .await?
            .into_iter()
            .map(|(id, action, outcome, at)| {
                (
                    id,
                    LastEvent {
                        action,
                        outcome,
                        at: crate::rfc3339(at),
                    },
                )
            })
            .collect();
    let accounts: Vec<AccountView> = accounts::list_for_tenant(&app.db, &caller.tenant)
        .await?
        .into_iter()
        .map(|a| {
            let last_event = last_events.remove(&a.id.to_string());
            AccountView::of(a, last_event)
        })
        .collect();
    Ok(Json(StatusResponse {
        providers,
        accounts,
    }))
}

/// Start connecting a mailbox
///
/// Admin route (`role=admin`). Returns the provider's authorization URL
/// (authorization code flow with PKCE S256 and a nonce) to send the
/// admin's browser to, and the signed `state` it carries (valid once, for
/// 10 minutes). The body is optional: `account_id` re-authorises that
/// account, `login_hint` preselects an address, `return_to` (a relative
/// path) replaces `OAUTH_RETURN_URL` for this flow.
#[utoipa::path(
    post,
    path = "/api/oauth/{provider}/authorize",
    tag = "oauth",
    security(("bearer_jwt" = [])),
    params(ProviderPath),
    request_body(content = Option<AuthorizeBody>, description = "Optional: no body (or an empty one) means `{}`",
        content_type = "application/json"),
    responses(
        (status = 200, description = "Send the browser to `authorization_url`", body = AuthorizeResponse,
         headers(("Set-Cookie" = String, description = "Only for a same-origin browser request (`Sec-Fetch-Site: same-origin`) from an https or loopback origin, i.e. the admin page: `__Host-mailconnect-flow-{id}=…; Max-Age=600; Path=/; Secure; HttpOnly; SameSite=Lax`, which binds the flow to this browser (the callback refuses the state elsewhere)"))),
        (status = 400, description = "A malformed body or field", body = ErrorBody, examples(
            ("invalid_return_to" = (value = json!({"error": "invalid_return_to", "message": "return_to must be a relative path starting with a single /"}))),
            ("invalid_request" = (value = json!({"error": "invalid_request", "message": "the body is not valid JSON"}))),
            ("login_hint" = (value = json!({"error": "invalid_request", "message": "login_hint is not a plausible address"}))),
        )),
        (status = 401, response = Unauthorized),
        (status = 403, response = ForbiddenAdmin),
        (status = 404, description = "An unknown provider, or an `account_id` the tenant does not have", body = ErrorBody, examples(
            ("no such provider" = (value = json!({"error": "not_found", "message": "no such provider"}))),
            ("no such account" = (value = json!({"error": "not_found", "message": "no such account"}))),
        )),
        (status = 409, description = "The provider is not configured, or `account_id` belongs to another provider", body = ErrorBody, examples(
            ("provider_not_configured" = (value = json!({"error": "provider_not_configured", "message": "the google provider is not configured on this server"}))),
            ("provider_mismatch" = (value = json!({"error": "provider_mismatch", "message": "this account is connected through google"}))),
        )),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 502, description = "`oidc` only: the provider's discovery document does not match this server's configuration", body = ErrorBody,
         example = json!({"error": "provider_misconfigured", "message": "the provider's discovery document does not match this server's configuration"})),
        (status = 503, response = ProviderUnavailable),
    )
)]
#[tracing::instrument(skip_all, fields(tenant_id, provider = %provider))]
async fn authorize(
    State(app): State<App>,
    Admin(caller): Admin,
    ProviderPath { provider }: ProviderPath,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<AuthorizeBody>,
) -> Result<Response, ApiError> {
    let kind = configured(&app, provider)?;
    let started =
        flow::authorize(&app, &caller, kind, body, from_this_sites_page(&headers)).await?;
    Ok(started_response(started))
}

/// A started flow's answer, with its browser binding cookie, if any.
fn started_response(started: flow::Started) -> Response {
    let mut response = Json(started.response).into_response();
    if let Some(binding) = started.binding {
        let cookie = format!(
            "{}={}; Max-Age={}; Path=/; Secure; HttpOnly; SameSite=Lax",
            binding.cookie_name,
            secrecy::ExposeSecret::expose_secret(&binding.secret),
            crate::oauth::state::LIFETIME_SECS,
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// Start an admin consent (Microsoft)
///
/// Admin route (`role=admin`). Returns the URL of Microsoft's admin
/// consent page for a directory (`{authority}/{directory}/v2.0/adminconsent`)
/// to send an admin of that directory to, and the signed `state` it
/// carries (valid once, for 10 minutes, only for an admin consent). At the
/// callback mailconnect confirms the consent by obtaining the app's own
/// token from the returned directory, records the directory for the
/// caller's tenant (a new consent replaces it: see the status route's
/// `admin_consent`), audits it, sends `tenant.admin_consented` and
/// redirects with `?oauth=admin_consented&provider=microsoft&directory={tid}`
/// (or `?oauth=error&provider=microsoft&reason=R`).
#[utoipa::path(
    post,
    path = "/api/oauth/microsoft/admin-consent",
    tag = "oauth",
    security(("bearer_jwt" = [])),
    request_body(content = Option<AdminConsentBody>, description = "Optional: no body (or an empty one) means `{}`",
        content_type = "application/json"),
    responses(
        (status = 200, description = "Send an admin of the directory to `authorization_url`", body = AuthorizeResponse,
         headers(("Set-Cookie" = String, description = "As for authorize: only for a same-origin request of the admin page"))),
        (status = 400, description = "A malformed body or field", body = ErrorBody, examples(
            ("invalid_return_to" = (value = json!({"error": "invalid_return_to", "message": "return_to must be a relative path starting with a single /"}))),
            ("invalid_request" = (value = json!({"error": "invalid_request", "message": "directory must be a Microsoft tenant id (GUID) or domain"}))),
        )),
        (status = 401, response = Unauthorized),
        (status = 403, response = ForbiddenAdmin),
        (status = 409, description = "Microsoft is not configured, or the directory is `consumers` (personal accounts have no admin)", body = ErrorBody, examples(
            ("provider_not_configured" = (value = json!({"error": "provider_not_configured", "message": "the microsoft provider is not configured on this server"}))),
            ("admin_consent_unavailable" = (value = json!({"error": "admin_consent_unavailable", "message": "personal Microsoft accounts have no admin to consent; name an organisation's directory"}))),
        )),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
    )
)]
#[tracing::instrument(skip_all, fields(tenant_id))]
async fn admin_consent(
    State(app): State<App>,
    Admin(caller): Admin,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<AdminConsentBody>,
) -> Result<Response, ApiError> {
    let started = consent::start(&app, &caller, body, from_this_sites_page(&headers)).await?;
    Ok(started_response(started))
}

/// Whether an authorize request comes from a page of this site in a
/// browser that will keep a `__Host-` cookie: a same-origin fetch
/// (`Sec-Fetch-Site`, sent by every current browser and by no API client)
/// from a secure origin (https, or loopback, which browsers treat as
/// secure). Only such flows are bound to their browser; an API caller that
/// hands the URL to another browser gets an unbound state (README).
fn from_this_sites_page(headers: &HeaderMap) -> bool {
    let same_origin = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"same-origin");
    let secure_origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .and_then(|o| url::Url::parse(o).ok())
        .is_some_and(|o| {
            o.scheme() == "https"
                || matches!(o.host(), Some(url::Host::Domain("localhost")))
                || matches!(o.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
                || matches!(o.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
        });
    same_origin && secure_origin
}

/// The request's flow cookies (`__Host-mailconnect-flow-…`), by name.
fn flow_cookies(headers: &HeaderMap) -> HashMap<String, String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| name.starts_with(crate::oauth::state::BINDING_COOKIE_PREFIX))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The provider's redirect back
///
/// No authentication: the browser arrives here from the provider with
/// `code` and `state` (or `error`, `error_description` and `state`). The
/// state is verified and consumed (it works once, on any replica), the code
/// redeemed, the id_token validated and the account stored; the browser is
/// then sent to `OAUTH_RETURN_URL` (or the flow's `return_to`) with
/// `?oauth=connected&provider=P&account_id=ID` or
/// `?oauth=error&provider=P&reason=R` (see `CallbackResult` and
/// `CallbackFailure`). A state that does not verify, names another provider
/// or was already used answers 400 with an HTML page and no redirect: with
/// no trusted state there is no trusted place to go.
#[utoipa::path(
    get,
    path = "/api/oauth/{provider}/callback",
    tag = "oauth",
    params(
        ProviderPath,
        ("code" = Option<String>, Query, description = "The authorization code (on success)"),
        ("state" = String, Query, description = "The `state` returned by authorize (without it: 400, the HTML page)"),
        ("error" = Option<String>, Query, description = "The provider's OAuth error code (on failure), e.g. `access_denied`"),
        ("error_description" = Option<String>, Query, description = "The provider's text for `error` (ignored)"),
    ),
    responses(
        (status = 303, description = "Back to the app. `Location` is the return URL with `oauth=connected&provider=P&account_id=ID`, or `oauth=error&provider=P&reason=R` where `R` is one of `access_denied`, `consent_required`, `state_expired`, `token_exchange_failed` (including an id_token that fails validation), `provider_unavailable`, `email_unavailable` (no address, or one the provider has not verified), `account_mismatch`. E.g. `/?oauth=connected&provider=microsoft&account_id=0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b` or `/?oauth=error&provider=microsoft&reason=access_denied`.",
         headers(
             ("Location" = String, description = "The return URL with the outcome in its query (`CallbackResult`)"),
             ("Cache-Control" = String, description = "`no-store`"),
             ("Set-Cookie" = String, description = "For a flow bound to its browser: the flow cookie, expired (`Max-Age=0`)"),
         )),
        (status = 400, description = "No state, or one that does not verify, names another provider, was already used, or is bound to another browser (its flow cookie is missing or wrong): an HTML page saying so, no redirect; or a flow started from a connect link that failed: the link's page saying why in plain words (nothing was connected, the link stays usable)",
         body = String, content_type = "text/html",
         example = "<!doctype html><html lang=\"en\"><head><title>Sign-in not completed</title></head><body><h1>Sign-in not completed</h1><p>This sign-in response was already used.</p><p>Nothing was changed. Close this tab and start the connection again from the admin page.</p></body></html>"),
        (status = 200, description = "A flow started from a connect link, connected: the link's HTML page (\"Connected: address. You can close this window.\"); the link is used",
         body = String, content_type = "text/html"),
        (status = 404, description = "An unknown provider", body = ErrorBody,
         example = json!({"error": "not_found", "message": "no such provider"})),
        (status = 409, description = "The provider is not configured", body = ErrorBody,
         example = json!({"error": "provider_not_configured", "message": "the google provider is not configured on this server"})),
        (status = 410, description = "A flow started from a connect link that was used or revoked meanwhile: the link's HTML page; nothing was connected",
         body = String, content_type = "text/html"),
        (status = 503, description = "The database is unavailable, so the state cannot be checked: an HTML page asking to reload in a few seconds (nothing was spent; the same response works once the database is back)",
         body = String, content_type = "text/html",
         headers(("Retry-After" = String, description = "Seconds to wait"))),
    )
)]
#[tracing::instrument(skip_all, fields(provider = %provider))]
async fn callback(
    State(app): State<App>,
    ProviderPath { provider }: ProviderPath,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let kind = configured(&app, provider)?;
    let q = CallbackQuery {
        flow_cookies: flow_cookies(&headers),
        ..CallbackQuery::parse(query.as_deref())
    };
    Ok(match crate::core::callback::callback(&app, kind, q).await {
        CallbackOutcome::Redirect {
            location,
            forget_cookie,
        } => {
            let mut r = (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, location),
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                ],
            )
                .into_response();
            if let Some(name) = forget_cookie {
                let gone = format!("{name}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax");
                if let Ok(v) = HeaderValue::from_str(&gone) {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            r
        }
        CallbackOutcome::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::RETRY_AFTER, "5"),
            ],
            Html(page(
                "Sign-in not completed yet",
                "The service cannot check this sign-in right now.",
                "Nothing was changed. Reload this page in a few seconds to finish connecting.",
            )),
        )
            .into_response(),
        CallbackOutcome::Link(end) => super::links::finish_page(end),
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
    page(
        "Sign-in not completed",
        why,
        "Nothing was changed. Close this tab and start the connection again from the admin page.",
    )
}

fn page(title: &str, what: &str, next: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title></head>\
         <body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem\">\
         <h1>{title}</h1><p>{what}</p><p>{next}</p></body></html>"
    )
}

/// The body of `POST /api/oauth/{provider}/disconnect`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"account_id": "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b"}))]
pub struct DisconnectBody {
    /// The account to disconnect; it must belong to `{provider}`.
    #[schema(format = "uuid")]
    account_id: String,
}

/// Disconnect a mailbox
///
/// Admin route (`role=admin`). Revokes consent where the provider can
/// (Google), then deletes the stored tokens; the account falls back to
/// password authentication. A failed revocation does not keep the account
/// connected (the audit event says so). Disconnecting again answers the same.
#[utoipa::path(
    post,
    path = "/api/oauth/{provider}/disconnect",
    tag = "oauth",
    security(("bearer_jwt" = [])),
    params(ProviderPath),
    request_body = DisconnectBody,
    responses(
        (status = 200, description = "Disconnected", body = DisconnectResponse),
        (status = 400, description = "No body, not JSON, or no `account_id`", body = ErrorBody, examples(
            ("no body" = (value = json!({"error": "invalid_request", "message": "a JSON body is required"}))),
            ("wrong field" = (value = json!({"error": "invalid_request", "message": "the JSON body has a wrong field: missing field `account_id` at line 1 column 2"}))),
        )),
        (status = 401, response = Unauthorized),
        (status = 403, response = ForbiddenAdmin),
        (status = 404, description = "An unknown provider, or an account the tenant does not have", body = ErrorBody, examples(
            ("no such provider" = (value = json!({"error": "not_found", "message": "no such provider"}))),
            ("no such account" = (value = json!({"error": "not_found", "message": "no such account"}))),
        )),
        (status = 409, description = "The provider is not configured, or the account belongs to another provider", body = ErrorBody, examples(
            ("provider_not_configured" = (value = json!({"error": "provider_not_configured", "message": "the google provider is not configured on this server"}))),
            ("provider_mismatch" = (value = json!({"error": "provider_mismatch", "message": "this account is connected through google"}))),
        )),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
    )
)]
#[tracing::instrument(skip_all, fields(tenant_id, provider = %provider))]
async fn disconnect(
    State(app): State<App>,
    Admin(caller): Admin,
    ProviderPath { provider }: ProviderPath,
    JsonBody(body): JsonBody<DisconnectBody>,
) -> Result<Response, ApiError> {
    let kind = configured(&app, provider)?;
    let out = flow::disconnect(&app, &caller, kind, &body.account_id).await?;
    Ok(Json(out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented reasons are exactly the ones the callback sends (the
    /// `From` match is exhaustive, so a new failure cannot go undocumented).
    #[test]
    fn documented_callback_reasons_match_the_redirects() {
        let all = [
            CallbackFailure::AccessDenied,
            CallbackFailure::ConsentRequired,
            CallbackFailure::StateExpired,
            CallbackFailure::TokenExchangeFailed,
            CallbackFailure::ProviderUnavailable,
            CallbackFailure::EmailUnavailable,
            CallbackFailure::AccountMismatch,
        ];
        for f in all {
            assert_eq!(serde_json::to_value(f).unwrap(), f.reason());
        }
    }
}
