//! The background refresher: keeps every connected account's tokens fresh
//! without anyone asking, on one replica or many.
//!
//! It claims due accounts in small batches (a lease per account, taken in
//! one statement, so replicas never share an account), refreshes them with
//! bounded concurrency, and sleeps until the next account comes due. It
//! never holds more than one batch in memory. On shutdown it stops
//! claiming, lets refreshes in flight finish and be stored, and hands back
//! the leases of accounts it had not started.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use super::super::pace::{self, Priority};
use super::super::Core;
use super::{refresh_leased, Outcome, Reason};
use crate::db::accounts::{self, AccountRow, Failure};
use crate::diagnosis::Cause;
use crate::domain::ProviderKind;

/// A misconfigured provider (an expired client secret) is not asked again
/// for this long: every account would get the same answer.
const PROVIDER_PAUSE: Duration = Duration::from_secs(60);

/// The sweep's own settings (`MAILCONNECT_REFRESHER`,
/// `MAILCONNECT_REFRESH_CONCURRENCY`, `MAILCONNECT_REFRESH_POLL_SECS`).
#[derive(Clone, Debug)]
pub struct SweepConfig {
    pub enabled: bool,
    /// Refreshes in flight at once, per replica.
    pub concurrency: usize,
    /// The longest sleep between looks for due accounts.
    pub poll: Duration,
}

/// One replica's background sweep.
pub struct Sweeper {
    core: Core,
    cfg: SweepConfig,
    /// Lease holder id; distinct from the token route's, so the two paths in
    /// one process exclude each other through the lease like replicas do.
    owner: String,
    paused: Mutex<HashMap<ProviderKind, Instant>>,
}

impl Sweeper {
    pub fn new(core: Core, cfg: SweepConfig) -> Sweeper {
        Sweeper {
            owner: format!("{}:background", core.owner()),
            core,
            cfg,
            paused: Mutex::default(),
        }
    }

    /// Runs until `shutdown` turns true, then drains.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        tracing::info!(
            concurrency = self.cfg.concurrency,
            "background refresher started"
        );
        // No more at once than the provider budget lets background work
        // send in a second: what waits longer goes back unrefreshed.
        let batch = ((self.cfg.concurrency * 2) as i64)
            .min(self.core.pace.cap(super::super::pace::Priority::Background));
        let me = &self;
        let batches = futures::stream::unfold(shutdown.clone(), move |mut shutdown| async move {
            loop {
                if *shutdown.borrow() {
                    return None;
                }
                match me.claim(batch).await {
                    Ok(rows) if !rows.is_empty() => {
                        let leased = Instant::now();
                        let rows: Vec<_> = rows.into_iter().map(|row| (row, leased)).collect();
                        return Some((rows, shutdown));
                    }
                    Ok(_) => {
                        let wait = me.idle_wait().await;
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not claim due accounts; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                }
            }
        });
        batches
            .flat_map(futures::stream::iter)
            .for_each_concurrent(self.cfg.concurrency, |(row, leased)| {
                let shutdown = shutdown.clone();
                async move {
                    if *shutdown.borrow() {
                        me.hand_back(&row).await;
                    } else {
                        me.refresh_one(row, leased).await;
                    }
                }
            })
            .await;
        tracing::info!("background refresher stopped");
    }

    async fn claim(&self, limit: i64) -> sqlx::Result<Vec<AccountRow>> {
        let now = crate::now();
        accounts::claim_due(
            &self.core.db,
            &self.owner,
            now + self.core.schedule.lease_secs,
            now,
            limit,
        )
        .await
    }

    /// How long to sleep with nothing due: until the next account is.
    /// Never longer than the poll setting, so accounts connected through
    /// other replicas are noticed.
    async fn idle_wait(&self) -> Duration {
        let poll = self.cfg.poll;
        match accounts::earliest_due(&self.core.db).await {
            Ok(Some(due)) => {
                let secs = (due - crate::now()).clamp(1, poll.as_secs().max(1) as i64);
                Duration::from_secs(secs as u64)
            }
            _ => poll,
        }
    }

    async fn hand_back(&self, row: &AccountRow) {
        if let Err(e) = accounts::release_lease(&self.core.db, row.id, &self.owner).await {
            tracing::warn!(account_id = %row.id, error = %e, "could not hand back a lease; it lapses by itself");
        }
    }

    /// How long `kind` stays paused, if it is.
    fn paused_for(&self, kind: ProviderKind) -> Option<Duration> {
        let paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        paused
            .get(&kind)
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    fn pause(&self, kind: ProviderKind, wait: Duration) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        paused.insert(kind, Instant::now() + wait);
    }

    async fn postpone(&self, row: &AccountRow, secs: i64) {
        let due = crate::now() + secs;
        if let Err(e) = accounts::postpone(&self.core.db, row.id, &self.owner, due).await {
            tracing::warn!(account_id = %row.id, error = %e, "could not postpone an account");
        }
    }

    async fn failed(&self, row: &AccountRow, failure: Failure<'_>, retry_after: Option<Duration>) {
        let now = crate::now();
        let due = now
            + self
                .core
                .schedule
                .backoff(row.consecutive_failures, retry_after);
        if let Err(e) = accounts::record_transient_failure(
            &self.core.db,
            row.id,
            &self.owner,
            failure,
            due,
            now,
        )
        .await
        {
            tracing::warn!(account_id = %row.id, error = %e, "could not record a refresh failure");
        }
    }

    /// Refreshes `row`, whose lease was taken at `leased`.
    async fn refresh_one(&self, row: AccountRow, leased: Instant) {
        let Some(kind) = row.provider.known() else {
            return self.postpone(&row, 3_600).await;
        };
        let Some(provider) = self.core.provider(kind).cloned() else {
            // Another replica may have this provider configured.
            return self.postpone(&row, 600).await;
        };
        if let Some(left) = self.paused_for(kind) {
            // Back when the pause ends (a short Retry-After is short), and
            // looked at again at least every PROVIDER_PAUSE.
            let secs = left.min(PROVIDER_PAUSE).as_secs_f64().ceil().max(1.0);
            return self.postpone(&row, secs as i64).await;
        }
        let last_used = row.last_used_at.max(self.core.uses.pending(row.id));
        let reason = match self
            .core
            .schedule
            .warm_window
            .is_warm(last_used, crate::now())
        {
            true => Reason::KeepWarm,
            false => Reason::KeepAlive,
        };
        // Within the provider's budget, after on-demand requests; without
        // room before a third of the lease is gone, the account goes back
        // (still due) for a later look.
        let budget = pace::budget(kind, None);
        let until = pace::background_deadline(leased, self.core.schedule.lease_secs);
        let admitted = self
            .core
            .pace
            .admit(&self.core.db, &budget, Priority::Background, Some(until))
            .await;
        if !admitted {
            return self.hand_back(&row).await;
        }
        match refresh_leased(&self.core, provider.as_ref(), &row, reason).await {
            Ok(
                Outcome::Refreshed(_)
                | Outcome::NeedsReauth
                | Outcome::Disconnected
                | Outcome::Superseded,
            ) => {}
            Ok(Outcome::Misconfigured) => {
                self.pause(kind, PROVIDER_PAUSE);
                self.postpone(&row, PROVIDER_PAUSE.as_secs() as i64).await;
            }
            Ok(Outcome::Refused { error, cause }) => {
                self.failed(
                    &row,
                    Failure {
                        error: &error,
                        cause,
                    },
                    None,
                )
                .await
            }
            Ok(Outcome::Transient {
                retry_after,
                reason,
                cause,
            }) => {
                // A provider that says when to come back (429 with
                // Retry-After) throttles the client, not one account: every
                // account of that provider waits.
                if let Some(wait) = retry_after {
                    self.pause(kind, wait.min(PROVIDER_PAUSE * 15));
                }
                let error = format!("provider_unavailable: {reason}");
                self.failed(
                    &row,
                    Failure {
                        error: &error,
                        cause,
                    },
                    retry_after,
                )
                .await
            }
            Err(e) => {
                tracing::error!(account_id = %row.id, error = format!("{e:#}"), "refresh could not run");
                let failure = Failure {
                    error: "internal_error",
                    cause: Cause::Unknown,
                };
                self.failed(&row, failure, Some(Duration::from_secs(3_600)))
                    .await;
            }
        }
    }
}
