//! Refresh, in one place:
//!
//! - this module: one refresh of one account ([`refresh_leased`]) and when
//!   refreshes happen ([`Schedule`]);
//! - [`on_demand`]: the token route's gate: one refresh per account at a
//!   time, callers share its result;
//! - [`sweep`]: the background task that keeps every account fresh;
//! - [`health`]: provider health, recorded in the database;
//! - `unsaved`: answers the database did not take, kept until stored.
//!
//! One refresh, shared by the token route and the
//! background sweep: the caller holds the account's lease and has read
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

pub mod health;
pub mod on_demand;
pub mod sweep;
mod unsaved;
pub mod uses;

use std::time::Duration;

use rand::Rng;

use super::Core;
use crate::crypto::Column;
use crate::db::accounts::AccountRow;
use crate::diagnosis::Cause;
use crate::metrics;
use crate::oauth::{Provider, TokenError, TokenSet};
pub use unsaved::Unsaved;
use unsaved::{Kept, Stored};

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
    /// Which accounts are renewed ahead of expiry
    /// (`MAILCONNECT_REFRESH_WARM_WINDOW_SECS`).
    pub warm_window: WarmWindow,
}

/// An idle account (no token handed out within the warm window) is
/// refreshed this long after its last refresh or connect, not ahead of
/// expiry (DESIGN.md: one refresh per 7 days): far more often than any
/// provider lets an unused refresh token die (Microsoft after 90 days,
/// Google after 6 months; `MAILCONNECT_REFRESH_IDLE_SECS` shortens it for
/// a provider that is stricter), rarely enough to cost next to nothing.
/// (Google's refresh tokens of apps in "Testing" die 7 days after consent
/// whatever is done; no refresh saves them.) The token route refreshes an
/// idle account on demand when asked.
pub const KEEP_ALIVE_SECS: i64 = 7 * 86_400;

/// Which accounts the background refresher keeps warm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarmWindow {
    /// Every connected account (`all`): renewed ahead of expiry whether
    /// or not anyone uses it.
    All,
    /// Accounts whose token was handed out within this many seconds.
    Secs(i64),
}

impl WarmWindow {
    /// The earliest use that still makes an account warm at `now`
    /// (`i64::MIN` for `all`, which every use and none satisfies).
    pub fn warm_since(self, now: i64) -> i64 {
        match self {
            WarmWindow::All => i64::MIN,
            WarmWindow::Secs(secs) => now - secs,
        }
    }

    /// How stale a recorded use may be before a new one is written: an
    /// eighth of the window, at most an hour. Coarser marks would blur
    /// the window; finer ones would write a busy account at every flush.
    pub fn use_precision(self) -> i64 {
        match self {
            WarmWindow::All => 3_600,
            WarmWindow::Secs(secs) => (secs / 8).min(3_600),
        }
    }

    /// Whether an account last used at `last_used` (never: `None`) is warm.
    pub fn is_warm(self, last_used: Option<i64>, now: i64) -> bool {
        match self {
            WarmWindow::All => true,
            WarmWindow::Secs(_) => last_used.is_some_and(|t| t >= self.warm_since(now)),
        }
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            lead_secs: 600,
            idle_secs: 7 * 86_400,
            lease_secs: 60,
            backoff_base_secs: 30,
            backoff_cap_secs: 3_600,
            warm_window: WarmWindow::Secs(86_400),
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

    /// When an idle account refreshed (or connected) at `now` is next
    /// due: [`KEEP_ALIVE_SECS`] on, or sooner if the idle limit says so.
    pub fn keep_alive_due(&self, now: i64) -> i64 {
        now + KEEP_ALIVE_SECS.min(self.idle_secs)
    }

    /// When an account whose token expires at `expires_at` is next due:
    /// ahead of expiry while it is `warm`, else only to keep it alive.
    pub fn next_due_for(&self, expires_at: i64, warm: bool, now: i64) -> i64 {
        if warm {
            self.next_due(expires_at, now)
        } else {
            self.keep_alive_due(now)
        }
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
    Refused {
        error: String,
        cause: Cause,
    },
    /// Might pass later; no token or status changed.
    Transient {
        retry_after: Option<Duration>,
        reason: String,
        cause: Cause,
    },
    /// Disconnected while the refresh ran: the new tokens were dropped.
    Disconnected,
    /// The provider refused a refresh token that had been rotated by another
    /// refresh meanwhile (its result is stored now): nothing changed.
    Superseded,
}

/// Why a token is asked of a provider (the `reason` label of
/// `mailconnect_provider_token_requests_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The token route (or verify) needs a token now.
    OnDemand,
    /// The background refresher renews a warm account ahead of expiry.
    KeepWarm,
    /// The background refresher keeps an idle account's refresh token alive.
    KeepAlive,
    /// An application token (client credentials) for a directory.
    AppToken,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::OnDemand => "on_demand",
            Reason::KeepWarm => "keep_warm",
            Reason::KeepAlive => "keep_alive",
            Reason::AppToken => "app_token",
        }
    }
}

/// Refreshes `row` (read under its lease) and stores the result.
#[tracing::instrument(skip_all, fields(account_id = %row.id, provider = %row.provider))]
pub async fn refresh_leased(
    core: &Core,
    provider: &dyn Provider,
    row: &AccountRow,
    reason: Reason,
) -> anyhow::Result<Outcome> {
    let id = row.id;
    // An earlier answer the database has not taken yet comes first: its
    // refresh token is the live one, the stored one may be spent.
    if let Some(outcome) = core.unsaved.settle(core, id).await {
        return Ok(outcome);
    }
    let enc = row
        .refresh_token_enc
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("connected account without a refresh token"))?;
    let refresh_token = core
        .keys
        .open_for(Column::RefreshToken, &id.to_string(), enc)
        .map_err(|e| anyhow::anyhow!("opening the refresh token of {id}: {e}"))?;

    let kind = provider.kind().as_str();
    metrics::token_request(kind, reason.as_str());
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
    let cause = answer.as_ref().err().map_or("none", |e| e.cause().as_str());
    ::metrics::counter!(metrics::REFRESHES, "provider" => kind, "outcome" => outcome, "cause" => cause)
        .increment(1);
    match answer {
        Ok(tokens) => {
            let kept = Kept::tokens(core, row, enc, &tokens, crate::now());
            let stored = kept.store(core).await;
            match stored {
                Ok(Stored::Done | Stored::Superseded) => {
                    health::recovered(core, provider.kind().as_str()).await
                }
                Ok(Stored::Gone) => {
                    health::recovered(core, provider.kind().as_str()).await;
                    return Ok(Outcome::Disconnected);
                }
                // The next stored refresh records the provider's recovery.
                Err(e) => core.unsaved.keep(id, kept, &e),
            }
            tracing::info!(rotated = tokens.refresh_token.is_some(), "token refreshed");
            Ok(Outcome::Refreshed(tokens))
        }
        Err(TokenError::Reauth { error, cause }) => {
            tracing::warn!(error = %error, "refresh refused: the mailbox needs re-authorisation");
            let kept = Kept::reauth(row, enc, &error, cause);
            match kept.store(core).await {
                Ok(Stored::Superseded) => {
                    tracing::info!(
                        "the refused refresh token had been rotated meanwhile; nothing changes"
                    );
                    Ok(Outcome::Superseded)
                }
                Ok(Stored::Done | Stored::Gone) => Ok(Outcome::NeedsReauth),
                Err(e) => {
                    core.unsaved.keep(id, kept, &e);
                    Ok(Outcome::NeedsReauth)
                }
            }
        }
        Err(TokenError::Misconfigured { error, cause }) => {
            health::refused_credentials(core, kind, &error, cause).await;
            Ok(Outcome::Misconfigured)
        }
        Err(TokenError::Refused {
            error,
            status,
            cause,
        }) => {
            tracing::error!(provider = %provider.kind(), error = %error, status, "the provider refused the refresh request");
            Ok(Outcome::Refused { error, cause })
        }
        Err(TokenError::Transient {
            retry_after,
            reason,
            cause,
        }) => {
            tracing::warn!(reason = %reason, %cause, "refresh failed for now");
            Ok(Outcome::Transient {
                retry_after,
                reason,
                cause,
            })
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
    fn an_idle_account_is_only_kept_alive() {
        let s = Schedule::default();
        assert_eq!(s.next_due_for(NOW + 3600, false, NOW), NOW + 7 * 86_400);
        let warm = s.next_due_for(NOW + 3600, true, NOW);
        assert!((NOW + 3600 - 750..=NOW + 3600 - 600).contains(&warm));
        // A shorter idle limit wins over the keep-alive constant.
        let short = Schedule {
            idle_secs: 3_600,
            ..Schedule::default()
        };
        assert_eq!(short.keep_alive_due(NOW), NOW + 3_600);
    }

    #[test]
    fn warm_means_used_within_the_window_or_all() {
        let w = WarmWindow::Secs(86_400);
        assert!(w.is_warm(Some(NOW - 86_400), NOW));
        assert!(!w.is_warm(Some(NOW - 86_401), NOW));
        assert!(!w.is_warm(None, NOW));
        assert!(WarmWindow::All.is_warm(None, NOW));
        assert!(WarmWindow::All.is_warm(Some(0), NOW));
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
