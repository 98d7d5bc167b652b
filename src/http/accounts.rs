//! `/api/accounts/{id}/...`: the token route a mail worker calls just before
//! it logs in, and the verify route an admin calls to prove a mailbox works.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use secrecy::ExposeSecret;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Admin, Service};
use super::body::JsonBody;
use super::error::ApiError;
use super::error::ErrorBody;
use super::oauth::AccountView;
use super::params::AccountPath;
use super::responses::{
    AccountNotFound, ForbiddenAdmin, ForbiddenService, NoTokenToHave, PayloadTooLarge,
    ProviderUnavailable, RefreshRefused, Unauthorized, UnsupportedMediaType,
};
use crate::app::App;
use crate::core::mailboxes::{self, NewAccount};
use crate::core::refresh::on_demand::{self, Logins};
use crate::domain::MailboxAddress;
use crate::oauth::{MailServer, TlsMode};
use crate::verify::{Credentials, LoginReport, Mechanism};
use crate::xoauth2::xoauth2;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(add))
        .routes(routes!(token))
        .routes(routes!(verify))
}

/// A fresh access token and everything a worker needs to log in.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "access_token": "eyJ0eXAiOiJKV1QiLCJub25jZSI6Ij…",
    "expires_at": "2026-11-27T10:00:00Z",
    "email": "ops@contoso.com",
    "xoauth2": "dXNlcj1vcHNAY29udG9zby5jb20BYXV0aD1CZWFyZXIgZXlKMGVYQWlPaUpLVjFRaUxDSnViMjVqWlNJNklq4oCmAQE=",
    "imap": {"host": "outlook.office365.com", "port": 993, "tls": true,
             "username": "ops@contoso.com", "xoauth2": "dXNlcj1vcHNAY29udG9zby5jb20BYXV0aD1CZWFyZXIgZXlKMGVYQWlPaUpLVjFRaUxDSnViMjVqWlNJNklq4oCmAQE="},
    "smtp": {"host": "smtp.office365.com", "port": 587, "starttls": true,
             "username": "ops@contoso.com", "xoauth2": "dXNlcj1vcHNAY29udG9zby5jb20BYXV0aD1CZWFyZXIgZXlKMGVYQWlPaUpLVjFRaUxDSnViMjVqWlNJNklq4oCmAQE=",
             "mail_from": "ops@contoso.com"}
}))]
pub struct TokenResponse<'a> {
    /// The bearer token for IMAP and SMTP.
    #[schema(value_type = String)]
    access_token: &'a str,
    /// When it expires (at least 5 minutes away, unless the provider is
    /// failing and the stored token is still valid).
    #[schema(format = DateTime)]
    expires_at: String,
    /// The mailbox address to log in as.
    #[schema(value_type = String, format = Email)]
    email: &'a MailboxAddress,
    /// SASL XOAUTH2 initial response:
    /// `base64("user=" + email + "\x01auth=Bearer " + access_token + "\x01\x01")`.
    #[schema(value_type = String, format = Byte)]
    xoauth2: &'a str,
    imap: ImapServer<'a>,
    smtp: SmtpServer<'a>,
}

/// How a server that is not in its protocol's usual mode is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// TLS from the first byte.
    Implicit,
    /// Plain text, then `STARTTLS` before anything secret is sent.
    Starttls,
    /// No TLS at all (only ever for a loopback host).
    None,
}

impl From<TlsMode> for Security {
    fn from(t: TlsMode) -> Security {
        match t {
            TlsMode::Implicit => Security::Implicit,
            TlsMode::Starttls => Security::Starttls,
            TlsMode::None => Security::None,
        }
    }
}

/// The IMAP server. Usually `{host, port, tls: true}` (implicit TLS); a
/// server in another mode (possible with the `oidc` provider) also carries
/// `starttls` and `security`, so no worker mistakes it.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"host": "outlook.office365.com", "port": 993, "tls": true,
    "username": "ops@contoso.com", "xoauth2": "dXNlcj1vcHNAY29udG9zby5jb20BYXV0aD1CZWFyZXIgZXlKMGVYQWlPaUpLVjFRaUxDSnViMjVqWlNJNklq4oCmAQE="}))]
pub struct ImapServer<'a> {
    #[schema(value_type = String)]
    host: &'a str,
    /// The username to log in as (the mailbox's address).
    #[schema(value_type = String, format = Email)]
    username: &'a MailboxAddress,
    /// SASL XOAUTH2 initial response for `username`.
    #[schema(value_type = String, format = Byte)]
    xoauth2: &'a str,
    #[schema(minimum = 1, maximum = 65535)]
    port: u16,
    /// Implicit TLS.
    tls: bool,
    /// Only for a server not in implicit TLS: `STARTTLS` before authenticating.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    starttls: Option<bool>,
    /// Only for a server not in implicit TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    security: Option<Security>,
}

/// The SMTP submission server. Usually `{host, port, starttls: true}`; a
/// server in another mode (possible with the `oidc` provider) also carries
/// `tls` and `security`, so no worker mistakes it.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"host": "smtp.office365.com", "port": 587, "starttls": true,
    "username": "ops@contoso.com", "xoauth2": "dXNlcj1vcHNAY29udG9zby5jb20BYXV0aD1CZWFyZXIgZXlKMGVYQWlPaUpLVjFRaUxDSnViMjVqWlNJNklq4oCmAQE=", "mail_from": "ops@contoso.com"}))]
pub struct SmtpServer<'a> {
    #[schema(value_type = String)]
    host: &'a str,
    /// The username to authenticate as (for a `shared` mailbox: its
    /// delegate, since Exchange refuses SMTP AUTH as a shared mailbox).
    #[schema(value_type = String, format = Email)]
    username: &'a MailboxAddress,
    /// SASL XOAUTH2 initial response for `username`.
    #[schema(value_type = String, format = Byte)]
    xoauth2: &'a str,
    /// The envelope sender (`MAIL FROM`) and `From:` address to send as.
    #[schema(value_type = String, format = Email)]
    mail_from: &'a MailboxAddress,
    #[schema(minimum = 1, maximum = 65535)]
    port: u16,
    /// Only for a server not in STARTTLS mode: implicit TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    tls: Option<bool>,
    /// `STARTTLS` before authenticating.
    starttls: bool,
    /// Only for a server not in STARTTLS mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    security: Option<Security>,
}

/// Whether a server is in its protocol's usual mode; if not, the extra
/// fields that say exactly how it is secured.
fn unusual(s: &MailServer, usual: TlsMode) -> (bool, bool, Option<Security>) {
    let implicit = s.tls == TlsMode::Implicit;
    let starttls = s.tls == TlsMode::Starttls;
    let security = (s.tls != usual).then_some(s.tls.into());
    (implicit, starttls, security)
}

/// A mail server as workers read it. The contract's shape is kept: IMAP
/// says `tls` (implicit TLS), SMTP `starttls`. A server in another mode
/// than its protocol's usual one also carries both booleans and
/// `security` (`implicit`, `starttls` or `none`), so no worker mistakes it.
fn imap_server<'a>(
    s: &'a MailServer,
    username: &'a MailboxAddress,
    xoauth2: &'a str,
) -> ImapServer<'a> {
    let (tls, starttls, security) = unusual(s, TlsMode::Implicit);
    ImapServer {
        host: &s.host,
        username,
        xoauth2,
        port: s.port,
        tls,
        starttls: security.map(|_| starttls),
        security,
    }
}

fn smtp_server<'a>(s: &'a MailServer, logins: &Logins<'a>, xoauth2: &'a str) -> SmtpServer<'a> {
    let (tls, starttls, security) = unusual(s, TlsMode::Starttls);
    SmtpServer {
        host: &s.host,
        username: logins.smtp,
        xoauth2,
        mail_from: logins.mail_from,
        port: s.port,
        tls: security.map(|_| tls),
        starttls,
        security,
    }
}

/// Add a shared or app mailbox
///
/// Admin route (`role=admin`). A `shared` mailbox (Microsoft) is opened
/// with the token of `via_account_id`, a connected account of the tenant
/// whose user has Full Access to it in Exchange (and Send As, to send); it
/// holds no token of its own and follows its delegate (its `needs_reauth`,
/// disconnect and reconnect). An `app` mailbox is opened with the app's own
/// token in a directory whose admin consented. An address the tenant has
/// disconnected is reused (same id). Audited, and announced by the
/// `account.connected` webhook.
#[utoipa::path(
    post,
    path = "/api/accounts",
    tag = "accounts",
    security(("bearer_jwt" = [])),
    request_body = NewAccount,
    responses(
        (status = 201, description = "Added: the account as the status route shows it", body = AccountView),
        (status = 400, description = "No body, not JSON, a wrong field, a bad kind or a malformed address", body = ErrorBody,
         example = json!({"error": "invalid_request", "message": "kind must be shared or app"})),
        (status = 401, response = Unauthorized),
        (status = 403, response = ForbiddenAdmin),
        (status = 404, description = "A delegate the tenant does not have", body = ErrorBody,
         example = json!({"error": "not_found", "message": "no such delegate account"})),
        (status = 409, description = "The address is taken, the delegate cannot open mailboxes, or no directory has consented", body = ErrorBody, examples(
            ("account_exists" = (value = json!({"error": "account_exists", "message": "the tenant already has an account for this address", "account_id": "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b"}))),
            ("delegate_not_usable" = (value = json!({"error": "delegate_not_usable", "message": "the delegate must be a connected Microsoft account of the tenant's own mailbox (kind delegated)"}))),
            ("admin_consent_required" = (value = json!({"error": "admin_consent_required", "message": "no directory of this tenant has granted the app admin consent: grant it first (POST /api/oauth/microsoft/admin-consent)"}))),
        )),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
    )
)]
#[tracing::instrument(skip_all, fields(tenant_id))]
async fn add(
    State(app): State<App>,
    Admin(caller): Admin,
    JsonBody(body): JsonBody<NewAccount>,
) -> Result<impl IntoResponse, ApiError> {
    let row = mailboxes::add(&app, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(AccountView::of(row, None))))
}

/// A fresh token for a mail worker
///
/// Service route (`role=service`). Answers the stored access token, or
/// refreshes it first when under 5 minutes remain (one refresh per account
/// at a time across all replicas; concurrent requests share its result).
/// A failed refresh still serves the stored token while it is valid.
/// Carries a live token: `Cache-Control: no-store`.
#[utoipa::path(
    post,
    path = "/api/accounts/{id}/token",
    tag = "accounts",
    security(("bearer_jwt" = [])),
    params(AccountPath),
    responses(
        (status = 200, description = "A token valid for at least 5 more minutes, and where to use it", body = TokenResponse,
         headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 401, response = Unauthorized),
        (status = 403, response = ForbiddenService),
        (status = 404, response = AccountNotFound),
        (status = 409, response = NoTokenToHave),
        (status = 502, response = RefreshRefused),
        (status = 503, response = ProviderUnavailable),
    )
)]
#[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant, account_id = %id))]
async fn token(
    State(app): State<App>,
    Service(caller): Service,
    AccountPath { id }: AccountPath,
) -> Result<impl IntoResponse, ApiError> {
    let g = on_demand::fresh_token(&app, &caller.tenant, id).await?;
    let logins = g.logins();
    // The IMAP login is the account's own address, so its SASL string is
    // also the top-level one; SMTP needs another only when it logs in as
    // someone else (a shared mailbox's delegate).
    let imap_sasl = xoauth2(logins.imap, &g.access_token);
    let smtp_sasl = (logins.smtp != logins.imap).then(|| xoauth2(logins.smtp, &g.access_token));
    let smtp_sasl = smtp_sasl.as_ref().unwrap_or(&imap_sasl);
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    Ok((
        no_store,
        Json(TokenResponse {
            access_token: g.access_token.expose_secret(),
            expires_at: crate::rfc3339(g.expires_at),
            email: logins.imap,
            xoauth2: imap_sasl.expose_secret(),
            imap: imap_server(&g.servers.imap, logins.imap, imap_sasl.expose_secret()),
            smtp: smtp_server(&g.servers.smtp, &logins, smtp_sasl.expose_secret()),
        })
        .into_response(),
    ))
}

/// The verify route's body: how each login went.
#[derive(Serialize, ToSchema)]
pub struct VerifyResponse {
    imap: LoginReport,
    smtp: LoginReport,
}

/// Prove a mailbox works
///
/// Admin route (`role=admin`). Takes a fresh token (as the token route
/// does) and logs in to the account's IMAP and SMTP servers with it, both
/// at once (XOAUTH2, or OAUTHBEARER where offered); sends no mail. Each
/// login is reported with the mechanism, the server's final reply (secrets
/// removed), the time taken and the transcript. A refused login is still a
/// 200, with `ok: false`.
#[utoipa::path(
    post,
    path = "/api/accounts/{id}/verify",
    tag = "accounts",
    security(("bearer_jwt" = [])),
    params(AccountPath),
    responses(
        (status = 200, description = "Both logins, each with its outcome", body = VerifyResponse,
         headers(("Cache-Control" = String, description = "`no-store`")),
         example = json!({
             "imap": {"ok": true, "mechanism": "XOAUTH2", "reply": "a4 OK AUTHENTICATE completed.", "ms": 412,
                      "transcript": ["# connected to outlook.office365.com:993 (implicit)", "S: * OK The Microsoft Exchange IMAP4 service is ready.", "C: a4 AUTHENTICATE XOAUTH2 [initial response elided]", "S: a4 OK AUTHENTICATE completed."]},
             "smtp": {"ok": true, "mechanism": "XOAUTH2", "reply": "235 2.7.0 Authentication successful", "ms": 530,
                      "transcript": ["# connected to smtp.office365.com:587 (starttls)", "S: 220 smtp.office365.com Microsoft ESMTP MAIL Service ready", "C: AUTH XOAUTH2 [initial response elided]", "S: 235 2.7.0 Authentication successful"]}
         })),
        (status = 401, response = Unauthorized),
        (status = 403, response = ForbiddenAdmin),
        (status = 404, response = AccountNotFound),
        (status = 409, response = NoTokenToHave),
        (status = 502, response = RefreshRefused),
        (status = 503, response = ProviderUnavailable),
    )
)]
#[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant, account_id = %id))]
async fn verify(
    State(app): State<App>,
    Admin(caller): Admin,
    AccountPath { id }: AccountPath,
) -> Result<impl IntoResponse, ApiError> {
    let g = on_demand::fresh_token(&app, &caller.tenant, id).await?;
    // Exactly as a worker logs in with the token route's answer.
    let logins = g.logins();
    let (imap_login, smtp_login) = (
        Credentials {
            user: logins.imap,
            token: &g.access_token,
        },
        Credentials {
            user: logins.smtp,
            token: &g.access_token,
        },
    );
    let (imap, smtp) = tokio::join!(
        app.verifier
            .imap(&g.servers.imap, &imap_login, &Mechanism::PREFERRED),
        app.verifier
            .smtp(&g.servers.smtp, &smtp_login, &Mechanism::PREFERRED),
    );
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(VerifyResponse { imap, smtp }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::refresh::on_demand::Grant;
    use serde_json::json;

    fn grant() -> Grant {
        Grant {
            access_token: secrecy::SecretString::from("tok"),
            expires_at: 0,
            email: MailboxAddress::parse("ops@mail.example").unwrap(),
            servers: crate::oauth::MailServers {
                imap: server(TlsMode::Implicit),
                smtp: server(TlsMode::Starttls),
            },
            delegate: None,
        }
    }

    /// The server's fields, without who logs in (checked on their own).
    fn server_json(s: &MailServer, usual: TlsMode) -> serde_json::Value {
        let g = grant();
        let mut v = match usual {
            TlsMode::Implicit => serde_json::to_value(imap_server(s, &g.email, "sasl")),
            _ => serde_json::to_value(smtp_server(s, &g.logins(), "sasl")),
        }
        .unwrap();
        for login in ["username", "xoauth2", "mail_from"] {
            v.as_object_mut().unwrap().remove(login);
        }
        v
    }

    #[test]
    fn each_protocol_says_who_logs_in_with_its_own_sasl_string() {
        let mut g = grant();
        g.delegate = Some(MailboxAddress::parse("adele@mail.example").unwrap());
        let logins = g.logins();
        let imap =
            serde_json::to_value(imap_server(&g.servers.imap, logins.imap, "imap-sasl")).unwrap();
        let smtp =
            serde_json::to_value(smtp_server(&g.servers.smtp, &logins, "smtp-sasl")).unwrap();
        assert_eq!(imap["username"], "ops@mail.example");
        assert_eq!(imap["xoauth2"], "imap-sasl");
        assert_eq!(imap.get("mail_from"), None);
        assert_eq!(smtp["username"], "adele@mail.example");
        assert_eq!(smtp["xoauth2"], "smtp-sasl");
        assert_eq!(smtp["mail_from"], "ops@mail.example");
    }

    fn server(tls: TlsMode) -> MailServer {
        MailServer {
            host: "mail.example".into(),
            port: 1,
            tls,
        }
    }

    #[test]
    fn usual_modes_keep_the_contract_shape_and_others_say_more() {
        assert_eq!(
            server_json(&server(TlsMode::Implicit), TlsMode::Implicit),
            json!({"host": "mail.example", "port": 1, "tls": true})
        );
        assert_eq!(
            server_json(&server(TlsMode::Starttls), TlsMode::Starttls),
            json!({"host": "mail.example", "port": 1, "starttls": true})
        );
        assert_eq!(
            server_json(&server(TlsMode::Starttls), TlsMode::Implicit),
            json!({"host": "mail.example", "port": 1, "tls": false, "starttls": true, "security": "starttls"})
        );
        assert_eq!(
            server_json(&server(TlsMode::None), TlsMode::Starttls),
            json!({"host": "mail.example", "port": 1, "tls": false, "starttls": false, "security": "none"})
        );
    }
}
