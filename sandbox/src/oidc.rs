//! # Fake OpenID provider (standards only)
//!
//! A **strict local fake** of a plain OpenID Connect provider, with no
//! vendor's quirks: what OpenID Connect Core 1.0, Discovery 1.0, RFC 6749,
//! RFC 6750, RFC 7009 and RFC 7636 say, and nothing more. It is what
//! mailconnect's generic `oidc` provider is tested against.
//!
//! * The issuer is the fake's base URL; discovery is at
//!   `{issuer}/.well-known/openid-configuration` and names every endpoint:
//!   `/authorize` (with the sign-in/consent page when interactive), `/token`,
//!   `/userinfo`, `/revoke` and the JWKS at `/jwks`.
//! * Authorize takes only `response_type=code` with PKCE S256, requires the
//!   `openid` scope and knows `openid`, `profile`, `email` and
//!   `offline_access`. Errors before the client and its redirect URI are
//!   known are shown as a page, later ones are redirected (RFC 6749
//!   §4.1.2.1). `offline_access` is honoured only with `prompt=consent`
//!   (Core §11); only then does the code grant issue a refresh token.
//! * The token endpoint authenticates the client with `client_secret_basic`,
//!   `client_secret_post` or `private_key_jwt` (those the configuration
//!   allows; the last against the JWKS a test registers, strictly as
//!   `idp::client_assertion` says), never two at once, and answers errors as
//!   RFC 6749 §5.2 says. Refresh tokens rotate as
//!   [`FakeOidcConfig::rotation`] says; a refresh may narrow the scope,
//!   never widen it.
//! * Userinfo takes a bearer token (header or form body, RFC 6750) and
//!   answers the claims its scopes allow. Revocation (RFC 7009) needs client
//!   authentication, answers 200 for a token it does not know, and revoking
//!   a refresh token ends its whole grant (its access tokens too).
//!
//! **This is a test/demo sandbox. It is never to be used in production**: it
//! signs id_tokens with a private key that is checked into the repository
//! and lets anyone "sign in" as any configured user without a password.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mailconnect_sandbox::oidc::{FakeOidc, FakeOidcConfig};
//! let idp = FakeOidc::start(FakeOidcConfig::new(
//!     "client-id",
//!     "client-secret",
//!     "http://127.0.0.1:8080/api/oauth/oidc/callback",
//! ))
//! .await?;
//! let issuer = idp.issuer(); // discovery is under it
//! # let _ = issuer; Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use crate::consent::{self, Decision};
use crate::idp::client_assertion::{ClientKeys, ASSERTION_ALGS};
use crate::idp::client_auth::{authenticate, ClientAuthProblem};
use crate::idp::codes::{Binding, CodeProblem, Codes};
use crate::idp::core::{
    openid_endpoint_knobs, refresh_token_in, serve_token_request, shared_knobs, Core,
    OpenIdEndpoints,
};
use crate::idp::faults;
use crate::idp::http::{
    bearer_token, form_of, html, html_escape, json_response, parse_params, redirect_error,
    redirect_with, truncated_json, unreadable_error, with_retry_after, ResponseMode,
};
use crate::idp::keys::{at_hash, Signer};
use crate::idp::pkce::{self, ChallengeProblem};
use crate::idp::tokens::{expiry, AccessTokens, Refresh, RefreshTokens};
use crate::idp::users::{self, Account, PickProblem};
use crate::idp::{display_name, sha256, uuid_from_hash};
use crate::{AccessTokenInfo, Fault, IdTokenFlaw, Rotation};

pub use crate::idp::client_assertion::VerifiedAssertion;
pub use crate::idp::client_auth::Method as ClientAuthMethod;

/// The scopes the fake knows, in the order it reports them.
pub const SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

/// The form fields whose values `last_token_request` hides.
const SECRET_FIELDS: &[&str] = &[
    "client_secret",
    "client_assertion",
    "code",
    "code_verifier",
    "refresh_token",
];

/// A user who can "sign in" at the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcUser {
    /// The stable subject: a uuid derived from the address.
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub name: String,
}

impl OidcUser {
    /// A user with a verified address; the `sub` is derived from the address
    /// (case-insensitively), so it is stable across runs.
    pub fn new(addr: &str) -> OidcUser {
        let h = sha256(format!("oidc:{}", addr.to_ascii_lowercase()).as_bytes());
        OidcUser {
            sub: uuid_from_hash(&h),
            email: addr.to_string(),
            email_verified: true,
            name: display_name(addr),
        }
    }

    /// Like [`Self::new`] but with `email_verified: false`.
    pub fn unverified(addr: &str) -> OidcUser {
        OidcUser {
            email_verified: false,
            ..OidcUser::new(addr)
        }
    }
}

impl Account for OidcUser {
    fn address(&self) -> &str {
        &self.email
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> String {
        if self.email_verified {
            "Account".to_string()
        } else {
            "Account (address not verified)".to_string()
        }
    }
}

/// Configuration of a [`FakeOidc`].
pub struct FakeOidcConfig {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    /// The first one is the default user.
    pub users: Vec<OidcUser>,
    /// Default [`Rotation::Strict`]: each refresh issues a new refresh
    /// token and the used one dies.
    pub rotation: Rotation,
    /// Default 3600 s; `expires_in` is exactly this.
    pub access_token_lifetime: Duration,
    /// Default true. When false the id_token carries no `email` /
    /// `email_verified`, so the client must ask userinfo.
    pub email_in_id_token: bool,
    /// How the client may authenticate (token and revocation endpoints), as
    /// discovery lists them. Default both secret methods, basic first;
    /// `PrivateKeyJwt` needs [`FakeOidc::register_client_jwks`].
    pub auth_methods: Vec<ClientAuthMethod>,
    /// Default false: authorize signs in at once. When true, it shows the
    /// sign-in/consent page first (not with `prompt=none`).
    pub interactive: bool,
    /// The app name the consent page shows. Default `"mailconnect"`.
    pub app_name: String,
}

impl FakeOidcConfig {
    /// One default user `OidcUser::new("ops@idp.example")`, strict rotation,
    /// 3600 s access tokens, email in the id_token, both client
    /// authentication methods.
    pub fn new(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        FakeOidcConfig {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uri: redirect_uri.into(),
            users: vec![OidcUser::new("ops@idp.example")],
            rotation: Rotation::Strict,
            access_token_lifetime: Duration::from_secs(3600),
            email_in_id_token: true,
            auth_methods: vec![ClientAuthMethod::Basic, ClientAuthMethod::Post],
            interactive: false,
            app_name: "mailconnect".to_string(),
        }
    }
}

/// What a code carries besides its binding.
struct CodeData {
    /// Granted, in [`SCOPES`] order.
    scopes: Vec<String>,
    email: String,
}

/// What a refresh token carries: its grant and the grant's scopes.
#[derive(Clone)]
struct GrantData {
    grant: usize,
    scopes: Vec<String>,
}

/// What an access token carries: its grant.
type AccessData = usize;

struct Mutable {
    core: Core,
    users: Vec<OidcUser>,
    access_token_lifetime: Duration,
    endpoints: OpenIdEndpoints,
    auth_methods: Vec<ClientAuthMethod>,
    client_keys: ClientKeys,
    assertions: Vec<VerifiedAssertion>,
    grants: usize,
    codes: Codes<CodeData>,
    refresh_tokens: RefreshTokens<GrantData>,
    access_tokens: AccessTokens<AccessData>,
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

/// The fake OpenID provider. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct FakeOidc {
    inner: Arc<Inner>,
}

shared_knobs!(FakeOidc, OidcUser);
openid_endpoint_knobs!(FakeOidc);

impl FakeOidc {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start(cfg: FakeOidcConfig) -> anyhow::Result<FakeOidc> {
        crate::idp::core::start(|base| FakeOidc::build(cfg, base), FakeOidc::router).await
    }

    /// Builds the fake without serving it, for embedding [`Self::router`]
    /// in another server. `base_url` is where it will be reachable (no
    /// trailing slash): it is the issuer.
    pub fn build(cfg: FakeOidcConfig, base_url: &str) -> anyhow::Result<FakeOidc> {
        anyhow::ensure!(!cfg.client_id.is_empty(), "client_id must not be empty");
        anyhow::ensure!(
            !cfg.auth_methods.is_empty(),
            "at least one client authentication method"
        );
        anyhow::ensure!(
            !cfg.auth_methods.contains(&ClientAuthMethod::PrivateKeyJwt),
            "the fake OpenID provider checks no client assertions (private_key_jwt) yet"
        );
        let core = Core::new(&cfg.client_secret, cfg.interactive);
        Ok(FakeOidc {
            inner: Arc::new(Inner {
                client_id: cfg.client_id,
                client_secret: cfg.client_secret,
                redirect_uri: cfg.redirect_uri,
                app_name: cfg.app_name,
                base_url: base_url.trim_end_matches('/').to_string(),
                signer: Signer::new()?,
                state: Mutex::new(Mutable {
                    core,
                    users: cfg.users,
                    access_token_lifetime: cfg.access_token_lifetime,
                    endpoints: OpenIdEndpoints::new(cfg.email_in_id_token),
                    auth_methods: cfg.auth_methods,
                    client_keys: ClientKeys::default(),
                    assertions: Vec::new(),
                    grants: 0,
                    codes: Codes::default(),
                    refresh_tokens: RefreshTokens::new(cfg.rotation),
                    access_tokens: AccessTokens::default(),
                }),
            }),
        })
    }

    /// The same routes the started server serves.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(openid_configuration),
            )
            .route("/jwks", get(crate::idp::core::jwks::<FakeOidc>))
            .route("/authorize", get(authorize))
            .route("/consent", post(consent_answer))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo).post(userinfo))
            .route("/revoke", post(revoke))
            .with_state(self.clone())
    }

    /// The base URL, which is also the issuer.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The issuer: the base URL, exactly (no trailing slash).
    pub fn issuer(&self) -> String {
        self.inner.base_url.clone()
    }

    /// `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.inner.base_url)
    }

    /// `{issuer}/authorize`.
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/authorize", self.inner.base_url)
    }

    /// `{issuer}/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.inner.base_url)
    }

    /// `{issuer}/userinfo`.
    pub fn userinfo_endpoint(&self) -> String {
        format!("{}/userinfo", self.inner.base_url)
    }

    /// `{issuer}/revoke`.
    pub fn revocation_endpoint(&self) -> String {
        format!("{}/revoke", self.inner.base_url)
    }

    /// `{issuer}/jwks`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.inner.base_url)
    }

    pub fn set_rotation(&self, rotation: Rotation) {
        self.inner.state.lock().refresh_tokens.rotation = rotation;
    }

    /// The user's grants end: every refresh token and access token of the
    /// user dies (the user signed out everywhere, or withdrew consent).
    pub fn revoke_user(&self, email: &str) {
        let mut st = self.inner.state.lock();
        st.refresh_tokens.revoke_subject(email);
        st.access_tokens
            .invalidate_where(|at| at.subject.eq_ignore_ascii_case(email));
    }

    /// `upn` is the user's email, `resource` the issuer, `scopes` the
    /// granted scopes.
    pub fn access_token_info(&self, token: &str) -> Option<AccessTokenInfo> {
        let st = self.inner.state.lock();
        let at = st.access_tokens.get(token)?;
        Some(AccessTokenInfo {
            upn: at.subject.clone(),
            resource: self.inner.base_url.clone(),
            scopes: at.scopes.clone(),
            expires_at: at.expires_at,
            valid: at.valid(),
        })
    }

    /// Known, not revoked, and not used under strict rotation.
    pub fn refresh_token_is_live(&self, token: &str) -> bool {
        self.inner.state.lock().refresh_tokens.is_live(token)
    }

    /// Registers the client's public keys (a JWK Set) for
    /// `private_key_jwt`; each is known by its RFC 7638 thumbprint.
    pub fn register_client_jwks(&self, jwks: &Value) -> anyhow::Result<()> {
        self.inner.state.lock().client_keys.register(jwks)
    }

    /// How the client may authenticate from now on, as discovery lists it
    /// (a client that read discovery before keeps what it read).
    pub fn set_auth_methods(&self, methods: Vec<ClientAuthMethod>) {
        assert!(
            !methods.is_empty(),
            "at least one client authentication method"
        );
        self.inner.state.lock().auth_methods = methods;
    }

    /// Every client assertion accepted so far, oldest first.
    pub fn client_assertions(&self) -> Vec<VerifiedAssertion> {
        self.inner.state.lock().assertions.clone()
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// An RFC 6749 §5.2 error: `{"error": …, "error_description": …}`.
struct OidcError {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: Option<u64>,
}

impl OidcError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        OidcError {
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
        Self::bad("invalid_request", format!("Missing parameter: {param}"))
    }
    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::bad("invalid_grant", description)
    }
    fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }
    fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The service is temporarily unavailable.",
        )
    }

    fn into_response(self) -> Response {
        let mut resp = json_response(
            self.status,
            &json!({"error": self.error, "error_description": self.description}),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6749 §5.2: a 401 names the scheme the client may use.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"fake-oidc\""),
            );
        }
        with_retry_after(resp, self.retry_after)
    }
}

/// The page authorize shows when it cannot redirect.
fn error_page(error: &str, detail: &str) -> Response {
    html(
        StatusCode::BAD_REQUEST,
        format!(
            "<!DOCTYPE html><html lang=\"en\"><head><title>Error: {e}</title></head><body><h1>Sign-in request refused</h1><p><b>{e}</b></p><p>{d}</p><p><small>mailconnect sandbox &mdash; fake OpenID provider</small></p></body></html>",
            e = html_escape(error),
            d = html_escape(detail)
        ),
    )
}

/// Checks the client's credentials with the methods this fake allows.
fn authenticate_client(
    idp: &FakeOidc,
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
) -> Result<String, OidcError> {
    if form.contains_key("client_assertion") || form.contains_key("client_assertion_type") {
        // Checked first, so that a refused method spends no jti.
        allowed(idp, ClientAuthMethod::PrivateKeyJwt)?;
        return authenticate_assertion(idp, headers, form);
    }
    let (client_id, method) = authenticate_secret(idp, headers, form)?;
    allowed(idp, method)?;
    Ok(client_id)
}

fn allowed(idp: &FakeOidc, method: ClientAuthMethod) -> Result<(), OidcError> {
    if idp.inner.state.lock().auth_methods.contains(&method) {
        return Ok(());
    }
    Err(OidcError::invalid_client(format!(
        "{} is not allowed for this client.",
        method.name()
    )))
}

/// `private_key_jwt`: the assertion alone, for the registered client, at
/// the token endpoint's URL (at the revocation endpoint too).
fn authenticate_assertion(
    idp: &FakeOidc,
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
) -> Result<String, OidcError> {
    let inner = &idp.inner;
    if headers.contains_key(header::AUTHORIZATION) || form.contains_key("client_secret") {
        return Err(OidcError::bad(
            "invalid_request",
            "More than one client authentication method was used.",
        ));
    }
    if form
        .get("client_id")
        .is_some_and(|id| *id != inner.client_id)
    {
        return Err(OidcError::invalid_client("Unknown client."));
    }
    let mut st = inner.state.lock();
    let verified = st
        .client_keys
        .verify(form, &inner.client_id, &idp.token_endpoint())
        .map_err(OidcError::invalid_client)?;
    let client_id = verified.client_id.clone();
    st.assertions.push(verified);
    Ok(client_id)
}

/// `client_secret_basic` or `client_secret_post`.
fn authenticate_secret(
    idp: &FakeOidc,
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
) -> Result<(String, ClientAuthMethod), OidcError> {
    let inner = &idp.inner;
    authenticate(headers, form, &inner.client_id, &inner.client_secret).map_err(|problem| {
        match problem {
            ClientAuthProblem::BadHeader => {
                OidcError::invalid_client("Malformed HTTP Basic credentials.")
            }
            ClientAuthProblem::IdMismatch => OidcError::bad(
                "invalid_request",
                "The Authorization header and the body name different clients.",
            ),
            ClientAuthProblem::NoClientId | ClientAuthProblem::NoSecret => {
                OidcError::invalid_client("Client authentication is required.")
            }
            ClientAuthProblem::UnknownClient(_) => OidcError::invalid_client("Unknown client."),
            ClientAuthProblem::BothMethods(..) => OidcError::bad(
                "invalid_request",
                "More than one client authentication method was used.",
            ),
            ClientAuthProblem::WrongSecret(_) => {
                OidcError::invalid_client("Client authentication failed.")
            }
        }
    })
}

// ---------------------------------------------------------------------------
// Discovery, JWKS
// ---------------------------------------------------------------------------

async fn openid_configuration(State(idp): State<FakeOidc>) -> Response {
    let methods: Vec<&str> = {
        let mut st = idp.inner.state.lock();
        st.endpoints.discovery_requests += 1;
        st.auth_methods.iter().map(|m| m.name()).collect()
    };
    let mut doc = json!({
        "issuer": idp.issuer(),
        "authorization_endpoint": idp.authorization_endpoint(),
        "token_endpoint": idp.token_endpoint(),
        "userinfo_endpoint": idp.userinfo_endpoint(),
        "jwks_uri": idp.jwks_uri(),
        "revocation_endpoint": idp.revocation_endpoint(),
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "at_hash",
            "email", "email_verified", "name", "given_name", "family_name"],
    });
    if methods.contains(&ClientAuthMethod::PrivateKeyJwt.name()) {
        doc["token_endpoint_auth_signing_alg_values_supported"] = json!(ASSERTION_ALGS);
    }
    json_response(StatusCode::OK, &doc)
}

// ---------------------------------------------------------------------------
// Authorize
// ---------------------------------------------------------------------------

async fn authorize(State(idp): State<FakeOidc>, RawQuery(query): RawQuery) -> Response {
    match parse_params(query.as_deref().unwrap_or("")) {
        Ok(q) => authorize_with(&idp, &q, Decision::Ask),
        Err(dup) => error_page("invalid_request", &format!("Repeated parameter: {dup}")),
    }
}

/// `POST /consent`: the answer of the interactive page.
async fn consent_answer(State(idp): State<FakeOidc>, body: Bytes) -> Response {
    let answer = match consent::Answer::parse(&body) {
        Ok(a) => a,
        Err(msg) => return error_page("invalid_request", &msg),
    };
    let pending = idp.inner.state.lock().core.pending.take(&answer.request);
    match pending {
        Some(p) => authorize_with(&idp, &p.query, answer.decision),
        None => error_page(
            "invalid_request",
            "This sign-in request has expired or was already answered. Go back to the app and start again.",
        ),
    }
}

/// The known scopes of `raw` in [`SCOPES`] order, or the first unknown one.
fn parse_scopes(raw: &str) -> Result<Vec<String>, String> {
    if let Some(bad) = raw.split_whitespace().find(|s| !SCOPES.contains(s)) {
        return Err(bad.to_string());
    }
    Ok(SCOPES
        .iter()
        .filter(|s| raw.split_whitespace().any(|r| r == **s))
        .map(|s| s.to_string())
        .collect())
}

fn has(scopes: &[String], s: &str) -> bool {
    scopes.iter().any(|x| x == s)
}

fn describe(scope: &str) -> String {
    match scope {
        "openid" => "Sign you in".to_string(),
        "profile" => "Your name".to_string(),
        "email" => "Your email address".to_string(),
        _ => "Stay signed in (offline access): keep the access you give, even when you are not using the app".to_string(),
    }
}

fn authorize_with(idp: &FakeOidc, q: &BTreeMap<String, String>, decision: Decision) -> Response {
    let inner = &idp.inner;
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());

    // Not redirected: the client or its redirect URI is not known.
    let Some(client_id) = get("client_id") else {
        return error_page("invalid_request", "Missing parameter: client_id");
    };
    if client_id != inner.client_id {
        return error_page("invalid_client", "Unknown client.");
    }
    let Some(redirect_uri) = get("redirect_uri") else {
        return error_page("invalid_request", "Missing parameter: redirect_uri");
    };
    if redirect_uri != inner.redirect_uri {
        return error_page(
            "invalid_request",
            &format!("The redirect_uri {redirect_uri} is not registered for this client."),
        );
    }

    let state = q.get("state").cloned();
    let fail = |error: &str, desc: &str| {
        redirect_error(
            redirect_uri,
            &ResponseMode::Query,
            error,
            Some(desc),
            state.as_deref(),
        )
    };
    match get("response_mode") {
        None | Some("query") => {}
        Some(other) => {
            return fail(
                "invalid_request",
                &format!("Unsupported response_mode: {other}"),
            )
        }
    }
    match get("response_type") {
        Some("code") => {}
        None => return fail("invalid_request", "Missing parameter: response_type"),
        Some(other) => {
            return fail(
                "unsupported_response_type",
                &format!("Unsupported response_type: {other}"),
            )
        }
    }
    let Some(scope_raw) = get("scope") else {
        return fail("invalid_request", "Missing parameter: scope");
    };
    let mut scopes = match parse_scopes(scope_raw) {
        Ok(s) => s,
        Err(bad) => return fail("invalid_scope", &format!("Unknown scope: {bad}")),
    };
    if !has(&scopes, "openid") {
        return fail("invalid_scope", "The openid scope is required.");
    }
    let challenge = match pkce::check_challenge(get("code_challenge"), get("code_challenge_method"))
    {
        Ok(c) => c,
        Err(problem) => {
            return fail(
                "invalid_request",
                match problem {
                    ChallengeProblem::Missing => {
                        "Missing parameter: code_challenge (PKCE is required)"
                    }
                    ChallengeProblem::NotS256 => "code_challenge_method must be S256",
                    ChallengeProblem::Malformed => {
                        "code_challenge must be 43 base64url characters (S256)"
                    }
                },
            )
        }
    };
    let prompts: Vec<&str> = get("prompt")
        .map(|p| p.split_whitespace().collect())
        .unwrap_or_default();
    if let Some(bad) = prompts
        .iter()
        .find(|p| !matches!(**p, "none" | "login" | "consent" | "select_account"))
    {
        return fail("invalid_request", &format!("Unsupported prompt: {bad}"));
    }
    if prompts.contains(&"none") && prompts.len() > 1 {
        return fail(
            "invalid_request",
            "prompt=none must not be combined with other values",
        );
    }
    // OpenID Connect Core §11: offline_access needs an explicit consent.
    if !prompts.contains(&"consent") {
        scopes.retain(|s| s != "offline_access");
    }

    if decision == Decision::Decline {
        return fail("access_denied", "The user declined.");
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
            return error_page("invalid_request", &format!("No such account: {email}"))
        }
        Err(PickProblem::UnknownNext(email)) => {
            return fail(
                "access_denied",
                &format!(
                    "No such account: {email} (set_user_for_next_login named an unknown user)"
                ),
            )
        }
        Err(PickProblem::NoUsers) => return fail("access_denied", "No user is configured."),
    };
    if decision == Decision::Ask && st.core.interactive && !prompts.contains(&"none") {
        let request_id = st.core.pending.insert("", q);
        let choices = users::choices(&st.users);
        drop(st);
        let mut permissions = Vec::new();
        for s in &scopes {
            consent::push_unique(&mut permissions, describe(s));
        }
        return consent::render(&consent::Page {
            brand: "OpenID provider",
            app_name: &inner.app_name,
            client_id,
            redirect_uri,
            request_id: &request_id,
            users: choices,
            selected: &user.email,
            permissions,
            for_organization: false,
        });
    }
    let code = st.codes.issue(
        "oidc-code-",
        43,
        Binding {
            client_id,
            redirect_uri,
            code_challenge: challenge,
            nonce: q.get("nonce").cloned(),
        },
        CodeData {
            scopes,
            email: user.email.clone(),
        },
    );
    st.core.issued.push(code.clone());
    drop(st);
    let mut params: Vec<(&str, &str)> = vec![("code", &code)];
    if let Some(s) = &state {
        params.push(("state", s));
    }
    redirect_with(redirect_uri, &ResponseMode::Query, &params)
}

// ---------------------------------------------------------------------------
// Token
// ---------------------------------------------------------------------------

async fn token(State(idp): State<FakeOidc>, headers: HeaderMap, body: Bytes) -> Response {
    let holder = refresh_token_in(&body).and_then(|rt| {
        let st = idp.inner.state.lock();
        st.refresh_tokens.get(&rt).map(|r| r.subject.clone())
    });
    serve_token_request(
        &idp,
        &headers,
        &body,
        SECRET_FIELDS,
        holder,
        |parsed, fault| {
            let err = match fault {
                None | Some(Fault::Slow(_) | Fault::Flaky { .. }) => None,
                Some(Fault::Unavailable | Fault::Stall(_)) => Some(OidcError::unavailable()),
                Some(Fault::TooManyRequests { retry_after_secs }) => {
                    let mut e = OidcError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "temporarily_unavailable",
                        "Too many requests.",
                    );
                    e.retry_after = Some(retry_after_secs);
                    Some(e)
                }
                Some(Fault::MalformedJson) => {
                    return truncated_json("{\"access_token\":\"oidc-at-");
                }
                Some(Fault::InvalidClient) => {
                    Some(OidcError::invalid_client("Client authentication failed."))
                }
                // The standard has no interaction_required at the token
                // endpoint: a grant that needs the user again is invalid.
                Some(Fault::InvalidGrant | Fault::InteractionRequired) => Some(
                    OidcError::invalid_grant("The grant is invalid, expired or revoked."),
                ),
                Some(Fault::UnreadableError) => return unreadable_error(),
                Some(Fault::Aadsts(code)) => faults::aadsts_elsewhere("FakeOidc", code),
                Some(Fault::EmptyAccessToken) => {
                    return json_response(
                        StatusCode::OK,
                        &json!({"access_token": "", "token_type": "Bearer", "expires_in": 3600}),
                    )
                }
            };
            if let Some(e) = err {
                return e.into_response();
            }
            match token_grant(&idp, &headers, parsed) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => e.into_response(),
            }
        },
    )
    .await
}

/// Authenticates the client and runs the grant.
fn token_grant(
    idp: &FakeOidc,
    headers: &HeaderMap,
    parsed: Result<BTreeMap<String, String>, String>,
) -> Result<Value, OidcError> {
    let form = parsed
        .map_err(|dup| OidcError::bad("invalid_request", format!("Repeated parameter: {dup}")))?;
    let client_id = authenticate_client(idp, headers, &form)?;
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    match get("grant_type") {
        Some("authorization_code") => code_grant(idp, &client_id, &form),
        Some("refresh_token") => refresh_grant(idp, &client_id, &form),
        None => Err(OidcError::missing("grant_type")),
        Some(other) => Err(OidcError::bad(
            "unsupported_grant_type",
            format!("Unsupported grant_type: {other}"),
        )),
    }
}

fn code_grant(
    idp: &FakeOidc,
    client_id: &str,
    form: &BTreeMap<String, String>,
) -> Result<Value, OidcError> {
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let code = get("code").ok_or_else(|| OidcError::missing("code"))?;
    let mut st = idp.inner.state.lock();
    let cg = st
        .codes
        .get(code)
        .ok_or_else(|| OidcError::invalid_grant("Unknown authorization code."))?;
    cg.check_issued_to(client_id)
        .and_then(|()| cg.check_binding(get("redirect_uri"), get("code_verifier")))
        .map_err(|problem| match problem {
            CodeProblem::Used => OidcError::invalid_grant("The code was used already."),
            CodeProblem::Expired => OidcError::invalid_grant("The code has expired."),
            CodeProblem::OtherClient => {
                OidcError::invalid_grant("The code was issued to another client.")
            }
            CodeProblem::NoRedirectUri => OidcError::missing("redirect_uri"),
            CodeProblem::OtherRedirectUri => OidcError::invalid_grant(
                "redirect_uri differs from the one of the authorization request.",
            ),
            CodeProblem::NoVerifier | CodeProblem::WrongVerifier => {
                OidcError::invalid_grant("The code_verifier does not match the code_challenge.")
            }
        })?;
    let user = users::find(&st.users, &cg.data.email)
        .ok_or_else(|| OidcError::invalid_grant("The user no longer exists."))?;
    let scopes = cg.data.scopes.clone();
    let nonce = cg.nonce.clone();
    st.codes.mark_used(code);
    st.core.code_redemptions += 1;
    st.grants += 1;
    let grant = st.grants;
    let mut body = issue(idp, &mut st, grant, &user, &scopes, nonce.as_deref())?;
    if has(&scopes, "offline_access") {
        let rt = st.refresh_tokens.issue(
            "oidc-rt-",
            64,
            Refresh::new(client_id, &user.email, GrantData { grant, scopes }),
        );
        st.core.issued.push(rt.clone());
        body.insert("refresh_token".into(), rt.into());
    }
    Ok(Value::Object(body))
}

fn refresh_grant(
    idp: &FakeOidc,
    client_id: &str,
    form: &BTreeMap<String, String>,
) -> Result<Value, OidcError> {
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let rt = get("refresh_token").ok_or_else(|| OidcError::missing("refresh_token"))?;
    let mut st = idp.inner.state.lock();
    let rec =
        match st.refresh_tokens.check(rt, client_id) {
            Ok(Some(rec)) => rec,
            _ => return Err(OidcError::invalid_grant(
                "The refresh token is invalid, expired, revoked, or was issued to another client.",
            )),
        };
    // RFC 6749 §6: the scope may narrow the grant, never widen it.
    let scopes = match get("scope") {
        None => rec.data.scopes.clone(),
        Some(raw) => {
            let asked = parse_scopes(raw)
                .map_err(|bad| OidcError::bad("invalid_scope", format!("Unknown scope: {bad}")))?;
            if let Some(extra) = asked.iter().find(|s| !has(&rec.data.scopes, s)) {
                return Err(OidcError::bad(
                    "invalid_scope",
                    format!("The grant does not cover the scope {extra}."),
                ));
            }
            asked
        }
    };
    let user = users::find(&st.users, &rec.subject)
        .ok_or_else(|| OidcError::invalid_grant("The user no longer exists."))?;
    st.refresh_tokens.mark_used(rt);
    st.core.refresh_grants += 1;
    let grant = rec.data.grant;
    let mut body = issue(idp, &mut st, grant, &user, &scopes, None)?;
    let next = st.refresh_tokens.issue("oidc-rt-", 64, rec.successor());
    st.core.issued.push(next.clone());
    body.insert("refresh_token".into(), next.into());
    Ok(Value::Object(body))
}

/// Records an access token (and signs an id_token when `openid` is among
/// `scopes`); the token response without `refresh_token`.
fn issue(
    idp: &FakeOidc,
    st: &mut Mutable,
    grant: usize,
    user: &OidcUser,
    scopes: &[String],
    nonce: Option<&str>,
) -> Result<Map<String, Value>, OidcError> {
    let lifetime = st.access_token_lifetime;
    let access = st.access_tokens.issue(
        "oidc-at-",
        48,
        &user.email,
        scopes.to_vec(),
        expiry(lifetime, 3600),
        grant,
    );
    st.core.issued.push(access.clone());
    let mut body = Map::new();
    body.insert("access_token".into(), access.clone().into());
    body.insert("token_type".into(), "Bearer".into());
    body.insert("expires_in".into(), lifetime.as_secs().into());
    body.insert("scope".into(), scopes.join(" ").into());
    let flaw = st.core.id_token_flaw.clone();
    if has(scopes, "openid") && flaw != Some(IdTokenFlaw::Omitted) {
        let claims = id_token_claims(idp, st, user, scopes, nonce, &access, flaw.as_ref());
        let id_token = idp
            .inner
            .signer
            .sign(&Value::Object(claims), flaw.as_ref())
            .map_err(|e| {
                OidcError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    format!("Could not sign the id_token: {e}"),
                )
            })?;
        st.core.issued.push(id_token.clone());
        body.insert("id_token".into(), id_token.into());
    }
    Ok(body)
}

fn id_token_claims(
    idp: &FakeOidc,
    st: &Mutable,
    user: &OidcUser,
    scopes: &[String],
    nonce: Option<&str>,
    access_token: &str,
    flaw: Option<&IdTokenFlaw>,
) -> Map<String, Value> {
    let now = Utc::now().timestamp();
    let mut claims = Map::new();
    claims.insert("iss".into(), idp.issuer().into());
    claims.insert("sub".into(), user.sub.clone().into());
    claims.insert("aud".into(), idp.inner.client_id.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + 3600).into());
    if let Some(n) = nonce {
        claims.insert("nonce".into(), n.into());
    }
    claims.insert("at_hash".into(), at_hash(access_token).into());
    if st.endpoints.email_in_id_token && has(scopes, "email") {
        claims.insert("email".into(), user.email.clone().into());
        claims.insert("email_verified".into(), user.email_verified.into());
    }
    if has(scopes, "profile") {
        insert_profile(&mut claims, user);
    }
    if let Some(flaw) = flaw {
        flaw.apply_to_claims(&mut claims, now);
    }
    claims
}

fn insert_profile(claims: &mut Map<String, Value>, user: &OidcUser) {
    claims.insert("name".into(), user.name.clone().into());
    let mut parts = user.name.splitn(2, ' ');
    if let Some(given) = parts.next().filter(|s| !s.is_empty()) {
        claims.insert("given_name".into(), given.into());
    }
    if let Some(family) = parts.next().filter(|s| !s.is_empty()) {
        claims.insert("family_name".into(), family.into());
    }
}

// ---------------------------------------------------------------------------
// Userinfo
// ---------------------------------------------------------------------------

/// RFC 6750 §3: a bearer error names itself in `WWW-Authenticate`.
fn bearer_error(status: StatusCode, error: &'static str, description: &str) -> Response {
    let mut resp = json_response(
        status,
        &json!({"error": error, "error_description": description}),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "Bearer realm=\"fake-oidc\", error=\"{error}\", error_description=\"{description}\""
    )) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

async fn userinfo(State(idp): State<FakeOidc>, headers: HeaderMap, body: Bytes) -> Response {
    let st = idp.inner.state.lock();
    if st.endpoints.userinfo_down {
        drop(st);
        return with_retry_after(OidcError::unavailable().into_response(), Some(5));
    }
    // RFC 6750 §2.1 and §2.2: the header, or `access_token` in a form body;
    // never both.
    let in_form = form_of(&headers, &body)
        .ok()
        .and_then(|f| f.get("access_token").cloned());
    let token = match (bearer_token(&headers), in_form.as_deref()) {
        (Some(_), Some(_)) => {
            return bearer_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "More than one method to send the access token.",
            )
        }
        (Some(t), None) | (None, Some(t)) => t.to_string(),
        (None, None) => {
            let mut resp = StatusCode::UNAUTHORIZED.into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fake-oidc\""),
            );
            return resp;
        }
    };
    let Some(at) = st.access_tokens.get(&token).filter(|at| at.valid()) else {
        return bearer_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The access token is invalid or has expired.",
        );
    };
    if !has(&at.scopes, "openid") {
        return bearer_error(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "The access token lacks the openid scope.",
        );
    }
    let Some(user) = users::find(&st.users, &at.subject) else {
        return bearer_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The user no longer exists.",
        );
    };
    let scopes = at.scopes.clone();
    let sub = st
        .endpoints
        .userinfo_sub
        .clone()
        .unwrap_or_else(|| user.sub.clone());
    drop(st);
    let mut claims = Map::new();
    claims.insert("sub".into(), sub.into());
    if has(&scopes, "email") {
        claims.insert("email".into(), user.email.clone().into());
        claims.insert("email_verified".into(), user.email_verified.into());
    }
    if has(&scopes, "profile") {
        insert_profile(&mut claims, &user);
    }
    json_response(StatusCode::OK, &Value::Object(claims))
}

// ---------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------

async fn revoke(State(idp): State<FakeOidc>, headers: HeaderMap, body: Bytes) -> Response {
    let form = match form_of(&headers, &body) {
        Ok(f) => f,
        Err(dup) => {
            return OidcError::bad("invalid_request", format!("Repeated parameter: {dup}"))
                .into_response()
        }
    };
    {
        let st = idp.inner.state.lock();
        if st.endpoints.revoke_refused {
            drop(st);
            return OidcError::invalid_client("Client authentication failed.").into_response();
        }
        if st.endpoints.revoke_fault {
            drop(st);
            return OidcError::unavailable().into_response();
        }
    }
    if let Err(e) = authenticate_client(&idp, &headers, &form) {
        return e.into_response();
    }
    let Some(token) = form.get("token").filter(|t| !t.is_empty()) else {
        return OidcError::missing("token").into_response();
    };
    let mut st = idp.inner.state.lock();
    // RFC 7009 §2.2: an unknown or already invalid token is no error.
    let revoked = if st.refresh_tokens.is_live(token) {
        // §2.1: a refresh token's grant ends, its access tokens with it.
        let grant = st.refresh_tokens.get(token).map(|r| r.data.grant);
        st.refresh_tokens
            .revoke_where(|r| Some(r.data.grant) == grant);
        st.access_tokens
            .invalidate_where(|at| Some(at.data) == grant);
        true
    } else {
        st.access_tokens.invalidate(token)
    };
    if revoked {
        st.endpoints.revocations += 1;
    }
    drop(st);
    json_response(StatusCode::OK, &json!({}))
}
