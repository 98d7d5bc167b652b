//! Fresh access tokens for mail workers.
//!
//! A token with more than [`REFRESH_MARGIN_SECS`] left is handed out as it
//! is. Otherwise one refresh runs per account at a time: callers in this
//! process queue on a per-account mutex, replicas on a lease column in the
//! database; each re-reads the row after getting in, because someone else
//! may have refreshed meanwhile, and then shares that result.
//!
//! The refresh itself is [`super`]'s. Here a passing failure
//! (429, 5xx, timeout) changes nothing stored: this account is backed off in
//! memory, honouring `Retry-After`, and the current token is still handed
//! out while it is valid.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;

use super::super::app_tokens::{self, AppGrantError};
use super::super::pace::{self, Priority};
use super::super::Core;
use super::{refresh_leased, Outcome, Reason};
use crate::crypto::Column;
use crate::db::accounts::{self, TokenRow};
use crate::domain::{
    AccountId, AccountKind, AccountStatus, MailboxAddress, ProviderKind, TenantId,
};
use crate::oauth::{MailServers, Provider};

/// Refresh when fewer seconds than this remain.
pub const REFRESH_MARGIN_SECS: i64 = 300;
/// Backoff after a passing failure without `Retry-After`.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(900);

/// A token ready for a worker.
pub struct Grant {
    pub access_token: SecretString,
    pub expires_at: i64,
    pub email: MailboxAddress,
    pub servers: MailServers,
    /// A `shared` mailbox's delegate, whose token this is.
    pub delegate: Option<MailboxAddress>,
}

/// Who a worker logs in as with a [`Grant`] (DESIGN.md "Account kinds",
/// token route): the IMAP and SMTP usernames and the SMTP envelope sender.
pub struct Logins<'a> {
    pub imap: &'a MailboxAddress,
    pub smtp: &'a MailboxAddress,
    pub mail_from: &'a MailboxAddress,
}

impl Grant {
    /// The account's own address for every login, except SMTP AUTH of a
    /// `shared` mailbox: its delegate (Exchange refuses SMTP AUTH as a
    /// shared mailbox; the delegate sends as it with Send As).
    pub fn logins(&self) -> Logins<'_> {
        Logins {
            imap: &self.email,
            smtp: self.delegate.as_ref().unwrap_or(&self.email),
            mail_from: &self.email,
        }
    }
}

/// Why no token can be handed out, by who must act.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("no such account")]
    NotFound,
    /// Consent is gone: an admin must reconnect the mailbox.
    #[error("consent for this mailbox is gone; an admin must reconnect it")]
    ReauthRequired,
    #[error("this mailbox is disconnected")]
    Disconnected,
    #[error("the {0} provider is not configured on this server")]
    NotConfigured(ProviderKind),
    /// Our client credentials were refused: an operator must act.
    #[error("the provider refused this server's client credentials; an operator must fix the configuration")]
    ProviderMisconfigured,
    /// Another refusal of the refresh request (its OAuth error code).
    #[error("the provider refused the refresh request ({0})")]
    ProviderRefused(String),
    /// May pass: try again after `retry_after`.
    #[error("the identity provider is unavailable; try again later")]
    ProviderUnavailable { retry_after: Option<Duration> },
    /// The database or a stored value failed us.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<AppGrantError> for GrantError {
    fn from(e: AppGrantError) -> GrantError {
        match e {
            AppGrantError::NotConfigured => GrantError::NotConfigured(ProviderKind::Microsoft),
            // The directory's app mailboxes are `needs_reauth` now: an admin
            // of the directory must consent again.
            AppGrantError::Refused(_) => GrantError::ReauthRequired,
            AppGrantError::Misconfigured(_) => GrantError::ProviderMisconfigured,
            AppGrantError::Unavailable { retry_after } => {
                GrantError::ProviderUnavailable { retry_after }
            }
            AppGrantError::Internal(e) => GrantError::Internal(e),
        }
    }
}

impl From<sqlx::Error> for GrantError {
    fn from(e: sqlx::Error) -> GrantError {
        GrantError::Internal(anyhow::Error::new(e).context("database query failed"))
    }
}

/// The token route's gate, per process: a mutex per account being
/// refreshed, and the accounts backed off after a passing failure.
pub struct OnDemand {
    /// Identifies this process as a lease holder.
    pub owner: String,
    locks: Mutex<HashMap<AccountId, Arc<tokio::sync::Mutex<()>>>>,
    backoff: Mutex<HashMap<AccountId, Instant>>,
}

impl Default for OnDemand {
    fn default() -> Self {
        OnDemand::new()
    }
}

impl OnDemand {
    pub fn new() -> OnDemand {
        OnDemand {
            owner: uuid::Uuid::new_v4().to_string(),
            locks: Mutex::default(),
            backoff: Mutex::default(),
        }
    }

    fn lock_for(&self, id: AccountId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(id).or_default().clone()
    }

    /// Drops the account's mutex from the map once nobody else holds it.
    fn unlock(&self, id: AccountId, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&id);
        }
    }

    fn backing_off(&self, id: AccountId) -> Option<Duration> {
        let mut map = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&id) {
            Some(until) if *until > Instant::now() => Some(*until - Instant::now()),
            Some(_) => {
                map.remove(&id);
                None
            }
            None => None,
        }
    }

    fn back_off(&self, id: AccountId, retry_after: Option<Duration>) -> Duration {
        let wait = retry_after.unwrap_or(DEFAULT_BACKOFF).min(MAX_BACKOFF);
        let mut map = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(id, Instant::now() + wait);
        wait
    }
}

fn is_fresh(row: &TokenRow, now: i64) -> bool {
    row.access_token_enc.is_some()
        && row
            .token_expires_at
            .is_some_and(|at| at - now > REFRESH_MARGIN_SECS)
}

fn still_valid(row: &TokenRow, now: i64) -> bool {
    row.access_token_enc.is_some() && row.token_expires_at.is_some_and(|at| at > now + 5)
}

fn ensure_usable(row: &TokenRow) -> Result<(), GrantError> {
    match row.status {
        AccountStatus::Connected => Ok(()),
        AccountStatus::NeedsReauth => Err(GrantError::ReauthRequired),
        AccountStatus::Disconnected => Err(GrantError::Disconnected),
    }
}

fn grant(core: &Core, provider: &dyn Provider, row: &TokenRow) -> Result<Grant, GrantError> {
    let enc = row
        .access_token_enc
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("connected account without an access token"))?;
    let access_token = core
        .keys
        .open_for(Column::AccessToken, &row.id.to_string(), enc)
        .map_err(|e| anyhow::anyhow!("opening the access token of {}: {e}", row.id))?;
    Ok(Grant {
        access_token,
        expires_at: row.token_expires_at.unwrap_or_default(),
        email: row.email.clone(),
        servers: provider.mail_servers(row.provider_tenant_id.as_deref()),
        delegate: None,
    })
}

/// A fresh token for the tenant's account, refreshing first if needed. A
/// `shared` mailbox gets its delegate's (one refresh of the delegate serves
/// every mailbox it opens).
#[tracing::instrument(skip_all, fields(tenant_id = %tenant, account_id = %id))]
pub async fn fresh_token(
    core: &Core,
    tenant: &TenantId,
    id: AccountId,
) -> Result<Grant, GrantError> {
    let mut row = accounts::get_token_row(&core.db, tenant, id)
        .await?
        .ok_or(GrantError::NotFound)?;
    ensure_usable(&row)?;
    match row.kind {
        AccountKind::Delegated => own_token(core, tenant, row).await,
        AccountKind::Shared => {
            let via = row
                .via_account_id
                .ok_or_else(|| anyhow::anyhow!("a shared account without its delegate stored"))?;
            // Read with the account where the database allows it.
            let delegate = match row.delegate.take() {
                Some(joined) => *joined,
                None => accounts::get_token_row(&core.db, tenant, via)
                    .await?
                    .ok_or(GrantError::ReauthRequired)?,
            };
            ensure_usable(&delegate)?;
            if delegate.kind != AccountKind::Delegated {
                return Err(GrantError::ReauthRequired);
            }
            let mut g = own_token(core, tenant, delegate).await?;
            g.delegate = Some(std::mem::replace(&mut g.email, row.email));
            Ok(g)
        }
        AccountKind::App => {
            let directory = row
                .directory
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("an app account without its directory stored"))?;
            let microsoft = core
                .provider(ProviderKind::Microsoft)
                .ok_or(GrantError::NotConfigured(ProviderKind::Microsoft))?;
            let servers = microsoft.mail_servers(None);
            // The directory's token as read with the account, while fresh;
            // else the full path (another read, a renewal if due).
            let joined = row.app_token.as_ref().and_then(|t| {
                app_tokens::open_fresh(
                    core,
                    directory,
                    t.access_token_enc.as_deref()?,
                    t.expires_at?,
                    crate::now(),
                )
            });
            let (access_token, expires_at) = match joined {
                Some(fresh) => fresh,
                None => app_tokens::token(core, directory).await?,
            };
            Ok(Grant {
                access_token,
                expires_at,
                email: row.email,
                servers,
                delegate: None,
            })
        }
    }
}

/// A `delegated` account's own token.
async fn own_token(core: &Core, tenant: &TenantId, row: TokenRow) -> Result<Grant, GrantError> {
    let id = row.id;
    let kind = row
        .provider
        .known()
        .ok_or_else(|| anyhow::anyhow!("unknown provider {} stored", row.provider))?;
    let provider = core
        .provider(kind)
        .ok_or(GrantError::NotConfigured(kind))?
        .clone();
    // Noted before a refresh, so the refresh already schedules it warm.
    core.uses.mark(id, crate::now());
    if is_fresh(&row, crate::now()) {
        return grant(core, provider.as_ref(), &row);
    }

    let gate = &core.on_demand;
    let lock = gate.lock_for(id);
    let result = {
        let _guard = lock.lock().await;
        refresh_locked(core, provider.as_ref(), tenant, id).await
    };
    gate.unlock(id, lock);
    result
}

async fn refresh_locked(
    core: &Core,
    provider: &dyn Provider,
    tenant: &TenantId,
    id: AccountId,
) -> Result<Grant, GrantError> {
    let gate = &core.on_demand;
    let reread = || async {
        let row = accounts::get_token_row(&core.db, tenant, id)
            .await?
            .ok_or(GrantError::NotFound)?;
        ensure_usable(&row)?;
        Ok::<_, GrantError>(row)
    };
    let row = reread().await?;
    if is_fresh(&row, crate::now()) {
        return grant(core, provider, &row);
    }
    // Refreshed here, but not stored yet (the database is refusing writes).
    if let Some((access_token, expires_at)) = core.unsaved.access_token(id) {
        return Ok(Grant {
            access_token,
            expires_at,
            email: row.email.clone(),
            servers: provider.mail_servers(row.provider_tenant_id.as_deref()),
            delegate: None,
        });
    }
    if let Some(wait) = gate.backing_off(id) {
        return if still_valid(&row, crate::now()) {
            grant(core, provider, &row)
        } else {
            Err(GrantError::ProviderUnavailable {
                retry_after: Some(wait),
            })
        };
    }

    // Another replica may be refreshing: wait for its lease to end (or
    // lapse), re-reading; its result is ours.
    let lease_secs = core.schedule.lease_secs;
    let deadline = Instant::now() + Duration::from_secs(lease_secs as u64 + 5);
    loop {
        let now = crate::now();
        if accounts::take_lease(&core.db, id, &gate.owner, now + lease_secs, now).await? {
            break;
        }
        if Instant::now() > deadline {
            return Err(GrantError::ProviderUnavailable {
                retry_after: Some(Duration::from_secs(5)),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let row = reread().await?;
        if is_fresh(&row, crate::now()) {
            return grant(core, provider, &row);
        }
    }

    let result = refresh_with_lease(core, provider, id).await;
    // A successful store already cleared the lease; this covers the rest.
    if let Err(e) = accounts::release_lease(&core.db, id, &gate.owner).await {
        tracing::warn!(error = %e, "could not release a refresh lease; it lapses by itself");
    }
    result
}

async fn refresh_with_lease(
    core: &Core,
    provider: &dyn Provider,
    id: AccountId,
) -> Result<Grant, GrantError> {
    // Re-read under the lease: the last holder may have just finished.
    let full = accounts::get_by_id(&core.db, id)
        .await?
        .ok_or(GrantError::NotFound)?;
    let row = TokenRow::from(&full);
    ensure_usable(&row)?;
    if is_fresh(&row, crate::now()) {
        return grant(core, provider, &row);
    }
    let email = row.email.clone();
    let budget = pace::budget(provider.kind(), None);
    core.pace
        .admit(&core.db, &budget, Priority::OnDemand, None)
        .await;
    match refresh_leased(core, provider, &full, Reason::OnDemand).await? {
        Outcome::Refreshed(tokens) => Ok(Grant {
            access_token: tokens.access_token,
            expires_at: tokens.expires_at,
            email,
            servers: provider.mail_servers(row.provider_tenant_id.as_deref()),
            delegate: None,
        }),
        Outcome::NeedsReauth => Err(GrantError::ReauthRequired),
        Outcome::Disconnected => Err(GrantError::Disconnected),
        // Another refresh rotated the token first and stored its result.
        Outcome::Superseded => {
            let row = accounts::get_token_row(&core.db, &full.tenant_id, id)
                .await?
                .ok_or(GrantError::NotFound)?;
            ensure_usable(&row)?;
            serve_while_valid(
                core,
                provider,
                &row,
                GrantError::ProviderUnavailable {
                    retry_after: Some(Duration::from_secs(1)),
                },
            )
        }
        Outcome::Misconfigured => {
            serve_while_valid(core, provider, &row, GrantError::ProviderMisconfigured)
        }
        Outcome::Refused { error, .. } => {
            serve_while_valid(core, provider, &row, GrantError::ProviderRefused(error))
        }
        Outcome::Transient { retry_after, .. } => {
            let wait = core.on_demand.back_off(id, retry_after);
            serve_while_valid(
                core,
                provider,
                &row,
                GrantError::ProviderUnavailable {
                    retry_after: Some(wait),
                },
            )
        }
    }
}

/// A failed refresh still leaves the current token usable until it expires.
fn serve_while_valid(
    core: &Core,
    provider: &dyn Provider,
    row: &TokenRow,
    otherwise: GrantError,
) -> Result<Grant, GrantError> {
    if still_valid(row, crate::now()) {
        grant(core, provider, row)
    } else {
        Err(otherwise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::types::StoredProvider;

    const NOW: i64 = 1_800_000_000;

    fn row(expires_at: Option<i64>) -> TokenRow {
        TokenRow {
            id: AccountId::parse("0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b").unwrap(),
            provider: StoredProvider::Known(ProviderKind::Microsoft),
            email: MailboxAddress::parse("ops@contoso.com").unwrap(),
            status: AccountStatus::Connected,
            access_token_enc: Some("sealed".into()),
            token_expires_at: expires_at,
            provider_tenant_id: None,
            kind: AccountKind::Delegated,
            via_account_id: None,
            directory: None,
            delegate: None,
            app_token: None,
        }
    }

    #[test]
    fn fresh_means_more_than_the_margin_left() {
        assert!(is_fresh(&row(Some(NOW + REFRESH_MARGIN_SECS + 1)), NOW));
        assert!(!is_fresh(&row(Some(NOW + REFRESH_MARGIN_SECS)), NOW));
        assert!(!is_fresh(&row(None), NOW));
        let mut sealed_nothing = row(Some(NOW + 3600));
        sealed_nothing.access_token_enc = None;
        assert!(!is_fresh(&sealed_nothing, NOW));
    }

    #[test]
    fn still_valid_means_more_than_five_seconds_left() {
        assert!(still_valid(&row(Some(NOW + 6)), NOW));
        assert!(!still_valid(&row(Some(NOW + 5)), NOW));
        assert!(!still_valid(&row(None), NOW));
    }
}
