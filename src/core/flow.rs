//! The authorization code flow, the same for every provider: start it
//! (state, PKCE, nonce), finish it at the callback (consume the state once,
//! let the provider redeem the code, store the account), disconnect.

use anyhow::Context;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::pace::{self, Priority};
use super::refresh::health;
use super::refresh::WarmWindow;
use super::shared::{self, DelegateChange};
use super::Core;
use crate::crypto::Column;
use crate::db::links::{self, LinkState};
use crate::db::{accounts, audit};
use crate::domain::{AccountId, AccountStatus, Caller, ProviderKind, ReturnPath, TenantId};
use crate::metrics;
use crate::oauth::state::{BrowserBinding, StateClaims, StateSigner};
use crate::oauth::{pkce, AuthorizationRequest, CallbackError, CallbackFailure, Connection};
use crate::webhooks::{Event, EventType};

/// Why authorize or disconnect could not be done.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("the {0} provider is not configured on this server")]
    NotConfigured(ProviderKind),
    #[error("no such account")]
    AccountNotFound,
    /// The account belongs to another provider (named).
    #[error("this account is connected through {0}")]
    ProviderMismatch(String),
    #[error("{0}")]
    InvalidReturnTo(&'static str),
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// A discovered provider's document does not fit our configuration.
    #[error("the provider's discovery document does not match this server's configuration")]
    ProviderMisconfigured,
    #[error("the identity provider is unavailable; try again later")]
    ProviderUnavailable,
    /// Admin consent asked where there is no admin (`consumers`).
    #[error(
        "personal Microsoft accounts have no admin to consent; name an organisation's directory"
    )]
    AdminConsentUnavailable,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for FlowError {
    fn from(e: sqlx::Error) -> FlowError {
        FlowError::Internal(anyhow::Error::new(e).context("database query failed"))
    }
}

/// The body of `POST /api/oauth/{provider}/authorize`; every field, and the
/// body itself, may be left out.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"login_hint": "ops@contoso.com", "return_to": "/settings/mail"}))]
pub struct AuthorizeBody {
    /// Re-authorise this account (how an admin heals `needs_reauth`); the
    /// callback then fails with `account_mismatch` if another mailbox comes back.
    #[schema(format = "uuid", example = "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b")]
    pub account_id: Option<String>,
    /// The address to preselect at the provider (at most 320 characters,
    /// no control characters); defaults to the account's address when
    /// `account_id` is given.
    #[schema(
        max_length = 320,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
        example = "ops@contoso.com"
    )]
    pub login_hint: Option<String>,
    /// Where the browser lands after the callback instead of
    /// `OAUTH_RETURN_URL`: a relative path starting with a single `/`, in
    /// printable ASCII (percent-encode anything else) without backslashes,
    /// with no `.` or `..` segment and no encoded `.`, `/` or `\` in the
    /// path; else 400 `invalid_return_to`.
    #[schema(
        max_length = 2048,
        pattern = r"^(?![^?#]*%(?:2[eEfF]|5[cC]))(?![^?#]*/\.\.?(?:[/?#]|$))/(?!/)[!-\[\]-~]*$",
        example = "/settings/mail"
    )]
    pub return_to: Option<String>,
}

/// Where to send the admin's browser to sign in and consent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuthorizeResponse {
    /// The provider's authorization endpoint with PKCE (S256), `nonce` and `state`.
    #[schema(
        format = "uri",
        example = "https://login.microsoftonline.com/common/oauth2/v2.0/authorize?client_id=11111111-2222-3333-4444-555555555555&response_type=code&redirect_uri=https%3A%2F%2Fmail.example.com%2Fapi%2Foauth%2Fmicrosoft%2Fcallback&response_mode=query&scope=openid+profile+email+offline_access+https%3A%2F%2Foutlook.office.com%2FIMAP.AccessAsUser.All+https%3A%2F%2Foutlook.office.com%2FSMTP.Send+User.Read&state=eyJhbGciOiJIUzI1NiJ9.e30.sig&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&nonce=n-0S6_WzA2Mj&prompt=select_account"
    )]
    pub authorization_url: String,
    /// The signed `state` (a JWT), usable once, until `expires_at`.
    #[schema(example = "eyJhbGciOiJIUzI1NiJ9.e30.sig")]
    pub state: String,
    /// When the state stops being accepted (10 minutes).
    #[schema(format = DateTime, example = "2026-11-27T09:10:00Z")]
    pub expires_at: String,
}

/// A started flow: where to send the browser, and the binding that browser
/// must keep (when the flow was started from it).
pub struct Started {
    pub response: AuthorizeResponse,
    pub binding: Option<BrowserBinding>,
}

/// Starts the flow. With `bind_browser`, the state works only in the
/// browser that receives the [`BrowserBinding`] (the admin page); without,
/// in any browser (an API caller that sends the URL elsewhere).
pub async fn authorize(
    core: &Core,
    caller: &Caller,
    kind: ProviderKind,
    body: AuthorizeBody,
    bind_browser: bool,
) -> Result<Started, FlowError> {
    start(core, caller, kind, body, bind_browser, None).await
}

/// Starts the flow from the connect link `link_id` (see
/// [`super::links::start`]): in any browser, ending on the link's page.
pub(super) async fn authorize_from_link(
    core: &Core,
    caller: &Caller,
    kind: ProviderKind,
    body: AuthorizeBody,
    link_id: String,
    token: &str,
) -> Result<Started, FlowError> {
    start(core, caller, kind, body, false, Some((link_id, token))).await
}

async fn start(
    core: &Core,
    caller: &Caller,
    kind: ProviderKind,
    body: AuthorizeBody,
    bind_browser: bool,
    link: Option<(String, &str)>,
) -> Result<Started, FlowError> {
    let provider = core
        .providers
        .get(kind)
        .ok_or(FlowError::NotConfigured(kind))?;
    let tenant = &caller.tenant;

    check_return_to(body.return_to.as_deref())?;
    let mut login_hint = match body.login_hint {
        Some(h) if h.chars().count() > 320 || h.chars().any(char::is_control) => {
            return Err(FlowError::InvalidRequest(
                "login_hint is not a plausible address",
            ))
        }
        other => other.filter(|h| !h.trim().is_empty()),
    };
    let account = match &body.account_id {
        None => None,
        Some(raw) => {
            let id = AccountId::parse(raw).map_err(|_| FlowError::AccountNotFound)?;
            let row = accounts::get(&core.db, tenant, id)
                .await?
                .ok_or(FlowError::AccountNotFound)?;
            if row.provider.known() != Some(kind) {
                return Err(FlowError::ProviderMismatch(row.provider.to_string()));
            }
            login_hint.get_or_insert(row.email.to_string());
            Some(id.to_string())
        }
    };

    let verifier = pkce::new_verifier();
    let nonce = pkce::random_token();
    let (mut claims, binding) = new_state(caller, kind, body.return_to, bind_browser);
    claims.acc = account;
    let (link_id, link_token) = link.unzip();
    claims.lnk = link_id;
    // The verifier and nonce ride along sealed, bound to this state's id:
    // the browser carries them but cannot read them, and nothing is stored.
    // From a connect link, its token too: the link's page at the end of
    // the flow can then offer to try again.
    let pkce = SecretString::from(format!(
        "{} {nonce}{}",
        secrecy::ExposeSecret::expose_secret(&verifier),
        link_token.map(|t| format!(" {t}")).unwrap_or_default()
    ));
    claims.sec = core.keys.seal_for(Column::StatePkce, &claims.jti, &pkce);
    let state = core.states.sign(&claims);
    let url = provider
        .authorization_url(&AuthorizationRequest {
            state: &state,
            code_challenge: &pkce::challenge(&verifier),
            nonce: &nonce,
            login_hint: login_hint.as_deref(),
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, provider = %kind, "could not build the authorization URL");
            match e {
                crate::oauth::TokenError::Misconfigured { .. } => FlowError::ProviderMisconfigured,
                _ => FlowError::ProviderUnavailable,
            }
        })?;
    Ok(Started {
        response: AuthorizeResponse {
            authorization_url: url.to_string(),
            state,
            expires_at: crate::rfc3339(claims.exp),
        },
        binding,
    })
}

/// A flow's `return_to`, if given, must be a path on this host.
pub(super) fn check_return_to(return_to: Option<&str>) -> Result<(), FlowError> {
    match return_to {
        Some(ret) => ReturnPath::parse(ret)
            .map(drop)
            .map_err(FlowError::InvalidReturnTo),
        None => Ok(()),
    }
}

/// The claims of a new state for `caller` at provider `kind` (a fresh
/// `jti`, 10 minutes), and, when the flow is bound to the browser that
/// starts it, the binding that browser must keep ([`BrowserBinding`]).
pub(super) fn new_state(
    caller: &Caller,
    kind: ProviderKind,
    return_to: Option<String>,
    bind_browser: bool,
) -> (StateClaims, Option<BrowserBinding>) {
    let jti = uuid::Uuid::new_v4().to_string();
    let mut claims = StateSigner::claims(
        jti,
        caller.tenant.as_str(),
        &caller.user_id,
        kind.as_str(),
        crate::now(),
    );
    claims.ret = return_to;
    let binding = bind_browser.then(|| {
        let (binding, claim) = BrowserBinding::new(&claims.jti);
        claims.bnd = Some(claim);
        binding
    });
    (claims, binding)
}

/// What the browser brought back to the callback.
#[derive(Debug, Default, Deserialize)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    /// Admin consent: `True` when granted.
    pub admin_consent: Option<String>,
    /// Admin consent: the directory (tenant id) that granted it.
    pub tenant: Option<String>,
    /// The browser's flow cookies
    /// ([`crate::oauth::state::BINDING_COOKIE_PREFIX`]), by name.
    #[serde(skip)]
    pub flow_cookies: std::collections::HashMap<String, String>,
}

impl CallbackQuery {
    /// Reads the callback's raw query by hand: the first value of each name
    /// wins, other names are ignored, and no shape of query can fail.
    pub fn parse(raw: Option<&str>) -> CallbackQuery {
        let mut q = CallbackQuery::default();
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let slot = match k.as_ref() {
                "code" => &mut q.code,
                "state" => &mut q.state,
                "error" => &mut q.error,
                "error_description" => &mut q.error_description,
                "admin_consent" => &mut q.admin_consent,
                "tenant" => &mut q.tenant,
                _ => continue,
            };
            slot.get_or_insert_with(|| v.into_owned());
        }
        q
    }
}

/// How a callback ends: back to the app (forgetting the flow's cookie, if
/// it had one), or (no trusted state) a 400 page.
pub enum CallbackOutcome {
    Redirect {
        location: String,
        forget_cookie: Option<String>,
    },
    Refused(&'static str),
    /// The state could not be checked for now (the database is away): a
    /// 503 page; the same sign-in response works once it is back.
    Unavailable,
    /// A flow started from a connect link ends on the link's page.
    Link(LinkEnd),
}

/// How a flow started from a connect link ended.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// This address is connected; the link is used.
    Connected(String),
    /// Nothing was connected; the link stays as it was. With the link's
    /// token when known, to try again.
    Failed(CallbackFailure, Option<String>),
    /// The link was used or revoked before the callback: nothing connected.
    Closed(LinkState),
}

/// Finishes connecting a mailbox at the callback, once [`super::callback`]
/// has verified and spent its state.
pub(super) async fn finish_connect(
    core: &Core,
    kind: ProviderKind,
    claims: &StateClaims,
    q: &CallbackQuery,
    back: &Back<'_>,
) -> CallbackOutcome {
    let sealed = open_sealed_pkce(core, &claims.jti, &claims.sec);
    let back = &Back {
        forget_cookie: back.forget_cookie.clone(),
        retry: sealed.as_ref().and_then(|s| s.link_token.clone()),
        ..*back
    };
    if let Some(error) = q.error.as_deref() {
        let failure = CallbackFailure::from_authorize_error(error, q.error_description.as_deref());
        // A request value: logged with `Debug`, which escapes CR, LF and
        // escape sequences, so it can never forge a log line.
        tracing::info!(
            provider = %kind,
            error = ?error.chars().take(64).collect::<String>(),
            "the provider returned an error to the callback"
        );
        return back.failed(failure);
    }
    let Some(code) = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() < 8192)
    else {
        return back.failed(CallbackFailure::TokenExchangeFailed);
    };
    let Some(provider) = core.provider(kind) else {
        return back.failed(CallbackFailure::ProviderUnavailable);
    };
    let Some(Sealed {
        verifier, nonce, ..
    }) = sealed
    else {
        return back.failed(CallbackFailure::TokenExchangeFailed);
    };
    // A flow from a connect link: the link must still be open (checked
    // again, atomically, when the account is stored; this spares asking
    // the provider for tokens that would be thrown away).
    let link = match claims.lnk.as_deref() {
        None => None,
        Some(link_id) => match links::by_id(&core.db, link_id).await {
            Ok(Some(row)) if row.tenant_id == claims.tid => {
                let state = row.state(crate::now());
                if matches!(state, LinkState::Used | LinkState::Revoked) {
                    tracing::info!(%link_id, link_state = state.as_str(), "connect link closed before its callback");
                    return CallbackOutcome::Link(LinkEnd::Closed(state));
                }
                Some(row)
            }
            Ok(_) => return back.failed(CallbackFailure::TokenExchangeFailed),
            Err(e) => {
                tracing::error!(error = %e, "could not read the connect link at the callback");
                return back.failed(CallbackFailure::ProviderUnavailable);
            }
        },
    };
    // Someone is waiting at the browser: on-demand.
    let budget = pace::budget(kind, None);
    core.pace
        .admit(&core.db, &budget, Priority::OnDemand, None)
        .await;
    let started = std::time::Instant::now();
    let connected = provider.connect(code, &verifier, &nonce).await;
    metrics::provider_latency(kind.as_str(), "connect", started.elapsed());
    let connection = match connected {
        Ok(c) => {
            health::recovered(core, kind.as_str()).await;
            c
        }
        Err(failure) => {
            if let Some(error) = &failure.misconfigured {
                health::refused_credentials(core, kind.as_str(), error, failure.cause).await;
            }
            return back.failed(failure);
        }
    };
    // The tenant and account come from our own signed state.
    let (Ok(tenant), reauth_of) = (
        TenantId::parse(&claims.tid),
        claims.acc.as_deref().map(AccountId::parse).transpose(),
    ) else {
        return back.failed(CallbackFailure::TokenExchangeFailed);
    };
    let Ok(reauth_of) = reauth_of else {
        return back.failed(CallbackFailure::AccountMismatch);
    };
    if let Some(row) = &link {
        if row
            .email
            .as_deref()
            .is_some_and(|e| e != connection.email.as_str())
        {
            tracing::warn!(link_id = %row.id, "the link's owner signed in with another mailbox");
            return back.failed(CallbackFailure::AccountMismatch);
        }
    }
    let link = link.map(|row| row.id);
    let email = connection.email.to_string();
    let stored = store_connection(
        core,
        &tenant,
        &claims.sub,
        reauth_of,
        kind,
        connection,
        link.as_deref(),
    )
    .await;
    match stored {
        Ok(Ok((id, action))) => {
            ::metrics::counter!(metrics::CONNECTS, "provider" => kind.as_str(), "outcome" => action)
                .increment(1);
            back.connected(&id.to_string(), &email)
        }
        Ok(Err(failure)) => back.failed(failure),
        Err(e) if e.downcast_ref::<LinkClosed>().is_some() => {
            let state = match link.as_deref() {
                Some(id) => links::by_id(&core.db, id)
                    .await
                    .ok()
                    .flatten()
                    .map_or(LinkState::Revoked, |r| r.state(crate::now())),
                None => LinkState::Revoked,
            };
            tracing::info!(provider = %kind, link_state = state.as_str(), "connect link closed before its callback");
            CallbackOutcome::Link(LinkEnd::Closed(state))
        }
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "could not store the connected account"
            );
            back.failed(CallbackFailure::ProviderUnavailable)
        }
    }
}

/// What a state carries sealed.
struct Sealed {
    verifier: SecretString,
    nonce: String,
    /// A flow from a connect link: the link's token.
    link_token: Option<String>,
}

/// The PKCE verifier and nonce (and a connect link's token) sealed in a state.
fn open_sealed_pkce(core: &Core, jti: &str, sealed: &str) -> Option<Sealed> {
    let opened = core
        .keys
        .open_for(Column::StatePkce, jti, sealed)
        .map_err(|e| tracing::error!(error = %e, "could not open the state's sealed PKCE verifier"))
        .ok()?;
    let mut parts = secrecy::ExposeSecret::expose_secret(&opened).split(' ');
    let (verifier, nonce) = (parts.next()?, parts.next()?);
    Some(Sealed {
        verifier: SecretString::from(verifier.to_owned()),
        nonce: nonce.to_owned(),
        link_token: parts.next().map(str::to_owned),
    })
}

/// Builds the redirect back to the core.
pub(super) struct Back<'a> {
    pub(super) core: &'a Core,
    pub(super) kind: ProviderKind,
    pub(super) return_to: Option<&'a str>,
    pub(super) forget_cookie: Option<String>,
    /// A flow started from a connect link: it ends on the link's page.
    pub(super) link: bool,
    /// A flow from a connect link: the link's token, to try again.
    pub(super) retry: Option<String>,
}

impl Back<'_> {
    /// The flow's own `return_to` (validated again: it came back from the
    /// browser, signed, but a path that no longer parses goes nowhere), else
    /// `OAUTH_RETURN_URL`.
    fn url(&self, params: &[(&str, &str)]) -> String {
        match self.return_to {
            Some(ret) => ReturnPath::parse(ret)
                .map(|p| p.location(params))
                .unwrap_or_else(|_| ReturnPath::root().location(params)),
            None => self.core.return_url.location(params),
        }
    }

    pub(super) fn redirect(&self, params: &[(&str, &str)]) -> CallbackOutcome {
        CallbackOutcome::Redirect {
            location: self.url(params),
            forget_cookie: self.forget_cookie.clone(),
        }
    }

    fn connected(&self, account_id: &str, email: &str) -> CallbackOutcome {
        if self.link {
            return CallbackOutcome::Link(LinkEnd::Connected(email.to_owned()));
        }
        self.redirect(&[
            ("oauth", "connected"),
            ("provider", self.kind.as_str()),
            ("account_id", account_id),
        ])
    }

    /// The error redirect: its `reason`, and the `cause` that explains it.
    pub(super) fn failed(&self, failure: impl Into<CallbackError>) -> CallbackOutcome {
        let CallbackError { reason, cause, .. } = failure.into();
        tracing::info!(provider = %self.kind, reason = reason.reason(), %cause, "OAuth callback failed");
        ::metrics::counter!(metrics::CONNECTS, "provider" => self.kind.as_str(), "outcome" => reason.reason(), "cause" => cause.as_str())
            .increment(1);
        if self.link {
            return CallbackOutcome::Link(LinkEnd::Failed(reason, self.retry.clone()));
        }
        self.redirect(&[
            ("oauth", "error"),
            ("provider", self.kind.as_str()),
            ("reason", reason.reason()),
            ("cause", cause.as_str()),
        ])
    }
}

/// The connect link was used or revoked between start and callback.
#[derive(Debug, thiserror::Error)]
#[error("the connect link was used or revoked before the callback")]
struct LinkClosed;

/// Stores a connection: re-authorises the named account, or connects the
/// address (updating the tenant's account for it if there is one). From a
/// connect link, marks the link used in the same transaction, or, if it
/// was used or revoked meanwhile, stores nothing ([`LinkClosed`]).
async fn store_connection(
    core: &Core,
    tenant: &TenantId,
    actor: &str,
    reauth_of: Option<AccountId>,
    kind: ProviderKind,
    c: Connection,
    link: Option<&str>,
) -> anyhow::Result<Result<(AccountId, &'static str), CallbackFailure>> {
    let email = &c.email;
    let existing = match reauth_of {
        Some(id) => {
            let row = accounts::get(&core.db, tenant, id).await?;
            match row {
                Some(row) if &row.email == email => Some(row),
                _ => {
                    tracing::warn!(account_id = %id, "re-authorisation returned another mailbox");
                    return Ok(Err(CallbackFailure::AccountMismatch));
                }
            }
        }
        None => accounts::find_by_email(&core.db, tenant, email).await?,
    };
    let action = match (&existing, reauth_of) {
        (None, _) => "connect",
        (Some(_), Some(_)) => "reauth",
        (Some(_), None) => "reconnect",
    };
    let mut id = existing.map(|r| r.id).unwrap_or_else(AccountId::new);
    let Some(refresh_token) = c.tokens.refresh_token.as_ref() else {
        return Ok(Err(CallbackFailure::TokenExchangeFailed));
    };
    let scopes = c.tokens.scopes.join(" ");
    // A concurrent connect of the same address may have inserted it under
    // another id; seal again for that row (at most once more).
    for _ in 0..2 {
        let id_text = id.to_string();
        let access = core
            .keys
            .seal_for(Column::AccessToken, &id_text, &c.tokens.access_token);
        let refresh = core
            .keys
            .seal_for(Column::RefreshToken, &id_text, refresh_token);
        let mut tx = core.db.pool.begin().await?;
        let before = accounts::lock_status(&mut tx, id).await?;
        let stored_id = accounts::upsert_connected(
            &mut *tx,
            &accounts::Connected {
                id,
                tenant_id: tenant,
                provider: kind,
                email,
                scopes: &scopes,
                access_token_enc: &access,
                refresh_token_enc: &refresh,
                token_expires_at: c.tokens.expires_at,
                provider_tenant_id: c.provider_tenant_id.as_deref(),
                // Not used yet: kept warm only if every account is.
                due_at: core.schedule.next_due_for(
                    c.tokens.expires_at,
                    core.schedule.warm_window == WarmWindow::All,
                    crate::now(),
                ),
            },
            crate::now(),
        )
        .await
        .context("upserting the account")?;
        if stored_id != id {
            tx.rollback().await?;
            id = stored_id;
            continue;
        }
        if let Some(link_id) = link {
            if !links::mark_used(&mut *tx, link_id, &id_text, crate::now()).await? {
                tx.rollback().await?;
                return Err(LinkClosed.into());
            }
        }
        audit::record(
            &mut *tx,
            &audit::NewEvent {
                tenant_id: tenant.as_str(),
                account_id: Some(&id_text),
                provider: Some(kind.as_str()),
                action,
                actor,
                outcome: "connected",
                detail: None,
            },
            crate::now(),
        )
        .await?;
        // One event per change of state: a needs_reauth mailbox that works
        // again is `recovered` (instead of `reconnected`).
        let event = match before {
            None => EventType::AccountConnected,
            Some(AccountStatus::NeedsReauth) => EventType::AccountRecovered,
            Some(_) => EventType::AccountReconnected,
        };
        core.webhooks
            .enqueue(
                &mut tx,
                &Event {
                    kind: event,
                    tenant_id: Some(tenant.as_str()),
                    account_id: Some(&id_text),
                    provider: kind.as_str(),
                    email: Some(email.as_str()),
                    error: None,
                    directory: None,
                    cause: None,
                    expiry: None,
                },
                crate::now(),
            )
            .await
            .context("writing the webhook event")?;
        // Its shared mailboxes work again with it.
        shared::follow(&mut tx, core, id, DelegateChange::Healed, crate::now()).await?;
        tx.commit().await?;
        core.webhooks.written();
        tracing::info!(account_id = %id, provider = %kind, action, "mailbox connected");
        return Ok(Ok((id, action)));
    }
    anyhow::bail!("the account row kept changing under a concurrent connect")
}

/// A disconnected account: its tokens are deleted (revoked first where the
/// provider can), and it falls back to password authentication.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"account_id": "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b", "auth_type": "password", "status": "disconnected"}))]
pub struct DisconnectResponse {
    #[schema(format = "uuid")]
    pub account_id: String,
    /// Always `password`.
    #[schema(value_type = String, pattern = "^password$", example = "password")]
    pub auth_type: &'static str,
    /// Always `disconnected`.
    #[schema(value_type = crate::domain::AccountStatus, example = "disconnected")]
    pub status: &'static str,
}

/// Revokes where the provider can, then deletes the token ciphertexts. A
/// failed revocation does not keep the account connected; the audit event
/// says so.
pub async fn disconnect(
    core: &Core,
    caller: &Caller,
    kind: ProviderKind,
    account_id: &str,
) -> Result<DisconnectResponse, FlowError> {
    let provider = core
        .providers
        .get(kind)
        .ok_or(FlowError::NotConfigured(kind))?;
    let tenant = &caller.tenant;
    let id = AccountId::parse(account_id).map_err(|_| FlowError::AccountNotFound)?;
    let row = accounts::get(&core.db, tenant, id)
        .await?
        .ok_or(FlowError::AccountNotFound)?;
    if row.provider.known() != Some(kind) {
        return Err(FlowError::ProviderMismatch(row.provider.to_string()));
    }
    let id_text = id.to_string();
    let mut outcome = "disconnected";
    if provider.can_revoke().await {
        if let Some(enc) = &row.refresh_token_enc {
            match core.keys.open_for(Column::RefreshToken, &id_text, enc) {
                Ok(token) => {
                    let started = std::time::Instant::now();
                    let revoked = provider.revoke(&token).await;
                    metrics::provider_latency(kind.as_str(), "revoke", started.elapsed());
                    if let Err(e) = revoked {
                        tracing::warn!(account_id = %id, error = e.code(), "revocation at the provider failed");
                        outcome = "disconnected_revocation_failed";
                    }
                }
                Err(e) => {
                    tracing::warn!(account_id = %id, error = %e, "could not open the refresh token to revoke it")
                }
            }
        }
    }
    let mut tx = core.db.pool.begin().await?;
    let before = accounts::lock_status(&mut tx, id).await?;
    accounts::disconnect(&mut *tx, tenant, id, crate::now()).await?;
    if before.is_some_and(|s| s != AccountStatus::Disconnected) {
        core.webhooks
            .enqueue(
                &mut tx,
                &Event {
                    kind: EventType::AccountDisconnected,
                    tenant_id: Some(tenant.as_str()),
                    account_id: Some(&id_text),
                    provider: kind.as_str(),
                    email: Some(row.email.as_str()),
                    error: None,
                    directory: None,
                    cause: None,
                    expiry: None,
                },
                crate::now(),
            )
            .await?;
    }
    audit::record(
        &mut *tx,
        &audit::NewEvent {
            tenant_id: tenant.as_str(),
            account_id: Some(&id_text),
            provider: Some(kind.as_str()),
            action: "disconnect",
            actor: &caller.user_id,
            outcome,
            detail: None,
        },
        crate::now(),
    )
    .await?;
    shared::follow(
        &mut tx,
        core,
        id,
        DelegateChange::Disconnected,
        crate::now(),
    )
    .await?;
    tx.commit().await?;
    core.webhooks.written();
    tracing::info!(account_id = %id, provider = %kind, "mailbox disconnected");
    ::metrics::counter!(metrics::DISCONNECTS, "provider" => kind.as_str()).increment(1);
    Ok(DisconnectResponse {
        account_id: id_text,
        auth_type: "password",
        status: "disconnected",
    })
}
