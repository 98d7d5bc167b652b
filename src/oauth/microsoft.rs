//! Microsoft identity platform (v2.0) and Microsoft Graph: hosts, tenants,
//! scopes, claims and quirks. Only what is Microsoft's lives here.
//!
//! Microsoft issues a token for one resource at a time and refuses a code
//! redemption that names two, so the code is redeemed for the Outlook scopes
//! and the refresh token then buys a Graph token to read `/v1.0/me`.

use std::net::SocketAddr;

use crate::env::{err, mail_server, redirect, ConfigError, Env};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::client::{OAuthHttp, TokenResponse};
use super::credential::{Credential, CredentialVars};
use super::id_token::{HasNonce, JwksCache};
use super::{
    authorization_url, require_id_token, AuthorizationRequest, CallbackError, CallbackFailure,
    Connection, MailServer, MailServers, Provider, TlsMode, TokenError, TokenSet,
};
use crate::domain::ProviderKind;

pub const NAMING: super::Naming = super::Naming {
    name: "Microsoft",
    title: "Microsoft 365 / Outlook",
};

/// The tenant of personal Microsoft accounts (Outlook.com, Hotmail).
pub const PERSONAL_TENANT_ID: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

/// Scopes asked at authorize: mail access, and Graph's `User.Read` so its
/// consent is given up front.
pub const AUTHORIZE_SCOPES: &str = "openid profile email offline_access https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send User.Read";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MicrosoftTenant {
    Common,
    Organizations,
    Consumers,
    /// A directory GUID or a verified domain such as `contoso.onmicrosoft.com`.
    Specific(String),
}

impl MicrosoftTenant {
    pub fn parse(raw: &str) -> Result<MicrosoftTenant, String> {
        Ok(match raw {
            "common" => MicrosoftTenant::Common,
            "organizations" => MicrosoftTenant::Organizations,
            "consumers" => MicrosoftTenant::Consumers,
            other => {
                let is_guid = uuid::Uuid::try_parse(other).is_ok();
                let is_domain = other.contains('.')
                    && other.len() <= 253
                    && other.split('.').all(|l| {
                        !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    });
                if !is_guid && !is_domain {
                    return Err(
                        "must be common, organizations, consumers, a tenant GUID or a domain"
                            .into(),
                    );
                }
                MicrosoftTenant::Specific(other.to_ascii_lowercase())
            }
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            MicrosoftTenant::Common => "common",
            MicrosoftTenant::Organizations => "organizations",
            MicrosoftTenant::Consumers => "consumers",
            MicrosoftTenant::Specific(t) => t,
        }
    }

    /// Whether a token's `tid` may come from this tenant setting.
    fn admits(&self, tid: &str) -> bool {
        match self {
            MicrosoftTenant::Common => true,
            MicrosoftTenant::Organizations => tid != PERSONAL_TENANT_ID,
            MicrosoftTenant::Consumers => tid == PERSONAL_TENANT_ID,
            // A domain names a tenant whose GUID we do not know; the
            // signature and issuer rule still bind the token to Microsoft.
            MicrosoftTenant::Specific(t) => uuid::Uuid::try_parse(t).is_err() || t == tid,
        }
    }
}

/// Microsoft's credential variables (DESIGN.md "Credentials").
const CREDENTIAL_VARS: CredentialVars = CredentialVars {
    provider: "microsoft",
    client_id: "MICROSOFT_OAUTH_CLIENT_ID",
    secret: "MICROSOFT_OAUTH_CLIENT_SECRET",
    secret_expires_at: "MICROSOFT_OAUTH_CLIENT_SECRET_EXPIRES_AT",
    certificate: Some("MICROSOFT_OAUTH_CLIENT_CERTIFICATE"),
    assertion_file: Some("MICROSOFT_OAUTH_CLIENT_ASSERTION_FILE"),
    key: None,
};

#[derive(Clone, Debug)]
pub struct MicrosoftConfig {
    pub client_id: String,
    /// A secret, a certificate or a federated assertion file.
    pub credential: Credential,
    pub tenant: MicrosoftTenant,
    pub redirect_uri: Url,
    pub authority: Url,
    pub graph_url: Url,
    /// `MICROSOFT_IMAP_HOST` / `MICROSOFT_SMTP_HOST` (and their TLS modes):
    /// mail servers that replace the cloud's for every Microsoft mailbox.
    pub imap: Option<MailServer>,
    pub smtp: Option<MailServer>,
}

impl MicrosoftConfig {
    /// Configured when `MICROSOFT_OAUTH_CLIENT_ID` and one credential are
    /// set: `_CLIENT_SECRET`, `_CLIENT_CERTIFICATE` or
    /// `_CLIENT_ASSERTION_FILE`.
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        bind: SocketAddr,
    ) -> Result<Option<MicrosoftConfig>, ConfigError> {
        let Some((client_id, credential)) = CREDENTIAL_VARS.read(env, crate::now())? else {
            return Ok(None);
        };
        let tenant_raw = env
            .get("MICROSOFT_OAUTH_TENANT_ID")
            .unwrap_or_else(|| "common".into());
        let tenant = MicrosoftTenant::parse(tenant_raw.trim())
            .map_err(|e| err("MICROSOFT_OAUTH_TENANT_ID", e))?;
        let redirect_uri = redirect(env, "MICROSOFT_OAUTH_REDIRECT_URI", bind, "microsoft")?;
        Ok(Some(MicrosoftConfig {
            client_id,
            credential,
            tenant,
            redirect_uri,
            authority: env.provider_url(
                "MICROSOFT_OAUTH_AUTHORITY",
                "https://login.microsoftonline.com",
            )?,
            graph_url: env.provider_url("MICROSOFT_GRAPH_URL", "https://graph.microsoft.com")?,
            imap: mail_override(
                env,
                "MICROSOFT_IMAP_HOST",
                "MICROSOFT_IMAP_TLS",
                TlsMode::Implicit,
            )?,
            smtp: mail_override(
                env,
                "MICROSOFT_SMTP_HOST",
                "MICROSOFT_SMTP_TLS",
                TlsMode::Starttls,
            )?,
        }))
    }
}

/// A mail server override, when its host variable is set.
fn mail_override<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    host_var: &'static str,
    tls_var: &'static str,
    default_tls: TlsMode,
) -> Result<Option<MailServer>, ConfigError> {
    if env.get(host_var).is_none() {
        if env.get(tls_var).is_some() {
            return Err(err(tls_var, format!("is only read with {host_var}")));
        }
        return Ok(None);
    }
    mail_server(env, host_var, tls_var, default_tls, "the override").map(Some)
}

/// The national clouds differ in their Outlook resource and mail hosts.
struct Cloud {
    outlook_resource: &'static str,
    graph_resource: &'static str,
    imap_host: &'static str,
    smtp_host: &'static str,
}

const GLOBAL: Cloud = Cloud {
    outlook_resource: "https://outlook.office.com",
    graph_resource: "https://graph.microsoft.com",
    imap_host: "outlook.office365.com",
    smtp_host: "smtp.office365.com",
};
const US_GOVERNMENT: Cloud = Cloud {
    outlook_resource: "https://outlook.office365.us",
    graph_resource: "https://graph.microsoft.us",
    imap_host: "outlook.office365.us",
    smtp_host: "smtp.office365.us",
};
const CHINA: Cloud = Cloud {
    outlook_resource: "https://partner.outlook.cn",
    graph_resource: "https://microsoftgraph.chinacloudapi.cn",
    imap_host: "partner.outlook.cn",
    smtp_host: "smtp.partner.outlook.cn",
};

fn cloud_of(authority: &Url) -> &'static Cloud {
    match authority.host_str() {
        Some("login.microsoftonline.us") => &US_GOVERNMENT,
        Some("login.partner.microsoftonline.cn" | "login.chinacloudapi.cn") => &CHINA,
        _ => &GLOBAL,
    }
}

/// Why a directory gave the app no token of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppTokenError {
    /// That directory refuses the app (`unauthorized_client`,
    /// `invalid_grant`, another refusal of the request: no admin consent,
    /// consent revoked, the app removed there). Only that directory's app
    /// mailboxes are concerned, not the provider.
    #[error("the directory refuses the app a token ({0})")]
    Refused(String),
    /// Our own credentials are refused (`invalid_client`): the provider is
    /// misconfigured, as for any token request.
    #[error(transparent)]
    Misconfigured(TokenError),
    /// May pass.
    #[error(transparent)]
    Transient(TokenError),
}

impl AppTokenError {
    fn of(e: TokenError) -> AppTokenError {
        match e {
            TokenError::Misconfigured { ref error, .. } if error == "invalid_client" => {
                AppTokenError::Misconfigured(e)
            }
            TokenError::Transient { .. } => AppTokenError::Transient(e),
            TokenError::Reauth { error, .. }
            | TokenError::Misconfigured { error, .. }
            | TokenError::Refused { error, .. } => AppTokenError::Refused(error),
        }
    }

    /// A short code for logs and `last_error`.
    pub fn code(&self) -> &str {
        match self {
            AppTokenError::Refused(error) => error,
            AppTokenError::Misconfigured(e) | AppTokenError::Transient(e) => e.code(),
        }
    }
}

pub struct Microsoft {
    cfg: MicrosoftConfig,
    http: OAuthHttp,
    jwks: JwksCache,
    cloud: &'static Cloud,
}

#[derive(Deserialize)]
struct IdClaims {
    iss: String,
    tid: Option<String>,
    nonce: Option<String>,
    email: Option<String>,
    preferred_username: Option<String>,
}

impl HasNonce for IdClaims {
    fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }
}

#[derive(Deserialize)]
struct GraphMe {
    mail: Option<String>,
    #[serde(rename = "userPrincipalName")]
    user_principal_name: Option<String>,
}

impl Microsoft {
    pub fn new(cfg: MicrosoftConfig, http: OAuthHttp) -> Microsoft {
        Microsoft {
            cloud: cloud_of(&cfg.authority),
            jwks: JwksCache::new(http.clone()),
            http,
            cfg,
        }
    }

    /// `{authority}/{tenant}/{rest}`, keeping any path the authority has.
    fn tenant_url(&self, rest: &str) -> Url {
        self.directory_url(self.cfg.tenant.as_str(), rest)
    }

    /// `{authority}/{directory}/{rest}`; `directory` is a validated
    /// [`MicrosoftTenant`] value.
    fn directory_url(&self, directory: &str, rest: &str) -> Url {
        let base = self.cfg.authority.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/{directory}/{rest}"))
            .expect("authority and directory were validated")
    }

    /// The directory an admin consents for when none is named:
    /// `MICROSOFT_OAUTH_TENANT_ID`, with `common` read as `organizations`;
    /// `None` for `consumers` (personal accounts have no admin).
    pub fn default_consent_directory(&self) -> Option<MicrosoftTenant> {
        match &self.cfg.tenant {
            MicrosoftTenant::Consumers => None,
            MicrosoftTenant::Common => Some(MicrosoftTenant::Organizations),
            other => Some(other.clone()),
        }
    }

    /// The `/.default` scope of the Outlook resource: the permissions
    /// configured on the app registration (`IMAP.AccessAsApp`,
    /// `SMTP.SendAsApp` for app mailboxes).
    pub fn app_scope(&self) -> String {
        format!("{}/.default", self.cloud.outlook_resource)
    }

    /// Where an admin of `directory` grants consent for the organisation
    /// (`{authority}/{directory}/v2.0/adminconsent`).
    pub fn admin_consent_url(&self, directory: &MicrosoftTenant, state: &str) -> Url {
        let mut url = self.directory_url(directory.as_str(), "v2.0/adminconsent");
        url.query_pairs_mut()
            .append_pair("client_id", &self.cfg.client_id)
            .append_pair("redirect_uri", self.cfg.redirect_uri.as_str())
            .append_pair("state", state)
            .append_pair("scope", &self.app_scope());
        url
    }

    /// The app's own token for `directory` (a tenant GUID): client
    /// credentials for the Outlook resource's `/.default` scope.
    pub async fn app_token(&self, directory: &str) -> Result<TokenSet, AppTokenError> {
        let scope = self.app_scope();
        self.token_in(
            directory,
            &[("grant_type", "client_credentials"), ("scope", &scope)],
        )
        .await
        .map(|r| r.tokens)
        .map_err(AppTokenError::of)
    }

    fn outlook_scopes(&self) -> String {
        let r = self.cloud.outlook_resource;
        format!("{r}/IMAP.AccessAsUser.All {r}/SMTP.Send offline_access")
    }

    fn graph_scopes(&self) -> String {
        format!("{}/User.Read offline_access", self.cloud.graph_resource)
    }

    /// A token request at the configured tenant's endpoint.
    async fn token(&self, form: &[(&str, &str)]) -> Result<TokenResponse, TokenError> {
        self.token_in(self.cfg.tenant.as_str(), form).await
    }

    /// A token request at `{authority}/{directory}/oauth2/v2.0/token`, with
    /// our client credentials: the one place every request adds them.
    async fn token_in(
        &self,
        directory: &str,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, TokenError> {
        let url = self.directory_url(directory, "oauth2/v2.0/token");
        let auth = self
            .cfg
            .credential
            .client_auth(&self.cfg.client_id, &url, None)
            .await?;
        let mut full = vec![("client_id", self.cfg.client_id.as_str())];
        full.extend(auth.form());
        full.extend_from_slice(form);
        self.http.token_request(&url, &full).await
    }

    async fn refresh_for(
        &self,
        refresh_token: &SecretString,
        scope: &str,
    ) -> Result<TokenSet, TokenError> {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
            ("scope", scope),
        ])
        .await
        .map(|r| r.tokens)
    }

    async fn validate_id_token(
        &self,
        id_token: &str,
        nonce: &str,
    ) -> Result<IdClaims, CallbackError> {
        let claims: IdClaims = self
            .jwks
            .validate(
                id_token,
                &self.tenant_url("discovery/v2.0/keys"),
                &self.cfg.client_id,
                nonce,
            )
            .await
            .map_err(|e| CallbackFailure::id_token(self.kind(), e))?;
        // Multi-tenant discovery documents carry a literal `{tenantid}`: the
        // issuer is checked against the token's own `tid`.
        let tid = claims.tid.as_deref().unwrap_or_default();
        let authority = self.cfg.authority.as_str().trim_end_matches('/');
        if tid.is_empty()
            || claims.iss != format!("{authority}/{tid}/v2.0")
            || !self.cfg.tenant.admits(tid)
        {
            tracing::warn!("Microsoft id_token refused: issuer or tenant does not match");
            return Err(CallbackFailure::TokenExchangeFailed.into());
        }
        Ok(claims)
    }

    /// Graph `mail`, else `userPrincipalName`; `None` if Graph cannot be
    /// reached. Also returns the refresh token the Graph exchange rotated in.
    async fn graph_address(
        &self,
        refresh_token: &SecretString,
    ) -> (Option<String>, Option<SecretString>) {
        let graph_tokens = match self.refresh_for(refresh_token, &self.graph_scopes()).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = e.code(), "no Graph token; using id_token claims");
                return (None, None);
            }
        };
        let url = format!(
            "{}/v1.0/me",
            self.cfg.graph_url.as_str().trim_end_matches('/')
        );
        let me = async {
            self.http
                .client()
                .get(url)
                .bearer_auth(graph_tokens.access_token.expose_secret())
                .send()
                .await
                .ok()?
                .error_for_status()
                .ok()?
                .json::<GraphMe>()
                .await
                .ok()
        }
        .await;
        if me.is_none() {
            tracing::warn!("Graph /me could not be read; using id_token claims");
        }
        let address = me.and_then(|me| {
            me.mail
                .filter(|m| !m.trim().is_empty())
                .or(me.user_principal_name)
        });
        (address, graph_tokens.refresh_token)
    }
}

#[async_trait]
impl Provider for Microsoft {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Microsoft
    }

    fn credential(&self) -> &Credential {
        &self.cfg.credential
    }

    fn status_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("tenant".into(), self.cfg.tenant.as_str().into());
        m
    }

    async fn authorization_url(&self, req: &AuthorizationRequest<'_>) -> Result<Url, TokenError> {
        let scopes =
            AUTHORIZE_SCOPES.replace("https://outlook.office.com", self.cloud.outlook_resource);
        let mut extra = vec![("response_mode", "query")];
        if req.login_hint.is_none() {
            // An admin connecting several mailboxes must be able to pick.
            extra.push(("prompt", "select_account"));
        }
        Ok(authorization_url(
            &self.tenant_url("oauth2/v2.0/authorize"),
            &self.cfg.client_id,
            &self.cfg.redirect_uri,
            &scopes,
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
        let outlook_scopes = format!("openid profile email {}", self.outlook_scopes());
        let redeemed = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", self.cfg.redirect_uri.as_str()),
                ("code_verifier", verifier.expose_secret()),
                ("scope", &outlook_scopes),
            ])
            .await
            .map_err(|e| CallbackFailure::redemption(self.kind(), &e))?;
        let id_token = require_id_token(self.kind(), &redeemed)?;
        let claims = self.validate_id_token(id_token, nonce).await?;
        let mut tokens = redeemed.tokens;
        let Some(refresh_token) = tokens.refresh_token.take() else {
            tracing::warn!("Microsoft answered without a refresh token (offline_access missing)");
            return Err(CallbackFailure::TokenExchangeFailed.into());
        };
        let (graph_address, rotated) = self.graph_address(&refresh_token).await;
        // Under rotation the Graph exchange may have spent the first refresh
        // token: keep the newest.
        tokens.refresh_token = Some(rotated.unwrap_or(refresh_token));
        let address = graph_address.or(claims.email).or(claims.preferred_username);
        Connection::of(tokens, address, claims.tid)
    }

    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenSet, TokenError> {
        self.refresh_for(refresh_token, &self.outlook_scopes())
            .await
    }

    fn mail_servers(&self, provider_tenant_id: Option<&str>) -> MailServers {
        let smtp_host = if provider_tenant_id == Some(PERSONAL_TENANT_ID) {
            "smtp-mail.outlook.com"
        } else {
            self.cloud.smtp_host
        };
        MailServers {
            imap: self.cfg.imap.clone().unwrap_or_else(|| MailServer {
                host: self.cloud.imap_host.into(),
                port: 993,
                tls: TlsMode::Implicit,
            }),
            smtp: self.cfg.smtp.clone().unwrap_or_else(|| MailServer {
                host: smtp_host.into(),
                port: 587,
                tls: TlsMode::Starttls,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_values() {
        assert_eq!(
            MicrosoftTenant::parse("common").unwrap(),
            MicrosoftTenant::Common
        );
        assert_eq!(
            MicrosoftTenant::parse("72f988bf-86f1-41af-91ab-2d7cd011db47").unwrap(),
            MicrosoftTenant::Specific("72f988bf-86f1-41af-91ab-2d7cd011db47".into())
        );
        assert!(MicrosoftTenant::parse("contoso.onmicrosoft.com").is_ok());
        for bad in ["", "no spaces.com x", "../x", "a..b", "contoso"] {
            assert!(MicrosoftTenant::parse(bad).is_err(), "{bad}");
        }
    }

    fn microsoft(authority: &str) -> Microsoft {
        let cfg = MicrosoftConfig {
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            credential: Credential::Secret {
                secret: SecretString::from("secret"),
                expires_at: None,
            },
            tenant: MicrosoftTenant::Common,
            redirect_uri: Url::parse("https://app.example/cb").unwrap(),
            authority: Url::parse(authority).unwrap(),
            graph_url: Url::parse("https://graph.example").unwrap(),
            imap: None,
            smtp: None,
        };
        let http = OAuthHttp::new(
            std::time::Duration::from_secs(1),
            &crate::tls::ExtraRoots::default(),
        );
        Microsoft::new(cfg, http)
    }

    #[tokio::test]
    async fn each_national_cloud_has_its_own_outlook_resource_and_mail_hosts() {
        for (authority, outlook, graph, imap, smtp) in [
            (
                "https://login.microsoftonline.com",
                "https://outlook.office.com",
                "https://graph.microsoft.com",
                "outlook.office365.com",
                "smtp.office365.com",
            ),
            (
                "https://login.microsoftonline.us",
                "https://outlook.office365.us",
                "https://graph.microsoft.us",
                "outlook.office365.us",
                "smtp.office365.us",
            ),
            (
                "https://login.partner.microsoftonline.cn",
                "https://partner.outlook.cn",
                "https://microsoftgraph.chinacloudapi.cn",
                "partner.outlook.cn",
                "smtp.partner.outlook.cn",
            ),
            (
                "https://login.chinacloudapi.cn",
                "https://partner.outlook.cn",
                "https://microsoftgraph.chinacloudapi.cn",
                "partner.outlook.cn",
                "smtp.partner.outlook.cn",
            ),
        ] {
            let ms = microsoft(authority);
            assert_eq!(
                ms.outlook_scopes(),
                format!("{outlook}/IMAP.AccessAsUser.All {outlook}/SMTP.Send offline_access")
            );
            assert_eq!(
                ms.graph_scopes(),
                format!("{graph}/User.Read offline_access")
            );
            let servers = ms.mail_servers(None);
            assert_eq!(
                (servers.imap.host.as_str(), servers.smtp.host.as_str()),
                (imap, smtp)
            );
            let url = ms
                .authorization_url(&AuthorizationRequest {
                    state: "s",
                    code_challenge: "c",
                    nonce: "n",
                    login_hint: None,
                })
                .await
                .unwrap();
            let scope = url
                .query_pairs()
                .find(|(k, _)| k == "scope")
                .unwrap()
                .1
                .into_owned();
            assert!(
                scope.contains(&format!("{outlook}/IMAP.AccessAsUser.All")),
                "{scope}"
            );
            assert!(url
                .as_str()
                .starts_with(&format!("{authority}/common/oauth2/v2.0/authorize?")));
        }
        // Personal accounts send through their own host, in the global cloud.
        let servers =
            microsoft("https://login.microsoftonline.com").mail_servers(Some(PERSONAL_TENANT_ID));
        assert_eq!(servers.smtp.host, "smtp-mail.outlook.com");
    }

    #[test]
    fn tenant_settings_admit_the_right_tids() {
        let org = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        assert!(MicrosoftTenant::Organizations.admits(org));
        assert!(!MicrosoftTenant::Organizations.admits(PERSONAL_TENANT_ID));
        assert!(MicrosoftTenant::Consumers.admits(PERSONAL_TENANT_ID));
        assert!(!MicrosoftTenant::Specific(org.into()).admits(PERSONAL_TENANT_ID));
    }
}
