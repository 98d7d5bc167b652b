//! `/api/accounts/{id}/...`: the token route a mail worker calls just before
//! it logs in, and the verify route an admin calls to prove a mailbox works.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde_json::json;

use super::auth::{Admin, Service};
use super::error::ApiError;
use crate::app::App;
use crate::domain::AccountId;
use crate::oauth::{MailServer, TlsMode};
use crate::tokens;
use crate::verify::{Credentials, Mechanism};
use crate::xoauth2::xoauth2;

pub fn router() -> Router<App> {
    Router::new()
        .route("/api/accounts/{id}/token", post(token))
        .route("/api/accounts/{id}/verify", post(verify))
}

/// A mail server as workers read it. The contract's shape is kept: IMAP
/// says `tls` (implicit TLS), SMTP `starttls`. A server in another mode
/// than its protocol's usual one also carries both booleans and
/// `security` (`implicit`, `starttls` or `none`), so no worker mistakes it.
fn server_json(s: &MailServer, usual: TlsMode) -> serde_json::Value {
    let mut v = json!({"host": s.host, "port": s.port});
    let implicit = s.tls == TlsMode::Implicit;
    let starttls = s.tls == TlsMode::Starttls;
    if s.tls == usual {
        match usual {
            TlsMode::Implicit => v["tls"] = implicit.into(),
            _ => v["starttls"] = starttls.into(),
        }
    } else {
        v["tls"] = implicit.into();
        v["starttls"] = starttls.into();
        v["security"] = s.tls.as_str().into();
    }
    v
}

/// Carries a live token: never cached by anything in between.
#[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant))]
async fn token(
    State(app): State<App>,
    Path(raw_id): Path<String>,
    Service(caller): Service,
) -> Result<impl IntoResponse, ApiError> {
    let id = AccountId::parse(&raw_id).map_err(|_| ApiError::account_not_found())?;
    let g = tokens::fresh_token(&app, caller.tenant.as_str(), &id.to_string()).await?;
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    Ok((
        no_store,
        Json(json!({
            "access_token": g.access_token.expose_secret(),
            "expires_at": crate::rfc3339(g.expires_at),
            "email": g.email,
            "xoauth2": xoauth2(&g.email, &g.access_token).expose_secret(),
            "imap": server_json(&g.servers.imap, TlsMode::Implicit),
            "smtp": server_json(&g.servers.smtp, TlsMode::Starttls),
        })),
    ))
}

/// Logs in to the account's IMAP and SMTP servers with a fresh token (taken
/// the same way as the token route), both at once; sends no mail.
#[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant, account_id = %raw_id))]
async fn verify(
    State(app): State<App>,
    Path(raw_id): Path<String>,
    Admin(caller): Admin,
) -> Result<impl IntoResponse, ApiError> {
    let id = AccountId::parse(&raw_id).map_err(|_| ApiError::account_not_found())?;
    let g = tokens::fresh_token(&app, caller.tenant.as_str(), &id.to_string()).await?;
    let creds = Credentials {
        user: &g.email,
        token: &g.access_token,
    };
    let (imap, smtp) = tokio::join!(
        app.verifier
            .imap(&g.servers.imap, &creds, &Mechanism::PREFERRED),
        app.verifier
            .smtp(&g.servers.smtp, &creds, &Mechanism::PREFERRED),
    );
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"imap": imap, "smtp": smtp})),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
