//! # mailconnect-sandbox
//!
//! A **strict local fake** of Microsoft's identity platform (the
//! `login.microsoftonline.com` v2.0 endpoints) and of the one Microsoft Graph
//! call mailconnect needs (`GET /v1.0/me`). It serves real HTTP on
//! `127.0.0.1` at a random port, so that mailconnect's integration tests (and
//! the `demo` command's sandbox provider) talk to something that refuses
//! exactly what Microsoft refuses: PKCE mismatches, reused codes, refresh
//! grants without `scope`, scopes spanning two resources, used refresh tokens
//! under strict rotation, Graph calls with an Outlook token, and so on.
//!
//! Its `app_access` module adds Entra directories, Microsoft's admin consent
//! endpoint and the client credentials grant, whose app tokens a directory's
//! admin consent allows ([`FakeMicrosoft::add_directory`],
//! [`FakeMicrosoft::admin_consent_endpoint`], [`FakeMicrosoft::app_token_info`]).
//!
//! The [`google`] module holds the same kind of fake for Google's OAuth 2.0 /
//! OpenID Connect endpoints ([`google::FakeGoogle`]), and [`oidc`] a plain,
//! standards-only OpenID provider ([`oidc::FakeOidc`]). All three are built
//! on the shared fake-IdP core in [`idp`] (signing key and JWKS, PKCE,
//! codes, token stores, client authentication, faults, knobs and records),
//! so each module holds only what its provider does its own way.
//!
//! Besides its secret, the app can authenticate with a certificate uploaded
//! to it ([`FakeMicrosoft::upload_certificate`]) or a token of an external
//! issuer it federates with ([`FakeMicrosoft::add_federated_credential`]),
//! checked as Entra checks a `client_assertion`
//! ([`FakeMicrosoft::assertions`] lists those seen); [`TestCertificate`] and
//! [`FederatedIssuer`] make such credentials for tests.
//!
//! The [`aadsts`] module holds Microsoft's answers by AADSTS code
//! ([`AADSTS_ERRORS`]), which [`Fault::Aadsts`] plays at the token endpoint
//! and [`FakeMicrosoft::fail_next_authorize`] at authorize.
//!
//! The [`exchange`] module serves, next to them, a fake of Exchange Online's
//! IMAP and SMTP submission servers over real TLS ([`FakeExchange`]), which
//! takes the [`FakeMicrosoft`]'s access tokens as Exchange takes
//! Microsoft's: who may open, log in as and send as which mailbox, and
//! Exchange's exact replies when not.
//!
//! **This is a test/demo sandbox. It is never to be used in production**: it
//! signs id_tokens with a private key that is checked into the repository,
//! keeps everything in memory, and lets anyone "sign in" as any configured
//! user without a password.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mailconnect_sandbox::{FakeMicrosoft, FakeMicrosoftConfig};
//! let ms = FakeMicrosoft::start(FakeMicrosoftConfig::new(
//!     "client-id",
//!     "client-secret",
//!     "http://127.0.0.1:8080/oauth/callback",
//! ))
//! .await?;
//! let authority = ms.base_url(); // also the Graph base URL
//! # let _ = authority; Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde_json::{json, Value};

pub mod aadsts;
mod app_access;
mod client_assertion;
mod consent;
mod credentials;
pub mod exchange;
pub mod google;
pub mod idp;
pub mod oidc;

pub use aadsts::{AadstsError, AADSTS_ERRORS};
pub use app_access::{AppTokenInfo, APP_ROLES};
pub use client_assertion::{SeenAssertion, JWT_BEARER};
pub use credentials::{FederatedIssuer, TestCertificate, TOKEN_EXCHANGE_AUDIENCE};
pub use exchange::{FakeExchange, ServerCert};
pub use google::{FakeGoogle, FakeGoogleConfig, GoogleUser};
use idp::client_auth::{identify, ClientAuthProblem, Proof};
use idp::codes::{Binding, CodeProblem, Codes};
use idp::core::{refresh_token_in, serve_token_request, shared_knobs, Core};
use idp::http::{
    bearer_token, html, html_escape, json_response, parse_params, redirect_error, redirect_with,
    truncated_json, unreadable_error, with_retry_after, ResponseMode,
};
use idp::keys::Signer;
use idp::pkce::{self, ChallengeProblem};
use idp::tokens::{expiry, AccessTokens, Refresh, RefreshProblem, RefreshTokens};
use idp::users::{self, PickProblem};
use idp::{display_name, sha256, uuid_from_hash};
pub use idp::{
    jwk_exponent, jwk_modulus, sign_claims, Fault, IdTokenFlaw, Rotation, TokenRequestRecord,
    KEY_ID,
};
pub use oidc::{FakeOidc, FakeOidcConfig, OidcUser};

/// The form fields whose values `last_token_request` hides.
const SECRET_FIELDS: &[&str] = &[
    "client_secret",
    "code",
    "code_verifier",
    "refresh_token",
    "client_assertion",
];

/// Tenant id of personal Microsoft accounts (outlook.com, hotmail.com, ...).
pub const PERSONAL_TENANT_ID: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";
/// Tenant id given to users made by [`FakeUser::work`].
pub const WORK_TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// Resource URI of Exchange Online (IMAP/SMTP/EWS scopes).
pub const OUTLOOK_RESOURCE: &str = "https://outlook.office.com";
/// Resource URI of Microsoft Graph.
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";

const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

// ---------------------------------------------------------------------------
// Public configuration types
// ---------------------------------------------------------------------------

/// A user that can "sign in" at the fake authorize endpoint.
#[derive(Clone, Debug)]
pub struct FakeUser {
    /// Object id (uuid string).
    pub oid: String,
    /// The user's home tenant id (uuid string).
    pub tid: String,
    pub user_principal_name: String,
    /// Graph `mail`; `None` is sent as JSON `null`.
    pub mail: Option<String>,
    /// The id_token `email` claim; omitted when `None`.
    pub email_claim: Option<String>,
    pub name: String,
}

impl FakeUser {
    /// A work/school account in tenant [`WORK_TENANT_ID`], with `mail` and the
    /// `email` claim both equal to the UPN. The oid is derived from the UPN,
    /// so it is stable across runs.
    pub fn work(upn: &str) -> FakeUser {
        let h = sha256(format!("work:{}", upn.to_ascii_lowercase()).as_bytes());
        FakeUser {
            oid: uuid_from_hash(&h),
            tid: WORK_TENANT_ID.to_string(),
            user_principal_name: upn.to_string(),
            mail: Some(upn.to_string()),
            email_claim: Some(upn.to_string()),
            name: display_name(upn),
        }
    }

    /// A personal Microsoft account (tenant [`PERSONAL_TENANT_ID`]). Like real
    /// MSA accounts, Graph's `mail` is `null` while the id_token carries the
    /// address in `email`; the oid has the `00000000-0000-0000-…` shape.
    pub fn personal(addr: &str) -> FakeUser {
        let h = sha256(format!("msa:{}", addr.to_ascii_lowercase()).as_bytes());
        let hex: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
        FakeUser {
            oid: format!("00000000-0000-0000-{}-{}", &hex[..4], &hex[4..16]),
            tid: PERSONAL_TENANT_ID.to_string(),
            user_principal_name: addr.to_string(),
            mail: None,
            email_claim: Some(addr.to_string()),
            name: display_name(addr),
        }
    }

    fn is_personal(&self) -> bool {
        self.tid == PERSONAL_TENANT_ID
    }
}

impl users::Account for FakeUser {
    fn address(&self) -> &str {
        &self.user_principal_name
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> String {
        if self.is_personal() {
            "Personal Microsoft account".to_string()
        } else {
            let domain = self.user_principal_name.rsplit('@').next().unwrap_or("");
            format!("Work or school account · {domain}")
        }
    }
}

/// Configuration of a [`FakeMicrosoft`].
pub struct FakeMicrosoftConfig {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    /// The first one is the default user.
    pub users: Vec<FakeUser>,
    pub rotation: Rotation,
    /// Default 3600 s; `expires_in` is this minus one second.
    pub access_token_lifetime: Duration,
    /// When true, `expires_in` is sent as a JSON string (`"3599"`).
    pub expires_in_as_string: bool,
    /// Default false: authorize signs in at once (the default user, the
    /// `login_hint` user, or [`FakeMicrosoft::set_user_for_next_login`]).
    /// When true, authorize (after all its checks) shows a sign-in/consent
    /// page listing the users and the permissions asked, with "Accept" and
    /// "Cancel" (→ `error=access_denied`, AADSTS65004), as for the demo.
    pub interactive: bool,
    /// The app name the consent page shows. Default `"mailconnect"`.
    pub app_name: String,
}

impl FakeMicrosoftConfig {
    /// One default user `FakeUser::work("ops@contoso.com")`, strict rotation,
    /// 3600 s access tokens, numeric `expires_in`.
    pub fn new(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        FakeMicrosoftConfig {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uri: redirect_uri.into(),
            users: vec![FakeUser::work("ops@contoso.com")],
            rotation: Rotation::Strict,
            access_token_lifetime: Duration::from_secs(3600),
            expires_in_as_string: false,
            interactive: false,
            app_name: "mailconnect".to_string(),
        }
    }
}

/// What the sandbox knows about an access token it issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessTokenInfo {
    pub upn: String,
    /// `"https://outlook.office.com"` or `"https://graph.microsoft.com"`.
    pub resource: String,
    /// Granted resource scopes as full URLs, e.g.
    /// `https://outlook.office.com/IMAP.AccessAsUser.All`.
    pub scopes: Vec<String>,
    pub expires_at: DateTime<Utc>,
    /// Not expired and not invalidated by [`FakeMicrosoft::expire_access_tokens`].
    pub valid: bool,
}

// ---------------------------------------------------------------------------
// Internal state
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct ScopeSet {
    /// Lower-cased OIDC scopes in request order.
    oidc: Vec<String>,
    /// (resource, scope name), resource lower-cased without trailing slash.
    resource: Vec<(String, String)>,
}

impl ScopeSet {
    fn parse(raw: &str) -> Result<ScopeSet, String> {
        let mut set = ScopeSet::default();
        for s in raw.split_whitespace() {
            let lower = s.to_ascii_lowercase();
            if OIDC_SCOPES.contains(&lower.as_str()) {
                if !set.oidc.contains(&lower) {
                    set.oidc.push(lower);
                }
                continue;
            }
            let (res, name) = if s.contains("://") {
                match s.rfind('/') {
                    Some(i) if i > s.find("://").unwrap_or(0) + 2 => {
                        (s[..i].to_ascii_lowercase(), s[i + 1..].to_string())
                    }
                    _ => return Err(s.to_string()),
                }
            } else {
                (GRAPH_RESOURCE.to_string(), s.to_string())
            };
            if name.is_empty() || res.ends_with("://") {
                return Err(s.to_string());
            }
            if !set
                .resource
                .iter()
                .any(|(r, n)| *r == res && n.eq_ignore_ascii_case(&name))
            {
                set.resource.push((res, name));
            }
        }
        Ok(set)
    }

    fn has(&self, oidc: &str) -> bool {
        self.oidc.iter().any(|s| s == oidc)
    }

    fn resources(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (r, _) in &self.resource {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }

    fn consents_to(&self, res: &str, name: &str) -> bool {
        if res == GRAPH_RESOURCE && name.eq_ignore_ascii_case("User.Read") && self.has("openid") {
            // Signing in with openid consents to "Sign you in and read your profile".
            return true;
        }
        self.resource
            .iter()
            .any(|(r, n)| r == res && n.eq_ignore_ascii_case(name))
    }

    fn consented_for(&self, res: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .resource
            .iter()
            .filter(|(r, _)| r == res)
            .map(|(_, n)| n.clone())
            .collect();
        if res == GRAPH_RESOURCE
            && self.has("openid")
            && !out.iter().any(|n| n.eq_ignore_ascii_case("User.Read"))
        {
            out.push("User.Read".to_string());
        }
        out
    }
}

/// What a Microsoft code carries besides its binding.
struct CodeData {
    tenant: String,
    scopes: ScopeSet,
    upn: String,
}

/// A Microsoft refresh token remembers what the user consented to.
type RefreshGrant = Refresh<ScopeSet>;

/// What an access token carries besides its subject and scopes.
struct AccessData {
    /// The resource it is for (its audience), lower-cased.
    resource: String,
    /// `Some(directory id)` for an app token: its subject is the client id
    /// and its scopes are app roles. `None` for a user's (delegated) token.
    app_directory: Option<String>,
}

struct Mutable {
    users: Vec<FakeUser>,
    access_token_lifetime: Duration,
    expires_in_as_string: bool,
    core: Core,
    graph_down: bool,
    /// Domain → directory id, for tenant paths that name a domain.
    domains: HashMap<String, String>,
    /// Lower-cased directory id → directory.
    directories: HashMap<String, app_access::Directory>,
    /// The admin cancels the next admin-consent page.
    admin_declines: bool,
    /// The AADSTS code the next authorization that would give a code
    /// redirects with instead ([`FakeMicrosoft::fail_next_authorize`]).
    next_authorize_failure: Option<u32>,
    /// Admin-consent pages waiting for an answer (apart from authorize's, so
    /// that neither answer route resumes the other's request).
    admin_pending: consent::PendingStore,
    /// (directory or lower-cased tenant path, grant type) → token requests.
    token_requests_by: HashMap<(String, String), usize>,
    /// The app's certificates and federated credentials, and whether it
    /// still takes its secret.
    credentials: client_assertion::AppCredentials,
    codes: Codes<CodeData>,
    refresh_tokens: RefreshTokens<ScopeSet>,
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

/// The fake Microsoft identity platform + Graph. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct FakeMicrosoft {
    inner: Arc<Inner>,
}

shared_knobs!(FakeMicrosoft, FakeUser);

impl FakeMicrosoft {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start(cfg: FakeMicrosoftConfig) -> anyhow::Result<FakeMicrosoft> {
        idp::core::start(
            |base| FakeMicrosoft::build(cfg, base),
            FakeMicrosoft::router,
        )
        .await
    }

    /// Builds the sandbox without serving it, for embedding [`Self::router`]
    /// in another server. `base_url` is where it will be reachable (no
    /// trailing slash); it is used for issuers and discovery URLs.
    pub fn build(cfg: FakeMicrosoftConfig, base_url: &str) -> anyhow::Result<FakeMicrosoft> {
        anyhow::ensure!(!cfg.client_id.is_empty(), "client_id must not be empty");
        let signer = Signer::new()?;
        let core = Core::new(&cfg.client_secret, cfg.interactive);
        Ok(FakeMicrosoft {
            inner: Arc::new(Inner {
                client_id: cfg.client_id,
                client_secret: cfg.client_secret,
                redirect_uri: cfg.redirect_uri,
                app_name: cfg.app_name,
                base_url: base_url.trim_end_matches('/').to_string(),
                signer,
                state: Mutex::new(Mutable {
                    users: cfg.users,
                    access_token_lifetime: cfg.access_token_lifetime,
                    expires_in_as_string: cfg.expires_in_as_string,
                    core,
                    graph_down: false,
                    domains: HashMap::new(),
                    directories: HashMap::new(),
                    admin_declines: false,
                    next_authorize_failure: None,
                    admin_pending: consent::PendingStore::default(),
                    token_requests_by: HashMap::new(),
                    credentials: client_assertion::AppCredentials::default(),
                    codes: Codes::default(),
                    refresh_tokens: RefreshTokens::new(cfg.rotation),
                    access_tokens: AccessTokens::default(),
                }),
            }),
        })
    }

    /// `http://127.0.0.1:PORT` — both the authority and the Graph base URL.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The authorize endpoint for a tenant path segment (`common`, a GUID, ...).
    pub fn authorize_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/authorize", self.inner.base_url)
    }

    /// The token endpoint for a tenant path segment.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.inner.base_url)
    }

    /// The admin consent endpoint for a tenant path segment (a directory id
    /// or domain, `organizations`, ...).
    pub fn admin_consent_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/v2.0/adminconsent", self.inner.base_url)
    }

    /// The issuer id_tokens of this user carry.
    pub fn issuer_for(&self, user: &FakeUser) -> String {
        format!("{}/{}/v2.0", self.inner.base_url, user.tid)
    }

    /// The same routes the started server serves.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
            .route("/{tenant}/oauth2/v2.0/consent", post(consent_answer))
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route(
                "/{tenant}/v2.0/adminconsent",
                get(app_access::admin_consent),
            )
            .route(
                "/{tenant}/v2.0/consent",
                post(app_access::admin_consent_answer),
            )
            .route(
                "/{tenant}/discovery/v2.0/keys",
                get(idp::core::jwks::<FakeMicrosoft>),
            )
            .route(
                "/discovery/v2.0/keys",
                get(idp::core::jwks::<FakeMicrosoft>),
            )
            .route(
                "/{tenant}/v2.0/.well-known/openid-configuration",
                get(openid_configuration),
            )
            .route("/v1.0/me", get(graph_me))
            .route("/error", get(error_page))
            .with_state(self.clone())
    }

    /// Graph `/v1.0/me` answers 503 while true.
    pub fn set_graph_down(&self, down: bool) {
        self.inner.state.lock().graph_down = down;
    }

    /// A refresh token unused for longer than this dies (AADSTS700082, as
    /// Microsoft's do after 90 days). `None`, the default: never.
    pub fn set_refresh_token_max_idle(&self, max: Option<Duration>) {
        self.inner.state.lock().refresh_tokens.set_max_idle(max);
    }

    /// Every refresh token issued so far looks `by` older: time passing,
    /// for the inactivity rule.
    pub fn age_refresh_tokens(&self, by: Duration) {
        self.inner.state.lock().refresh_tokens.age(by);
    }

    /// A tenant path naming `domain` is the directory `tid`: authorize there
    /// admits only that directory's users, and its discovery document names
    /// that directory's issuer. A domain never added admits anyone.
    pub fn add_domain(&self, domain: &str, tid: &str) {
        self.inner
            .state
            .lock()
            .domains
            .insert(domain.to_ascii_lowercase(), tid.to_string());
    }

    /// All refresh tokens of that user die (→ `invalid_grant`). Access tokens
    /// already issued stay valid until they expire, as at Microsoft.
    pub fn revoke_user(&self, upn: &str) {
        self.inner.state.lock().refresh_tokens.revoke_subject(upn);
    }

    /// Uploads a certificate (its DER, the `.cer` of Certificates & secrets):
    /// from then on a token request may authenticate with a client
    /// assertion it signs (PS256 or RS256, naming it by `x5t#S256` or
    /// `x5t`), until its notAfter. Panics for anything but an X.509
    /// certificate with an RSA key, as the portal refuses it.
    pub fn upload_certificate(&self, cert_der: &[u8]) {
        self.inner
            .state
            .lock()
            .credentials
            .upload_certificate(cert_der);
    }

    /// Adds a federated identity credential: tokens of `issuer` about
    /// `subject` for the audience [`TOKEN_EXCHANGE_AUDIENCE`] authenticate
    /// the app. `jwks` holds the issuer's keys, which Entra would fetch from
    /// the issuer. Panics for a JWKS that does not parse.
    pub fn add_federated_credential(&self, issuer: &str, subject: &str, jwks: Value) {
        self.inner
            .state
            .lock()
            .credentials
            .add_federated(issuer, subject, jwks);
    }

    /// The client assertions the token endpoint read so far, in order,
    /// accepted or not.
    pub fn assertions(&self) -> Vec<SeenAssertion> {
        self.inner.state.lock().credentials.seen()
    }

    /// With `false`, the app takes its client secret no more (AADSTS7000215
    /// for any secret, as when none is registered): a client that sends one
    /// anyway is caught. Default true.
    pub fn set_secret_accepted(&self, accepted: bool) {
        self.inner.state.lock().credentials.secret_accepted = accepted;
    }

    /// Kills one refresh token (→ `invalid_grant`).
    pub fn revoke_refresh_token(&self, token: &str) {
        self.inner.state.lock().refresh_tokens.revoke(token);
    }

    /// The next authorization that would give a code (once) redirects back
    /// instead with Microsoft's `error` for AADSTS `code`, an
    /// `error_description` "AADSTS`code`: …" with Microsoft's trace lines,
    /// and the `state`, as Entra does once the user signed in: declined
    /// consent (65004), admin consent required (90094), a misconfigured app
    /// (90008), consent or multi-factor authentication needed under
    /// `prompt=none` (65001, 50076, 50079), a Conditional Access block
    /// (53003), … ([`AadstsError::authorize_error`]). It stands for a
    /// sign-in that went wrong at Entra, so the fake's own refusals (a bad
    /// request, a user of another directory) come first, and with the
    /// interactive page on the page is shown and accepting it gets the
    /// error. Panics for a code the authorize endpoint never redirects with.
    pub fn fail_next_authorize(&self, code: u32) {
        AadstsError::lookup_at_authorize(code);
        self.inner.state.lock().next_authorize_failure = Some(code);
    }

    pub fn set_rotation(&self, rotation: Rotation) {
        self.inner.state.lock().refresh_tokens.rotation = rotation;
    }

    pub fn set_expires_in_as_string(&self, as_string: bool) {
        self.inner.state.lock().expires_in_as_string = as_string;
    }

    /// A user's (delegated) access token; `None` for an app token.
    pub fn access_token_info(&self, token: &str) -> Option<AccessTokenInfo> {
        let st = self.inner.state.lock();
        let at = st.access_tokens.get(token)?;
        if at.data.app_directory.is_some() {
            return None;
        }
        Some(AccessTokenInfo {
            upn: at.subject.clone(),
            resource: at.data.resource.clone(),
            scopes: at.scopes.clone(),
            expires_at: at.expires_at,
            valid: at.valid(),
        })
    }

    pub fn refresh_token_is_live(&self, token: &str) -> bool {
        self.inner.state.lock().refresh_tokens.is_live(token)
    }

    /// A live refresh token for `upn`, as if the user had consented to
    /// mailconnect's scopes (mail and Graph) just now — for seeding many
    /// accounts without running the browser flow for each.
    pub fn mint_refresh_token(&self, upn: &str) -> String {
        let consented = ScopeSet::parse(
            "openid profile email offline_access https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send User.Read",
        )
        .expect("the fixed scope list parses");
        let mut st = self.inner.state.lock();
        let token = st.refresh_tokens.issue(
            "M.C",
            80,
            Refresh::new(&self.inner.client_id, upn, consented),
        );
        st.core.issued.push(token.clone());
        token
    }

    /// Whether `upn` is a configured user (any case): Exchange gives each one
    /// a mailbox.
    pub(crate) fn has_user(&self, upn: &str) -> bool {
        Self::find_user(&self.inner.state.lock(), upn).is_some()
    }

    fn find_user(st: &Mutable, upn: &str) -> Option<FakeUser> {
        users::find(&st.users, upn)
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn ms_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn is_guid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

// ---------------------------------------------------------------------------
// OAuth errors
// ---------------------------------------------------------------------------

struct OAuthError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    text: String,
    suberror: Option<&'static str>,
    retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, code: u32, text: impl Into<String>) -> Self {
        OAuthError {
            status,
            error,
            code,
            text: text.into(),
            suberror: None,
            retry_after: None,
        }
    }
    fn bad(error: &'static str, code: u32, text: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, code, text)
    }
    fn missing(param: &str) -> Self {
        Self::bad(
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{param}'."),
        )
    }
    /// `unauthorized_client`, AADSTS700016: no service principal of the app
    /// in that directory.
    fn app_not_found(client_id: &str, directory: &str) -> Self {
        Self::bad(
            "unauthorized_client",
            700016,
            app_not_found(client_id, directory),
        )
    }
    fn invalid_grant(code: u32, text: impl Into<String>) -> Self {
        Self::bad("invalid_grant", code, text)
    }
    /// Microsoft's answer for `row`, with these words.
    fn aadsts(row: &AadstsError, text: String) -> Self {
        let mut e = Self::new(row.status, row.error, row.code, text);
        e.suberror = row.suberror;
        e
    }
    fn multi_resource() -> Self {
        Self::bad(
            "invalid_scope",
            28000,
            "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope openid offline_access is not valid.",
        )
    }
    fn invalid_scope_value(s: &str) -> Self {
        Self::bad(
            "invalid_scope",
            70011,
            format!("The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {s} is not valid."),
        )
    }

    fn into_response(self, base_url: &str) -> Response {
        let trace = Trace::new();
        let mut body = json!({
            "error": self.error,
            "error_description": trace.describe(self.code, &self.text),
            "error_codes": [self.code],
            "timestamp": trace.timestamp,
            "trace_id": trace.trace_id,
            "correlation_id": trace.correlation_id,
            "error_uri": format!("{base_url}/error?code={}", self.code),
        });
        if let (Some(sub), Some(obj)) = (self.suberror, body.as_object_mut()) {
            obj.insert("suberror".into(), Value::String(sub.into()));
        }
        with_retry_after(json_response(self.status, &body), self.retry_after)
    }
}

/// The ids and time Microsoft gives every error it answers, in the JSON
/// body and at the end of the `error_description`, both at the token
/// endpoint and in an authorize redirect.
struct Trace {
    trace_id: String,
    correlation_id: String,
    timestamp: String,
}

impl Trace {
    fn new() -> Trace {
        Trace {
            trace_id: uuid::Uuid::new_v4().to_string(),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            timestamp: ms_timestamp(Utc::now()),
        }
    }

    /// `AADSTS{code}: {text}` and the trace lines, CRLF-separated.
    fn describe(&self, code: u32, text: &str) -> String {
        format!(
            "AADSTS{code}: {text}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
            self.trace_id, self.correlation_id, self.timestamp
        )
    }
}

impl Inner {
    /// Microsoft's token-endpoint answer for AADSTS `code`, in words that
    /// name this app and `tenant` ([`AadstsError::describe`]).
    fn aadsts(&self, code: u32, tenant: &str) -> OAuthError {
        let row = AadstsError::lookup(code);
        OAuthError::aadsts(row, row.describe(&self.client_id, &self.app_name, tenant))
    }

    /// How authorize (or admin consent) refuses with AADSTS `code` once
    /// someone signed in: the redirect's `error`, and its
    /// `error_description` with the trace lines Microsoft adds there too.
    fn authorize_refusal(&self, code: u32, tenant: &str) -> (&'static str, String) {
        let (row, error) = AadstsError::lookup_at_authorize(code);
        let text = row.describe(&self.client_id, &self.app_name, tenant);
        (error, Trace::new().describe(code, &text))
    }
}

fn html_response(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html><html><head><title>{t}</title></head><body><h1>Sign in</h1><h2>Sorry, but we're having trouble signing you in.</h2><p>{m}</p><p><small>mailconnect sandbox &mdash; not Microsoft</small></p></body></html>",
        t = html_escape(title),
        m = html_escape(message)
    );
    html(status, body)
}

// ---------------------------------------------------------------------------
// Authorize
// ---------------------------------------------------------------------------

async fn authorize(
    State(ms): State<FakeMicrosoft>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    match browser_query(query.as_deref()) {
        Ok(q) => authorize_with(&ms, &tenant, &q, consent::Decision::Ask),
        Err(page) => *page,
    }
}

/// The parameters of a browser request's query; the error page for a
/// repeated one.
fn browser_query(query: Option<&str>) -> Result<BTreeMap<String, String>, Box<Response>> {
    parse_params(query.unwrap_or("")).map_err(|dup| {
        Box::new(html_response(
            StatusCode::BAD_REQUEST,
            "AADSTS9000411",
            &format!("AADSTS9000411: The request is not properly formatted. The parameter '{dup}' is duplicated."),
        ))
    })
}

/// `POST …/oauth2/v2.0/consent`: the answer of the interactive
/// sign-in/consent page of authorize.
async fn consent_answer(
    State(ms): State<FakeMicrosoft>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    answer_page(
        &ms,
        &tenant,
        &body,
        |st| &mut st.core.pending,
        authorize_with,
    )
}

/// A consent page's answer: the request it answers, taken from `pending`
/// (once), is resumed with the decision by `resume`.
fn answer_page(
    ms: &FakeMicrosoft,
    tenant: &str,
    body: &[u8],
    pending: impl FnOnce(&mut Mutable) -> &mut consent::PendingStore,
    resume: fn(&FakeMicrosoft, &str, &BTreeMap<String, String>, consent::Decision) -> Response,
) -> Response {
    let answer = match consent::Answer::parse(body) {
        Ok(a) => a,
        Err(msg) => return html_response(StatusCode::BAD_REQUEST, "Sign-in form", &msg),
    };
    let request = pending(&mut ms.inner.state.lock()).take(&answer.request);
    match request {
        Some(p) if p.tenant == tenant => resume(ms, &p.tenant, &p.query, answer.decision),
        _ => html_response(
            StatusCode::BAD_REQUEST,
            "AADSTS90014",
            "This sign-in request has expired or was already answered. Go back to the app and start again.",
        ),
    }
}

/// The `client_id` and `redirect_uri` of a browser request, when they are
/// the registered ones; otherwise the error page Microsoft shows instead
/// of redirecting (the redirect URI cannot be trusted).
fn registered_client<'q>(
    inner: &Inner,
    tenant: &str,
    q: &'q BTreeMap<String, String>,
) -> Result<(&'q str, &'q str), Box<Response>> {
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(client_id) = get("client_id") else {
        return Err(Box::new(html_response(
            StatusCode::BAD_REQUEST,
            "AADSTS900144",
            "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
        )));
    };
    if client_id != inner.client_id {
        return Err(Box::new(html_response(
            StatusCode::BAD_REQUEST,
            "AADSTS700016",
            &format!("AADSTS700016: {}", app_not_found(client_id, tenant)),
        )));
    }
    let redirect_uri = get("redirect_uri").unwrap_or("");
    if redirect_uri != inner.redirect_uri {
        return Err(Box::new(html_response(
            StatusCode::BAD_REQUEST,
            "AADSTS50011",
            &format!("AADSTS50011: The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal."),
        )));
    }
    Ok((client_id, redirect_uri))
}

/// Microsoft's words (AADSTS50020) for a user who is not of the directory.
fn foreign_user(upn: &str, tenant: &str, client_id: &str) -> String {
    format!("User account '{upn}' from identity provider does not exist in tenant '{tenant}' and cannot access the application '{client_id}' in that tenant.")
}

/// Microsoft's words (AADSTS700016) for an app with no service principal in
/// a directory. They name no app name, only the id asked for.
fn app_not_found(client_id: &str, directory: &str) -> String {
    AadstsError::lookup(700016).describe(client_id, "", directory)
}

/// Who signs in for `decision` ([`users::pick`]); when nobody can, the
/// answer: an error page for an unknown account accepted on the page, else
/// `fail(error, error_description)`.
fn sign_in(
    st: &mut Mutable,
    decision: &consent::Decision,
    login_hint: Option<&str>,
    fail: impl Fn(&str, String) -> Response,
) -> Result<FakeUser, Box<Response>> {
    users::pick(&st.users, &mut st.core.next_login, decision, login_hint).map_err(|problem| {
        Box::new(match problem {
            PickProblem::UnknownAccepted(upn) => html_response(
                StatusCode::BAD_REQUEST,
                "AADSTS50034",
                &format!(
                    "AADSTS50034: The user account {upn} does not exist in the sandbox directory."
                ),
            ),
            PickProblem::UnknownNext(upn) => fail(
                "invalid_request",
                format!("AADSTS50034: The user account {upn} does not exist in the sandbox directory (set_user_for_next_login named an unknown user)."),
            ),
            PickProblem::NoUsers => fail(
                "access_denied",
                "AADSTS50020: No user is configured in the sandbox.".into(),
            ),
        })
    })
}

/// The scopes of an authorize request in plain words, for the consent page.
fn describe_scopes(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    for s in raw.split_whitespace() {
        let lower = s.to_ascii_lowercase();
        let name = lower.rsplit('/').next().unwrap_or(&lower);
        let outlook = lower.starts_with(OUTLOOK_RESOURCE);
        let graph = lower.starts_with(GRAPH_RESOURCE) || !lower.contains("://");
        let text = match (lower.as_str(), name) {
            ("openid", _) => "Sign you in".to_string(),
            ("profile", _) => "See your basic profile (your name)".to_string(),
            ("email", _) => "Your email address".to_string(),
            ("offline_access", _) => "Stay signed in (offline access): keep the access you give, even when you are not using the app".to_string(),
            (_, "imap.accessasuser.all") if outlook => "Read and write your mail over IMAP".to_string(),
            (_, "smtp.send") if outlook => "Send mail over SMTP as you".to_string(),
            (_, "pop.accessasuser.all") if outlook => "Read your mail over POP".to_string(),
            (_, "user.read") if graph => "Read your profile (Microsoft Graph)".to_string(),
            _ => format!("Use the permission \u{201c}{s}\u{201d}"),
        };
        consent::push_unique(&mut out, text);
    }
    out
}

fn authorize_with(
    ms: &FakeMicrosoft,
    tenant: &str,
    q: &BTreeMap<String, String>,
    decision: consent::Decision,
) -> Response {
    let inner = &ms.inner;
    let tenant = tenant.to_string();
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let (client_id, redirect_uri) = match registered_client(inner, &tenant, q) {
        Ok(c) => c,
        Err(page) => return *page,
    };

    let state_param = q.get("state").cloned();
    let mode = match get("response_mode") {
        None | Some("query") => ResponseMode::Query,
        Some("fragment") => ResponseMode::Fragment,
        Some("form_post") => ResponseMode::FormPost,
        Some(other) => {
            let desc = format!("AADSTS900134: Unsupported response_mode '{other}'.");
            return redirect_error(
                redirect_uri,
                &ResponseMode::Query,
                "invalid_request",
                Some(&desc),
                state_param.as_deref(),
            );
        }
    };
    let fail = |error: &str, desc: String| {
        redirect_error(
            redirect_uri,
            &mode,
            error,
            Some(&desc),
            state_param.as_deref(),
        )
    };

    match get("response_type") {
        Some("code") => {}
        None => return fail("invalid_request", "AADSTS900144: The request body must contain the following parameter: 'response_type'.".into()),
        Some(other) => return fail("unsupported_response_type", format!("AADSTS700054: response_type '{other}' is not enabled for the application. Only 'code' is supported by this client.")),
    }
    let Some(scope_raw) = get("scope") else {
        return fail(
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'scope'.".into(),
        );
    };
    let scopes = match ScopeSet::parse(scope_raw) {
        Ok(s) => s,
        Err(bad) => return fail("invalid_scope", format!("AADSTS70011: The provided value for the input parameter 'scope' is not valid. The scope '{bad}' is not valid.")),
    };
    if !scopes.has("openid") {
        return fail("invalid_scope", "AADSTS70011: The provided value for the input parameter 'scope' is not valid. This sandbox requires the 'openid' scope.".into());
    }
    let challenge =
        match pkce::check_challenge(get("code_challenge"), get("code_challenge_method")) {
            Ok(c) => c,
            Err(problem) => return fail("invalid_request", match problem {
                ChallengeProblem::Missing => "AADSTS9002325: Proof Key for Code Exchange is required for cross-origin authorization code redemption.",
                ChallengeProblem::NotS256 => "AADSTS501471: code_challenge_method must be 'S256' (the sandbox refuses 'plain' and a missing method).",
                ChallengeProblem::Malformed => "AADSTS501491: Invalid size of Code_Challenge parameter. A S256 code_challenge is 43 base64url characters without padding.",
            }.into()),
        };

    if decision == consent::Decision::Decline {
        let (error, description) = inner.authorize_refusal(65004, &tenant);
        return fail(error, description);
    }

    let mut st = inner.state.lock();
    if let Some((error, desc)) = st.core.authorize_error.clone() {
        drop(st);
        return fail(&error, desc);
    }
    let user = match sign_in(&mut st, &decision, get("login_hint"), fail) {
        Ok(u) => u,
        Err(answer) => return *answer,
    };
    if decision == consent::Decision::Ask && st.core.interactive && get("prompt") != Some("none") {
        let request_id = st.core.pending.insert(&tenant, q);
        let users = users::choices(&st.users);
        drop(st);
        return consent::render(&consent::Page {
            brand: "Microsoft",
            app_name: &inner.app_name,
            client_id,
            redirect_uri,
            request_id: &request_id,
            users,
            selected: &user.user_principal_name,
            permissions: describe_scopes(scope_raw),
            for_organization: false,
        });
    }
    let tenant_lc = tenant.to_ascii_lowercase();
    let wrong_tenant = match tenant_lc.as_str() {
        "common" => false,
        "organizations" => user.is_personal(),
        "consumers" => !user.is_personal(),
        t if is_guid(t) => !t.eq_ignore_ascii_case(&user.tid),
        t => st
            .domains
            .get(t)
            .is_some_and(|tid| !tid.eq_ignore_ascii_case(&user.tid)),
    };
    if wrong_tenant {
        drop(st);
        let description = format!(
            "AADSTS50020: {}",
            foreign_user(&user.user_principal_name, &tenant, client_id)
        );
        return fail("invalid_request", description);
    }
    if let Some(failure) = st.next_authorize_failure.take() {
        drop(st);
        let (error, description) = inner.authorize_refusal(failure, &tenant);
        return fail(error, description);
    }
    let code = st.codes.issue(
        "0.A",
        128,
        Binding {
            client_id,
            redirect_uri,
            code_challenge: challenge,
            nonce: q.get("nonce").cloned(),
        },
        CodeData {
            tenant: tenant.clone(),
            scopes,
            upn: user.user_principal_name.clone(),
        },
    );
    st.core.issued.push(code.clone());
    drop(st);
    let mut params: Vec<(&str, &str)> = vec![("code", &code)];
    if let Some(s) = &state_param {
        params.push(("state", s));
    }
    redirect_with(redirect_uri, &mode, &params)
}

// ---------------------------------------------------------------------------
// Token
// ---------------------------------------------------------------------------

struct Granted {
    resource: String,
    /// Full URLs.
    resource_scopes: Vec<String>,
    scope_string: String,
}

/// Decides what a request for `requested` gets, given what the user
/// consented to; `consent_required` words the refusal of a scope they did not.
fn grant(
    requested: &ScopeSet,
    consented: &ScopeSet,
    consent_required: impl Fn() -> OAuthError,
) -> Result<Granted, OAuthError> {
    let resources = requested.resources();
    if resources.len() > 1 {
        return Err(OAuthError::multi_resource());
    }
    let resource = resources
        .first()
        .cloned()
        .unwrap_or_else(|| GRAPH_RESOURCE.to_string());
    let mut names: Vec<String> = Vec::new();
    for (res, name) in &requested.resource {
        if name == ".default" {
            let all = consented.consented_for(res);
            if all.is_empty() {
                return Err(consent_required());
            }
            names.extend(all);
        } else if consented.consents_to(res, name) {
            names.push(name.clone());
        } else {
            return Err(consent_required());
        }
    }
    if requested.resource.is_empty() {
        names = consented
            .consented_for(GRAPH_RESOURCE)
            .into_iter()
            .filter(|n| n.eq_ignore_ascii_case("User.Read"))
            .collect();
    }
    let mut resource_scopes: Vec<String> = Vec::new();
    for n in names {
        let full = format!("{resource}/{n}");
        if !resource_scopes
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&full))
        {
            resource_scopes.push(full);
        }
    }
    let mut parts = resource_scopes.clone();
    for o in OIDC_SCOPES {
        if requested.has(o) {
            parts.push(o.to_string());
        }
    }
    Ok(Granted {
        resource,
        resource_scopes,
        scope_string: parts.join(" "),
    })
}

async fn token(
    State(ms): State<FakeMicrosoft>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let holder = refresh_token_in(&body).and_then(|rt| {
        let st = ms.inner.state.lock();
        st.refresh_tokens.get(&rt).map(|g| g.subject.clone())
    });
    ms.count_token_request(&tenant, &headers, &body);
    let base = ms.inner.base_url.clone();
    serve_token_request(&ms, &headers, &body, SECRET_FIELDS, holder, |parsed, fault| {
        let grant_type = parsed.as_ref().ok().and_then(|f| f.get("grant_type").cloned());
        let err = match fault {
            None | Some(Fault::Slow(_) | Fault::Flaky { .. }) => None,
            Some(Fault::TooManyRequests { retry_after_secs }) => {
                let mut e = OAuthError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "temporarily_unavailable",
                    90055,
                    "The request has been throttled. Too many requests were sent; retry after the interval in the Retry-After header.",
                );
                e.retry_after = Some(retry_after_secs);
                Some(e)
            }
            Some(Fault::Unavailable | Fault::Stall(_)) => Some(OAuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                90033,
                "A transient error has occurred. Please try again.",
            )),
            Some(Fault::MalformedJson) => {
                return truncated_json("{\"token_type\":\"Bearer\",\"scope\":\"https://outlook.offi")
            }
            Some(Fault::InvalidClient) => Some(ms.inner.aadsts(7000222, &tenant)),
            Some(Fault::InvalidGrant) => Some(OAuthError::invalid_grant(
                70000,
                "The provided value for the 'refresh_token' or 'code' is not valid: the grant is invalid or malformed.",
            )),
            Some(Fault::InteractionRequired) => Some(OAuthError::bad(
                "interaction_required",
                50076,
                "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access 'https://outlook.office.com'.",
            )),
            Some(Fault::UnreadableError) => return unreadable_error(),
            Some(Fault::Aadsts(aadsts::LOOP_DETECTED))
                if grant_type.as_deref() == Some("client_credentials") =>
            {
                return aadsts::loop_throttled_app()
            }
            Some(Fault::Aadsts(code)) => Some(ms.inner.aadsts(code, &tenant)),
            Some(Fault::EmptyAccessToken) => {
                return json_response(
                    StatusCode::OK,
                    &json!({"token_type": "Bearer", "expires_in": 3599, "access_token": ""}),
                )
            }
        };
        if let Some(e) = err {
            return e.into_response(&base);
        }
        match handle_token(&ms, &tenant, &headers, parsed) {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => e.into_response(&base),
        }
    })
    .await
}

fn handle_token(
    ms: &FakeMicrosoft,
    tenant: &str,
    headers: &HeaderMap,
    parsed: Result<BTreeMap<String, String>, String>,
) -> Result<Value, OAuthError> {
    let form = parsed.map_err(|dup| {
        OAuthError::bad(
            "invalid_request",
            9000411,
            format!("The request is not properly formatted. The parameter '{dup}' is duplicated."),
        )
    })?;
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());

    let grant_type = get("grant_type").ok_or_else(|| OAuthError::missing("grant_type"))?;

    let client_id = authenticate_client(ms, tenant, headers, &form)?;

    match grant_type {
        "authorization_code" => code_grant(ms, tenant, &client_id, &form),
        "refresh_token" => refresh_grant(ms, tenant, &client_id, &form),
        "client_credentials" => app_access::client_credentials_grant(ms, tenant, &client_id, &form),
        other => Err(OAuthError::bad(
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{other}'."),
        )),
    }
}

/// The client's id once it proved who it is: with its secret (while the app
/// takes it) or a client assertion of a credential of the app
/// (client_assertion.rs), one way only.
fn authenticate_client(
    ms: &FakeMicrosoft,
    tenant: &str,
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
) -> Result<String, OAuthError> {
    let inner = &ms.inner;
    let (client_id, proof) = identify(headers, form, &inner.client_id, true)
        .map_err(|problem| match problem {
            ClientAuthProblem::BadHeader => OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.",
            ),
            ClientAuthProblem::IdMismatch => OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700016,
                "The client_id in the Authorization header does not match the client_id in the request body.",
            ),
            ClientAuthProblem::NoClientId => OAuthError::missing("client_id"),
            ClientAuthProblem::UnknownClient(client_id) => OAuthError::app_not_found(&client_id, tenant),
            ClientAuthProblem::BothMethods(first, second) => OAuthError::bad(
                "invalid_request",
                900023,
                format!(
                    "The request must not use more than one client authentication method ({} and {} were both used).",
                    first.name(),
                    second.name()
                ),
            ),
            ClientAuthProblem::NoSecret => inner.aadsts(7000218, tenant),
            ClientAuthProblem::WrongSecret(_) => inner.aadsts(7000215, tenant),
        })?;
    let mut st = inner.state.lock();
    match proof {
        Proof::Secret(secret, _) => {
            if !st.credentials.secret_accepted || secret != inner.client_secret {
                return Err(inner.aadsts(7000215, tenant));
            }
        }
        Proof::Assertion { kind, assertion } => st
            .credentials
            .check(
                kind.as_deref(),
                &assertion,
                &ms.token_endpoint(tenant),
                &client_id,
                Utc::now(),
            )
            .map_err(|refusal| match refusal {
                client_assertion::Refusal::Missing(param) => OAuthError::missing(param),
                client_assertion::Refusal::Aadsts(code, None) => inner.aadsts(code, tenant),
                client_assertion::Refusal::Aadsts(code, Some(text)) => {
                    OAuthError::aadsts(AadstsError::lookup(code), text)
                }
            })?,
    }
    Ok(client_id)
}

fn code_grant(
    ms: &FakeMicrosoft,
    tenant: &str,
    client_id: &str,
    form: &BTreeMap<String, String>,
) -> Result<Value, OAuthError> {
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let code = get("code").ok_or_else(|| OAuthError::missing("code"))?;
    let requested_scope = match get("scope") {
        Some(s) => Some(ScopeSet::parse(s).map_err(|bad| OAuthError::invalid_scope_value(&bad))?),
        None => None,
    };
    let mut st = ms.inner.state.lock();
    let cg = st.codes.get(code).ok_or_else(|| {
        OAuthError::invalid_grant(9002313, "Invalid request. Request is malformed or invalid. The provided authorization code is not known.")
    })?;
    cg.check_issued_to(client_id).map_err(|problem| match problem {
        CodeProblem::Used => OAuthError::invalid_grant(54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token."),
        CodeProblem::Expired => OAuthError::invalid_grant(70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource."),
        _ => OAuthError::invalid_grant(70000, "The provided value for the 'code' parameter is not valid. The code was issued to a different client."),
    })?;
    if !cg.data.tenant.eq_ignore_ascii_case(tenant) {
        return Err(OAuthError::invalid_grant(700005, format!("Provided Authorization Code is intended to use against other tenant, thus rejected. It was issued at '/{}/' and redeemed at '/{tenant}/'.", cg.data.tenant)));
    }
    let redirect_uri = get("redirect_uri");
    cg.check_binding(redirect_uri, get("code_verifier"))
        .map_err(|problem| match problem {
            CodeProblem::NoRedirectUri => OAuthError::missing("redirect_uri"),
            CodeProblem::OtherRedirectUri => OAuthError::invalid_grant(500112, format!("The reply address '{}' does not match the reply address '{}' provided when requesting Authorization code.", redirect_uri.unwrap_or_default(), cg.redirect_uri)),
            _ => OAuthError::invalid_grant(501481, "The Code_Verifier does not match the code_challenge supplied in the authorization request."),
        })?;
    let consented = cg.data.scopes.clone();
    let requested = requested_scope.unwrap_or_else(|| consented.clone());
    let granted = grant(&requested, &consented, || ms.inner.aadsts(65001, tenant))?;
    let upn = cg.data.upn.clone();
    let nonce = cg.nonce.clone();
    let want_refresh = requested.has("offline_access") || consented.has("offline_access");
    let want_id = consented.has("openid") || requested.has("openid");
    let user = FakeMicrosoft::find_user(&st, &upn).ok_or_else(|| {
        OAuthError::invalid_grant(50034, "The user account does not exist in the directory.")
    })?;
    let flaw = st.core.id_token_flaw.clone();
    let id_token = if want_id && flaw != Some(IdTokenFlaw::Omitted) {
        Some(ms.id_token(&user, client_id, nonce.as_deref(), flaw.as_ref())?)
    } else {
        None
    };
    st.codes.mark_used(code);
    st.core.code_redemptions += 1;
    let refresh = want_refresh.then(|| Refresh::new(client_id, &upn, consented));
    Ok(issue(&mut st, &upn, granted, refresh, id_token))
}

fn refresh_grant(
    ms: &FakeMicrosoft,
    tenant: &str,
    client_id: &str,
    form: &BTreeMap<String, String>,
) -> Result<Value, OAuthError> {
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let rt = get("refresh_token").ok_or_else(|| OAuthError::missing("refresh_token"))?;
    let scope_raw = get("scope").ok_or_else(|| OAuthError::missing("scope"))?;
    let requested =
        ScopeSet::parse(scope_raw).map_err(|bad| OAuthError::invalid_scope_value(&bad))?;
    if requested.resources().len() > 1 {
        return Err(OAuthError::multi_resource());
    }
    let mut st = ms.inner.state.lock();
    let grant_rec = match st.refresh_tokens.check(rt, client_id) {
        Ok(Some(rec)) => rec,
        Ok(None) => return Err(OAuthError::invalid_grant(9002313, "Invalid request. Request is malformed or invalid. The provided refresh token is not known.")),
        Err((RefreshProblem::Revoked, _)) => return Err(ms.inner.aadsts(50173, tenant)),
        Err((RefreshProblem::Used, _)) => return Err(OAuthError::aadsts(AadstsError::lookup(700082), "The refresh token has expired due to inactivity or was already redeemed (the sandbox runs with strict rotation: a refresh token dies once used).".into())),
        Err((RefreshProblem::Idle, rec)) => return Err(OAuthError::aadsts(AadstsError::lookup(700082), format!("The refresh token has expired due to inactivity. The token was issued on {} and was inactive for longer than the sandbox allows.", ms_timestamp(rec.issued_at)))),
        Err((RefreshProblem::OtherClient, _)) => return Err(OAuthError::invalid_grant(70000, "The provided value for the 'refresh_token' is not valid. The refresh token was issued to a different client.")),
    };
    let granted = grant(&requested, &grant_rec.data, || {
        ms.inner.aadsts(65001, tenant)
    })?;
    let user = FakeMicrosoft::find_user(&st, &grant_rec.subject).ok_or_else(|| {
        OAuthError::invalid_grant(50034, "The user account does not exist in the directory.")
    })?;
    let flaw = st.core.id_token_flaw.clone();
    let id_token = if requested.has("openid") && flaw != Some(IdTokenFlaw::Omitted) {
        Some(ms.id_token(&user, client_id, None, flaw.as_ref())?)
    } else {
        None
    };
    st.refresh_tokens.mark_used(rt);
    st.core.refresh_grants += 1;
    let new_rt = grant_rec.successor();
    Ok(issue(
        &mut st,
        &user.user_principal_name,
        granted,
        Some(new_rt),
        id_token,
    ))
}

/// Issues and records an access token; returns it with its `expires_in`
/// as the configuration says to send it (a number or a string).
fn mint_access_token(
    st: &mut Mutable,
    subject: &str,
    scopes: Vec<String>,
    data: AccessData,
) -> (String, Value) {
    let lifetime = st.access_token_lifetime;
    let expires_at = expiry(lifetime, 3600);
    let expires_in = lifetime.as_secs().saturating_sub(1);
    let access = st
        .access_tokens
        .issue("EwA", 60, subject, scopes, expires_at, data);
    st.core.issued.push(access.clone());
    let expires_in = if st.expires_in_as_string {
        Value::String(expires_in.to_string())
    } else {
        Value::from(expires_in)
    };
    (access, expires_in)
}

/// Records and builds a successful token response.
fn issue(
    st: &mut Mutable,
    upn: &str,
    granted: Granted,
    refresh: Option<RefreshGrant>,
    id_token: Option<String>,
) -> Value {
    let data = AccessData {
        resource: granted.resource,
        app_directory: None,
    };
    let (access, exp_val) = mint_access_token(st, upn, granted.resource_scopes, data);
    let mut body = serde_json::Map::new();
    body.insert("token_type".into(), "Bearer".into());
    body.insert("scope".into(), granted.scope_string.into());
    body.insert("expires_in".into(), exp_val.clone());
    body.insert("ext_expires_in".into(), exp_val);
    body.insert("access_token".into(), access.into());
    if let Some(r) = refresh {
        let token = st.refresh_tokens.issue("M.C", 80, r);
        st.core.issued.push(token.clone());
        body.insert("refresh_token".into(), token.into());
    }
    if let Some(id) = id_token {
        st.core.issued.push(id.clone());
        body.insert("id_token".into(), id.into());
    }
    Value::Object(body)
}

impl FakeMicrosoft {
    fn id_token(
        &self,
        user: &FakeUser,
        client_id: &str,
        nonce: Option<&str>,
        flaw: Option<&IdTokenFlaw>,
    ) -> Result<String, OAuthError> {
        let now = Utc::now().timestamp();
        let sub = URL_SAFE_NO_PAD.encode(sha256(format!("{}|{client_id}", user.oid).as_bytes()));
        let mut claims = serde_json::Map::new();
        claims.insert("aud".into(), client_id.into());
        claims.insert("iss".into(), self.issuer_for(user).into());
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), now.into());
        claims.insert("exp".into(), (now + 3600).into());
        if let Some(n) = nonce {
            claims.insert("nonce".into(), n.into());
        }
        claims.insert("sub".into(), sub.into());
        claims.insert("oid".into(), user.oid.clone().into());
        claims.insert("tid".into(), user.tid.clone().into());
        claims.insert("name".into(), user.name.clone().into());
        claims.insert(
            "preferred_username".into(),
            user.user_principal_name.clone().into(),
        );
        if let Some(e) = &user.email_claim {
            claims.insert("email".into(), e.clone().into());
        }
        claims.insert("ver".into(), "2.0".into());
        if let Some(flaw) = flaw {
            flaw.apply_to_claims(&mut claims, now);
            match flaw {
                IdTokenFlaw::Directory(tid) => {
                    claims.insert("tid".into(), tid.clone().into());
                    claims.insert(
                        "iss".into(),
                        format!("{}/{tid}/v2.0", self.inner.base_url).into(),
                    );
                }
                IdTokenFlaw::Tid(tid) => {
                    claims.insert("tid".into(), tid.clone().into());
                }
                IdTokenFlaw::NoTid => {
                    claims.remove("tid");
                }
                _ => {}
            }
        }
        self.inner
            .signer
            .sign(&Value::Object(claims), flaw)
            .map_err(|e| {
                OAuthError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    50000,
                    format!("There was an error issuing a token: {e}"),
                )
            })
    }
}

// ---------------------------------------------------------------------------
// Discovery, JWKS, error page
// ---------------------------------------------------------------------------

async fn openid_configuration(
    State(ms): State<FakeMicrosoft>,
    Path(tenant): Path<String>,
) -> Response {
    let base = &ms.inner.base_url;
    let issuer_tenant = match tenant.to_ascii_lowercase().as_str() {
        "common" | "organizations" => "{tenantid}".to_string(),
        "consumers" => PERSONAL_TENANT_ID.to_string(),
        t => ms
            .inner
            .state
            .lock()
            .domains
            .get(t)
            .cloned()
            .unwrap_or_else(|| tenant.clone()),
    };
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": format!("{base}/{issuer_tenant}/v2.0"),
            "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
            "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
            "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
            "userinfo_endpoint": format!("{base}/oidc/userinfo"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "nonce", "name",
                "preferred_username", "email", "oid", "tid", "ver"],
            "tenant_region_scope": null,
            "cloud_instance_name": "sandbox.invalid",
            "request_uri_parameter_supported": false,
        }),
    )
}

async fn error_page(RawQuery(q): RawQuery) -> Response {
    let code = parse_params(q.as_deref().unwrap_or(""))
        .ok()
        .and_then(|m| m.get("code").cloned())
        .unwrap_or_default();
    html_response(
        StatusCode::OK,
        "Error code lookup",
        &format!("AADSTS{code}: see the error_description of the response that linked here."),
    )
}

// ---------------------------------------------------------------------------
// Graph
// ---------------------------------------------------------------------------

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let now = Utc::now();
    json_response(
        status,
        &json!({"error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": now.format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": uuid::Uuid::new_v4().to_string(),
                "client-request-id": uuid::Uuid::new_v4().to_string(),
            }
        }}),
    )
}

async fn graph_me(State(ms): State<FakeMicrosoft>, headers: HeaderMap) -> Response {
    let st = ms.inner.state.lock();
    if st.graph_down {
        drop(st);
        let mut resp = graph_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "serviceNotAvailable",
            "The service is temporarily unavailable. Please retry later.",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    }
    let unauthorized = |msg: &str| {
        let mut resp = graph_error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", msg);
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\""),
        );
        resp
    };
    let Some(token) = bearer_token(&headers) else {
        return unauthorized("Access token is empty.");
    };
    let Some(at) = st.access_tokens.get(token) else {
        return unauthorized("IDX14100: JWT is not well formed, there are no dots (.).");
    };
    if !at.valid() {
        return unauthorized("Lifetime validation failed, the token is expired.");
    }
    if at.data.resource != GRAPH_RESOURCE {
        return unauthorized("Access token validation failure. Invalid audience.");
    }
    if at.data.app_directory.is_some() {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "/me request is only valid with delegated authentication flow.",
        );
    }
    const READS_ME: [&str; 5] = [
        "User.Read",
        "User.ReadWrite",
        "User.ReadBasic.All",
        "User.Read.All",
        "Directory.Read.All",
    ];
    let may_read = at.scopes.iter().any(|s| {
        READS_ME
            .iter()
            .any(|r| s.eq_ignore_ascii_case(&format!("{GRAPH_RESOURCE}/{r}")))
    });
    if !may_read {
        return graph_error(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        );
    }
    let Some(user) = FakeMicrosoft::find_user(&st, &at.subject) else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            "Resource does not exist.",
        );
    };
    drop(st);
    json_response(
        StatusCode::OK,
        &json!({
            "@odata.context": format!("{}/v1.0/$metadata#users/$entity", ms.inner.base_url),
            "businessPhones": [],
            "displayName": user.name,
            "givenName": null,
            "jobTitle": null,
            "mail": user.mail,
            "mobilePhone": null,
            "officeLocation": null,
            "preferredLanguage": null,
            "surname": null,
            "userPrincipalName": user.user_principal_name,
            "id": user.oid,
        }),
    )
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn scope_parsing_and_resources() {
        let s = ScopeSet::parse(
            "openid offline_access https://outlook.office.com/IMAP.AccessAsUser.All User.Read",
        )
        .unwrap();
        assert_eq!(
            s.resources(),
            vec![OUTLOOK_RESOURCE.to_string(), GRAPH_RESOURCE.to_string()]
        );
        assert!(ScopeSet::parse("https:///x").is_err());
        assert!(ScopeSet::parse("https://outlook.office.com/").is_err());
        let g = grant(
            &ScopeSet::parse("openid").unwrap(),
            &ScopeSet::parse("openid").unwrap(),
            || unreachable!("openid needs no consent to a resource"),
        )
        .ok()
        .unwrap();
        assert_eq!(g.resource, GRAPH_RESOURCE);
        assert_eq!(
            g.resource_scopes,
            vec!["https://graph.microsoft.com/User.Read".to_string()]
        );
    }

    #[test]
    fn users() {
        let w = FakeUser::work("jane.doe@contoso.com");
        assert_eq!(w.tid, WORK_TENANT_ID);
        assert_eq!(w.name, "Jane Doe");
        assert_eq!(w.oid, FakeUser::work("Jane.Doe@contoso.com").oid);
        let p = FakeUser::personal("bob@outlook.com");
        assert_eq!(p.tid, PERSONAL_TENANT_ID);
        assert!(p.oid.starts_with("00000000-0000-0000-"));
        assert!(uuid::Uuid::parse_str(&p.oid).is_ok());
        assert!(p.mail.is_none());
    }

    #[test]
    fn a_flaky_provider_fails_the_asked_share_the_same_way_every_run() {
        let flaky = Fault::Flaky {
            percent: 30,
            stall: Duration::from_secs(12),
        };
        let picks: Vec<Option<Fault>> = (0..10_000).map(|n| flaky.clone().for_request(n)).collect();
        let stalls = picks
            .iter()
            .filter(|f| matches!(f, Some(Fault::Stall(_))))
            .count();
        let unavailable = picks
            .iter()
            .filter(|f| matches!(f, Some(Fault::Unavailable)))
            .count();
        assert!(
            (2_800..3_200).contains(&(stalls + unavailable)),
            "{stalls} + {unavailable}"
        );
        assert!((800..1_200).contains(&stalls), "{stalls}");
        let again = (0..10_000)
            .filter(|n| flaky.clone().for_request(*n).is_some())
            .count();
        assert_eq!(again, stalls + unavailable);
        assert!(Fault::Unavailable.for_request(7).is_some());
    }
}
