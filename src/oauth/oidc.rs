//! Any standards-based OpenID provider (Keycloak, Authentik, Zitadel,
//! panva's oidc-provider …), found by discovery, in front of mail servers
//! the operator names. Only what differs from the other providers lives
//! here: where the endpoints come from, how the client authenticates, the
//! `resource` indicator, and which hosts serve the mail.
//!
//! Discovery (`{issuer}/.well-known/openid-configuration`) is fetched when
//! first needed and cached, so start-up never depends on the provider being
//! up. Its `issuer` must equal the configured one exactly (OpenID Connect
//! Discovery 4.3), or nothing is sent to the endpoints it names.
//!
//! With a secret, the client authenticates with `client_secret_basic` when
//! the provider allows it (the spec's default when it says nothing), else
//! with `client_secret_post`. With a key (`OIDC_OAUTH_CLIENT_KEY`), with
//! `private_key_jwt` (OpenID Connect Core 9), which the provider must list;
//! a provider that does not is misconfigured, said at first use, never a
//! crash. `offline_access` is only honoured with `prompt=consent` (OpenID
//! Connect Core 11), so that is sent with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use super::TlsMode;
use crate::env::{err, mail_server, parse_http_url, redirect, require_https, ConfigError, Env};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::credential::{ClientAuth, Credential, CredentialVars};
use crate::diagnosis::Cause;
use tokio::sync::Mutex;
use url::Url;

use super::client::{basic_auth, endpoint_for_log, transport_error, OAuthHttp, TokenResponse};
use super::id_token::{JwksCache, StandardClaims};
use super::{
    authorization_url, require_id_token, AuthorizationRequest, CallbackError, CallbackFailure,
    Connection, MailServer, MailServers, Provider, TokenError, TokenSet,
};
use crate::domain::ProviderKind;

pub const NAMING: super::Naming = super::Naming {
    name: "OIDC",
    title: "Other identity provider (OIDC)",
};

pub const DEFAULT_SCOPES: &str = "openid email offline_access";

#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// Exactly as configured: discovery and id_tokens must repeat it.
    pub issuer: String,
    pub client_id: String,
    /// A client secret, or a private key for `private_key_jwt`.
    pub credential: Credential,
    pub redirect_uri: Url,
    pub scopes: String,
    /// RFC 8707 resource indicator, sent on every authorize and token request.
    pub resource: Option<String>,
    pub imap: MailServer,
    pub smtp: MailServer,
}

impl OidcConfig {
    /// The generic provider: issuer, id and one credential (secret or
    /// key) together, and then the mail hosts it serves.
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        bind: SocketAddr,
    ) -> Result<Option<OidcConfig>, ConfigError> {
        let vars = CredentialVars {
            provider: "oidc",
            client_id: "OIDC_OAUTH_CLIENT_ID",
            secret: "OIDC_OAUTH_CLIENT_SECRET",
            secret_expires_at: "OIDC_OAUTH_CLIENT_SECRET_EXPIRES_AT",
            certificate: None,
            assertion_file: None,
            key: Some("OIDC_OAUTH_CLIENT_KEY"),
        };
        let (issuer, client) = match (env.get("OIDC_OAUTH_ISSUER"), vars.read(env, crate::now())?) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(err(
                    "OIDC_OAUTH_CLIENT_ID",
                    "is required when OIDC_OAUTH_ISSUER is set",
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    "OIDC_OAUTH_ISSUER",
                    "is required when OIDC_OAUTH_CLIENT_ID is set",
                ))
            }
            (Some(issuer), Some(client)) => (issuer, client),
        };
        let (client_id, credential) = client;
        let issuer = issuer.trim().to_owned();
        let issuer_url = parse_http_url("OIDC_OAUTH_ISSUER", &issuer)?;
        require_https("OIDC_OAUTH_ISSUER", &issuer_url)?;
        if issuer_url.query().is_some() || issuer_url.fragment().is_some() {
            return Err(err(
                "OIDC_OAUTH_ISSUER",
                "must not have a query or fragment",
            ));
        }
        let scopes = env
            .get("OIDC_OAUTH_SCOPES")
            .unwrap_or_else(|| DEFAULT_SCOPES.into());
        let scopes = scopes.split_whitespace().collect::<Vec<_>>().join(" ");
        if !scopes.split(' ').any(|s| s == "openid") {
            return Err(err("OIDC_OAUTH_SCOPES", "must include openid"));
        }
        let resource = match env.get("OIDC_OAUTH_RESOURCE") {
            None => None,
            Some(raw) => {
                let url = Url::parse(raw.trim())
                    .map_err(|_| err("OIDC_OAUTH_RESOURCE", "must be an absolute URI"))?;
                if url.fragment().is_some() {
                    return Err(err(
                        "OIDC_OAUTH_RESOURCE",
                        "must not have a fragment (RFC 8707)",
                    ));
                }
                Some(raw.trim().to_owned())
            }
        };
        Ok(Some(OidcConfig {
            issuer,
            client_id,
            credential,
            redirect_uri: redirect(env, "OIDC_OAUTH_REDIRECT_URI", bind, "oidc")?,
            scopes,
            resource,
            imap: mail_server(
                env,
                "OIDC_IMAP_HOST",
                "OIDC_IMAP_TLS",
                TlsMode::Implicit,
                "the oidc provider",
            )?,
            smtp: mail_server(
                env,
                "OIDC_SMTP_HOST",
                "OIDC_SMTP_TLS",
                TlsMode::Starttls,
                "the oidc provider",
            )?,
        }))
    }
}

impl OidcConfig {
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }
}

/// The parts of the discovery document mailconnect uses.
#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: Url,
    token_endpoint: Url,
    jwks_uri: Url,
    #[serde(default)]
    userinfo_endpoint: Option<Url>,
    #[serde(default)]
    revocation_endpoint: Option<Url>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    token_endpoint_auth_signing_alg_values_supported: Option<Vec<String>>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

/// How the client authenticates at the provider's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthMethod {
    /// `client_secret_basic`
    Basic,
    /// `client_secret_post`
    Post,
    /// `private_key_jwt`
    PrivateKeyJwt,
}

impl Discovery {
    /// The method for `credential`: a key only with `private_key_jwt`; a
    /// secret with `client_secret_basic` unless the provider lists only
    /// `client_secret_post`.
    fn auth_method(&self, credential: &Credential) -> Result<AuthMethod, TokenError> {
        let listed = self.token_endpoint_auth_methods_supported.as_deref();
        let lists = |method: &str| listed.is_some_and(|l| l.iter().any(|m| m == method));
        match credential {
            Credential::Key(_) if lists("private_key_jwt") => Ok(AuthMethod::PrivateKeyJwt),
            Credential::Key(_) => {
                tracing::error!(
                    listed = ?listed,
                    "the OIDC provider does not allow private_key_jwt (its discovery's \
                     token_endpoint_auth_methods_supported): register the client for \
                     private_key_jwt with the key's public JWK, or configure \
                     OIDC_OAUTH_CLIENT_SECRET instead of OIDC_OAUTH_CLIENT_KEY"
                );
                Err(TokenError::Misconfigured {
                    error: "private_key_jwt_unsupported".into(),
                    cause: Cause::ClientCredentialsInvalid,
                })
            }
            // Absent: the spec's default is client_secret_basic.
            _ if listed.is_none() || lists("client_secret_basic") => Ok(AuthMethod::Basic),
            _ if lists("client_secret_post") => Ok(AuthMethod::Post),
            _ => Ok(AuthMethod::Basic),
        }
    }
}

/// What one request carries to prove who we are.
enum Proof {
    /// An HTTP Basic header (`client_secret_basic`).
    Basic(SecretString),
    /// Form fields: a secret (`client_secret_post`) or an assertion
    /// (`private_key_jwt`).
    Form(ClientAuth),
}

impl Proof {
    fn basic(&self) -> Option<&SecretString> {
        match self {
            Proof::Basic(secret) => Some(secret),
            Proof::Form(_) => None,
        }
    }

    fn form<'a>(&'a self, client_id: &'a str) -> Vec<(&'a str, &'a str)> {
        match self {
            Proof::Basic(_) => Vec::new(),
            Proof::Form(auth) => {
                let mut form = vec![("client_id", client_id)];
                form.extend(auth.form());
                form
            }
        }
    }
}

/// A discovery document is trusted this long before it is fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

pub struct Oidc {
    cfg: OidcConfig,
    http: OAuthHttp,
    jwks: JwksCache,
    discovery: Mutex<Option<(Instant, Arc<Discovery>)>>,
}

impl Oidc {
    pub fn new(cfg: OidcConfig, http: OAuthHttp) -> Oidc {
        Oidc {
            jwks: JwksCache::new(http.clone()),
            http,
            cfg,
            discovery: Mutex::new(None),
        }
    }

    /// The cached discovery document, fetched when missing or stale. A
    /// failure is not cached: the next request tries again.
    async fn discovery(&self) -> Result<Arc<Discovery>, TokenError> {
        let mut slot = self.discovery.lock().await;
        if let Some((at, d)) = slot.as_ref() {
            if at.elapsed() < DISCOVERY_TTL {
                return Ok(d.clone());
            }
        }
        let url = self.cfg.discovery_url();
        let unavailable = |reason: &str| TokenError::unavailable(format!("discovery: {reason}"));
        let response = self
            .http
            .client()
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        if !response.status().is_success() {
            tracing::warn!(
                status = response.status().as_u16(),
                url,
                "OIDC discovery failed"
            );
            return Err(unavailable(&format!("HTTP {}", response.status().as_u16())));
        }
        let doc: Discovery = response.json().await.map_err(|_| {
            tracing::warn!(url, "OIDC discovery document is not the expected JSON");
            unavailable("unreadable document")
        })?;
        if doc.issuer != self.cfg.issuer {
            tracing::error!(
                configured = %self.cfg.issuer,
                discovered = %doc.issuer,
                "OIDC discovery names another issuer; refusing to use it"
            );
            return Err(TokenError::Misconfigured {
                error: "issuer_mismatch".into(),
                cause: Cause::Unknown,
            });
        }
        if let Some(methods) = &doc.code_challenge_methods_supported {
            if !methods.iter().any(|m| m == "S256") {
                tracing::warn!("OIDC provider does not list PKCE S256; sending it anyway");
            }
        }
        tracing::info!(
            token_endpoint = %endpoint_for_log(&doc.token_endpoint),
            auth_methods = ?doc.token_endpoint_auth_methods_supported,
            revocation = doc.revocation_endpoint.is_some(),
            "OIDC discovery loaded"
        );
        let doc = Arc::new(doc);
        *slot = Some((Instant::now(), doc.clone()));
        Ok(doc)
    }

    /// Our client authentication for one request to `d`'s endpoints. An
    /// assertion's `aud` is the token endpoint for revocation too: OpenID
    /// Connect Core 9 names it, and providers take it at their other
    /// endpoints (oidc-provider takes the issuer, the token endpoint or the
    /// endpoint called), where the revocation URL is not always taken.
    async fn proof(&self, d: &Discovery) -> Result<Proof, TokenError> {
        let method = d.auth_method(&self.cfg.credential)?;
        let auth = self
            .cfg
            .credential
            .client_auth(
                &self.cfg.client_id,
                &d.token_endpoint,
                d.token_endpoint_auth_signing_alg_values_supported
                    .as_deref(),
            )
            .await?;
        Ok(match (method, auth) {
            (AuthMethod::Basic, ClientAuth::Secret(secret)) => Proof::Basic(secret),
            (_, auth) => Proof::Form(auth),
        })
    }

    /// A token request with our client authentication and `resource`.
    async fn token(
        &self,
        d: &Discovery,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, TokenError> {
        let proof = self.proof(d).await?;
        let mut full: Vec<(&str, &str)> = form.to_vec();
        if let Some(resource) = &self.cfg.resource {
            full.push(("resource", resource));
        }
        full.extend(proof.form(&self.cfg.client_id));
        let basic = proof
            .basic()
            .map(|secret| (self.cfg.client_id.as_str(), secret));
        self.http
            .token_request_as(&d.token_endpoint, basic, &full)
            .await
    }

    /// The verified address from userinfo; its `sub` must be the id_token's.
    async fn userinfo_address(
        &self,
        d: &Discovery,
        access_token: &SecretString,
        sub: &str,
    ) -> Option<String> {
        let Some(endpoint) = &d.userinfo_endpoint else {
            tracing::warn!("OIDC id_token has no verified email and there is no userinfo endpoint");
            return None;
        };
        self.http
            .userinfo_address(endpoint, access_token, sub)
            .await
    }
}

#[async_trait]
impl Provider for Oidc {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Oidc
    }

    fn credential(&self) -> &Credential {
        &self.cfg.credential
    }

    fn status_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("issuer".into(), self.cfg.issuer.clone().into());
        m
    }

    async fn authorization_url(&self, req: &AuthorizationRequest<'_>) -> Result<Url, TokenError> {
        let d = self.discovery().await?;
        let mut extra = Vec::new();
        // OpenID Connect issues a refresh token for offline_access only
        // after an explicit consent prompt.
        if self
            .cfg
            .scopes
            .split_whitespace()
            .any(|s| s == "offline_access")
        {
            extra.push(("prompt", "consent"));
        }
        if let Some(resource) = &self.cfg.resource {
            extra.push(("resource", resource.as_str()));
        }
        Ok(authorization_url(
            &d.authorization_endpoint,
            &self.cfg.client_id,
            &self.cfg.redirect_uri,
            &self.cfg.scopes,
            req,
            &extra,
        ))
    }

    async fn connect(
        &self,
        code: &str,
        verifier: &SecretString,
        nonce: &str,
    ) -> Result<Connection, CallbackError> {
        let d = self.discovery().await.map_err(|e| {
            tracing::warn!(error = %e, "OIDC discovery unavailable at the callback");
            CallbackFailure::ProviderUnavailable
        })?;
        let redeemed = self
            .token(
                &d,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", self.cfg.redirect_uri.as_str()),
                    ("code_verifier", verifier.expose_secret()),
                ],
            )
            .await
            .map_err(|e| CallbackFailure::redemption(self.kind(), &e))?;
        let id_token = require_id_token(self.kind(), &redeemed)?;
        let claims: StandardClaims = self
            .jwks
            .validate(id_token, &d.jwks_uri, &self.cfg.client_id, nonce)
            .await
            .map_err(|e| CallbackFailure::id_token(self.kind(), e))?;
        if claims.iss != self.cfg.issuer {
            tracing::warn!("OIDC id_token refused: wrong issuer");
            return Err(CallbackFailure::TokenExchangeFailed.into());
        }
        let tokens = redeemed.tokens;
        if tokens.refresh_token.is_none() {
            tracing::warn!(
                "OIDC provider answered without a refresh token (is offline_access allowed for this client?)"
            );
            return Err(CallbackFailure::TokenExchangeFailed.into());
        }
        let address = match (claims.email, claims.email_verified) {
            (Some(email), Some(true)) => Some(email),
            _ => {
                self.userinfo_address(&d, &tokens.access_token, &claims.sub)
                    .await
            }
        };
        Connection::of(tokens, address, None)
    }

    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenSet, TokenError> {
        let d = self.discovery().await?;
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        // Ask for the same scopes again only when a resource narrows them;
        // otherwise the provider keeps the grant's own.
        if self.cfg.resource.is_some() {
            form.push(("scope", &self.cfg.scopes));
        }
        self.token(&d, &form).await.map(|r| r.tokens)
    }

    async fn can_revoke(&self) -> bool {
        match self.discovery().await {
            Ok(d) => d.revocation_endpoint.is_some(),
            // Unknown now: try, so that a failure is recorded rather than
            // a revocation silently skipped.
            Err(_) => true,
        }
    }

    async fn revoke(&self, refresh_token: &SecretString) -> Result<(), TokenError> {
        let d = self.discovery().await?;
        let Some(endpoint) = &d.revocation_endpoint else {
            return Ok(());
        };
        let proof = self.proof(&d).await?;
        let mut form = vec![
            ("token", refresh_token.expose_secret()),
            ("token_type_hint", "refresh_token"),
        ];
        form.extend(proof.form(&self.cfg.client_id));
        let mut request = self.http.client().post(endpoint.clone());
        if let Some(secret) = proof.basic() {
            request = request.header(
                reqwest::header::AUTHORIZATION,
                basic_auth(&self.cfg.client_id, secret),
            );
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status().as_u16();
        match status {
            // RFC 7009: an unknown or already revoked token also answers 200.
            200..=299 => Ok(()),
            429 | 500..=599 => Err(TokenError::Transient {
                retry_after: super::client::retry_after(response.headers()),
                reason: format!("revocation answered HTTP {status}"),
                cause: Cause::of_oauth("", None, status),
            }),
            401 => Err(TokenError::Misconfigured {
                error: "invalid_client".into(),
                cause: Cause::ClientCredentialsInvalid,
            }),
            _ => Err(TokenError::Refused {
                error: "revocation_refused".into(),
                status,
                cause: Cause::Unknown,
            }),
        }
    }

    fn mail_servers(&self, _provider_tenant_id: Option<&str>) -> MailServers {
        MailServers {
            imap: self.cfg.imap.clone(),
            smtp: self.cfg.smtp.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(methods: Option<&[&str]>) -> Discovery {
        serde_json::from_value(serde_json::json!({
            "issuer": "https://idp.example",
            "authorization_endpoint": "https://idp.example/auth",
            "token_endpoint": "https://idp.example/token",
            "jwks_uri": "https://idp.example/jwks",
            "token_endpoint_auth_methods_supported": methods,
        }))
        .unwrap()
    }

    fn secret() -> Credential {
        Credential::Secret {
            secret: SecretString::from("s"),
            expires_at: None,
        }
    }

    #[test]
    fn a_secret_prefers_basic_and_falls_back_to_post() {
        let method = |methods| discovery(methods).auth_method(&secret()).unwrap();
        assert_eq!(method(None), AuthMethod::Basic);
        assert_eq!(
            method(Some(&["client_secret_post", "client_secret_basic"])),
            AuthMethod::Basic
        );
        assert_eq!(
            method(Some(&["private_key_jwt", "client_secret_post"])),
            AuthMethod::Post
        );
        // Neither listed: try the spec's default.
        assert_eq!(method(Some(&["private_key_jwt"])), AuthMethod::Basic);
    }

    #[test]
    fn a_key_needs_private_key_jwt_listed() {
        let key = Credential::Key(std::sync::Arc::new(
            crate::oauth::credential::tests::p256_key(),
        ));
        let method = |methods| discovery(methods).auth_method(&key);
        assert_eq!(
            method(Some(&["client_secret_basic", "private_key_jwt"])).unwrap(),
            AuthMethod::PrivateKeyJwt
        );
        // Absent means client_secret_basic alone (Discovery 3).
        for methods in [
            None,
            Some(&["client_secret_basic", "client_secret_post"][..]),
        ] {
            let e = method(methods).unwrap_err();
            assert_eq!(e.code(), "private_key_jwt_unsupported");
            assert!(matches!(
                e,
                TokenError::Misconfigured {
                    cause: Cause::ClientCredentialsInvalid,
                    ..
                }
            ));
        }
    }

    #[test]
    fn discovery_lives_under_the_issuer() {
        let cfg = OidcConfig {
            issuer: "https://idp.example/realms/mail/".into(),
            client_id: "c".into(),
            credential: secret(),
            redirect_uri: Url::parse("https://app.example/cb").unwrap(),
            scopes: DEFAULT_SCOPES.into(),
            resource: None,
            imap: MailServer {
                host: "imap.example".into(),
                port: 993,
                tls: super::super::TlsMode::Implicit,
            },
            smtp: MailServer {
                host: "smtp.example".into(),
                port: 587,
                tls: super::super::TlsMode::Starttls,
            },
        };
        assert_eq!(
            cfg.discovery_url(),
            "https://idp.example/realms/mail/.well-known/openid-configuration"
        );
        assert!(!format!("{cfg:?}").contains("\"s\""));
    }
}
