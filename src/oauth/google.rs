//! Google (Gmail and Google Workspace): endpoints, scopes, claims and
//! quirks. Only what is Google's lives here.
//!
//! Google issues a refresh token only with `access_type=offline` (and
//! reliably only with `prompt=consent`), normally does not rotate it, lets
//! users untick the Gmail scope on the consent screen, and offers a
//! revocation endpoint.

use std::net::SocketAddr;

use crate::env::{redirect, ConfigError, Env};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::client::{transport_error, OAuthHttp, TokenResponse};
use super::credential::{Credential, CredentialVars};
use super::id_token::{JwksCache, StandardClaims};
use super::{
    authorization_url, require_id_token, AuthorizationRequest, CallbackError, CallbackFailure,
    Connection, MailServer, MailServers, Provider, TlsMode, TokenError, TokenSet,
};
use crate::domain::ProviderKind;

pub const NAMING: super::Naming = super::Naming {
    name: "Google",
    title: "Google Workspace / Gmail",
};

pub const SCOPES: &str = "openid email https://mail.google.com/";
/// The scope IMAP and SMTP need; without it the connection is useless.
pub const MAIL_SCOPE: &str = "https://mail.google.com/";
const ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

#[derive(Clone, Debug)]
pub struct GoogleConfig {
    pub client_id: String,
    /// A client secret (Google takes no other credential).
    pub credential: Credential,
    pub redirect_uri: Url,
    pub auth_url: Url,
    pub token_url: Url,
    pub userinfo_url: Url,
    pub revoke_url: Url,
    pub jwks_url: Url,
}

pub const DEFAULT_AUTH_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
pub const DEFAULT_USERINFO_URL: &str = "https://openidconnect.googleapis.com/v1/userinfo";
pub const DEFAULT_REVOKE_URL: &str = "https://oauth2.googleapis.com/revoke";
pub const DEFAULT_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";

impl GoogleConfig {
    /// Configured when `GOOGLE_OAUTH_CLIENT_ID` and `_CLIENT_SECRET` are set.
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        bind: SocketAddr,
    ) -> Result<Option<GoogleConfig>, ConfigError> {
        let vars = CredentialVars {
            provider: "google",
            client_id: "GOOGLE_OAUTH_CLIENT_ID",
            secret: "GOOGLE_OAUTH_CLIENT_SECRET",
            secret_expires_at: "GOOGLE_OAUTH_CLIENT_SECRET_EXPIRES_AT",
            certificate: None,
            assertion_file: None,
            key: None,
        };
        let Some((client_id, credential)) = vars.read(env, crate::now())? else {
            return Ok(None);
        };
        Ok(Some(GoogleConfig {
            client_id,
            credential,
            redirect_uri: redirect(env, "GOOGLE_OAUTH_REDIRECT_URI", bind, "google")?,
            auth_url: env.provider_url("GOOGLE_OAUTH_AUTH_URL", DEFAULT_AUTH_URL)?,
            token_url: env.provider_url("GOOGLE_OAUTH_TOKEN_URL", DEFAULT_TOKEN_URL)?,
            userinfo_url: env.provider_url("GOOGLE_OAUTH_USERINFO_URL", DEFAULT_USERINFO_URL)?,
            revoke_url: env.provider_url("GOOGLE_OAUTH_REVOKE_URL", DEFAULT_REVOKE_URL)?,
            jwks_url: env.provider_url("GOOGLE_OAUTH_JWKS_URL", DEFAULT_JWKS_URL)?,
        }))
    }
}

pub struct Google {
    cfg: GoogleConfig,
    http: OAuthHttp,
    jwks: JwksCache,
}

impl Google {
    pub fn new(cfg: GoogleConfig, http: OAuthHttp) -> Google {
        Google {
            jwks: JwksCache::new(http.clone()),
            http,
            cfg,
        }
    }

    async fn token(&self, form: &[(&str, &str)]) -> Result<TokenResponse, TokenError> {
        let auth = self
            .cfg
            .credential
            .client_auth(&self.cfg.client_id, &self.cfg.token_url, None)
            .await?;
        let mut full = vec![("client_id", self.cfg.client_id.as_str())];
        full.extend(auth.form());
        full.extend_from_slice(form);
        self.http.token_request(&self.cfg.token_url, &full).await
    }
}

#[async_trait]
impl Provider for Google {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Google
    }

    fn credential(&self) -> &Credential {
        &self.cfg.credential
    }

    async fn authorization_url(&self, req: &AuthorizationRequest<'_>) -> Result<Url, TokenError> {
        Ok(authorization_url(
            &self.cfg.auth_url,
            &self.cfg.client_id,
            &self.cfg.redirect_uri,
            SCOPES,
            req,
            &[
                ("access_type", "offline"),
                ("prompt", "consent"),
                ("include_granted_scopes", "true"),
            ],
        ))
    }

    async fn connect(
        &self,
        code: &str,
        verifier: &SecretString,
        nonce: &str,
    ) -> Result<Connection, CallbackError> {
        let redeemed = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", self.cfg.redirect_uri.as_str()),
                ("code_verifier", verifier.expose_secret()),
            ])
            .await
            .map_err(|e| CallbackFailure::redemption(self.kind(), &e))?;
        let id_token = require_id_token(self.kind(), &redeemed)?;
        let claims: StandardClaims = self
            .jwks
            .validate(id_token, &self.cfg.jwks_url, &self.cfg.client_id, nonce)
            .await
            .map_err(|e| CallbackFailure::id_token(self.kind(), e))?;
        if !ISSUERS.contains(&claims.iss.as_str()) {
            tracing::warn!("Google id_token refused: wrong issuer");
            return Err(CallbackFailure::TokenExchangeFailed.into());
        }
        let tokens = redeemed.tokens;
        // Granular consent: the user may have unticked Gmail access.
        if !tokens.scopes.is_empty() && !tokens.scopes.iter().any(|s| s == MAIL_SCOPE) {
            tracing::warn!("Google consent did not include Gmail access");
            return Err(CallbackFailure::ConsentRequired.into());
        }
        if tokens.refresh_token.is_none() {
            tracing::warn!("Google answered without a refresh token");
            return Err(CallbackFailure::TokenExchangeFailed.into());
        }
        let address = match (claims.email, claims.email_verified) {
            (Some(email), Some(true)) => Some(email),
            (Some(_), _) => {
                tracing::warn!("Google id_token carries an unverified address; refused");
                None
            }
            (None, _) => {
                self.http
                    .userinfo_address(&self.cfg.userinfo_url, &tokens.access_token, &claims.sub)
                    .await
            }
        };
        Connection::of(tokens, address, None)
    }

    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenSet, TokenError> {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ])
        .await
        .map(|r| r.tokens)
    }

    async fn can_revoke(&self) -> bool {
        true
    }

    async fn revoke(&self, refresh_token: &SecretString) -> Result<(), TokenError> {
        let response = self
            .http
            .client()
            .post(self.cfg.revoke_url.clone())
            .form(&[("token", refresh_token.expose_secret())])
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status().as_u16();
        match status {
            200..=299 => Ok(()),
            // Already revoked or expired: the goal is reached.
            400 => {
                tracing::info!("Google reports the token was already revoked or expired");
                Ok(())
            }
            _ => Err(TokenError::unavailable(format!(
                "revocation answered HTTP {status}"
            ))),
        }
    }

    fn mail_servers(&self, _provider_tenant_id: Option<&str>) -> MailServers {
        MailServers {
            imap: MailServer {
                host: "imap.gmail.com".into(),
                port: 993,
                tls: TlsMode::Implicit,
            },
            smtp: MailServer {
                host: "smtp.gmail.com".into(),
                port: 587,
                tls: TlsMode::Starttls,
            },
        }
    }
}
