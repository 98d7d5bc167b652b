//! Fresh access tokens for mail workers.
//!
//! A token with more than [`REFRESH_MARGIN_SECS`] left is handed out as it
//! is. Otherwise one refresh runs per account at a time: callers in this
//! process queue on a per-account mutex, replicas on a lease column in the
//! database; each re-reads the row after getting in, because someone else
//! may have refreshed meanwhile, and then shares that result.
//!
//! What a failure changes is decided by its class ([`TokenError`]):
//! `invalid_grant` and friends turn the account to `needs_reauth` (never
//! retried); a client configuration error changes no account; a passing
//! failure (429, 5xx, timeout) changes nothing stored and backs this account
//! off in memory, honouring `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;

use crate::app::App;
use crate::crypto::Aad;
use crate::db::accounts::{self, AccountRow};
use crate::db::audit;
use crate::domain::{AccountStatus, MailboxAddress, ProviderKind};
use crate::flow::seal;
use crate::http::error::ApiError;
use crate::oauth::{MailServers, Provider, TokenError};

/// Refresh when fewer seconds than this remain.
pub const REFRESH_MARGIN_SECS: i64 = 300;
/// How long a replica may hold an account's refresh lease. Longer than any
/// provider request can take, so a live holder never loses it.
const LEASE_SECS: i64 = 60;
/// Backoff after a passing failure without `Retry-After`.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(900);

/// A token ready for a worker.
pub struct Grant {
    pub access_token: SecretString,
    pub expires_at: i64,
    pub email: MailboxAddress,
    pub servers: MailServers,
}

pub struct Refresher {
    /// Identifies this process as a lease holder.
    owner: String,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    backoff: Mutex<HashMap<String, Instant>>,
}

impl Default for Refresher {
    fn default() -> Self {
        Refresher::new()
    }
}

impl Refresher {
    pub fn new() -> Refresher {
        Refresher {
            owner: uuid::Uuid::new_v4().to_string(),
            locks: Mutex::default(),
            backoff: Mutex::default(),
        }
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(id.to_owned()).or_default().clone()
    }

    /// Drops the account's mutex from the map once nobody else holds it.
    fn unlock(&self, id: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&lock) == 2 {
            locks.remove(id);
        }
    }

    fn backing_off(&self, id: &str) -> Option<Duration> {
        let mut map = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(until) if *until > Instant::now() => Some(*until - Instant::now()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    fn back_off(&self, id: &str, retry_after: Option<Duration>) -> Duration {
        let wait = retry_after.unwrap_or(DEFAULT_BACKOFF).min(MAX_BACKOFF);
        let mut map = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(id.to_owned(), Instant::now() + wait);
        wait
    }
}

fn is_fresh(row: &AccountRow, now: i64) -> bool {
    row.access_token_enc.is_some()
        && row
            .token_expires_at
            .is_some_and(|at| at - now > REFRESH_MARGIN_SECS)
}

fn still_valid(row: &AccountRow, now: i64) -> bool {
    row.access_token_enc.is_some() && row.token_expires_at.is_some_and(|at| at > now + 5)
}

fn ensure_usable(row: &AccountRow) -> Result<(), ApiError> {
    match AccountStatus::parse(&row.status) {
        Some(AccountStatus::Connected) => Ok(()),
        Some(AccountStatus::NeedsReauth) => Err(ApiError::Conflict {
            code: "reauth_required",
            message: "consent for this mailbox is gone; an admin must reconnect it".into(),
        }),
        _ => Err(ApiError::Conflict {
            code: "account_disconnected",
            message: "this mailbox is disconnected".into(),
        }),
    }
}

fn grant(app: &App, provider: &dyn Provider, row: &AccountRow) -> Result<Grant, ApiError> {
    let enc = row
        .access_token_enc
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("connected account without an access token"))?;
    let access_token = app
        .keys
        .open(enc, &Aad::new("accounts", &row.id, "access_token"))
        .map_err(|e| anyhow::anyhow!("opening the access token of {}: {e}", row.id))?;
    Ok(Grant {
        access_token,
        expires_at: row.token_expires_at.unwrap_or_default(),
        email: MailboxAddress::parse(&row.email)
            .map_err(|e| anyhow::anyhow!("stored address of {} is invalid: {e}", row.id))?,
        servers: provider.mail_servers(row.provider_tenant_id.as_deref()),
    })
}

/// A fresh token for the tenant's account, refreshing first if needed.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant, account_id = %id))]
pub async fn fresh_token(app: &App, tenant: &str, id: &str) -> Result<Grant, ApiError> {
    let row = accounts::get(&app.db, tenant, id)
        .await?
        .ok_or_else(ApiError::account_not_found)?;
    ensure_usable(&row)?;
    let kind = ProviderKind::parse(&row.provider)
        .ok_or_else(|| anyhow::anyhow!("unknown provider {:?} stored", row.provider))?;
    let provider = app
        .providers
        .get(kind)
        .ok_or_else(|| ApiError::provider_not_configured(kind.as_str()))?
        .clone();
    if is_fresh(&row, crate::now()) {
        return grant(app, provider.as_ref(), &row);
    }

    let refresher = &app.refresher;
    let lock = refresher.lock_for(id);
    let result = {
        let _guard = lock.lock().await;
        refresh_locked(app, provider.as_ref(), tenant, id).await
    };
    refresher.unlock(id, lock);
    result
}

async fn refresh_locked(
    app: &App,
    provider: &dyn Provider,
    tenant: &str,
    id: &str,
) -> Result<Grant, ApiError> {
    let refresher = &app.refresher;
    let reread = || async {
        let row = accounts::get(&app.db, tenant, id)
            .await?
            .ok_or_else(ApiError::account_not_found)?;
        ensure_usable(&row)?;
        Ok::<_, ApiError>(row)
    };
    let row = reread().await?;
    if is_fresh(&row, crate::now()) {
        return grant(app, provider, &row);
    }
    if let Some(wait) = refresher.backing_off(id) {
        return if still_valid(&row, crate::now()) {
            grant(app, provider, &row)
        } else {
            Err(ApiError::ProviderUnavailable {
                retry_after: Some(wait),
            })
        };
    }

    // Another replica may be refreshing: wait for its lease to end (or
    // lapse), re-reading; its result is ours.
    let deadline = Instant::now() + Duration::from_secs(LEASE_SECS as u64 + 5);
    loop {
        let now = crate::now();
        if accounts::take_lease(&app.db, id, &refresher.owner, now + LEASE_SECS, now).await? {
            break;
        }
        if Instant::now() > deadline {
            return Err(ApiError::ProviderUnavailable {
                retry_after: Some(Duration::from_secs(5)),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let row = reread().await?;
        if is_fresh(&row, crate::now()) {
            return grant(app, provider, &row);
        }
    }

    let result = refresh_with_lease(app, provider, id).await;
    // A successful store already cleared the lease; this covers the rest.
    if let Err(e) = accounts::release_lease(&app.db, id, &refresher.owner).await {
        tracing::warn!(error = %e, "could not release a refresh lease; it lapses by itself");
    }
    result
}

async fn refresh_with_lease(
    app: &App,
    provider: &dyn Provider,
    id: &str,
) -> Result<Grant, ApiError> {
    // Re-read under the lease: the last holder may have just finished.
    let row = accounts::get_by_id(&app.db, id)
        .await?
        .ok_or_else(ApiError::account_not_found)?;
    ensure_usable(&row)?;
    let now = crate::now();
    if is_fresh(&row, now) {
        return grant(app, provider, &row);
    }
    let enc = row
        .refresh_token_enc
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("connected account without a refresh token"))?;
    let refresh_token = app
        .keys
        .open(enc, &Aad::new("accounts", id, "refresh_token"))
        .map_err(|e| anyhow::anyhow!("opening the refresh token of {id}: {e}"))?;

    match provider.refresh(&refresh_token).await {
        Ok(tokens) => {
            let access = seal(app, id, "access_token", &tokens.access_token);
            let refresh = tokens
                .refresh_token
                .as_ref()
                .map(|t| seal(app, id, "refresh_token", t));
            let scopes = (!tokens.scopes.is_empty()).then(|| tokens.scopes.join(" "));
            let stored = accounts::store_refresh(
                &app.db,
                id,
                &access,
                refresh.as_deref(),
                tokens.expires_at,
                scopes.as_deref(),
                crate::now(),
            )
            .await?;
            app.providers.set_error(provider.kind(), None);
            if !stored {
                // Disconnected while we were refreshing: the new tokens are
                // dropped with the account's consent.
                return Err(ApiError::Conflict {
                    code: "account_disconnected",
                    message: "this mailbox was disconnected".into(),
                });
            }
            tracing::info!(rotated = tokens.refresh_token.is_some(), "token refreshed");
            Ok(Grant {
                access_token: tokens.access_token,
                expires_at: tokens.expires_at,
                email: MailboxAddress::parse(&row.email)
                    .map_err(|e| anyhow::anyhow!("stored address is invalid: {e}"))?,
                servers: provider.mail_servers(row.provider_tenant_id.as_deref()),
            })
        }
        Err(TokenError::Reauth { error }) => {
            tracing::warn!(error = %error, "refresh refused: the mailbox needs re-authorisation");
            let mut tx = app.db.pool.begin().await?;
            accounts::mark_needs_reauth(&mut *tx, id, &error, crate::now()).await?;
            audit::record(
                &mut *tx,
                &audit::NewEvent {
                    tenant_id: &row.tenant_id,
                    account_id: Some(id),
                    provider: Some(&row.provider),
                    action: "refresh_failed",
                    actor: "system",
                    outcome: "needs_reauth",
                    detail: Some(&error),
                },
                crate::now(),
            )
            .await?;
            tx.commit().await?;
            Err(ApiError::Conflict {
                code: "reauth_required",
                message: "consent for this mailbox is gone; an admin must reconnect it".into(),
            })
        }
        Err(TokenError::Misconfigured { error }) => {
            tracing::error!(
                provider = %provider.kind(),
                error = %error,
                "the provider refused our client credentials: check the client id and secret"
            );
            app.providers.set_error(
                provider.kind(),
                Some(format!(
                    "{error}: the provider refused the client credentials"
                )),
            );
            serve_while_valid(app, provider, &row, ApiError::ProviderError {
                code: "provider_misconfigured",
                message: "the provider refused this server's client credentials; an operator must fix the configuration".into(),
            })
        }
        Err(TokenError::Refused { error, status }) => {
            tracing::error!(provider = %provider.kind(), error = %error, status, "the provider refused the refresh request");
            serve_while_valid(
                app,
                provider,
                &row,
                ApiError::ProviderError {
                    code: "provider_error",
                    message: format!("the provider refused the refresh request ({error})"),
                },
            )
        }
        Err(TokenError::Transient {
            retry_after,
            reason,
        }) => {
            let wait = app.refresher.back_off(id, retry_after);
            tracing::warn!(reason = %reason, backoff_secs = wait.as_secs(), "refresh failed for now; backing off");
            serve_while_valid(
                app,
                provider,
                &row,
                ApiError::ProviderUnavailable {
                    retry_after: Some(wait),
                },
            )
        }
    }
}

/// A failed refresh still leaves the current token usable until it expires.
fn serve_while_valid(
    app: &App,
    provider: &dyn Provider,
    row: &AccountRow,
    otherwise: ApiError,
) -> Result<Grant, ApiError> {
    if still_valid(row, crate::now()) {
        grant(app, provider, row)
    } else {
        Err(otherwise)
    }
}
