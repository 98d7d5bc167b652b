//! Adding a mailbox that nobody signs in to (DESIGN.md "Account kinds",
//! `POST /api/accounts`): a `shared` mailbox opened through a connected
//! delegate, or an `app` mailbox opened with the app's own token in an
//! admin-consented directory.

use serde::Deserialize;

use super::Core;
use crate::db::accounts::{self, AccountRow};
use crate::db::audit;
use crate::domain::{AccountId, AccountKind, AccountStatus, Caller, MailboxAddress, ProviderKind};
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
    #[error("no directory of this tenant has granted the app admin consent: grant it first (POST /api/oauth/microsoft/admin-consent)")]
    AdminConsentRequired,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
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
            // Admin consent is what opens app mailboxes; none is recorded
            // for any tenant yet, so there is no directory to take a token
            // from.
            Err(AddError::AdminConsentRequired)
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
            add_shared(core, caller, &email, &delegate).await
        }
    }
}

async fn add_shared(
    core: &Core,
    caller: &Caller,
    email: &MailboxAddress,
    delegate: &AccountRow,
) -> Result<AccountRow, AddError> {
    let tenant = &caller.tenant;
    let now = crate::now();
    let mut tx = core.db.pool.begin().await?;
    // The delegate's row first: a write, so this transaction holds the
    // write lock before it reads (SQLite), and the delegate cannot change
    // status under it (PostgreSQL locks the row).
    if accounts::lock_status(&mut tx, delegate.id).await? != Some(AccountStatus::Connected) {
        tx.rollback().await?;
        return Err(AddError::DelegateNotUsable);
    }
    let inserted =
        accounts::insert_shared(&mut tx, tenant, AccountId::new(), email, delegate.id, now).await;
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
    let detail = format!("shared, through {}", delegate.id);
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
            },
            now,
        )
        .await?;
    tx.commit().await?;
    core.webhooks.written();
    tracing::info!(account_id = %id, delegate = %delegate.id, "shared mailbox added");
    accounts::get(&core.db, tenant, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the added account is gone").into())
}
