//! One refresh of one account, shared by the token route and the
//! background refresher: the caller holds the account's lease and has read
//! the row under it; this asks the provider and stores what the answer
//! means, by its class ([`TokenError`]):
//!
//! - success: new access token, the rotated refresh token in the same
//!   write (none in the answer keeps the old one), next due time;
//! - `invalid_grant` and friends: `needs_reauth` with an audit event, never
//!   retried;
//! - our client refused (`invalid_client`): no account changes; the
//!   provider's `last_error` says so;
//! - passing failures (429, 5xx, timeouts): no token or status changes.
//!
//! An answer the database does not take (it is down, or read-only) is not
//! dropped: under strict rotation the refresh token in it is the only one
//! that still works, and a refusal must not be asked for again. It is kept
//! in memory ([`Unsaved`]) and written again every second until it is
//! stored; meanwhile a refresh of that account uses it instead of asking
//! the provider. Two conditions on the writes cover a replica whose lease
//! lapsed while it waited: `needs_reauth` is only set while the account
//! still holds the refresh token that was refused, and a kept refresh that
//! finds its account turned `needs_reauth` by a refusal of that same, spent
//! token brings it back (`account.recovered`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use secrecy::SecretString;
use tokio::sync::{watch, Notify};

use crate::app::App;
use crate::crypto::Column;
use crate::db::accounts::{self, AccountRow};
use crate::db::{audit, outbox, Unavailable};
use crate::metrics;
use crate::oauth::{Provider, TokenError, TokenSet};
use crate::webhooks::{Event, EventType};

/// When refreshes happen, from the operator's settings.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Refresh this long before the access token expires.
    pub lead_secs: i64,
    /// Refresh a refresh token unused for this long, so inactivity never
    /// kills it (Microsoft's die after 90 days unused).
    pub idle_secs: i64,
    /// How long a replica may hold an account's lease; longer than any
    /// provider request may take (see [`Schedule::lease_outlasts`]).
    pub lease_secs: i64,
    /// Backoff after a passing failure: `base * 2^failures`, capped.
    pub backoff_base_secs: i64,
    pub backoff_cap_secs: i64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            lead_secs: 600,
            idle_secs: 7 * 86_400,
            lease_secs: 60,
            backoff_base_secs: 30,
            backoff_cap_secs: 3_600,
        }
    }
}

impl Schedule {
    /// Whether the lease outlasts the longest a refresh may ask the
    /// provider for: its discovery document, then the token request, each
    /// bounded by `provider_timeout`. A shorter lease could lapse while the
    /// provider is still answering, and another replica would refresh the
    /// same account with the same refresh token: under rotation one of the
    /// two answers kills the grant.
    pub fn lease_outlasts(&self, provider_timeout: Duration) -> bool {
        self.lease_secs as f64 > 2.0 * provider_timeout.as_secs_f64()
    }

    /// When a token that expires at `expires_at` is next due: `lead` before
    /// expiry, less up to a quarter of `lead` of jitter so accounts
    /// connected together do not come due together; never later than the
    /// idle limit.
    pub fn next_due(&self, expires_at: i64, now: i64) -> i64 {
        let jitter = rand::thread_rng().gen_range(0..=self.lead_secs / 4);
        (expires_at - self.lead_secs - jitter)
            .min(now + self.idle_secs)
            .max(now)
    }

    /// The wait after the `failures`-th passing failure in a row; a
    /// provider's `Retry-After` wins when it asks for longer.
    pub fn backoff(&self, failures: i64, retry_after: Option<Duration>) -> i64 {
        let exp = self
            .backoff_base_secs
            .saturating_mul(1i64 << failures.clamp(0, 20));
        let jitter = rand::thread_rng().gen_range(0..=self.backoff_base_secs / 2);
        let wanted = retry_after.map_or(0, |d| d.as_secs() as i64);
        (exp + jitter).max(wanted).min(self.backoff_cap_secs)
    }
}

/// What one refresh came to.
pub enum Outcome {
    Refreshed(TokenSet),
    /// Consent is gone; the account is now `needs_reauth`.
    NeedsReauth,
    /// Our client registration was refused; no account changed.
    Misconfigured,
    /// Another refusal (a bad scope, say): no account changed.
    Refused(String),
    /// Might pass later; no token or status changed.
    Transient {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// Disconnected while the refresh ran: the new tokens were dropped.
    Disconnected,
    /// The provider refused a refresh token that had been rotated by another
    /// refresh meanwhile (its result is stored now): nothing changed.
    Superseded,
}

/// Refreshes `row` (read under its lease) and stores the result.
#[tracing::instrument(skip_all, fields(account_id = %row.id, provider = %row.provider))]
pub async fn refresh_leased(
    app: &App,
    provider: &dyn Provider,
    row: &AccountRow,
) -> anyhow::Result<Outcome> {
    let id = row.id.as_str();
    // An earlier answer the database has not taken yet comes first: its
    // refresh token is the live one, the stored one may be spent.
    if let Some(outcome) = app.unsaved.settle(app, id).await {
        return Ok(outcome);
    }
    let enc = row
        .refresh_token_enc
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("connected account without a refresh token"))?;
    let refresh_token = app
        .keys
        .open_for(Column::RefreshToken, id, enc)
        .map_err(|e| anyhow::anyhow!("opening the refresh token of {id}: {e}"))?;

    let kind = provider.kind().as_str();
    let started = std::time::Instant::now();
    let answer = provider.refresh(&refresh_token).await;
    metrics::provider_latency(kind, "refresh", started.elapsed());
    let outcome = match &answer {
        Ok(_) => "refreshed",
        Err(TokenError::Reauth { .. }) => "needs_reauth",
        Err(TokenError::Misconfigured { .. }) => "misconfigured",
        Err(TokenError::Refused { .. }) => "refused",
        Err(TokenError::Transient { .. }) => "transient",
    };
    ::metrics::counter!(metrics::REFRESHES, "provider" => kind, "outcome" => outcome).increment(1);
    match answer {
        Ok(tokens) => {
            let kept = Kept::tokens(app, row, enc, &tokens, crate::now());
            let stored = kept.store(app).await;
            app.providers.set_error(provider.kind(), None);
            match stored {
                Ok(Stored::Done | Stored::Superseded) => {
                    provider_recovered(app, provider.kind().as_str()).await
                }
                Ok(Stored::Gone) => {
                    provider_recovered(app, provider.kind().as_str()).await;
                    return Ok(Outcome::Disconnected);
                }
                // The next stored refresh records the provider's recovery.
                Err(e) => app.unsaved.keep(id, kept, &e),
            }
            tracing::info!(rotated = tokens.refresh_token.is_some(), "token refreshed");
            Ok(Outcome::Refreshed(tokens))
        }
        Err(TokenError::Reauth { error }) => {
            tracing::warn!(error = %error, "refresh refused: the mailbox needs re-authorisation");
            let kept = Kept::reauth(row, enc, &error);
            match kept.store(app).await {
                Ok(Stored::Superseded) => {
                    tracing::info!(
                        "the refused refresh token had been rotated meanwhile; nothing changes"
                    );
                    Ok(Outcome::Superseded)
                }
                Ok(Stored::Done | Stored::Gone) => Ok(Outcome::NeedsReauth),
                Err(e) => {
                    app.unsaved.keep(id, kept, &e);
                    Ok(Outcome::NeedsReauth)
                }
            }
        }
        Err(TokenError::Misconfigured { error }) => {
            ::metrics::counter!(metrics::PROVIDER_CONFIG_ERRORS, "provider" => kind).increment(1);
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
            provider_misconfigured(app, provider.kind().as_str(), &error).await;
            Ok(Outcome::Misconfigured)
        }
        Err(TokenError::Refused { error, status }) => {
            tracing::error!(provider = %provider.kind(), error = %error, status, "the provider refused the refresh request");
            Ok(Outcome::Refused(error))
        }
        Err(TokenError::Transient {
            retry_after,
            reason,
        }) => {
            tracing::warn!(reason = %reason, "refresh failed for now");
            Ok(Outcome::Transient {
                retry_after,
                reason,
            })
        }
    }
}

/// `provider.misconfigured`, once per transition across every replica.
/// A failure to record it is logged; the refresh outcome stands.
async fn provider_misconfigured(app: &App, provider: &str, error: &str) {
    let result: anyhow::Result<bool> = async {
        let now = crate::now();
        let mut tx = app.db.pool.begin().await?;
        let changed =
            outbox::provider_transition(&mut tx, provider, "misconfigured", Some(error), now)
                .await?;
        if changed {
            app.webhooks
                .enqueue(
                    &mut tx,
                    &provider_event(EventType::ProviderMisconfigured, provider, Some(error)),
                    now,
                )
                .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }
    .await;
    match result {
        Ok(true) => app.webhooks.written(),
        Ok(false) => {}
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "could not record the provider as misconfigured"
        ),
    }
}

/// `provider.recovered`: the first success after `provider.misconfigured`.
async fn provider_recovered(app: &App, provider: &str) {
    let result: anyhow::Result<bool> = async {
        if !outbox::provider_misconfigured(&app.db, provider).await? {
            return Ok(false);
        }
        let now = crate::now();
        let mut tx = app.db.pool.begin().await?;
        let changed = outbox::provider_recovered(&mut tx, provider, now).await?;
        if changed {
            app.webhooks
                .enqueue(
                    &mut tx,
                    &provider_event(EventType::ProviderRecovered, provider, None),
                    now,
                )
                .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }
    .await;
    match result {
        Ok(true) => {
            tracing::info!(
                provider,
                "the provider accepts our client credentials again"
            );
            app.webhooks.written()
        }
        Ok(false) => {}
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "could not record the provider as recovered"
        ),
    }
}

fn provider_event<'a>(kind: EventType, provider: &'a str, error: Option<&'a str>) -> Event<'a> {
    Event {
        kind,
        tenant_id: None,
        account_id: None,
        provider,
        email: None,
        error,
    }
}

/// What storing a provider's answer came to.
#[derive(Debug, PartialEq, Eq)]
enum Stored {
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
struct Kept {
    id: String,
    tenant_id: String,
    provider: String,
    email: String,
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
        due_at: i64,
        /// To hand out while the database is away.
        access_token: SecretString,
    },
    Reauth {
        error: String,
    },
}

impl Kept {
    fn tokens(app: &App, row: &AccountRow, used: &str, tokens: &TokenSet, now: i64) -> Kept {
        let id = row.id.as_str();
        Kept {
            answer: Answer::Tokens {
                access_enc: app
                    .keys
                    .seal_for(Column::AccessToken, id, &tokens.access_token),
                refresh_enc: tokens
                    .refresh_token
                    .as_ref()
                    .map(|t| app.keys.seal_for(Column::RefreshToken, id, t)),
                scopes: (!tokens.scopes.is_empty()).then(|| tokens.scopes.join(" ")),
                expires_at: tokens.expires_at,
                due_at: app.schedule.next_due(tokens.expires_at, now),
                access_token: tokens.access_token.clone(),
            },
            ..Kept::of(row, used)
        }
    }

    fn reauth(row: &AccountRow, used: &str, error: &str) -> Kept {
        Kept {
            answer: Answer::Reauth {
                error: error.to_owned(),
            },
            ..Kept::of(row, used)
        }
    }

    fn of(row: &AccountRow, used: &str) -> Kept {
        Kept {
            id: row.id.clone(),
            tenant_id: row.tenant_id.clone(),
            provider: row.provider.clone(),
            email: row.email.clone(),
            used_refresh_enc: used.to_owned(),
            answer: Answer::Reauth {
                error: String::new(),
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

    async fn store(&self, app: &App) -> anyhow::Result<Stored> {
        match &self.answer {
            Answer::Tokens {
                access_enc,
                refresh_enc,
                scopes,
                expires_at,
                due_at,
                ..
            } => {
                let refreshed = accounts::Refreshed {
                    id: &self.id,
                    access_token_enc: access_enc,
                    refresh_token_enc: refresh_enc.as_deref(),
                    expires_at: *expires_at,
                    scopes: scopes.as_deref(),
                    due_at: *due_at,
                };
                self.store_tokens(app, &refreshed).await
            }
            Answer::Reauth { error } => self.store_reauth(app, error).await,
        }
    }

    async fn store_tokens(
        &self,
        app: &App,
        refreshed: &accounts::Refreshed<'_>,
    ) -> anyhow::Result<Stored> {
        let now = crate::now();
        if accounts::store_refresh(&app.db, refreshed, now).await? {
            return Ok(Stored::Done);
        }
        let mut tx = app.db.pool.begin().await?;
        if !accounts::restore_refresh(&mut *tx, refreshed, &self.used_refresh_enc, now).await? {
            return Ok(Stored::Gone);
        }
        audit::record(
            &mut *tx,
            &audit::NewEvent {
                tenant_id: &self.tenant_id,
                account_id: Some(&self.id),
                provider: Some(&self.provider),
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
        app.webhooks
            .enqueue(&mut tx, &self.event(EventType::AccountRecovered, None), now)
            .await?;
        tx.commit().await?;
        app.webhooks.written();
        tracing::warn!(account_id = %self.id, "a refresh stored late brought back an account marked needs_reauth by a refusal of the token it had rotated");
        Ok(Stored::Done)
    }

    async fn store_reauth(&self, app: &App, error: &str) -> anyhow::Result<Stored> {
        let now = crate::now();
        let mut tx = app.db.pool.begin().await?;
        if !accounts::mark_needs_reauth(&mut *tx, &self.id, &self.used_refresh_enc, error, now)
            .await?
        {
            tx.rollback().await?;
            let row = accounts::get_by_id(&app.db, &self.id).await?;
            let superseded = row.is_some_and(|r| {
                r.status == "connected"
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
                tenant_id: &self.tenant_id,
                account_id: Some(&self.id),
                provider: Some(&self.provider),
                action: "refresh_failed",
                actor: "system",
                outcome: "needs_reauth",
                detail: Some(error),
            },
            now,
        )
        .await?;
        // Entered only from `connected`, so a repeated failure makes one
        // event, not one per attempt.
        app.webhooks
            .enqueue(
                &mut tx,
                &self.event(EventType::AccountNeedsReauth, Some(error)),
                now,
            )
            .await?;
        tx.commit().await?;
        app.webhooks.written();
        Ok(Stored::Done)
    }

    fn event<'a>(&'a self, kind: EventType, error: Option<&'a str>) -> Event<'a> {
        Event {
            kind,
            tenant_id: Some(&self.tenant_id),
            account_id: Some(&self.id),
            provider: &self.provider,
            email: Some(&self.email),
            error,
        }
    }
}

/// Provider answers the database did not take, by account, written again
/// until they are stored (see the module docs). Lives as long as the
/// process: an answer still here at shutdown is logged as lost.
#[derive(Default)]
pub struct Unsaved {
    kept: Mutex<HashMap<String, (u64, Kept)>>,
    generation: std::sync::atomic::AtomicU64,
    wake: Notify,
}

/// How often kept answers are written again.
const RETRY_STORE_EVERY: Duration = Duration::from_secs(1);

impl Unsaved {
    fn keep(&self, id: &str, kept: Kept, why: &anyhow::Error) {
        tracing::warn!(
            account_id = %id,
            error = format!("{why:#}"),
            "could not store the provider's answer; keeping it in memory and storing it again until the database takes it"
        );
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id.to_owned(), (generation, kept));
        ::metrics::gauge!(metrics::UNSAVED_ANSWERS).set(self.len() as f64);
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Kept)>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers kept and not stored yet.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn forget(&self, id: &str, generation: u64) {
        let mut kept = self.lock();
        if kept.get(id).is_some_and(|(g, _)| *g == generation) {
            kept.remove(id);
        }
        ::metrics::gauge!(metrics::UNSAVED_ANSWERS).set(kept.len() as f64);
    }

    /// The access token of a refresh kept for `id`, while it has more than
    /// a minute left: what a worker gets while the database cannot even
    /// take the lease for another refresh.
    pub fn access_token(&self, id: &str) -> Option<(SecretString, i64)> {
        match &self.lock().get(id)?.1.answer {
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
    async fn settle(&self, app: &App, id: &str) -> Option<Outcome> {
        let (generation, kept) = self.lock().get(id).cloned()?;
        match kept.store(app).await {
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
                }),
                other => Some(other),
            },
        }
    }

    /// One pass over the kept answers; stops at the first sign that the
    /// database is down (each try would wait for it). Returns how many are
    /// left.
    async fn store_kept(&self, app: &App) -> usize {
        let kept: Vec<(String, u64, Kept)> = self
            .lock()
            .iter()
            .map(|(id, (g, k))| (id.clone(), *g, k.clone()))
            .collect();
        for (id, generation, k) in kept {
            match k.store(app).await {
                Ok(stored) => {
                    self.forget(&id, generation);
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
    pub async fn run(&self, app: &App, mut shutdown: watch::Receiver<bool>) {
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
                self.store_kept(app).await;
            }
        }
    }

    /// At shutdown, after the refreshes in flight: keeps trying for up to
    /// `limit`, then names every account whose answer is lost.
    pub async fn drain(&self, app: &App, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_empty() && tokio::time::Instant::now() < deadline {
            let pass = self.store_kept(app);
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn next_due_is_the_lead_before_expiry_with_jitter() {
        let s = Schedule::default();
        for _ in 0..200 {
            let due = s.next_due(NOW + 3600, NOW);
            assert!(
                (NOW + 3600 - 750..=NOW + 3600 - 600).contains(&due),
                "{}",
                due - NOW
            );
        }
        let dues: std::collections::HashSet<i64> =
            (0..200).map(|_| s.next_due(NOW + 3600, NOW)).collect();
        assert!(dues.len() > 10, "jittered: {dues:?}");
    }

    #[test]
    fn next_due_is_never_past_the_idle_limit_nor_in_the_past() {
        let s = Schedule::default();
        // A token that lasts a month is still renewed within the week.
        assert_eq!(s.next_due(NOW + 30 * 86_400, NOW), NOW + 7 * 86_400);
        // One that is (nearly) expired is due now.
        assert_eq!(s.next_due(NOW - 100, NOW), NOW);
        assert_eq!(s.next_due(NOW + 300, NOW), NOW);
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let s = Schedule::default();
        for (failures, low) in [(0, 30), (1, 60), (3, 240), (6, 1920)] {
            for _ in 0..50 {
                let b = s.backoff(failures, None);
                assert!((low..=low + 15).contains(&b), "{failures}: {b}");
            }
        }
        assert_eq!(s.backoff(7, None), 3600);
        assert_eq!(s.backoff(500, None), 3600);
        assert!((30..=45).contains(&s.backoff(-3, None)));
        let spread: std::collections::HashSet<i64> = (0..200).map(|_| s.backoff(0, None)).collect();
        assert!(spread.len() > 5, "jittered: {spread:?}");
    }

    #[test]
    fn retry_after_wins_when_longer_up_to_the_cap() {
        let s = Schedule::default();
        assert_eq!(s.backoff(0, Some(Duration::from_secs(120))), 120);
        assert!((30..=45).contains(&s.backoff(0, Some(Duration::from_secs(5)))));
        assert_eq!(s.backoff(0, Some(Duration::from_secs(86_400))), 3600);
    }

    #[test]
    fn the_lease_must_outlast_two_provider_requests() {
        let lease = |secs| Schedule {
            lease_secs: secs,
            ..Schedule::default()
        };
        let ten = Duration::from_secs(10);
        assert!(lease(21).lease_outlasts(ten));
        assert!(!lease(20).lease_outlasts(ten));
        assert!(!lease(11).lease_outlasts(ten));
        assert!(lease(3).lease_outlasts(Duration::from_secs(1)));
        assert!(!lease(3).lease_outlasts(Duration::from_millis(1500)));
    }
}
