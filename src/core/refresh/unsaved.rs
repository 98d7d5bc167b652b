//! Provider answers the database did not take (it is down, or read-only),
//! kept in memory and written again until they are stored: under strict
//! rotation the refresh token in such an answer is the only one that still
//! works, and a refusal must not be asked for again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::{watch, Notify};

use super::super::shared::{self, DelegateChange};
use super::super::Core;
use super::Outcome;
use crate::crypto::Column;
use crate::db::accounts::{self, AccountRow};
use crate::db::types::StoredProvider;
use crate::db::{audit, Unavailable};
use crate::diagnosis::Cause;
use crate::domain::{AccountId, AccountStatus, MailboxAddress, TenantId};
use crate::metrics;
use crate::oauth::TokenSet;
use crate::webhooks::{Event, EventType};

/// What storing a provider's answer came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stored {
    Done,
    /// A refusal of a refresh token that another refresh had already
    /// replaced: nothing to store.
    Superseded,
    /// The account is disconnected (or was reconnected): the answer no
    /// longer belongs to it and is dropped.
    Gone,
}

/// A provider's answer for one account, sealed for its row, with what
/// storing it (again) needs. No `Debug`: it holds a token.
#[derive(Clone)]
pub(super) struct Kept {
    id: AccountId,
    /// `id` as text, for the audit trail and webhook events.
    id_text: String,
    tenant_id: TenantId,
    provider: StoredProvider,
    email: MailboxAddress,
    /// The stored refresh token (its ciphertext) the refresh used.
    used_refresh_enc: String,
    answer: Answer,
}

#[derive(Clone)]
enum Answer {
    Tokens {
        access_enc: String,
        refresh_enc: Option<String>,
        scopes: Option<String>,
        expires_at: i64,
        /// When next due if warm when stored, and if not.
        due_at: i64,
        idle_due_at: i64,
        warm_since: i64,
        /// To hand out while the database is away.
        access_token: SecretString,
    },
    Reauth {
        error: String,
        cause: Cause,
    },
}

impl Kept {
    pub(super) fn tokens(
        core: &Core,
        row: &AccountRow,
        used: &str,
        tokens: &TokenSet,
        now: i64,
    ) -> Kept {
        let id = &row.id.to_string();
        let schedule = &core.schedule;
        let due_at = schedule.next_due(tokens.expires_at, now);
        // A use noted here and not written yet counts; one written
        // meanwhile by another replica is seen by the write itself.
        let last_used = row.last_used_at.max(core.uses.pending(row.id));
        let idle_due_at = match schedule.warm_window.is_warm(last_used, now) {
            true => due_at,
            false => schedule.keep_alive_due(now),
        };
        Kept {
            answer: Answer::Tokens {
                access_enc: core
                    .keys
                    .seal_for(Column::AccessToken, id, &tokens.access_token),
                refresh_enc: tokens
                    .refresh_token
                    .as_ref()
                    .map(|t| core.keys.seal_for(Column::RefreshToken, id, t)),
                scopes: (!tokens.scopes.is_empty()).then(|| tokens.scopes.join(" ")),
                expires_at: tokens.expires_at,
                due_at,
                idle_due_at,
                warm_since: schedule.warm_window.warm_since(now),
                access_token: tokens.access_token.clone(),
            },
            ..Kept::of(row, used)
        }
    }

    pub(super) fn reauth(row: &AccountRow, used: &str, error: &str, cause: Cause) -> Kept {
        Kept {
            answer: Answer::Reauth {
                error: error.to_owned(),
                cause,
            },
            ..Kept::of(row, used)
        }
    }

    fn of(row: &AccountRow, used: &str) -> Kept {
        Kept {
            id: row.id,
            id_text: row.id.to_string(),
            tenant_id: row.tenant_id.clone(),
            provider: row.provider.clone(),
            email: row.email.clone(),
            used_refresh_enc: used.to_owned(),
            answer: Answer::Reauth {
                error: String::new(),
                cause: Cause::Unknown,
            },
        }
    }

    /// What a refresh of this account comes to while this answer is kept.
    fn outcome(&self) -> Outcome {
        match &self.answer {
            Answer::Tokens {
                access_token,
                expires_at,
                ..
            } => Outcome::Refreshed(TokenSet {
                access_token: access_token.clone(),
                refresh_token: None,
                expires_at: *expires_at,
                scopes: Vec::new(),
            }),
            Answer::Reauth { .. } => Outcome::NeedsReauth,
        }
    }

    pub(super) async fn store(&self, core: &Core) -> anyhow::Result<Stored> {
        match &self.answer {
            Answer::Tokens {
                access_enc,
                refresh_enc,
                scopes,
                expires_at,
                due_at,
                idle_due_at,
                warm_since,
                ..
            } => {
                let refreshed = accounts::Refreshed {
                    id: self.id,
                    access_token_enc: access_enc,
                    refresh_token_enc: refresh_enc.as_deref(),
                    expires_at: *expires_at,
                    scopes: scopes.as_deref(),
                    due_at: *due_at,
                    idle_due_at: *idle_due_at,
                    warm_since: *warm_since,
                };
                self.store_tokens(core, &refreshed).await
            }
            Answer::Reauth { error, cause } => {
                let failure = accounts::Failure {
                    error,
                    cause: *cause,
                };
                self.store_reauth(core, failure).await
            }
        }
    }

    async fn store_tokens(
        &self,
        core: &Core,
        refreshed: &accounts::Refreshed<'_>,
    ) -> anyhow::Result<Stored> {
        let now = crate::now();
        if accounts::store_refresh(&core.db, refreshed, now).await? {
            return Ok(Stored::Done);
        }
        let mut tx = core.db.pool.begin().await?;
        if !accounts::restore_refresh(&mut *tx, refreshed, &self.used_refresh_enc, now).await? {
            return Ok(Stored::Gone);
        }
        audit::record(
            &mut *tx,
            &audit::NewEvent {
                tenant_id: self.tenant_id.as_str(),
                account_id: Some(&self.id_text),
                provider: Some(self.provider.as_str()),
                action: "refresh",
                actor: "system",
                outcome: "recovered",
                detail: Some(
                    "a refresh stored late: the refusal before it was of the token it had rotated",
                ),
            },
            now,
        )
        .await?;
        core.webhooks
            .enqueue(&mut tx, &self.event(EventType::AccountRecovered, None), now)
            .await?;
        shared::follow(&mut tx, core, self.id, DelegateChange::Healed, now).await?;
        tx.commit().await?;
        core.webhooks.written();
        tracing::warn!(account_id = %self.id, "a refresh stored late brought back an account marked needs_reauth by a refusal of the token it had rotated");
        Ok(Stored::Done)
    }

    async fn store_reauth(
        &self,
        core: &Core,
        failure: accounts::Failure<'_>,
    ) -> anyhow::Result<Stored> {
        let now = crate::now();
        let accounts::Failure { error, cause } = failure;
        let mut tx = core.db.pool.begin().await?;
        if !accounts::mark_needs_reauth(&mut *tx, self.id, &self.used_refresh_enc, failure, now)
            .await?
        {
            tx.rollback().await?;
            let row = accounts::get_by_id(&core.db, self.id).await?;
            let superseded = row.is_some_and(|r| {
                r.status == AccountStatus::Connected
                    && r.refresh_token_enc.as_deref() != Some(&self.used_refresh_enc)
            });
            return Ok(if superseded {
                Stored::Superseded
            } else {
                Stored::Gone
            });
        }
        audit::record(
            &mut *tx,
            &audit::NewEvent {
                tenant_id: self.tenant_id.as_str(),
                account_id: Some(&self.id_text),
                provider: Some(self.provider.as_str()),
                action: "refresh_failed",
                actor: "system",
                outcome: "needs_reauth",
                detail: Some(&audit::failure_detail(error, cause)),
            },
            now,
        )
        .await?;
        // Entered only from `connected`, so a repeated failure makes one
        // event, not one per attempt.
        core.webhooks
            .enqueue(
                &mut tx,
                &Event {
                    cause: Some(cause),
                    expiry: None,
                    ..self.event(EventType::AccountNeedsReauth, Some(error))
                },
                now,
            )
            .await?;
        shared::follow(
            &mut tx,
            core,
            self.id,
            DelegateChange::NeedsReauth { error, cause },
            now,
        )
        .await?;
        tx.commit().await?;
        core.webhooks.written();
        Ok(Stored::Done)
    }

    fn event<'a>(&'a self, kind: EventType, error: Option<&'a str>) -> Event<'a> {
        Event {
            kind,
            tenant_id: Some(self.tenant_id.as_str()),
            account_id: Some(&self.id_text),
            provider: self.provider.as_str(),
            email: Some(self.email.as_str()),
            error,
            directory: None,
            cause: None,
            expiry: None,
        }
    }
}

/// Provider answers the database did not take, by account, written again
/// until they are stored (see the module docs). Lives as long as the
/// process: an answer still here at shutdown is logged as lost.
#[derive(Default)]
pub struct Unsaved {
    kept: Mutex<HashMap<AccountId, (u64, Kept)>>,
    generation: std::sync::atomic::AtomicU64,
    wake: Notify,
}

/// How often kept answers are written again.
const RETRY_STORE_EVERY: Duration = Duration::from_secs(1);

impl Unsaved {
    pub(super) fn keep(&self, id: AccountId, kept: Kept, why: &anyhow::Error) {
        tracing::warn!(
            account_id = %id,
            error = format!("{why:#}"),
            "could not store the provider's answer; keeping it in memory and storing it again until the database takes it"
        );
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id, (generation, kept));
        ::metrics::gauge!(metrics::UNSAVED_ANSWERS).set(self.len() as f64);
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, (u64, Kept)>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers kept and not stored yet.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn forget(&self, id: AccountId, generation: u64) {
        let mut kept = self.lock();
        if kept.get(&id).is_some_and(|(g, _)| *g == generation) {
            kept.remove(&id);
        }
        ::metrics::gauge!(metrics::UNSAVED_ANSWERS).set(kept.len() as f64);
    }

    /// The access token of a refresh kept for `id`, while it has more than
    /// a minute left: what a worker gets while the database cannot even
    /// take the lease for another refresh.
    pub fn access_token(&self, id: AccountId) -> Option<(SecretString, i64)> {
        match &self.lock().get(&id)?.1.answer {
            Answer::Tokens {
                access_token,
                expires_at,
                ..
            } if *expires_at > crate::now() + 60 => Some((access_token.clone(), *expires_at)),
            _ => None,
        }
    }

    /// For a refresh of `id` about to start: if an answer is kept for it,
    /// stores it now if the database takes it, and returns what the refresh
    /// comes to instead of asking the provider again.
    pub(super) async fn settle(&self, core: &Core, id: AccountId) -> Option<Outcome> {
        let (generation, kept) = self.lock().get(&id).cloned()?;
        match kept.store(core).await {
            Ok(Stored::Gone) => {
                self.forget(id, generation);
                Some(Outcome::Disconnected)
            }
            Ok(Stored::Superseded) => {
                self.forget(id, generation);
                Some(Outcome::Superseded)
            }
            Ok(Stored::Done) => {
                self.forget(id, generation);
                tracing::info!(account_id = %id, "a kept answer was stored");
                Some(kept.outcome())
            }
            Err(_) => match kept.outcome() {
                // Its access token is still good to hand out.
                Outcome::Refreshed(t) if t.expires_at > crate::now() + 60 => {
                    Some(Outcome::Refreshed(t))
                }
                Outcome::Refreshed(_) => Some(Outcome::Transient {
                    retry_after: Some(Duration::from_secs(5)),
                    reason: "the last refresh is not stored yet".into(),
                    cause: Cause::ProviderUnavailable,
                }),
                other => Some(other),
            },
        }
    }

    /// One pass over the kept answers; stops at the first sign that the
    /// database is down (each try would wait for it). Returns how many are
    /// left.
    async fn store_kept(&self, core: &Core) -> usize {
        let kept: Vec<(AccountId, u64, Kept)> = self
            .lock()
            .iter()
            .map(|(id, (g, k))| (*id, *g, k.clone()))
            .collect();
        for (id, generation, k) in kept {
            match k.store(core).await {
                Ok(stored) => {
                    self.forget(id, generation);
                    match stored {
                        Stored::Done => {
                            tracing::info!(account_id = %id, "a kept answer was stored")
                        }
                        Stored::Superseded | Stored::Gone => {
                            tracing::info!(account_id = %id, "a kept answer no longer applies; dropped")
                        }
                    }
                }
                Err(e) if Unavailable::in_chain(&e).is_some() => break,
                Err(e) => {
                    tracing::warn!(account_id = %id, error = format!("{e:#}"), "could not store a kept answer yet");
                }
            }
        }
        self.len()
    }

    /// Writes kept answers again every second until `shutdown`.
    pub async fn run(&self, core: &Core, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RETRY_STORE_EVERY) => {}
                _ = self.wake.notified() => {
                    // Give the database a moment before trying again.
                    tokio::time::sleep(RETRY_STORE_EVERY).await;
                }
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            if !self.is_empty() {
                self.store_kept(core).await;
            }
        }
    }

    /// At shutdown, after the refreshes in flight: keeps trying for up to
    /// `limit`, then names every account whose answer is lost.
    pub async fn drain(&self, core: &Core, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_empty() && tokio::time::Instant::now() < deadline {
            let pass = self.store_kept(core);
            if tokio::time::timeout_at(deadline, pass).await.is_err() {
                break;
            }
            if !self.is_empty() {
                tokio::time::sleep(RETRY_STORE_EVERY.min(deadline - tokio::time::Instant::now()))
                    .await;
            }
        }
        for (id, (_, kept)) in self.lock().iter() {
            let rotated = matches!(
                kept.answer,
                Answer::Tokens {
                    refresh_enc: Some(_),
                    ..
                }
            );
            tracing::error!(
                account_id = %id,
                rotated,
                "shutting down with a provider answer the database never took; a rotated refresh token is lost with it and the mailbox may need reconnecting"
            );
        }
    }
}
