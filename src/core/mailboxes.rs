//! Adding a mailbox that nobody signs in to (DESIGN.md "Account kinds",
//! `POST /api/accounts`): a `shared` mailbox opened through a connected
//! delegate, or an `app` mailbox opened with the app's own token in an
//! admin-consented directory.

use serde::Deserialize;

use super::app_tokens::{self, AppGrantError};
use super::Core;
use crate::db::accounts::{self, AccountRow, Opener};
use crate::db::app_tokens as app_tokens_db;
use crate::db::{audit, consents};
use crate::domain::{AccountId, AccountKind, AccountStatus, Caller, MailboxAddress, ProviderKind};
use crate::oauth::microsoft::MicrosoftTenant;
use crate::webhooks::{Event, EventType};

/// The body of `POST /api/accounts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "shared", "email": "support@contoso.com", "via_account_id": "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b"}))]
pub struct NewAccount {
    /// `shared` or `app` (a `delegated` mailbox is connected through
    /// `authorize`).
    #[schema(pattern = "^(shared|app)$", example = "shared")]
    pub kind: String,
    /// The mailbox's address.
    #[schema(format = Email, example = "support@contoso.com")]
    pub email: String,
    /// `shared`: the connected Microsoft account (of this tenant) whose user
    /// has Full Access to the mailbox (and Send As, to send).
    #[schema(format = "uuid")]
    pub via_account_id: Option<String>,
    /// `app`: the Microsoft directory (GUID or domain); defaults to the
    /// tenant's admin-consented directory.
    pub directory: Option<String>,
}

/// Why a mailbox was not added, by who must act.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("no such delegate account")]
    DelegateNotFound,
    #[error("the tenant already has an account for this address")]
    AccountExists(AccountId),
    #[error("the delegate must be a connected Microsoft account of the tenant's own mailbox (kind delegated)")]
    DelegateNotUsable,
    #[error("no directory of this tenant has granted the app admin consent, or the directory refuses the app a token: grant it first (POST /api/oauth/microsoft/admin-consent)")]
    AdminConsentRequired,
    #[error("the microsoft provider is not configured on this server")]
    NotConfigured,
    /// Our client credentials were refused.
    #[error("Microsoft refused this server's client credentials; an operator must fix the configuration")]
    ProviderMisconfigured,
    #[error("Microsoft is unavailable; try again later")]
    ProviderUnavailable {
        retry_after: Option<std::time::Duration>,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<AppGrantError> for AddError {
    fn from(e: AppGrantError) -> AddError {
        match e {
            AppGrantError::NotConfigured => AddError::NotConfigured,
            AppGrantError::Refused(_) => AddError::AdminConsentRequired,
            AppGrantError::Misconfigured(_) => AddError::ProviderMisconfigured,
            AppGrantError::Unavailable { retry_after } => {
                AddError::ProviderUnavailable { retry_after }
            }
            AppGrantError::Internal(e) => AddError::Internal(e),
        }
    }
}

impl From<sqlx::Error> for AddError {
    fn from(e: sqlx::Error) -> AddError {
        AddError::Internal(anyhow::Error::new(e).context("database query failed"))
    }
}

/// Adds the mailbox `new` describes to the caller's tenant, audited and
/// announced (`account.connected`) like a connect.
pub async fn add(core: &Core, caller: &Caller, new: NewAccount) -> Result<AccountRow, AddError> {
    let kind = match AccountKind::parse(&new.kind) {
        Some(k @ (AccountKind::Shared | AccountKind::App)) => k,
        Some(AccountKind::Delegated) => {
            return Err(AddError::InvalidRequest(
                "a delegated mailbox is connected through POST /api/oauth/{provider}/authorize",
            ))
        }
        None => return Err(AddError::InvalidRequest("kind must be shared or app")),
    };
    let email = MailboxAddress::parse(&new.email)
        .map_err(|_| AddError::InvalidRequest("email is not a mailbox address"))?;
    let tenant = &caller.tenant;
    match kind {
        AccountKind::App => {
            let directory = match new.directory.as_deref() {
                Some(raw) => match MicrosoftTenant::parse(raw) {
                    Ok(MicrosoftTenant::Specific(d)) => d,
                    _ => {
                        return Err(AddError::InvalidRequest(
                            "directory must be a Microsoft tenant id (GUID) or domain",
                        ))
                    }
                },
                None => {
                    consents::get(&core.db, tenant.as_str())
                        .await?
                        .ok_or(AddError::AdminConsentRequired)?
                        .directory
                }
            };
            // Only once the directory gave the app a token.
            app_tokens::token(core, &directory).await?;
            add_opened(core, caller, &email, Opener::Directory(&directory)).await
        }
        _ => {
            let via = new
                .via_account_id
                .as_deref()
                .ok_or(AddError::InvalidRequest(
                    "a shared mailbox needs via_account_id, its delegate",
                ))?;
            let via = AccountId::parse(via).map_err(|_| AddError::DelegateNotFound)?;
            let delegate = accounts::get(&core.db, tenant, via)
                .await?
                .ok_or(AddError::DelegateNotFound)?;
            if delegate.kind != AccountKind::Delegated
                || delegate.provider.known() != Some(ProviderKind::Microsoft)
                || delegate.status != AccountStatus::Connected
            {
                return Err(AddError::DelegateNotUsable);
            }
            add_opened(core, caller, &email, Opener::Delegate(delegate.id)).await
        }
    }
}

/// Adds a mailbox opened by `opener`, in one transaction with its audit
/// and webhook events.
async fn add_opened(
    core: &Core,
    caller: &Caller,
    email: &MailboxAddress,
    opener: Opener<'_>,
) -> Result<AccountRow, AddError> {
    let tenant = &caller.tenant;
    let now = crate::now();
    let mut tx = core.db.pool.begin().await?;
    // A write first, so this transaction holds the write lock before it
    // reads (SQLite): the delegate's row, which also keeps the delegate
    // from changing status under it (PostgreSQL locks the row), or the
    // directory's token row.
    match opener {
        Opener::Delegate(delegate) => {
            if accounts::lock_status(&mut tx, delegate).await? != Some(AccountStatus::Connected) {
                tx.rollback().await?;
                return Err(AddError::DelegateNotUsable);
            }
        }
        Opener::Directory(directory) => app_tokens_db::touch(&mut tx, directory).await?,
    }
    let inserted =
        accounts::insert_opened(&mut tx, tenant, AccountId::new(), email, opener, now).await;
    let id = match inserted {
        Ok(Ok(id)) => id,
        Ok(Err(existing)) => {
            tx.rollback().await?;
            return Err(AddError::AccountExists(existing));
        }
        // Another request added the address meanwhile.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            tx.rollback().await?;
            let existing = accounts::find_by_email(&core.db, tenant, email)
                .await?
                .ok_or_else(|| anyhow::anyhow!("the address was taken and is gone again"))?;
            return Err(AddError::AccountExists(existing.id));
        }
        Err(e) => return Err(e.into()),
    };
    let id_text = id.to_string();
    let detail = match opener {
        Opener::Delegate(delegate) => format!("shared, through {delegate}"),
        Opener::Directory(directory) => format!("app, in directory {directory}"),
    };
    audit::record(
        &mut *tx,
        &audit::NewEvent {
            tenant_id: tenant.as_str(),
            account_id: Some(&id_text),
            provider: Some(ProviderKind::Microsoft.as_str()),
            action: "add",
            actor: &caller.user_id,
            outcome: "connected",
            detail: Some(&detail),
        },
        now,
    )
    .await?;
    core.webhooks
        .enqueue(
            &mut tx,
            &Event {
                kind: EventType::AccountConnected,
                tenant_id: Some(tenant.as_str()),
                account_id: Some(&id_text),
                provider: ProviderKind::Microsoft.as_str(),
                email: Some(email.as_str()),
                error: None,
                directory: None,
                cause: None,
                expiry: None,
            },
            now,
        )
        .await?;
    tx.commit().await?;
    core.webhooks.written();
    tracing::info!(account_id = %id, kind = ?opener.kind(), "mailbox added");
    accounts::get(&core.db, tenant, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the added account is gone").into())
}
