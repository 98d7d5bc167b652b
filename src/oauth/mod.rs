//! OAuth 2.0 / OpenID Connect: what every provider shares, and the
//! [`Provider`] trait behind which each provider keeps only what differs.
//!
//! - [`client`]: token-endpoint requests, response parsing, error classes.
//! - [`id_token`]: id_token validation against a provider's JWKS.
//! - [`pkce`]: S256 verifiers and challenges.
//! - [`state`]: the signed, single-use `state` parameter.
//! - [`microsoft`]: Microsoft's hosts, tenants, scopes and quirks.
//! - [`google`]: Google's endpoints, scopes and quirks.
//! - [`oidc`]: any OpenID provider found by discovery, with the mail hosts
//!   the operator names.
//! - [`registry`]: the one list of provider modules; the configured ones.

pub mod client;
pub mod credential;
pub mod google;
pub mod id_token;
pub mod microsoft;
pub mod oidc;
pub mod pkce;
pub mod registry;
pub mod state;

use std::fmt;

use async_trait::async_trait;
use secrecy::SecretString;

use url::Url;

use crate::diagnosis::Cause;
pub use crate::domain::{MailServer, MailServers, TlsMode};
use crate::domain::{MailboxAddress, ProviderKind};
pub use client::TokenError;

/// Tokens from one successful token-endpoint answer.
pub struct TokenSet {
    pub access_token: SecretString,
    /// `None` when the provider did not rotate it: keep the stored one.
    pub refresh_token: Option<SecretString>,
    /// Unix seconds.
    pub expires_at: i64,
    pub scopes: Vec<String>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// What a successful callback yields: the tokens and whose mailbox they open.
#[derive(Debug)]
pub struct Connection {
    pub tokens: TokenSet,
    pub email: MailboxAddress,
    /// The provider's own tenant of the user (Microsoft `tid`), when it has one.
    pub provider_tenant_id: Option<String>,
}

impl Connection {
    /// The connection of the mailbox `address` names, which the provider
    /// may not have given (or given unparsable): then `email_unavailable`.
    pub fn of(
        tokens: TokenSet,
        address: Option<String>,
        provider_tenant_id: Option<String>,
    ) -> Result<Connection, CallbackError> {
        let email = address
            .and_then(|raw| MailboxAddress::parse(&raw).ok())
            .ok_or(CallbackFailure::EmailUnavailable)?;
        Ok(Connection {
            tokens,
            email,
            provider_tenant_id,
        })
    }
}

/// Why a callback failed: the `reason` of its redirect (DESIGN.md), and
/// the one type that names them (the OpenAPI document included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = CallbackReason)]
pub enum CallbackFailure {
    /// The user declined consent.
    AccessDenied,
    /// The provider needs consent or interaction (e.g. an admin's approval).
    ConsentRequired,
    /// More than 10 minutes passed between authorize and callback.
    StateExpired,
    /// The code could not be redeemed, or the id_token failed validation.
    TokenExchangeFailed,
    /// The provider could not be reached.
    ProviderUnavailable,
    /// No mailbox address, or one the provider has not verified.
    EmailUnavailable,
    /// A re-authorisation came back with a different mailbox; nothing changed.
    AccountMismatch,
}

/// A failed callback: the `reason` of its redirect, and the `cause` that
/// explains it (DESIGN.md "Diagnosis"), sent along as `&cause=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackError {
    pub reason: CallbackFailure,
    pub cause: Cause,
    /// The provider refused our own client credentials (its OAuth `error`,
    /// e.g. `invalid_client`): the provider is misconfigured, as when a
    /// refresh is refused so.
    pub misconfigured: Option<String>,
}

impl CallbackError {
    pub const fn new(reason: CallbackFailure, cause: Cause) -> CallbackError {
        CallbackError {
            reason,
            cause,
            misconfigured: None,
        }
    }
}

impl From<CallbackFailure> for CallbackError {
    /// The cause a reason has when nothing more precise is known.
    fn from(reason: CallbackFailure) -> CallbackError {
        let cause = match reason {
            CallbackFailure::AccessDenied | CallbackFailure::ConsentRequired => {
                Cause::ConsentMissing
            }
            CallbackFailure::ProviderUnavailable => Cause::ProviderUnavailable,
            CallbackFailure::StateExpired
            | CallbackFailure::TokenExchangeFailed
            | CallbackFailure::EmailUnavailable
            | CallbackFailure::AccountMismatch => Cause::Unknown,
        };
        CallbackError::new(reason, cause)
    }
}

impl CallbackFailure {
    pub fn reason(self) -> &'static str {
        match self {
            CallbackFailure::AccessDenied => "access_denied",
            CallbackFailure::ConsentRequired => "consent_required",
            CallbackFailure::StateExpired => "state_expired",
            CallbackFailure::TokenExchangeFailed => "token_exchange_failed",
            CallbackFailure::ProviderUnavailable => "provider_unavailable",
            CallbackFailure::EmailUnavailable => "email_unavailable",
            CallbackFailure::AccountMismatch => "account_mismatch",
        }
    }

    /// The failure an `error` the provider sent back to the callback
    /// means, explained by the AADSTS code of its `error_description`.
    pub fn from_authorize_error(error: &str, description: Option<&str>) -> CallbackError {
        let reason = CallbackFailure::of_authorize_error(error);
        let aadsts = crate::diagnosis::aadsts_code(&[], description);
        match aadsts.and_then(Cause::of_aadsts) {
            Some(cause) => CallbackError::new(reason, cause),
            None => reason.into(),
        }
    }

    fn of_authorize_error(error: &str) -> CallbackFailure {
        match error {
            "access_denied" => CallbackFailure::AccessDenied,
            "consent_required"
            | "interaction_required"
            | "login_required"
            | "account_selection_required" => CallbackFailure::ConsentRequired,
            "temporarily_unavailable" | "server_error" => CallbackFailure::ProviderUnavailable,
            _ => CallbackFailure::TokenExchangeFailed,
        }
    }

    /// A failed code redemption, logged with the provider's name.
    pub fn redemption(provider: ProviderKind, e: &TokenError) -> CallbackError {
        tracing::warn!(%provider, error = e.code(), cause = %e.cause(), "code redemption failed");
        CallbackError {
            reason: CallbackFailure::from_token_error(e),
            cause: e.cause(),
            misconfigured: match e {
                TokenError::Misconfigured { error, .. } => Some(error.clone()),
                _ => None,
            },
        }
    }

    /// A refused id_token: the keys could not be fetched, or it is invalid.
    pub fn id_token(provider: ProviderKind, e: id_token::IdTokenError) -> CallbackError {
        tracing::warn!(%provider, error = %e, "id_token refused");
        match e {
            id_token::IdTokenError::JwksUnavailable => CallbackFailure::ProviderUnavailable,
            id_token::IdTokenError::Invalid(_) => CallbackFailure::TokenExchangeFailed,
        }
        .into()
    }

    /// The reason for a failed code redemption.
    pub fn from_token_error(e: &TokenError) -> CallbackFailure {
        match e {
            TokenError::Transient { .. } => CallbackFailure::ProviderUnavailable,
            TokenError::Reauth { error, .. }
                if error == "consent_required" || error == "interaction_required" =>
            {
                CallbackFailure::ConsentRequired
            }
            _ => CallbackFailure::TokenExchangeFailed,
        }
    }
}

/// The authorization URL every provider starts from: the code flow with
/// PKCE (S256), state and nonce, the login hint when there is one, then the
/// provider's own parameters.
pub fn authorization_url(
    endpoint: &Url,
    client_id: &str,
    redirect_uri: &Url,
    scope: &str,
    req: &AuthorizationRequest<'_>,
    extra: &[(&str, &str)],
) -> Url {
    let mut url = endpoint.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("client_id", client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect_uri.as_str())
            .append_pair("scope", scope)
            .append_pair("state", req.state)
            .append_pair("code_challenge", req.code_challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("nonce", req.nonce);
        if let Some(hint) = req.login_hint {
            q.append_pair("login_hint", hint);
        }
        q.extend_pairs(extra);
    }
    url
}

/// The id_token of a code redemption; OpenID providers must send one.
pub fn require_id_token(
    provider: ProviderKind,
    redeemed: &client::TokenResponse,
) -> Result<&str, CallbackError> {
    redeemed.id_token.as_deref().ok_or_else(|| {
        tracing::warn!(%provider, "the provider answered the code redemption without an id_token");
        CallbackFailure::TokenExchangeFailed.into()
    })
}

/// What the authorize step puts in the provider's URL.
pub struct AuthorizationRequest<'a> {
    pub state: &'a str,
    pub code_challenge: &'a str,
    pub nonce: &'a str,
    pub login_hint: Option<&'a str>,
}

/// How a provider is named to people (the status route, the admin page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Naming {
    /// Short, for buttons: "Connect with Microsoft".
    pub name: &'static str,
    /// What it connects: "Microsoft 365 / Outlook".
    pub title: &'static str,
}

/// One identity provider. The flow, storage, encryption, refresh locking and
/// HTTP routes are shared; an implementation holds only endpoints, scopes,
/// how the mailbox address is found and which mail hosts serve it.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn kind(&self) -> ProviderKind;

    /// How we authenticate to it (the status route, expiry warnings).
    fn credential(&self) -> &credential::Credential;

    /// Extra fields for the status route (`configured` is added by the caller).
    fn status_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    /// Where to send the browser. May fail only for a provider whose
    /// endpoints are discovered at run time.
    async fn authorization_url(&self, req: &AuthorizationRequest<'_>) -> Result<Url, TokenError>;

    /// Redeems the code, validates the id_token against `nonce` and finds the
    /// mailbox address.
    async fn connect(
        &self,
        code: &str,
        verifier: &SecretString,
        nonce: &str,
    ) -> Result<Connection, CallbackError>;

    /// A new access token for mail from a refresh token.
    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenSet, TokenError>;

    /// Revokes consent at the provider, where it has an endpoint for that.
    async fn revoke(&self, _refresh_token: &SecretString) -> Result<(), TokenError> {
        Ok(())
    }

    /// Whether `revoke` does anything at this provider.
    async fn can_revoke(&self) -> bool {
        false
    }

    fn mail_servers(&self, provider_tenant_id: Option<&str>) -> MailServers;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sets_never_print_their_tokens() {
        let set = TokenSet {
            access_token: SecretString::from("EwA-access-secret"),
            refresh_token: Some(SecretString::from("M.C-refresh-secret")),
            expires_at: 1,
            scopes: vec!["openid".into()],
        };
        let shown = format!("{set:?}");
        assert!(!shown.contains("access-secret") && !shown.contains("refresh-secret"));
        assert!(shown.contains("[redacted]"));
    }
}
