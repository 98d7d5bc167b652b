//! Connect links: the admin routes under `/api/connect-links` (in the
//! OpenAPI document), and the owner's pages under `/connect/{token}`
//! (HTML for a browser with no login, kept out of the document like the
//! callback's pages). Every owner's page is `no-store`, sends no referrer,
//! runs no script and cannot be framed; `/connect/` is rate-limited per
//! client address ([`Limiter`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::body::JsonBody;
use super::error::{ApiError, ErrorBody};
use super::responses::{ForbiddenAdmin, PayloadTooLarge, Unauthorized, UnsupportedMediaType};
use crate::app::App;
use crate::core::flow::{FlowError, LinkEnd};
use crate::core::links::{self, Closed, CreateLinkBody, CreatedLink, LinkView, StartError};
use crate::db::links::LinkState;
use crate::domain::ProviderKind;
use crate::oauth::registry;
use crate::oauth::CallbackFailure;

/// `/connect/` requests one client address may make per minute (per replica).
pub const REQUESTS_PER_MINUTE: u32 = 30;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
}

/// The owner's pages, rate-limited per client address.
pub fn pages() -> Router<App> {
    let limiter = Arc::new(Limiter::new(REQUESTS_PER_MINUTE));
    Router::new()
        .route("/connect/{token}", axum::routing::get(page))
        .route("/connect/{token}/start", axum::routing::post(start))
        .layer(axum::middleware::from_fn_with_state(limiter, limit))
}

/// Make a connect link
///
/// Admin route (`role=admin`). A link lets a mailbox's owner connect it
/// without an admin JWT: send them `url` (shown this once; only its hash
/// is stored). What it connects lands in the caller's tenant with the
/// caller as the actor. It works once, until `expires_at`.
#[utoipa::path(
    post,
    path = "/api/connect-links",
    operation_id = "create_connect_link",
    tag = "connect links",
    security(("bearer_jwt" = [])),
    request_body = CreateLinkBody,
    responses(
        (status = 201, description = "The link", body = CreatedLink),
        (status = 400, description = "Not JSON, an unknown field, `expires_in` out of 1..2592000, an unknown provider or a malformed address", body = ErrorBody,
         example = json!({"error": "invalid_request", "message": "expires_in must be between 1 and 2592000 seconds"})),
        (status = 401, response = Unauthorized),
        (status = 403, response = ForbiddenAdmin),
        (status = 409, description = "The provider is not configured", body = ErrorBody,
         example = json!({"error": "provider_not_configured", "message": "the google provider is not configured on this server"})),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
    )
)]
#[tracing::instrument(skip_all, fields(tenant_id))]
async fn create(
    State(app): State<App>,
    Admin(caller): Admin,
    JsonBody(body): JsonBody<CreateLinkBody>,
) -> Result<impl IntoResponse, ApiError> {
    let link = links::create(&app, &caller, body).await?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(link),
    ))
}

/// The tenant's connect links
///
/// Admin route (`role=admin`). Newest first, without their tokens.
#[utoipa::path(
    get,
    path = "/api/connect-links",
    operation_id = "list_connect_links",
    tag = "connect links",
    security(("bearer_jwt" = [])),
    responses(
        (status = 200, description = "The tenant's links, newest first", body = LinkList),
        (status = 401, response = Unauthorized),
        (status = 403, response = ForbiddenAdmin),
    )
)]
#[tracing::instrument(skip_all, fields(tenant_id))]
async fn list(State(app): State<App>, Admin(caller): Admin) -> Result<Json<LinkList>, ApiError> {
    Ok(Json(LinkList {
        links: links::list(&app, &caller).await?,
    }))
}

/// The list route's body: an object, so fields can be added later.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LinkList {
    links: Vec<LinkView>,
}

/// Revoke a connect link
///
/// Admin route (`role=admin`). Its page then answers 410 and a flow
/// started from it connects nothing. Revoking a revoked or expired link
/// again is 204; a used one is 409 `link_used` (disconnect the account
/// instead).
#[utoipa::path(
    delete,
    path = "/api/connect-links/{id}",
    operation_id = "revoke_connect_link",
    tag = "connect links",
    security(("bearer_jwt" = [])),
    params(("id" = String, Path, format = "uuid", description = "The link's id; another tenant's or an unknown one answers 404")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, response = Unauthorized),
        (status = 403, response = ForbiddenAdmin),
        (status = 404, description = "No such link in the tenant", body = ErrorBody,
         example = json!({"error": "not_found", "message": "no such connect link"})),
        (status = 409, description = "The link was already used", body = ErrorBody,
         example = json!({"error": "link_used", "message": "this connect link was already used; disconnect the account instead"})),
    )
)]
#[tracing::instrument(skip_all, fields(tenant_id))]
async fn revoke(
    State(app): State<App>,
    Admin(caller): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    links::revoke(&app, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[tracing::instrument(skip_all)]
async fn page(State(app): State<App>, Path(token): Path<String>) -> Response {
    match links::open(&app, &token).await {
        Ok(Ok(row)) => {
            let offered = links::offered(&app, &row);
            let mut body = format!(
                "<p>The platform of the organisation <strong>{}</strong> asks to connect your mailbox{}.</p>\
                 <p>Once connected, it can <strong>read your mail and send mail as you</strong>, until you \
                 disconnect it or remove its access at your mail provider. You sign in at your provider; \
                 your password is never shown to this service.</p>",
                esc(&row.tenant_id),
                row.email
                    .as_deref()
                    .map(|e| format!(" <strong>{}</strong>", esc(e)))
                    .unwrap_or_default(),
            );
            if offered.is_empty() {
                body.push_str("<p>No mail provider can be used right now. Ask the person who sent you this link.</p>");
            }
            for kind in offered {
                let naming = registry::naming(kind);
                body.push_str(&format!(
                    "<form method=\"post\" action=\"/connect/{token}/start\">\
                     <input type=\"hidden\" name=\"provider\" value=\"{kind}\">\
                     <button type=\"submit\" aria-describedby=\"for-{kind}\">Connect with {name}</button>\
                     <p id=\"for-{kind}\">{title}</p></form>",
                    token = esc(&token),
                    kind = kind.as_str(),
                    title = esc(naming.title),
                    name = esc(naming.name),
                ));
            }
            owner_page(StatusCode::OK, "Connect your mailbox", &body)
        }
        Ok(Err(closed)) => closed_page(&closed),
        Err(e) => {
            tracing::error!(error = %e, "could not read a connect link");
            unavailable_page()
        }
    }
}

#[tracing::instrument(skip_all)]
async fn start(State(app): State<App>, Path(token): Path<String>, form: Bytes) -> Response {
    let provider = url::form_urlencoded::parse(&form)
        .find(|(k, _)| k == "provider")
        .and_then(|(_, v)| ProviderKind::parse(&v));
    let Some(kind) = provider else {
        return owner_page(
            StatusCode::BAD_REQUEST,
            "Choose a provider",
            "<p>No mail provider was chosen. Go back and press one of the buttons.</p>",
        );
    };
    match links::start(&app, &token, kind).await {
        Ok(url) => {
            let mut r = owner_page(StatusCode::SEE_OTHER, "Signing in", "<p>Going to your provider…</p>");
            if let Ok(v) = HeaderValue::from_str(&url) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Err(StartError::Closed(closed)) => closed_page(&closed),
        Err(StartError::NotOffered) | Err(StartError::Flow(FlowError::NotConfigured(_))) => owner_page(
            StatusCode::BAD_REQUEST,
            "Provider not available",
            "<p>This link cannot be used with that mail provider. Go back and choose another.</p>",
        ),
        Err(StartError::Flow(e)) => {
            tracing::warn!(error = %e, "could not start the flow from a connect link");
            unavailable_page()
        }
    }
}

/// The page a flow started from a link ends on.
pub fn finish_page(end: LinkEnd) -> Response {
    match end {
        LinkEnd::Connected(address) => owner_page(
            StatusCode::OK,
            "Connected",
            &format!(
                "<p>Connected: <strong>{}</strong>. You can close this window.</p>",
                esc(&address)
            ),
        ),
        LinkEnd::Failed(reason, retry) => {
            let again = match retry {
                Some(token) => format!(
                    "<p><a href=\"/connect/{}\">Try again</a> (while the link is valid).</p>",
                    esc(&token)
                ),
                None => "<p>To try again, open the link you received again while it is valid.</p>"
                    .to_owned(),
            };
            owner_page(
                StatusCode::BAD_REQUEST,
                "Not connected",
                &format!(
                    "<p>{} Nothing was connected. <small>({})</small></p>{again}",
                    failure_words(reason),
                    reason.reason()
                ),
            )
        }
        LinkEnd::Closed(state) => closed_page(&Closed::Gone(state)),
    }
}

fn failure_words(reason: CallbackFailure) -> &'static str {
    match reason {
        CallbackFailure::AccessDenied => "You declined the access at your provider.",
        CallbackFailure::ConsentRequired => {
            "Your provider needs an administrator of your organisation to approve this app first."
        }
        CallbackFailure::StateExpired => "The sign-in took longer than 10 minutes.",
        CallbackFailure::TokenExchangeFailed => "Your provider's answer could not be used.",
        CallbackFailure::ProviderUnavailable => "Your provider could not be reached.",
        CallbackFailure::EmailUnavailable => {
            "Your provider did not give a verified mail address for this account."
        }
        CallbackFailure::AccountMismatch => {
            "You signed in with another mailbox than the one this link is for."
        }
    }
}

fn closed_page(closed: &Closed) -> Response {
    match closed {
        Closed::Unknown => owner_page(
            StatusCode::NOT_FOUND,
            "Link not found",
            "<p>This link does not exist. Check that you copied all of it, or ask for a new one.</p>",
        ),
        Closed::Gone(state) => {
            let why = match state {
                LinkState::Used => "This link was already used to connect a mailbox.",
                LinkState::Revoked => "This link was revoked by the person who sent it.",
                LinkState::Expired | LinkState::Open => "This link has expired.",
            };
            owner_page(
                StatusCode::GONE,
                "Link no longer valid",
                &format!("<p>{why} Nothing was connected now. Ask for a new link if you need one.</p>"),
            )
        }
    }
}

fn unavailable_page() -> Response {
    let mut r = owner_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again shortly",
        "<p>The service cannot handle this link right now. Reload this page in a minute.</p>",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    r
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;\
padding:0 1rem;line-height:1.5}form{margin:1rem 0}button{font-size:1.1rem;padding:.7rem 1.2rem;\
min-width:12rem}form p{margin:.2rem 0;color:#555;font-size:.9rem}";

/// No script, no external resource, only this page's own style; never framed.
static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; frame-ancestors 'none'"
    )
});

/// An owner's page with the headers every one of them carries.
fn owner_page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>"
    );
    let mut r = (status, Html(html)).into_response();
    secure_headers(&mut r);
    r
}

fn secure_headers(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if let Ok(v) = HeaderValue::from_str(&CSP) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
}

fn esc(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A fixed-window count of requests per client address, in memory: each
/// replica limits on its own.
pub struct Limiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl Limiter {
    pub fn new(per_minute: u32) -> Limiter {
        Limiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request from `ip` at `now` (seconds); whether it may pass.
    pub fn allow(&self, ip: IpAddr, now: i64) -> bool {
        let minute = now.div_euclid(60);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > 100_000 {
            windows.retain(|_, (m, _)| *m == minute);
        }
        let slot = windows.entry(ip).or_insert((minute, 0));
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 = slot.1.saturating_add(1);
        slot.1 <= self.per_minute
    }
}

async fn limit(State(limiter): State<Arc<Limiter>>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip());
    if let Some(ip) = ip {
        if !limiter.allow(ip, crate::now()) {
            let mut r = owner_page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                "<p>Too many requests from your network. Wait a minute, then reload this page.</p>",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return r;
        }
    }
    let mut r = next.run(req).await;
    secure_headers(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_counts_per_address_and_per_minute() {
        let l = Limiter::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.allow(a, 60));
        assert!(l.allow(a, 61));
        assert!(!l.allow(a, 119));
        assert!(l.allow(b, 119));
        assert!(l.allow(a, 120));
    }

    #[test]
    fn page_text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
