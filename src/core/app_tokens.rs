//! App mailboxes' token (DESIGN.md "Account kinds", App tokens): the app's
//! own token per Microsoft directory, obtained with client credentials,
//! stored sealed and shared by every `app` mailbox of the directory and by
//! every replica. One request per directory at a time: the lease in
//! `app_tokens`, as for an account's refresh; whoever does not hold it
//! waits for the holder's result. Renewed ahead of expiry by
//! [`Renewer`], and on demand by the token route.
//!
//! A directory that refuses the app (`unauthorized_client`,
//! `invalid_grant`: consent revoked, the app removed there) turns its app
//! mailboxes `needs_reauth` with [`ADMIN_CONSENT_REVOKED`]; the next token
//! it gives turns them back. Our own credentials refused (`invalid_client`)
//! is the provider's misconfiguration, as for any token request.

use super::pace::{self, Priority};
use crate::diagnosis::Cause;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokio::sync::watch;

use super::refresh::health;
use super::shared::{move_follower, Move};
use super::Core;
use crate::crypto::Column;
use crate::db::accounts::{self, Follower};
use crate::db::app_tokens::{self, Answer};
use crate::domain::{AccountStatus, ProviderKind};
use crate::oauth::microsoft::AppTokenError;
use crate::webhooks::EventType;

/// `last_error` of an app mailbox whose directory refuses the app.
pub const ADMIN_CONSENT_REVOKED: &str = "admin_consent_revoked";
/// Renew when fewer seconds than this remain (as for accounts).
const MARGIN_SECS: i64 = super::refresh::on_demand::REFRESH_MARGIN_SECS;
/// How often a waiter looks whether the lease holder has stored a token.
const WAIT_STEP: Duration = Duration::from_millis(100);
/// A waiter tries the lease again every this many steps (a second).
const LEASE_RETRY_EVERY: u32 = 10;

/// Why there is no app token for a directory now.
#[derive(Debug, thiserror::Error)]
pub enum AppGrantError {
    #[error("the microsoft provider is not configured on this server")]
    NotConfigured,
    /// The directory refuses the app: admin consent is missing or revoked.
    #[error("the directory refuses the app a token ({0})")]
    Refused(String),
    /// Our client credentials are refused.
    #[error("Microsoft refused mailconnect's client credentials ({0})")]
    Misconfigured(String),
    /// May pass: the provider, or the lease holder, did not answer in time.
    #[error("Microsoft is unavailable; try again later")]
    Unavailable { retry_after: Option<Duration> },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for AppGrantError {
    fn from(e: sqlx::Error) -> AppGrantError {
        AppGrantError::Internal(anyhow::Error::new(e).context("database query failed"))
    }
}

/// A usable app token for `directory`: the stored one while it has more
/// than the margin left, else a new one (asked by this replica under the
/// directory's lease, or by whoever holds it).
pub async fn token(core: &Core, directory: &str) -> Result<(SecretString, i64), AppGrantError> {
    obtain(core, directory, false).await
}

/// A new app token for `directory`, whatever is stored (an admin consent
/// just given: it confirms the consent, and heals the directory's app
/// mailboxes if it had refused). Under the lease as always; a request
/// already in flight elsewhere is waited for and its answer taken.
pub async fn renewed(core: &Core, directory: &str) -> Result<(SecretString, i64), AppGrantError> {
    obtain(core, directory, true).await
}

async fn obtain(
    core: &Core,
    directory: &str,
    force: bool,
) -> Result<(SecretString, i64), AppGrantError> {
    if !force {
        if let Some(fresh) = stored(core, directory, crate::now()).await? {
            return Ok(fresh);
        }
    }
    // One owner per request, so that requests of this process exclude each
    // other through the lease as replicas do: one asks, the rest wait for
    // its answer.
    let owner = format!("{}:app:{}", core.owner(), uuid::Uuid::new_v4());
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(core.schedule.lease_secs as u64);
    let mut waited = false;
    let mut attempt = 0u32;
    loop {
        let now = crate::now();
        // Taking the lease is a write: a waiter tries it now and then (the
        // holder may have failed and let go), and otherwise only reads.
        if attempt.is_multiple_of(LEASE_RETRY_EVERY)
            && app_tokens::take_lease(
                &core.db,
                directory,
                &owner,
                now + core.schedule.lease_secs,
                now,
            )
            .await?
        {
            // Someone may have stored a new token between our look and the
            // lease: take it rather than ask again.
            if !force || waited {
                if let Some(fresh) = stored(core, directory, crate::now()).await? {
                    app_tokens::release_lease(&core.db, directory, &owner).await?;
                    return Ok(fresh);
                }
            }
            return renew(core, directory, &owner, Priority::OnDemand).await;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AppGrantError::Unavailable { retry_after: None });
        }
        waited = true;
        attempt += 1;
        tokio::time::sleep(WAIT_STEP).await;
        // The lease holder's answer, once stored.
        if let Some(fresh) = stored(core, directory, crate::now()).await? {
            return Ok(fresh);
        }
    }
}

/// The stored token, if it is good for more than the margin.
async fn stored(
    core: &Core,
    directory: &str,
    now: i64,
) -> Result<Option<(SecretString, i64)>, AppGrantError> {
    let Some(row) = app_tokens::get(&core.db, directory).await? else {
        return Ok(None);
    };
    let (Some(enc), Some(expires_at)) = (row.access_token_enc, row.expires_at) else {
        return Ok(None);
    };
    Ok(open_fresh(core, directory, &enc, expires_at, now))
}

/// A stored app token, opened, if it has more than the margin left. One
/// sealed with a key no longer configured counts as none: it is simply
/// asked again.
pub fn open_fresh(
    core: &Core,
    directory: &str,
    sealed: &str,
    expires_at: i64,
    now: i64,
) -> Option<(SecretString, i64)> {
    if expires_at - now <= MARGIN_SECS {
        return None;
    }
    core.keys
        .open_for(Column::AppToken, directory, sealed)
        .map_err(|e| tracing::warn!(directory, error = %e, "could not open the stored app token"))
        .ok()
        .map(|token| (token, expires_at))
}

/// Asks Microsoft under the lease `owner` holds, within the directory's
/// budget, and stores the answer. Background work the budget has no room
/// for hands the lease back (it is asked again at the next look).
async fn renew(
    core: &Core,
    directory: &str,
    owner: &str,
    priority: Priority,
) -> Result<(SecretString, i64), AppGrantError> {
    let Some(microsoft) = core.providers.microsoft() else {
        app_tokens::release_lease(&core.db, directory, owner).await?;
        return Err(AppGrantError::NotConfigured);
    };
    let budget = pace::budget(ProviderKind::Microsoft, Some(directory));
    let until = pace::background_deadline(Instant::now(), core.schedule.lease_secs);
    if !core
        .pace
        .admit(&core.db, &budget, priority, Some(until))
        .await
    {
        app_tokens::release_lease(&core.db, directory, owner).await?;
        return Err(AppGrantError::Unavailable { retry_after: None });
    }
    let failures = app_tokens::get(&core.db, directory)
        .await?
        .map_or(0, |r| r.consecutive_failures);
    crate::metrics::token_request(
        ProviderKind::Microsoft.as_str(),
        super::refresh::Reason::AppToken.as_str(),
    );
    let started = std::time::Instant::now();
    let answer = microsoft.app_token(directory).await;
    crate::metrics::provider_latency(
        ProviderKind::Microsoft.as_str(),
        "app_token",
        started.elapsed(),
    );
    let now = crate::now();
    match answer {
        Ok(tokens) => {
            let enc = core
                .keys
                .seal_for(Column::AppToken, directory, &tokens.access_token);
            let due_at = core.schedule.next_due(tokens.expires_at, now);
            let stored = store(
                core,
                directory,
                owner,
                &Answer::Token {
                    access_token_enc: &enc,
                    expires_at: tokens.expires_at,
                    due_at,
                },
                Some(DirectoryChange::Accepts),
            )
            .await;
            if let Err(e) = stored {
                // The token is good; the next request asks again.
                tracing::error!(
                    directory,
                    error = format!("{e:#}"),
                    "could not store the app token"
                );
            }
            health::recovered(core, ProviderKind::Microsoft.as_str()).await;
            Ok((tokens.access_token, tokens.expires_at))
        }
        Err(AppTokenError::Refused(error)) => {
            tracing::warn!(directory, error, "the directory refuses the app a token");
            let due_at = now + core.schedule.backoff(failures, None);
            store(
                core,
                directory,
                owner,
                &Answer::Refused {
                    error: &error,
                    due_at,
                },
                Some(DirectoryChange::Refuses),
            )
            .await?;
            Err(AppGrantError::Refused(error))
        }
        Err(AppTokenError::Misconfigured(e)) => {
            tracing::error!(
                directory,
                error = e.code(),
                "Microsoft refused our client credentials for an app token"
            );
            health::misconfigured(core, ProviderKind::Microsoft.as_str(), e.code(), e.cause())
                .await;
            let due_at = now + core.schedule.backoff(failures, None);
            store_failure(core, directory, owner, e.code(), due_at).await?;
            Err(AppGrantError::Misconfigured(e.code().to_owned()))
        }
        Err(AppTokenError::Transient(e)) => {
            tracing::warn!(directory, error = %e, "no app token for now");
            let retry_after = match &e {
                crate::oauth::TokenError::Transient { retry_after, .. } => *retry_after,
                _ => None,
            };
            let due_at = now + core.schedule.backoff(failures, retry_after);
            store_failure(core, directory, owner, e.code(), due_at).await?;
            Err(AppGrantError::Unavailable { retry_after })
        }
    }
}

/// A passing failure (or our credentials refused): nothing changes but the
/// count and when to ask again.
async fn store_failure(
    core: &Core,
    directory: &str,
    owner: &str,
    error: &str,
    due_at: i64,
) -> anyhow::Result<()> {
    store(
        core,
        directory,
        owner,
        &Answer::Failed { error, due_at },
        None,
    )
    .await
}

/// Whether a directory now gives the app tokens or refuses it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DirectoryChange {
    Accepts,
    Refuses,
}

impl DirectoryChange {
    /// Whether app mailbox `f` follows this change: a connected one a
    /// refusal, one the refusal had turned `needs_reauth` the acceptance.
    fn moves(self, f: &Follower) -> bool {
        match self {
            DirectoryChange::Refuses => f.status == AccountStatus::Connected,
            DirectoryChange::Accepts => {
                f.status == AccountStatus::NeedsReauth
                    && f.last_error.as_deref() == Some(ADMIN_CONSENT_REVOKED)
            }
        }
    }
}

/// Stores the answer and, when the directory changed its mind, carries it
/// to its app mailboxes: one transaction.
async fn store(
    core: &Core,
    directory: &str,
    owner: &str,
    answer: &Answer<'_>,
    change: Option<DirectoryChange>,
) -> anyhow::Result<()> {
    let now = crate::now();
    let mut tx = core.db.pool.begin().await?;
    let Some(was_refused) = app_tokens::store(&mut tx, directory, owner, answer, now).await? else {
        tracing::warn!(
            directory,
            "the app token lease lapsed before the answer was stored"
        );
        tx.rollback().await?;
        return Ok(());
    };
    // Only a change of mind moves the mailboxes: a refusal after tokens, or
    // a token after a refusal.
    let change = change.filter(|c| (*c == DirectoryChange::Refuses) != was_refused);
    let mut moved = false;
    if let Some(change) = change {
        for f in accounts::app_mailboxes(&mut tx, directory).await? {
            if change.moves(&f) {
                follow(&mut tx, core, &f, directory, change, now).await?;
                moved = true;
            }
        }
    }
    tx.commit().await?;
    if moved {
        core.webhooks.written();
    }
    Ok(())
}

/// One app mailbox follows its directory: status, audit, webhook.
async fn follow(
    conn: &mut sqlx::AnyConnection,
    core: &Core,
    f: &Follower,
    directory: &str,
    change: DirectoryChange,
    now: i64,
) -> sqlx::Result<()> {
    let detail = format!("follows its directory {directory}");
    let (to, error, event, action, outcome) = match change {
        DirectoryChange::Refuses => (
            AccountStatus::NeedsReauth,
            Some(ADMIN_CONSENT_REVOKED),
            EventType::AccountNeedsReauth,
            "refresh_failed",
            "needs_reauth",
        ),
        DirectoryChange::Accepts => (
            AccountStatus::Connected,
            None,
            EventType::AccountRecovered,
            "recover",
            "connected",
        ),
    };
    let moved = Move {
        to,
        last_error: error,
        event,
        event_error: error,
        cause: error.map(|_| Cause::AdminConsentRevoked),
        action,
        outcome,
        detail: &detail,
        directory: Some(directory),
    };
    move_follower(conn, core, f, &moved, now).await
}

/// The background renewal of app tokens: each directory with app
/// mailboxes gets a new token ahead of expiry (and a refusing one is asked
/// again after its backoff, so a renewed consent heals its mailboxes).
pub struct Renewer {
    core: Core,
    poll: Duration,
}

impl Renewer {
    pub fn new(core: Core, poll: Duration) -> Renewer {
        Renewer { core, poll }
    }

    /// Whether the directory is still due now that we hold its lease (a
    /// token route may have renewed it meanwhile); releases it if not.
    async fn still_due(&self, directory: &str, owner: &str) -> bool {
        let due = app_tokens::get(&self.core.db, directory)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.refresh_due_at)
            .is_some_and(|due| due <= crate::now());
        if !due {
            let _ = app_tokens::release_lease(&self.core.db, directory, owner).await;
        }
        due
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let owner = format!("{}:app-background", self.core.owner());
        while !*shutdown.borrow() {
            let now = crate::now();
            match app_tokens::due(&self.core.db, now, 32).await {
                Ok(due) => {
                    for directory in due {
                        let now = crate::now();
                        match app_tokens::take_lease(
                            &self.core.db,
                            &directory,
                            &owner,
                            now + self.core.schedule.lease_secs,
                            now,
                        )
                        .await
                        {
                            Ok(true) if !self.still_due(&directory, &owner).await => {}
                            Ok(true) => {
                                if let Err(e) =
                                    renew(&self.core, &directory, &owner, Priority::Background)
                                        .await
                                {
                                    tracing::info!(directory, error = %e, "app token not renewed");
                                }
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(directory, error = %e, "could not lease an app token")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not look for due app tokens"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}
