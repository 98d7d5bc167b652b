//! # Fake Google (OAuth 2.0 / OpenID Connect)
//!
//! A **strict local fake** of Google's OAuth 2.0 endpoints
//! (`accounts.google.com/o/oauth2/v2/auth`, `oauth2.googleapis.com/token`,
//! `/revoke`, `openidconnect.googleapis.com/v1/userinfo`, the JWKS at
//! `www.googleapis.com/oauth2/v3/certs` and the discovery document), in the
//! same style as [`crate::FakeMicrosoft`]. It refuses what Google refuses:
//! unregistered redirect URIs, PKCE mismatches, reused codes, revoked grants,
//! and it behaves like Google where Google differs from Microsoft: refresh
//! tokens are **not rotated** (the refresh response has no `refresh_token`),
//! a refresh token is only issued for `access_type=offline`, the `email`
//! scope is reported as `https://www.googleapis.com/auth/userinfo.email`,
//! the id_token issuer is the real `https://accounts.google.com`, and revoking
//! any token of a grant kills the whole grant.
//!
//! **This is a test/demo sandbox. It is never to be used in production**: it
//! signs id_tokens with a private key that is checked into the repository
//! (the same key as the Microsoft fake, `kid` [`crate::KEY_ID`]) and lets
//! anyone "sign in" as any configured user without a password.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mailconnect_sandbox::google::{FakeGoogle, FakeGoogleConfig};
//! let google = FakeGoogle::start(FakeGoogleConfig::new(
//!     "client-id.apps.googleusercontent.com",
//!     "GOCSPX-client-secret",
//!     "http://127.0.0.1:8080/oauth/google/callback",
//! ))
//! .await?;
//! let (auth, token) = (google.auth_url(), google.token_url());
//! # let _ = (auth, token); Ok(()) }
//! ```
//!
//! ## Rules the fake applies
//!
//! * A refresh token is issued at the code grant only when the authorize
//!   request had `access_type=offline` **and** `prompt` contained `consent`
//!   (Google also issues one on the very first consent; the fake keeps the
//!   simpler, stricter rule, which is what a client that always sends
//!   `prompt=consent` sees anyway).
//! * Granted scopes come back sorted in a fixed order (by scope with any
//!   `https://` prefix removed), e.g.
//!   `https://mail.google.com/ openid https://www.googleapis.com/auth/userinfo.email`.
//! * `openid`, `email` and `profile` cannot be unticked on the consent screen;
//!   [`FakeGoogle::set_granted_scopes_for_next_login`] only removes other
//!   scopes (such as `https://mail.google.com/`).
//! * `include_granted_scopes=true` adds the scopes the user consented to
//!   earlier (until a revocation or [`FakeGoogle::revoke_user`]).
//! * Like Google, the id_token and userinfo carry `email`/`email_verified`
//!   only when the `email` scope was granted, and `name`/`given_name`/
//!   `family_name`/`picture` only when the `profile` scope was granted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::consent::Decision;
use crate::idp::client_auth::{authenticate, ClientAuthProblem};
use crate::idp::codes::{Binding, CodeProblem, Codes};
use crate::idp::core::{
    openid_endpoint_knobs, refresh_token_in, serve_token_request, shared_knobs, Core,
    OpenIdEndpoints,
};
use crate::idp::faults;
use crate::idp::http::{
    bearer_token, html, html_escape, is_form, json_response, parse_params, redirect_error,
    redirect_with, truncated_json, unreadable_error, with_retry_after, ResponseMode,
};
use crate::idp::keys::{at_hash, Signer};
use crate::idp::pkce::{self, ChallengeProblem};
use crate::idp::tokens::{expiry, Access, AccessTokens};
use crate::idp::users::{self, PickProblem};
use crate::idp::{display_name, random_token, sha256};
use crate::{AccessTokenInfo, Fault, IdTokenFlaw};

/// The issuer Google puts in id_tokens (and that this fake uses too).
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// The full-access Gmail scope (IMAP/SMTP with XOAUTH2).
pub const GMAIL_SCOPE: &str = "https://mail.google.com/";
/// What Google reports the `email` scope as in a token response.
pub const USERINFO_EMAIL_SCOPE: &str = "https://www.googleapis.com/auth/userinfo.email";
/// What Google reports the `profile` scope as in a token response.
pub const USERINFO_PROFILE_SCOPE: &str = "https://www.googleapis.com/auth/userinfo.profile";

/// The form fields whose values `last_token_request` hides.
const SECRET_FIELDS: &[&str] = &["client_secret", "code", "code_verifier", "refresh_token"];

const GOOGLEAPIS_AUTH_PREFIX: &str = "https://www.googleapis.com/auth/";
const ID_TOKEN_LIFETIME_SECS: i64 = 3600;

// ---------------------------------------------------------------------------
// Public configuration types
// ---------------------------------------------------------------------------

/// A Google account that can "sign in" at the fake authorize endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoogleUser {
    /// Google's stable account id (a 21-digit decimal string).
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub name: String,
    /// The Workspace domain (`hd` claim); `None` for consumer accounts.
    pub hosted_domain: Option<String>,
}

impl GoogleUser {
    /// A consumer account with a verified address. The `sub` is derived from
    /// the address (case-insensitively), so it is stable across runs.
    pub fn gmail(addr: &str) -> GoogleUser {
        GoogleUser {
            sub: google_sub(addr),
            email: addr.to_string(),
            email_verified: true,
            name: display_name(addr),
            hosted_domain: None,
        }
    }

    /// Like [`Self::gmail`] but with `email_verified: false`.
    pub fn unverified(addr: &str) -> GoogleUser {
        GoogleUser {
            email_verified: false,
            ..GoogleUser::gmail(addr)
        }
    }

    /// A verified Google Workspace account: `hosted_domain` is the domain of
    /// the address (the `hd` claim).
    pub fn workspace(addr: &str) -> GoogleUser {
        let domain = addr.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
        GoogleUser {
            hosted_domain: domain.filter(|d| !d.is_empty()),
            ..GoogleUser::gmail(addr)
        }
    }
}

impl users::Account for GoogleUser {
    fn address(&self) -> &str {
        &self.email
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> String {
        match (&self.hosted_domain, self.email_verified) {
            (Some(hd), _) => format!("Google Workspace account · {hd}"),
            (None, true) => "Google account".to_string(),
            (None, false) => "Google account (address not verified)".to_string(),
        }
    }
}

/// Configuration of a [`FakeGoogle`].
pub struct FakeGoogleConfig {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    /// The first one is the default user.
    pub users: Vec<GoogleUser>,
    /// Default 3599 s; `expires_in` is exactly this.
    pub access_token_lifetime: Duration,
    /// Default true. When false the id_token carries no `email` /
    /// `email_verified` even with the `email` scope, so the client must call
    /// the userinfo endpoint.
    pub email_in_id_token: bool,
    /// Default false: authorize signs in at once. When true, authorize (after
    /// all its checks) shows a sign-in/consent page listing the users and the
    /// permissions asked, with "Accept" and "Cancel" (→ `error=access_denied`).
    pub interactive: bool,
    /// The app name the consent page shows. Default `"mailconnect"`.
    pub app_name: String,
}

impl FakeGoogleConfig {
    /// One default user `GoogleUser::gmail("ops.sandbox@gmail.com")`, 3599 s
    /// access tokens, email in the id_token.
    pub fn new(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        FakeGoogleConfig {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uri: redirect_uri.into(),
            users: vec![GoogleUser::gmail("ops.sandbox@gmail.com")],
            access_token_lifetime: Duration::from_secs(3599),
            email_in_id_token: true,
            interactive: false,
            app_name: "mailconnect".to_string(),
        }
    }
}

// ---------------------------------------------------------------------------
// Internal state
// ---------------------------------------------------------------------------

/// What a Google code carries besides its binding.
struct CodeData {
    /// Normalized, sorted.
    scopes: Vec<String>,
    email: String,
    offline: bool,
}

/// One authorization (a code redemption): its refresh token and every access
/// token minted from it die together.
struct Grant {
    client_id: String,
    email: String,
    scopes: Vec<String>,
    revoked: bool,
}

/// Each access token belongs to a grant (an index into `grants`).
type AccessRecord = Access<usize>;

struct Mutable {
    core: Core,
    users: Vec<GoogleUser>,
    access_token_lifetime: Duration,
    endpoints: OpenIdEndpoints,
    next_granted: Option<Vec<String>>,
    codes: Codes<CodeData>,
    grants: Vec<Grant>,
    /// Refresh token → index into `grants`.
    refresh_tokens: HashMap<String, usize>,
    access_tokens: AccessTokens<usize>,
    /// Lower-cased email → scopes consented to earlier (for
    /// `include_granted_scopes`).
    consents: HashMap<String, Vec<String>>,
}

impl Mutable {
    fn find_user(&self, email: &str) -> Option<GoogleUser> {
        users::find(&self.users, email)
    }

    fn access_live(&self, at: &AccessRecord) -> bool {
        let grant_live = self.grants.get(at.data).is_some_and(|g| !g.revoked);
        grant_live && at.valid()
    }

    fn refresh_live(&self, token: &str) -> bool {
        self.refresh_tokens
            .get(token)
            .and_then(|&g| self.grants.get(g))
            .is_some_and(|g| !g.revoked)
    }
}

struct Inner {
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    app_name: String,
    base_url: String,
    signer: Signer,
    state: Mutex<Mutable>,
}

/// The fake Google OAuth 2.0 / OpenID Connect provider. Cheap to clone (an
/// `Arc`).
#[derive(Clone)]
pub struct FakeGoogle {
    inner: Arc<Inner>,
}

shared_knobs!(FakeGoogle, GoogleUser);
openid_endpoint_knobs!(FakeGoogle);

impl FakeGoogle {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start(cfg: FakeGoogleConfig) -> anyhow::Result<FakeGoogle> {
        crate::idp::core::start(|base| FakeGoogle::build(cfg, base), FakeGoogle::router).await
    }

    /// Builds the sandbox without serving it, for embedding [`Self::router`]
    /// in another server. `base_url` is where it will be reachable (no
    /// trailing slash); it is used for the endpoint URLs and discovery.
    pub fn build(cfg: FakeGoogleConfig, base_url: &str) -> anyhow::Result<FakeGoogle> {
        anyhow::ensure!(!cfg.client_id.is_empty(), "client_id must not be empty");
        let signer = Signer::new()?;
        let core = Core::new(&cfg.client_secret, cfg.interactive);
        let base_url = base_url.trim_end_matches('/').to_string();
        Ok(FakeGoogle {
            inner: Arc::new(Inner {
                client_id: cfg.client_id,
                client_secret: cfg.client_secret,
                redirect_uri: cfg.redirect_uri,
                app_name: cfg.app_name,
                base_url,
                signer,
                state: Mutex::new(Mutable {
                    core,
                    users: cfg.users,
                    access_token_lifetime: cfg.access_token_lifetime,
                    endpoints: OpenIdEndpoints::new(cfg.email_in_id_token),
                    next_granted: None,
                    codes: Codes::default(),
                    grants: Vec::new(),
                    refresh_tokens: HashMap::new(),
                    access_tokens: AccessTokens::default(),
                    consents: HashMap::new(),
                }),
            }),
        })
    }

    /// The same routes the started server serves.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/o/oauth2/v2/auth", get(authorize))
            .route("/o/oauth2/v2/consent", post(consent_answer))
            .route("/token", post(token))
            .route("/v1/userinfo", get(userinfo).post(userinfo))
            .route("/revoke", post(revoke))
            .route(
                "/oauth2/v3/certs",
                get(crate::idp::core::jwks::<FakeGoogle>),
            )
            .route(
                "/.well-known/openid-configuration",
                get(openid_configuration),
            )
            .with_state(self.clone())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// `{base}/o/oauth2/v2/auth`.
    pub fn auth_url(&self) -> String {
        format!("{}/o/oauth2/v2/auth", self.inner.base_url)
    }

    /// `{base}/token`.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.inner.base_url)
    }

    /// `{base}/v1/userinfo`.
    pub fn userinfo_url(&self) -> String {
        format!("{}/v1/userinfo", self.inner.base_url)
    }

    /// `{base}/revoke`.
    pub fn revoke_url(&self) -> String {
        format!("{}/revoke", self.inner.base_url)
    }

    /// `{base}/oauth2/v3/certs`.
    pub fn jwks_url(&self) -> String {
        format!("{}/oauth2/v3/certs", self.inner.base_url)
    }

    /// `{base}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.inner.base_url)
    }

    /// `"https://accounts.google.com"`: the real issuer, so that clients run
    /// their real issuer check. (A plain OpenID provider at its own address
    /// is [`crate::oidc::FakeOidc`].)
    pub fn issuer(&self) -> String {
        GOOGLE_ISSUER.to_string()
    }

    /// Granular consent at the next authorize request (once): only these of
    /// the requested scopes are granted (`email`/`profile` may be given in
    /// short form). `openid`, `email` and `profile` are always granted when
    /// requested, as on Google's consent screen. `None` = grant everything.
    pub fn set_granted_scopes_for_next_login(&self, scopes: Option<Vec<String>>) {
        self.inner.state.lock().next_granted = scopes;
    }

    /// "The user removed the app from their account": every grant of that
    /// user dies (refresh tokens → `invalid_grant`, access tokens → 401) and
    /// their earlier consent is forgotten.
    pub fn revoke_user(&self, email: &str) {
        let mut st = self.inner.state.lock();
        for g in st.grants.iter_mut() {
            if g.email.eq_ignore_ascii_case(email) {
                g.revoked = true;
            }
        }
        st.consents.remove(&email.to_ascii_lowercase());
    }

    /// `upn` is the user's email, `resource` is `"https://mail.google.com/"`,
    /// `scopes` are the granted scopes (long form, sorted).
    pub fn access_token_info(&self, token: &str) -> Option<AccessTokenInfo> {
        let st = self.inner.state.lock();
        let at = st.access_tokens.get(token)?;
        Some(AccessTokenInfo {
            upn: at.subject.clone(),
            resource: GMAIL_SCOPE.to_string(),
            scopes: at.scopes.clone(),
            expires_at: at.expires_at,
            valid: st.access_live(at),
        })
    }

    /// Known and its grant not revoked.
    pub fn refresh_token_is_live(&self, token: &str) -> bool {
        self.inner.state.lock().refresh_live(token)
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// 21 decimal digits starting with `1`, like Google account ids.
fn google_sub(addr: &str) -> String {
    let h = sha256(format!("google:{}", addr.to_ascii_lowercase()).as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    // u64::MAX has 20 digits, so this is always 21 digits.
    format!("1{:020}", u64::from_be_bytes(b))
}

/// Long form of one requested scope, or `None` when Google would call it
/// invalid.
fn normalize_scope(s: &str) -> Option<String> {
    match s {
        "openid" => Some("openid".into()),
        "email" | USERINFO_EMAIL_SCOPE => Some(USERINFO_EMAIL_SCOPE.into()),
        "profile" | USERINFO_PROFILE_SCOPE => Some(USERINFO_PROFILE_SCOPE.into()),
        GMAIL_SCOPE => Some(GMAIL_SCOPE.into()),
        _ => {
            let rest = s.strip_prefix(GOOGLEAPIS_AUTH_PREFIX)?;
            let ok = !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            ok.then(|| s.to_string())
        }
    }
}

/// Google's order: by scope with the `https://` prefix removed.
fn sort_scopes(scopes: &mut Vec<String>) {
    scopes.sort_by(|a, b| {
        let key = |s: &str| s.strip_prefix("https://").unwrap_or(s).to_string();
        key(a).cmp(&key(b))
    });
    scopes.dedup();
}

/// Parses a space-separated scope list; `Err(invalid scopes)`.
fn parse_scopes(raw: &str) -> Result<Vec<String>, Vec<String>> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for s in raw.split_whitespace() {
        match normalize_scope(s) {
            Some(n) => out.push(n),
            None => bad.push(s.to_string()),
        }
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    sort_scopes(&mut out);
    Ok(out)
}

fn is_sign_in_scope(s: &str) -> bool {
    matches!(s, "openid" | USERINFO_EMAIL_SCOPE | USERINFO_PROFILE_SCOPE)
}

fn has(scopes: &[String], s: &str) -> bool {
    scopes.iter().any(|x| x == s)
}

/// Google's "Access blocked" page (no redirect).
fn error_page(status: StatusCode, error: &str, detail: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><title>Error {code}: {e}</title></head><body><h1>Access blocked: This app&#39;s request is invalid</h1><p><b>Error {code}: {e}</b></p><p>{d}</p><p><small>mailconnect sandbox &mdash; not Google</small></p></body></html>",
        code = status.as_u16(),
        e = html_escape(error),
        d = html_escape(detail)
    );
    html(status, body)
}

fn redirect(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    redirect_with(redirect_uri, &ResponseMode::Query, params)
}

/// Google-style OAuth error: `{"error": ..., "error_description": ...}`.
struct GError {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: Option<u64>,
}

impl GError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        GError {
            status,
            error,
            description: description.into(),
            retry_after: None,
        }
    }
    fn bad(error: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, description)
    }
    fn missing(param: &str) -> Self {
        Self::bad(
            "invalid_request",
            format!("Missing required parameter: {param}"),
        )
    }
    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::bad("invalid_grant", description)
    }
    fn expired_or_revoked() -> Self {
        Self::invalid_grant("Token has been expired or revoked.")
    }
    fn client_not_found() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found.",
        )
    }
    fn into_response(self) -> Response {
        let resp = json_response(
            self.status,
            &json!({"error": self.error, "error_description": self.description}),
        );
        with_retry_after(resp, self.retry_after)
    }
}

// ---------------------------------------------------------------------------
// Authorize
// ---------------------------------------------------------------------------

async fn authorize(State(g): State<FakeGoogle>, RawQuery(query): RawQuery) -> Response {
    let q = match parse_params(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(dup) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("Parameter not allowed to be repeated: {dup}"),
            )
        }
    };
    authorize_with(&g, &q, Decision::Ask)
}

/// `POST /o/oauth2/v2/consent`: the answer of the interactive consent page.
async fn consent_answer(State(g): State<FakeGoogle>, body: Bytes) -> Response {
    let answer = match crate::consent::Answer::parse(&body) {
        Ok(a) => a,
        Err(msg) => return error_page(StatusCode::BAD_REQUEST, "invalid_request", &msg),
    };
    let pending = g.inner.state.lock().core.pending.take(&answer.request);
    match pending {
        Some(p) => authorize_with(&g, &p.query, answer.decision),
        None => error_page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "This sign-in request has expired or was already answered. Go back to the app and start again.",
        ),
    }
}

/// The requested scopes (normalized) in plain words, for the consent page.
fn describe_scopes(scopes: &[String], offline: bool) -> Vec<String> {
    let mut out = Vec::new();
    let order = [
        "openid",
        USERINFO_EMAIL_SCOPE,
        USERINFO_PROFILE_SCOPE,
        GMAIL_SCOPE,
    ];
    let mut sorted: Vec<&String> = scopes.iter().collect();
    sorted.sort_by_key(|s| order.iter().position(|o| o == s).unwrap_or(order.len()));
    for s in sorted {
        let text = match s.as_str() {
            "openid" => "Sign you in with your Google account".to_string(),
            USERINFO_EMAIL_SCOPE => "Your email address".to_string(),
            USERINFO_PROFILE_SCOPE => "Your name and profile picture".to_string(),
            GMAIL_SCOPE => {
                "Read and write your mail over IMAP, and send mail over SMTP (full Gmail access)"
                    .to_string()
            }
            other => format!("Use the permission \u{201c}{other}\u{201d}"),
        };
        crate::consent::push_unique(&mut out, text);
    }
    if offline {
        out.push("Stay signed in (offline access): keep the access you give, even when you are not using the app".to_string());
    }
    out
}

fn authorize_with(g: &FakeGoogle, q: &BTreeMap<String, String>, decision: Decision) -> Response {
    let inner = &g.inner;
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());

    // Errors that cannot be redirected: shown as an HTML page.
    let Some(client_id) = get("client_id") else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: client_id",
        );
    };
    if client_id != inner.client_id {
        return error_page(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found.",
        );
    }
    let Some(redirect_uri) = get("redirect_uri") else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: redirect_uri",
        );
    };
    if redirect_uri != inner.redirect_uri {
        return error_page(
            StatusCode::BAD_REQUEST,
            "redirect_uri_mismatch",
            &format!("You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 policy. If you're the app developer, register the redirect URI in the Google Cloud Console. Request details: redirect_uri={redirect_uri}"),
        );
    }

    let state_param = q.get("state").cloned();
    let fail = |error: &str, desc: &str| {
        redirect_error(
            redirect_uri,
            &ResponseMode::Query,
            error,
            Some(desc),
            state_param.as_deref(),
        )
    };

    match get("response_type") {
        Some("code") => {}
        None => {
            return fail(
                "invalid_request",
                "Required parameter is missing: response_type",
            )
        }
        Some(other) => {
            return fail(
                "unsupported_response_type",
                &format!("Invalid response_type: {other} (the sandbox only supports 'code')"),
            )
        }
    }
    let Some(scope_raw) = get("scope") else {
        return fail("invalid_request", "Missing required parameter: scope");
    };
    let requested = match parse_scopes(scope_raw) {
        Ok(s) => s,
        Err(bad) => {
            return fail(
                "invalid_scope",
                &format!(
                    "Some requested scopes were invalid. {{invalid=[{}]}}",
                    bad.join(", ")
                ),
            )
        }
    };
    if !has(&requested, "openid") {
        return fail(
            "invalid_scope",
            "The sandbox requires the 'openid' scope (OpenID Connect sign-in).",
        );
    }
    let challenge =
        match pkce::check_challenge(get("code_challenge"), get("code_challenge_method")) {
            Ok(c) => c,
            Err(problem) => return fail("invalid_request", match problem {
                ChallengeProblem::Missing => "Missing required parameter: code_challenge (the sandbox requires PKCE)",
                ChallengeProblem::NotS256 => "code_challenge_method must be 'S256' (the sandbox refuses 'plain' and a missing method)",
                ChallengeProblem::Malformed => "Invalid code_challenge: a S256 code_challenge is 43 base64url characters without padding",
            }),
        };
    let offline = match get("access_type") {
        None | Some("online") => false,
        Some("offline") => true,
        Some(other) => return fail("invalid_request", &format!("Invalid access_type: {other}")),
    };
    let prompts: Vec<&str> = get("prompt")
        .map(|p| p.split_whitespace().collect())
        .unwrap_or_default();
    if let Some(bad) = prompts
        .iter()
        .find(|p| !matches!(**p, "none" | "consent" | "select_account"))
    {
        return fail("invalid_request", &format!("Invalid prompt: {bad}"));
    }
    if prompts.contains(&"none") && prompts.len() > 1 {
        return fail(
            "invalid_request",
            "prompt=none must not be combined with other values",
        );
    }
    let include_granted = match get("include_granted_scopes") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return fail(
                "invalid_request",
                &format!("Invalid include_granted_scopes: {other}"),
            )
        }
    };

    if decision == Decision::Decline {
        // Google sends just the error (and the state) when the user cancels.
        return redirect_error(
            redirect_uri,
            &ResponseMode::Query,
            "access_denied",
            None,
            state_param.as_deref(),
        );
    }

    let mut st = inner.state.lock();
    if let Some((error, desc)) = st.core.authorize_error.clone() {
        drop(st);
        return fail(&error, &desc);
    }
    let picked = {
        let m = &mut *st;
        users::pick(
            &m.users,
            &mut m.core.next_login,
            &decision,
            get("login_hint"),
        )
    };
    let user = match picked {
        Ok(u) => u,
        Err(PickProblem::UnknownAccepted(email)) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("The account {email} does not exist in the sandbox."),
            )
        }
        Err(PickProblem::UnknownNext(email)) => {
            return fail(
                "access_denied",
                &format!("The account {email} does not exist in the sandbox (set_user_for_next_login named an unknown user)."),
            )
        }
        Err(PickProblem::NoUsers) => {
            return fail("access_denied", "No user is configured in the sandbox.")
        }
    };
    if decision == Decision::Ask && st.core.interactive && !prompts.contains(&"none") {
        let request_id = st.core.pending.insert("", q);
        let users = users::choices(&st.users);
        drop(st);
        return crate::consent::render(&crate::consent::Page {
            brand: "Google",
            app_name: &inner.app_name,
            client_id,
            redirect_uri,
            request_id: &request_id,
            users,
            selected: &user.email,
            permissions: describe_scopes(&requested, offline),
            for_organization: false,
        });
    }
    let user_key = user.email.to_ascii_lowercase();
    let earlier = st.consents.get(&user_key).cloned().unwrap_or_default();
    if prompts.contains(&"none") && !requested.iter().all(|s| has(&earlier, s)) {
        drop(st);
        return fail(
            "consent_required",
            "The user has not consented to all requested scopes; prompt=none is not possible.",
        );
    }
    // What the user ticks on the consent screen.
    let mut granted: Vec<String> = match st.next_granted.take() {
        None => requested.clone(),
        Some(allowed) => {
            let allowed: Vec<String> = allowed.iter().filter_map(|s| normalize_scope(s)).collect();
            requested
                .iter()
                .filter(|s| is_sign_in_scope(s) || has(&allowed, s))
                .cloned()
                .collect()
        }
    };
    // Remember the consent (the union with what was consented before).
    let mut consent = earlier.clone();
    consent.extend(granted.iter().cloned());
    sort_scopes(&mut consent);
    st.consents.insert(user_key, consent);
    if include_granted {
        granted.extend(earlier);
    }
    sort_scopes(&mut granted);

    let code = st.codes.issue(
        "4/0A",
        72,
        Binding {
            client_id,
            redirect_uri,
            code_challenge: challenge,
            nonce: q.get("nonce").cloned(),
        },
        CodeData {
            scopes: granted.clone(),
            email: user.email.clone(),
            offline: offline && prompts.contains(&"consent"),
        },
    );
    st.core.issued.push(code.clone());
    drop(st);

    let scope_str = granted.join(" ");
    let prompt_echo = if prompts.contains(&"none") {
        "none"
    } else {
        "consent"
    };
    let mut params: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = &state_param {
        params.push(("state", s));
    }
    params.push(("code", &code));
    params.push(("scope", &scope_str));
    params.push(("authuser", "0"));
    if let Some(hd) = &user.hosted_domain {
        params.push(("hd", hd));
    }
    params.push(("prompt", prompt_echo));
    redirect(redirect_uri, &params)
}

// ---------------------------------------------------------------------------
// Token
// ---------------------------------------------------------------------------

async fn token(State(g): State<FakeGoogle>, headers: HeaderMap, body: Bytes) -> Response {
    let holder = refresh_token_in(&body).and_then(|rt| {
        let st = g.inner.state.lock();
        let grant = st.refresh_tokens.get(&rt).copied()?;
        st.grants.get(grant).map(|rec| rec.email.clone())
    });
    serve_token_request(
        &g,
        &headers,
        &body,
        SECRET_FIELDS,
        holder,
        |parsed, fault| {
            let err = match fault {
                None | Some(Fault::Slow(_) | Fault::Flaky { .. }) => None,
                Some(Fault::TooManyRequests { retry_after_secs }) => {
                    let mut e = GError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limit_exceeded",
                        "Rate Limit Exceeded",
                    );
                    e.retry_after = Some(retry_after_secs);
                    Some(e)
                }
                Some(Fault::Unavailable | Fault::Stall(_)) => Some(GError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "The service is currently unavailable. Please try again later.",
                )),
                Some(Fault::MalformedJson) => {
                    return truncated_json("{\n  \"access_token\": \"ya29.a0Ad52N3")
                }
                Some(Fault::InvalidClient) => Some(GError::client_not_found()),
                // Google has no interaction_required at the token endpoint: a
                // grant that needs the user again is simply invalid_grant.
                Some(Fault::InvalidGrant | Fault::InteractionRequired) => {
                    Some(GError::expired_or_revoked())
                }
                Some(Fault::UnreadableError) => return unreadable_error(),
                Some(Fault::Aadsts(code)) => faults::aadsts_elsewhere("FakeGoogle", code),
                Some(Fault::EmptyAccessToken) => {
                    return json_response(
                        StatusCode::OK,
                        &json!({"access_token": "", "expires_in": 3599, "token_type": "Bearer"}),
                    )
                }
            };
            if let Some(e) = err {
                return e.into_response();
            }
            match handle_token(&g, &headers, parsed) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => e.into_response(),
            }
        },
    )
    .await
}

fn handle_token(
    g: &FakeGoogle,
    headers: &HeaderMap,
    parsed: Result<BTreeMap<String, String>, String>,
) -> Result<Value, GError> {
    let inner = &g.inner;
    let form = parsed
        .map_err(|dup| GError::bad("invalid_request", format!("Duplicate parameter: {dup}")))?;
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());

    // --- client authentication ---
    let (client_id, _) = authenticate(headers, &form, &inner.client_id, &inner.client_secret)
        .map_err(|problem| match problem {
            ClientAuthProblem::BadHeader | ClientAuthProblem::WrongSecret(_) => {
                GError::new(StatusCode::UNAUTHORIZED, "invalid_client", "Unauthorized")
            }
            ClientAuthProblem::IdMismatch => GError::bad(
                "invalid_request",
                "client_id in the Authorization header and in the request body differ",
            ),
            ClientAuthProblem::NoClientId => GError::bad(
                "invalid_request",
                "Could not determine client ID from request.",
            ),
            ClientAuthProblem::UnknownClient(_) => GError::client_not_found(),
            ClientAuthProblem::BothMethods(..) => GError::bad(
                "invalid_request",
                "client_secret is supplied both in the Authorization header and in the request body",
            ),
            ClientAuthProblem::NoSecret => GError::bad("invalid_request", "client_secret is missing."),
        })?;

    match get("grant_type") {
        Some("authorization_code") => code_grant(g, &client_id, &form),
        Some("refresh_token") => refresh_grant(g, &client_id, &form),
        other => Err(GError::bad(
            "unsupported_grant_type",
            format!("Invalid grant_type: {}", other.unwrap_or("")),
        )),
    }
}

fn code_grant(
    g: &FakeGoogle,
    client_id: &str,
    form: &BTreeMap<String, String>,
) -> Result<Value, GError> {
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let code = get("code").ok_or_else(|| GError::missing("code"))?;
    let mut st = g.inner.state.lock();
    let cg = st
        .codes
        .get(code)
        .ok_or_else(|| GError::invalid_grant("Malformed auth code."))?;
    cg.check_issued_to(client_id)
        .and_then(|()| cg.check_binding(get("redirect_uri"), get("code_verifier")))
        .map_err(|problem| match problem {
            CodeProblem::Used | CodeProblem::Expired => GError::invalid_grant("Bad Request"),
            CodeProblem::OtherClient => GError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized_client",
                "Unauthorized",
            ),
            CodeProblem::NoRedirectUri => GError::missing("redirect_uri"),
            CodeProblem::OtherRedirectUri => GError::bad("redirect_uri_mismatch", "Bad Request"),
            CodeProblem::NoVerifier => GError::invalid_grant("Missing code verifier."),
            CodeProblem::WrongVerifier => GError::invalid_grant("Invalid code verifier."),
        })?;
    let user = st
        .find_user(&cg.data.email)
        .ok_or_else(GError::expired_or_revoked)?;
    let scopes = cg.data.scopes.clone();
    let nonce = cg.nonce.clone();
    let offline = cg.data.offline;
    st.codes.mark_used(code);
    st.core.code_redemptions += 1;
    st.grants.push(Grant {
        client_id: client_id.to_string(),
        email: user.email.clone(),
        scopes: scopes.clone(),
        revoked: false,
    });
    let grant = st.grants.len() - 1;
    let mut body = issue(g, &mut st, grant, &user, &scopes, nonce.as_deref())?;
    if offline {
        let rt = random_token("1//0", 100);
        st.refresh_tokens.insert(rt.clone(), grant);
        st.core.issued.push(rt.clone());
        if let Some(obj) = body.as_object_mut() {
            obj.insert("refresh_token".into(), rt.into());
        }
    }
    Ok(body)
}

fn refresh_grant(
    g: &FakeGoogle,
    client_id: &str,
    form: &BTreeMap<String, String>,
) -> Result<Value, GError> {
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let rt = get("refresh_token").ok_or_else(|| GError::missing("refresh_token"))?;
    let requested = match get("scope") {
        Some(raw) => Some(parse_scopes(raw).map_err(|bad| {
            GError::bad(
                "invalid_scope",
                format!(
                    "Some requested scopes were invalid. {{invalid=[{}]}}",
                    bad.join(", ")
                ),
            )
        })?),
        None => None,
    };
    let mut st = g.inner.state.lock();
    let grant = *st
        .refresh_tokens
        .get(rt)
        .ok_or_else(GError::expired_or_revoked)?;
    let Some(rec) = st.grants.get(grant) else {
        return Err(GError::expired_or_revoked());
    };
    if rec.revoked {
        return Err(GError::expired_or_revoked());
    }
    if rec.client_id != client_id {
        return Err(GError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Unauthorized",
        ));
    }
    let scopes = match requested {
        None => rec.scopes.clone(),
        Some(req) => {
            if let Some(extra) = req.iter().find(|s| !has(&rec.scopes, s)) {
                return Err(GError::bad(
                    "invalid_scope",
                    format!("The refresh token does not cover the requested scope {extra}."),
                ));
            }
            req
        }
    };
    let user = st
        .find_user(&rec.email)
        .ok_or_else(GError::expired_or_revoked)?;
    let body = issue(g, &mut st, grant, &user, &scopes, None)?;
    st.core.refresh_grants += 1;
    Ok(body)
}

/// Records an access token (and builds an id_token when `openid` is among
/// `scopes`); returns the token response without `refresh_token`.
fn issue(
    g: &FakeGoogle,
    st: &mut Mutable,
    grant: usize,
    user: &GoogleUser,
    scopes: &[String],
    nonce: Option<&str>,
) -> Result<Value, GError> {
    let lifetime = st.access_token_lifetime;
    let expires_at = expiry(lifetime, 3599);
    let access = random_token("ya29.a0", 160);
    let flaw = st.core.id_token_flaw.clone();
    let id_token = if has(scopes, "openid") && flaw != Some(IdTokenFlaw::Omitted) {
        Some(g.id_token(
            user,
            scopes,
            nonce,
            &access,
            st.endpoints.email_in_id_token,
            flaw.as_ref(),
        )?)
    } else {
        None
    };
    st.access_tokens.insert(
        access.clone(),
        &user.email,
        scopes.to_vec(),
        expires_at,
        grant,
    );
    st.core.issued.push(access.clone());
    let mut body = serde_json::Map::new();
    body.insert("access_token".into(), access.into());
    body.insert("expires_in".into(), lifetime.as_secs().into());
    body.insert("scope".into(), scopes.join(" ").into());
    body.insert("token_type".into(), "Bearer".into());
    if let Some(id) = id_token {
        st.core.issued.push(id.clone());
        body.insert("id_token".into(), id.into());
    }
    Ok(Value::Object(body))
}

impl FakeGoogle {
    fn id_token(
        &self,
        user: &GoogleUser,
        scopes: &[String],
        nonce: Option<&str>,
        access_token: &str,
        email_in_id_token: bool,
        flaw: Option<&IdTokenFlaw>,
    ) -> Result<String, GError> {
        let now = Utc::now().timestamp();
        let at_hash = at_hash(access_token);
        let client_id = &self.inner.client_id;
        let mut claims = serde_json::Map::new();
        claims.insert("iss".into(), GOOGLE_ISSUER.into());
        claims.insert("azp".into(), client_id.clone().into());
        claims.insert("aud".into(), client_id.clone().into());
        claims.insert("sub".into(), user.sub.clone().into());
        if let Some(hd) = &user.hosted_domain {
            claims.insert("hd".into(), hd.clone().into());
        }
        if email_in_id_token && has(scopes, USERINFO_EMAIL_SCOPE) {
            claims.insert("email".into(), user.email.clone().into());
            claims.insert("email_verified".into(), user.email_verified.into());
        }
        claims.insert("at_hash".into(), at_hash.into());
        if let Some(n) = nonce {
            claims.insert("nonce".into(), n.into());
        }
        if has(scopes, USERINFO_PROFILE_SCOPE) {
            insert_profile(&mut claims, user);
        }
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ID_TOKEN_LIFETIME_SECS).into());
        if let Some(flaw) = flaw {
            flaw.apply_to_claims(&mut claims, now);
        }
        self.inner
            .signer
            .sign(&Value::Object(claims), flaw)
            .map_err(|e| {
                GError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_failure",
                    format!("Could not sign the id_token: {e}"),
                )
            })
    }
}

fn insert_profile(obj: &mut serde_json::Map<String, Value>, user: &GoogleUser) {
    obj.insert("name".into(), user.name.clone().into());
    let mut parts = user.name.splitn(2, ' ');
    if let Some(given) = parts.next().filter(|s| !s.is_empty()) {
        obj.insert("given_name".into(), given.into());
    }
    if let Some(family) = parts.next().filter(|s| !s.is_empty()) {
        obj.insert("family_name".into(), family.into());
    }
    obj.insert(
        "picture".into(),
        format!(
            "https://lh3.googleusercontent.com/a/sandbox-{}=s96-c",
            user.sub
        )
        .into(),
    );
}

// ---------------------------------------------------------------------------
// Userinfo
// ---------------------------------------------------------------------------

async fn userinfo(State(g): State<FakeGoogle>, headers: HeaderMap) -> Response {
    let st = g.inner.state.lock();
    if st.endpoints.userinfo_down {
        drop(st);
        let mut resp = GError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The service is currently unavailable.",
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    }
    let unauthorized = || {
        let mut resp = GError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "Invalid Credentials",
        )
        .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"",
            ),
        );
        resp
    };
    let Some(token) = bearer_token(&headers) else {
        return unauthorized();
    };
    let Some(at) = st.access_tokens.get(token) else {
        return unauthorized();
    };
    if !st.access_live(at) {
        return unauthorized();
    }
    if !at.scopes.iter().any(|s| is_sign_in_scope(s)) {
        let mut resp = GError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "Request had insufficient authentication scopes.",
        )
        .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\", error=\"insufficient_scope\", scope=\"openid email profile\""),
        );
        return resp;
    }
    let Some(user) = st.find_user(&at.subject) else {
        return unauthorized();
    };
    let scopes = at.scopes.clone();
    let sub = st
        .endpoints
        .userinfo_sub
        .clone()
        .unwrap_or_else(|| user.sub.clone());
    drop(st);
    let mut body = serde_json::Map::new();
    body.insert("sub".into(), sub.into());
    if has(&scopes, USERINFO_PROFILE_SCOPE) {
        insert_profile(&mut body, &user);
    }
    if has(&scopes, USERINFO_EMAIL_SCOPE) {
        body.insert("email".into(), user.email.clone().into());
        body.insert("email_verified".into(), user.email_verified.into());
    }
    if let Some(hd) = &user.hosted_domain {
        body.insert("hd".into(), hd.clone().into());
    }
    json_response(StatusCode::OK, &Value::Object(body))
}

// ---------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------

async fn revoke(
    State(g): State<FakeGoogle>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let from_body = if is_form(&headers) {
        parse_params(&String::from_utf8_lossy(&body))
    } else {
        Ok(BTreeMap::new())
    };
    let from_query = parse_params(query.as_deref().unwrap_or(""));
    let (Ok(b), Ok(q)) = (from_body, from_query) else {
        return GError::bad("invalid_request", "Bad Request").into_response();
    };
    let token = match (
        b.get("token").filter(|t| !t.is_empty()),
        q.get("token").filter(|t| !t.is_empty()),
    ) {
        (Some(_), Some(_)) => {
            return GError::bad("invalid_request", "Bad Request").into_response();
        }
        (Some(t), None) | (None, Some(t)) => t.clone(),
        (None, None) => return GError::missing("token").into_response(),
    };
    let mut st = g.inner.state.lock();
    if st.endpoints.revoke_refused {
        drop(st);
        return GError::client_not_found().into_response();
    }
    if st.endpoints.revoke_fault {
        drop(st);
        return GError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The service is currently unavailable.",
        )
        .into_response();
    }
    let grant = if st.refresh_live(&token) {
        st.refresh_tokens.get(&token).copied()
    } else {
        st.access_tokens
            .get(&token)
            .filter(|at| st.access_live(at))
            .map(|at| at.data)
    };
    let Some(grant) = grant else {
        drop(st);
        return GError::bad("invalid_token", "Token expired or revoked").into_response();
    };
    let email = st
        .grants
        .get(grant)
        .map(|rec| rec.email.to_ascii_lowercase());
    if let Some(rec) = st.grants.get_mut(grant) {
        rec.revoked = true;
    }
    // The user's consent to the app is gone too.
    if let Some(e) = email {
        st.consents.remove(&e);
    }
    st.endpoints.revocations += 1;
    drop(st);
    json_response(StatusCode::OK, &json!({}))
}

// ---------------------------------------------------------------------------
// Discovery, JWKS
// ---------------------------------------------------------------------------

async fn openid_configuration(State(g): State<FakeGoogle>) -> Response {
    g.inner.state.lock().endpoints.discovery_requests += 1;
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": GOOGLE_ISSUER,
            "authorization_endpoint": g.auth_url(),
            "token_endpoint": g.token_url(),
            "userinfo_endpoint": g.userinfo_url(),
            "revocation_endpoint": g.revoke_url(),
            "jwks_uri": g.jwks_url(),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "claims_supported": ["aud", "email", "email_verified", "exp", "family_name",
                "given_name", "hd", "iat", "iss", "name", "picture", "sub", "azp", "at_hash", "nonce"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
        }),
    )
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn scopes_are_normalized_and_sorted() {
        let s = parse_scopes("openid email https://mail.google.com/").unwrap();
        assert_eq!(
            s.join(" "),
            "https://mail.google.com/ openid https://www.googleapis.com/auth/userinfo.email"
        );
        assert_eq!(
            parse_scopes("openid https://mail.google.com").unwrap_err(),
            vec!["https://mail.google.com".to_string()]
        );
        assert!(parse_scopes("openid https://www.googleapis.com/auth/").is_err());
        assert!(parse_scopes("openid https://www.googleapis.com/auth/gmail.readonly").is_ok());
        assert!(parse_scopes("offline_access").is_err());
    }

    #[test]
    fn users() {
        let u = GoogleUser::gmail("jane.doe@gmail.com");
        assert_eq!(u.sub.len(), 21);
        assert!(u.sub.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(u.sub, GoogleUser::gmail("Jane.Doe@gmail.com").sub);
        assert_ne!(u.sub, GoogleUser::gmail("john@gmail.com").sub);
        assert_eq!(u.name, "Jane Doe");
        assert!(u.email_verified && u.hosted_domain.is_none());
        assert!(!GoogleUser::unverified("x@gmail.com").email_verified);
        assert_eq!(
            GoogleUser::workspace("a@Example.com")
                .hosted_domain
                .as_deref(),
            Some("example.com")
        );
        assert_eq!(GoogleUser::workspace("nodomain").hosted_domain, None);
    }
}
