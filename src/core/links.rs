//! Connect links (DESIGN.md "Connect links"): an admin makes a link, its
//! owner opens it and starts the same authorization-code flow as
//! `authorize`, for the link's tenant with the admin as the actor. The
//! token is 256 random bits shown once in the link's URL; only its SHA-256
//! is stored, so the database alone cannot open a link.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::flow::{self, AuthorizeBody, FlowError};
use super::Core;
use crate::db::links::{self, LinkRow, LinkState, NewLink};
use crate::domain::{Caller, MailboxAddress, ProviderKind, TenantId};

/// How long a link stays open unless `expires_in` says otherwise (7 days).
pub const DEFAULT_LIFETIME_SECS: i64 = 7 * 86_400;
/// The longest a link may stay open (30 days).
pub const MAX_LIFETIME_SECS: i64 = 30 * 86_400;

/// Why a link could not be made, listed or revoked.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the {0} provider is not configured on this server")]
    NotConfigured(ProviderKind),
    #[error("no such connect link")]
    NotFound,
    /// A used link stays used: revoking it would undo nothing.
    #[error("this connect link was already used; disconnect the account instead")]
    AlreadyUsed,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for LinkError {
    fn from(e: sqlx::Error) -> LinkError {
        LinkError::Internal(anyhow::Error::new(e).context("database query failed"))
    }
}

/// The body of `POST /api/connect-links`; every field may be left out.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"provider": "microsoft", "email": "ops@contoso.com", "expires_in": 86400}))]
pub struct CreateLinkBody {
    /// The only provider the owner may use; any configured one when absent.
    #[schema(value_type = Option<ProviderKind>)]
    pub provider: Option<String>,
    /// The only mailbox the link connects: another one fails with
    /// `account_mismatch` and connects nothing.
    #[schema(format = Email)]
    pub email: Option<String>,
    /// Seconds the link stays open: 1 to 2592000 (30 days), default 604800
    /// (7 days).
    #[schema(minimum = 1, maximum = 2592000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub expires_in: Option<i64>,
}

/// A JSON number without a fraction, as JSON Schema's `integer` reads
/// one: `334.0` is 334; `1.5` is refused.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        // Below 2^53, an f64 holds every whole number exactly.
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        _ => Err(D::Error::custom(
            "expires_in must be a whole number of seconds",
        )),
    }
}

/// A new link. Its `url` is shown this once: only its hash is stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedLink {
    #[schema(format = "uuid")]
    pub id: String,
    /// `{MAILCONNECT_PUBLIC_URL}/connect/{token}`: send it to the owner.
    #[schema(
        format = "uri",
        example = "https://mail.example.com/connect/3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    )]
    pub url: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// A link as the list shows it (never its token).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LinkView {
    #[schema(format = "uuid")]
    pub id: String,
    #[schema(value_type = Option<ProviderKind>)]
    pub provider: Option<String>,
    #[schema(format = Email)]
    pub email: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub state: LinkState,
    /// The account it connected, once used.
    #[schema(format = "uuid")]
    pub account_id: Option<String>,
    /// The admin (`sub`) who made it: the actor of what it connects.
    pub created_by: String,
}

impl LinkView {
    fn of(row: LinkRow, now: i64) -> LinkView {
        LinkView {
            state: row.state(now),
            id: row.id,
            provider: row.provider,
            email: row.email,
            created_at: crate::rfc3339(row.created_at),
            expires_at: crate::rfc3339(row.expires_at),
            account_id: row.account_id,
            created_by: row.created_by,
        }
    }
}

/// The stored form of a token: SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Makes a link for the caller's tenant, with the caller as its admin.
pub async fn create(
    core: &Core,
    caller: &Caller,
    body: CreateLinkBody,
) -> Result<CreatedLink, LinkError> {
    let expires_in = body.expires_in.unwrap_or(DEFAULT_LIFETIME_SECS);
    if !(1..=MAX_LIFETIME_SECS).contains(&expires_in) {
        return Err(LinkError::InvalidRequest(format!(
            "expires_in must be between 1 and {MAX_LIFETIME_SECS} seconds"
        )));
    }
    let provider = match body.provider.as_deref() {
        None => None,
        Some(raw) => {
            let kind = ProviderKind::parse(raw).ok_or_else(|| {
                LinkError::InvalidRequest("provider must be microsoft, google or oidc".into())
            })?;
            if core.provider(kind).is_none() {
                return Err(LinkError::NotConfigured(kind));
            }
            Some(kind.as_str().to_owned())
        }
    };
    let email = match body.email.as_deref() {
        None => None,
        Some(raw) => Some(
            MailboxAddress::parse(raw)
                .map_err(|e| LinkError::InvalidRequest(format!("email: {e}")))?
                .to_string(),
        ),
    };
    let now = crate::now();
    let token = new_token();
    let row = LinkRow {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: caller.tenant.as_str().to_owned(),
        provider,
        email,
        created_by: caller.user_id.clone(),
        created_at: now,
        expires_at: now + expires_in,
        revoked_at: None,
        used_at: None,
        account_id: None,
    };
    links::insert(
        &core.db,
        &NewLink {
            row: &row,
            token_hash: &token_hash(&token),
        },
    )
    .await?;
    tracing::info!(link_id = %row.id, "connect link created");
    let base = core.public_url.as_str().trim_end_matches('/');
    Ok(CreatedLink {
        url: format!("{base}/connect/{token}"),
        id: row.id,
        expires_at: crate::rfc3339(row.expires_at),
    })
}

/// The caller's tenant's links, newest first.
pub async fn list(core: &Core, caller: &Caller) -> Result<Vec<LinkView>, LinkError> {
    let now = crate::now();
    Ok(links::list(&core.db, caller.tenant.as_str())
        .await?
        .into_iter()
        .map(|r| LinkView::of(r, now))
        .collect())
}

/// Revokes one of the caller's tenant's links. Revoking a revoked or
/// expired link again is fine; a used one is [`LinkError::AlreadyUsed`].
pub async fn revoke(core: &Core, caller: &Caller, id: &str) -> Result<(), LinkError> {
    let row = links::by_id(&core.db, id)
        .await?
        .filter(|r| r.tenant_id == caller.tenant.as_str())
        .ok_or(LinkError::NotFound)?;
    if row.used_at.is_some() {
        return Err(LinkError::AlreadyUsed);
    }
    if !links::revoke(&core.db, caller.tenant.as_str(), id, crate::now()).await? {
        // Revoked meanwhile (fine), or used meanwhile.
        let now_used = links::by_id(&core.db, id)
            .await?
            .is_some_and(|r| r.used_at.is_some());
        if now_used {
            return Err(LinkError::AlreadyUsed);
        }
    }
    tracing::info!(link_id = %id, "connect link revoked");
    Ok(())
}

/// Why a link's page cannot offer its buttons.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// No link has this token.
    Unknown,
    /// It was used, has expired or was revoked.
    Gone(LinkState),
}

/// The open link a token opens.
pub async fn open(core: &Core, token: &str) -> Result<Result<LinkRow, Closed>, sqlx::Error> {
    if token.is_empty() || token.len() > 128 {
        return Ok(Err(Closed::Unknown));
    }
    Ok(
        match links::by_token_hash(&core.db, &token_hash(token)).await? {
            None => Err(Closed::Unknown),
            Some(row) => match row.state(crate::now()) {
                LinkState::Open => Ok(row),
                gone => Err(Closed::Gone(gone)),
            },
        },
    )
}

/// The providers a link's page offers: its own, or every configured one.
pub fn offered(core: &Core, row: &LinkRow) -> Vec<ProviderKind> {
    ProviderKind::ALL
        .into_iter()
        .filter(|k| core.provider(*k).is_some())
        .filter(|k| row.provider.as_deref().is_none_or(|p| p == k.as_str()))
        .collect()
}

/// Why the flow could not be started from a link.
#[derive(Debug)]
pub enum StartError {
    Closed(Closed),
    /// A provider the link does not offer.
    NotOffered,
    Flow(FlowError),
}

/// Starts the flow from an open link: the authorization URL to send the
/// owner's browser to. The state names the link, so the callback ends on
/// the link's page and marks it used.
pub async fn start(core: &Core, token: &str, kind: ProviderKind) -> Result<String, StartError> {
    let row = match open(core, token).await {
        Ok(Ok(row)) => row,
        Ok(Err(closed)) => return Err(StartError::Closed(closed)),
        Err(e) => return Err(StartError::Flow(e.into())),
    };
    if !offered(core, &row).contains(&kind) {
        return Err(StartError::NotOffered);
    }
    let tenant = TenantId::parse(&row.tenant_id)
        .map_err(|e| StartError::Flow(FlowError::Internal(anyhow::anyhow!(e))))?;
    let caller = Caller {
        user_id: row.created_by.clone(),
        tenant,
        role: None,
    };
    let body = AuthorizeBody {
        login_hint: row.email.clone(),
        ..AuthorizeBody::default()
    };
    let started = flow::authorize_from_link(core, &caller, kind, body, row.id.clone(), token)
        .await
        .map_err(StartError::Flow)?;
    tracing::info!(link_id = %row.id, provider = %kind, "connect link flow started");
    Ok(started.response.authorization_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_256_bits_and_stored_as_its_hex_sha256() {
        let t = new_token();
        assert_eq!(URL_SAFE_NO_PAD.decode(&t).unwrap().len(), 32);
        assert_ne!(t, new_token());
        let h = token_hash("abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
