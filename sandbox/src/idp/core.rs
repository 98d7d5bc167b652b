//! The state every fake keeps the same way (its knobs, its token-endpoint
//! bookkeeping, what it issued), and the methods that set and read it,
//! which [`shared_knobs!`] gives each fake.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use axum::response::Response;
use axum::Router;

use super::faults::{self, Fault};
use super::http::{form_of, parse_params};
use super::keys::{IdTokenFlaw, Jwks};
use crate::consent::PendingStore;

/// One token request as the fake saw it, when `record_token_requests` is
/// on ([`crate::FakeMicrosoft::record_token_requests`]).
#[derive(Clone, Debug)]
pub struct TokenRequestRecord {
    /// When it arrived.
    pub at: std::time::Instant,
    /// Whose refresh token it carried (a `refresh_token` grant with a token
    /// this fake issued), whether or not it was honoured.
    pub user: Option<String>,
    /// The status answered (200 for a grant); 0 while unanswered, and for
    /// good when the client gave up first.
    pub status: u16,
    /// Held by a [`Fault::Stall`] before the answer.
    pub stalled: bool,
}

/// The shared part of a fake's mutable state.
pub(crate) struct Core {
    /// Which user signs in at the next authorize request (once).
    pub next_login: Option<String>,
    /// `(error, error_description)` authorize answers with instead of a code.
    pub authorize_error: Option<(String, String)>,
    /// Authorize shows the sign-in/consent page.
    pub interactive: bool,
    pub pending: PendingStore,
    pub id_token_flaw: Option<IdTokenFlaw>,
    pub jwks: Jwks,
    pub fault: Option<Fault>,
    pub fault_once: Option<Fault>,
    /// `Some` while token requests are recorded.
    pub token_log: Option<Vec<TokenRequestRecord>>,
    pub token_requests: usize,
    /// Token requests received and not yet answered (or abandoned).
    pub in_flight: usize,
    pub most_in_flight: usize,
    pub refresh_grants: usize,
    pub code_redemptions: usize,
    pub last_token_request: Option<BTreeMap<String, String>>,
    /// Every secret handed out (and the client secret).
    pub issued: Vec<String>,
}

impl Core {
    pub(crate) fn new(client_secret: &str, interactive: bool) -> Core {
        Core {
            next_login: None,
            authorize_error: None,
            interactive,
            pending: PendingStore::default(),
            id_token_flaw: None,
            jwks: Jwks::default(),
            fault: None,
            fault_once: None,
            token_log: None,
            token_requests: 0,
            in_flight: 0,
            most_in_flight: 0,
            refresh_grants: 0,
            code_redemptions: 0,
            last_token_request: None,
            issued: vec![client_secret.to_string()],
        }
    }

    /// Counts a token request, remembers its form with the values of
    /// `secret_fields` replaced by `"[present]"`, and picks the fault it
    /// gets ([`Self::fault_once`] first).
    pub(crate) fn token_request_arrived(
        &mut self,
        parsed: &Result<BTreeMap<String, String>, String>,
        secret_fields: &[&str],
    ) -> Option<Fault> {
        self.token_requests += 1;
        self.last_token_request = Some(match parsed {
            Ok(form) => form
                .iter()
                .map(|(k, v)| {
                    let v = if secret_fields.contains(&k.as_str()) {
                        "[present]"
                    } else {
                        v.as_str()
                    };
                    (k.clone(), v.to_string())
                })
                .collect(),
            Err(_) => BTreeMap::new(),
        });
        let n = self.token_requests;
        self.fault_once
            .take()
            .or_else(|| self.fault.clone())
            .and_then(|f| f.for_request(n))
    }

    /// Records a token request on arrival when recording is on; its index.
    pub(crate) fn log_arrival(&mut self, user: Option<String>) -> Option<usize> {
        self.token_log.as_mut().map(|log| {
            log.push(TokenRequestRecord {
                at: std::time::Instant::now(),
                user,
                status: 0,
                stalled: false,
            });
            log.len() - 1
        })
    }

    /// Updates the recorded request `entry` (when there is one).
    pub(crate) fn update_log(
        &mut self,
        entry: Option<usize>,
        update: impl FnOnce(&mut TokenRequestRecord),
    ) {
        if let Some(r) = entry.and_then(|i| self.token_log.as_mut()?.get_mut(i)) {
            update(r);
        }
    }
}

/// A fake whose [`Core`] can be reached (under its lock).
pub(crate) trait HasCore: Clone + Send + Sync + 'static {
    fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R;
}

/// Counts a token request as in flight until it is answered or dropped.
pub(crate) struct InFlight<F: HasCore>(F);

impl<F: HasCore> InFlight<F> {
    pub(crate) fn new(fake: &F) -> InFlight<F> {
        fake.with_core(|core| {
            core.in_flight += 1;
            core.most_in_flight = core.most_in_flight.max(core.in_flight);
        });
        InFlight(fake.clone())
    }
}

impl<F: HasCore> Drop for InFlight<F> {
    fn drop(&mut self) {
        self.0.with_core(|core| core.in_flight -= 1);
    }
}

/// The state of discovery, userinfo and revocation, for the fakes that
/// serve them (Google, the plain OpenID provider), with the knobs
/// [`openid_endpoint_knobs!`] gives them.
pub(crate) struct OpenIdEndpoints {
    /// The id_token carries `email` / `email_verified` (with the email
    /// scope); when false the client must ask userinfo.
    pub email_in_id_token: bool,
    pub userinfo_down: bool,
    /// Userinfo answers with this `sub` instead of the token's user's.
    pub userinfo_sub: Option<String>,
    pub revoke_fault: bool,
    pub revoke_refused: bool,
    pub discovery_requests: usize,
    pub revocations: usize,
}

impl OpenIdEndpoints {
    pub(crate) fn new(email_in_id_token: bool) -> OpenIdEndpoints {
        OpenIdEndpoints {
            email_in_id_token,
            userinfo_down: false,
            userinfo_sub: None,
            revoke_fault: false,
            revoke_refused: false,
            discovery_requests: 0,
            revocations: 0,
        }
    }
}

/// Serves one token request the way every fake does, around `answer`:
/// records it on arrival when recording is on (`holder`: whose refresh
/// token it carries), counts it in flight until it is answered or dropped
/// (a client that gives up drops the connection, and this handler with
/// it), counts it and remembers its form with `secret_fields` hidden, and
/// plays the fault it gets ([`faults::play`]). `answer` gets the parsed
/// form and the fault left to answer in the fake's own words, if any.
pub(crate) async fn serve_token_request<F: HasCore>(
    fake: &F,
    headers: &HeaderMap,
    body: &[u8],
    secret_fields: &[&str],
    holder: Option<String>,
    answer: impl FnOnce(Result<BTreeMap<String, String>, String>, Option<Fault>) -> Response,
) -> Response {
    let entry = fake.with_core(|core| core.log_arrival(holder));
    let response = {
        let parsed = form_of(headers, body);
        let _in_flight = InFlight::new(fake);
        let fault = fake.with_core(|core| core.token_request_arrived(&parsed, secret_fields));
        let fault = match fault {
            Some(fault) => {
                let stalled =
                    || fake.with_core(|core| core.update_log(entry, |r| r.stalled = true));
                faults::play(fault, stalled).await
            }
            None => None,
        };
        answer(parsed, fault)
    };
    fake.with_core(|core| core.update_log(entry, |r| r.status = response.status().as_u16()));
    response
}

/// The `refresh_token` a token request's body carries (read as a form,
/// whatever its content type), for [`serve_token_request`]'s `holder`.
pub(crate) fn refresh_token_in(body: &[u8]) -> Option<String> {
    parse_params(&String::from_utf8_lossy(body))
        .ok()
        .and_then(|form| form.get("refresh_token").cloned())
}

/// The JWKS endpoint of any fake: counted, 503 while down.
pub(crate) async fn jwks<F: HasCore>(
    axum::extract::State(fake): axum::extract::State<F>,
) -> Response {
    fake.with_core(|core| core.jwks.serve())
}

/// Binds `127.0.0.1:0`, builds the fake for that address with `build`, and
/// serves its `router` on the current tokio runtime.
pub(crate) async fn start<F>(
    build: impl FnOnce(&str) -> anyhow::Result<F>,
    router: impl FnOnce(&F) -> Router,
) -> anyhow::Result<F> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let fake = build(&format!("http://{addr}"))?;
    let app = router(&fake);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(fake)
}

/// Implements [`HasCore`] for a fake whose `inner.state` is a
/// `Mutex<Mutable>` with a `core` field, and gives it the knobs and
/// counters every fake has.
macro_rules! shared_knobs {
    ($fake:ident, $user:ty) => {
        impl $crate::idp::core::HasCore for $fake {
            fn with_core<R>(&self, f: impl FnOnce(&mut $crate::idp::core::Core) -> R) -> R {
                f(&mut self.inner.state.lock().core)
            }
        }

        impl $fake {
            /// Applies to every token request until cleared with `None`.
            pub fn set_fault(&self, fault: Option<$crate::Fault>) {
                let fault = fault.map($crate::Fault::checked);
                self.inner.state.lock().core.fault = fault;
            }

            /// Applies to the next token request only (takes precedence over
            /// [`Self::set_fault`]).
            pub fn set_fault_once(&self, fault: $crate::Fault) {
                let fault = fault.checked();
                self.inner.state.lock().core.fault_once = Some(fault);
            }

            /// `(error, error_description)`: authorize redirects with these
            /// (e.g. `access_denied`) instead of a code, until cleared with
            /// `None`.
            pub fn set_authorize_error(&self, error: Option<(String, String)>) {
                self.inner.state.lock().core.authorize_error = error;
            }

            /// Whether authorize shows the sign-in/consent page (see the
            /// `interactive` field of the configuration).
            pub fn set_interactive(&self, on: bool) {
                self.inner.state.lock().core.interactive = on;
            }

            /// Id_tokens issued from now on carry this defect, until cleared
            /// with `None` (the Microsoft-only flaws `Directory`, `Tid` and
            /// `NoTid` change nothing at the other fakes).
            pub fn set_id_token_flaw(&self, flaw: Option<$crate::IdTokenFlaw>) {
                self.inner.state.lock().core.id_token_flaw = flaw;
            }

            /// The JWKS endpoint answers 503 while true.
            pub fn set_jwks_down(&self, down: bool) {
                self.inner.state.lock().core.jwks.down = down;
            }

            /// GETs of the JWKS endpoint so far.
            pub fn jwks_requests(&self) -> usize {
                self.inner.state.lock().core.jwks.requests
            }

            /// Which user signs in at the next authorize request (once).
            /// Otherwise the user matching `login_hint`, otherwise the first
            /// user. With the interactive page on, this is the user selected
            /// at first.
            pub fn set_user_for_next_login(&self, address: &str) {
                self.inner.state.lock().core.next_login = Some(address.to_string());
            }

            /// Number of POSTs to the token endpoint (all grant types, failed
            /// ones too).
            pub fn token_requests(&self) -> usize {
                self.inner.state.lock().core.token_requests
            }

            /// Starts (or stops, and forgets) recording every token request:
            /// when, whose refresh token, what was answered. Off by default.
            pub fn record_token_requests(&self, on: bool) {
                self.inner.state.lock().core.token_log = on.then(Vec::new);
            }

            /// The token requests recorded since
            /// [`Self::record_token_requests`].
            pub fn token_request_log(&self) -> Vec<$crate::TokenRequestRecord> {
                self.inner
                    .state
                    .lock()
                    .core
                    .token_log
                    .clone()
                    .unwrap_or_default()
            }

            /// Successful `refresh_token` grants.
            pub fn refresh_grants(&self) -> usize {
                self.inner.state.lock().core.refresh_grants
            }

            /// Token requests received and not yet answered: held by
            /// [`Fault::Slow`]($crate::Fault::Slow), say. A request whose
            /// client goes away before the answer is dropped unprocessed.
            pub fn token_requests_in_flight(&self) -> usize {
                self.inner.state.lock().core.in_flight
            }

            /// The most token requests ever in flight at once.
            pub fn most_token_requests_in_flight(&self) -> usize {
                self.inner.state.lock().core.most_in_flight
            }

            /// Successful `authorization_code` grants.
            pub fn code_redemptions(&self) -> usize {
                self.inner.state.lock().core.code_redemptions
            }

            /// Every code, access token, refresh token and id_token ever
            /// issued, plus the client secret — for asserting that none of
            /// them leak into logs.
            pub fn issued_secrets(&self) -> Vec<String> {
                self.inner.state.lock().core.issued.clone()
            }

            /// Form fields of the last token request, with the values of the
            /// secret ones (`client_secret`, `code`, `code_verifier`,
            /// `refresh_token`, …) replaced by `"[present]"`.
            pub fn last_token_request(&self) -> Option<std::collections::BTreeMap<String, String>> {
                self.inner.state.lock().core.last_token_request.clone()
            }

            /// Makes every authorization code issued so far expired, without
            /// waiting the 10 minutes.
            pub fn expire_codes(&self) {
                self.inner.state.lock().codes.expire_all();
            }

            /// Makes every access token issued so far invalid (the API that
            /// takes them, Graph or userinfo, answers 401), to force clients
            /// to refresh. Refresh tokens stay as they are.
            pub fn expire_access_tokens(&self) {
                self.inner.state.lock().access_tokens.invalidate_all();
            }

            /// Lifetime of access tokens issued from now on.
            pub fn set_access_token_lifetime(&self, lifetime: std::time::Duration) {
                self.inner.state.lock().access_token_lifetime = lifetime;
            }

            /// One more user who can sign in.
            pub fn add_user(&self, user: $user) {
                self.inner.state.lock().users.push(user);
            }
        }
    };
}

/// The knobs of [`OpenIdEndpoints`], for a fake whose `Mutable` has it as
/// `endpoints`.
macro_rules! openid_endpoint_knobs {
    ($fake:ident) => {
        impl $fake {
            /// Whether id_tokens carry `email` / `email_verified` (with the
            /// email scope); when off the client must ask userinfo.
            pub fn set_email_in_id_token(&self, on: bool) {
                self.inner.state.lock().endpoints.email_in_id_token = on;
            }

            /// The userinfo endpoint answers 503 while true.
            pub fn set_userinfo_down(&self, down: bool) {
                self.inner.state.lock().endpoints.userinfo_down = down;
            }

            /// Userinfo answers with this `sub` instead of the token's
            /// user's (a confused or hostile endpoint), until cleared with
            /// `None`.
            pub fn set_userinfo_subject(&self, sub: Option<String>) {
                self.inner.state.lock().endpoints.userinfo_sub = sub;
            }

            /// The revocation endpoint answers 503 while true (nothing is
            /// revoked).
            pub fn set_revoke_fault(&self, down: bool) {
                self.inner.state.lock().endpoints.revoke_fault = down;
            }

            /// The revocation endpoint answers 401 `invalid_client` while
            /// true (as if our client credentials had been refused); nothing
            /// is revoked.
            pub fn set_revoke_refused(&self, refused: bool) {
                self.inner.state.lock().endpoints.revoke_refused = refused;
            }

            /// GETs of the discovery document so far.
            pub fn discovery_requests(&self) -> usize {
                self.inner.state.lock().endpoints.discovery_requests
            }

            /// Successful revocations so far.
            pub fn revocations(&self) -> usize {
                self.inner.state.lock().endpoints.revocations
            }
        }
    };
}

pub(crate) use {openid_endpoint_knobs, shared_knobs};
