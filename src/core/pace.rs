//! The pace of token requests to each provider
//! (`MAILCONNECT_PROVIDER_RATE_LIMIT`): a budget of requests per second
//! per provider, and per Microsoft directory for app tokens, shared by
//! every replica through the database (`provider_pace`), so that N
//! replicas together send no more than the budget, not N times it.
//!
//! Each request takes one unit of its second's budget before it is sent
//! (a conditional increment; one small write per provider request, which
//! costs far less than the request itself). On-demand requests (a worker
//! or an admin is waiting) may use the whole budget; background ones (the
//! refresher's) only [`BACKGROUND_SHARE`] of it, so however long the
//! refresher's backlog, a token request finds room within a second. A 429
//! from the provider still pauses it (the refresher's provider pause).
//!
//! Written by hand: a rate limiter crate (governor) counts in one
//! process's memory; this budget must be one across replicas.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::db::{pace, Db};
use crate::domain::ProviderKind;
use crate::metrics;

/// Background requests may take this share of each second's budget
/// (numerator, denominator); on-demand ones take the rest, and may take it
/// all.
pub const BACKGROUND_SHARE: (i64, i64) = (4, 5);

/// How long an on-demand request waits for room before it is sent all the
/// same: its caller is waiting, and the provider's own limit is far above
/// a sensible budget.
pub const ON_DEMAND_PATIENCE: Duration = Duration::from_secs(2);

/// How long background work waits for room before its account goes back
/// (still due, for a later look): its lease would otherwise keep a
/// worker's on-demand request for that account waiting.
pub const BACKGROUND_PATIENCE: Duration = Duration::from_millis(1_500);

/// Until when background work under a lease of `lease_secs` taken at
/// `leased` may wait for room: [`BACKGROUND_PATIENCE`] from now, and never
/// past a third of the lease, so the request (at most the provider
/// timeout, under half the lease) and the store that follow end inside it.
pub fn background_deadline(leased: Instant, lease_secs: i64) -> Instant {
    let lease_third = leased + Duration::from_secs((lease_secs / 3).max(1) as u64);
    lease_third.min(Instant::now() + BACKGROUND_PATIENCE)
}

/// Who is waiting for a token request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A worker's token request, a verify, a connect or an app token.
    OnDemand,
    /// The background refresher.
    Background,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::OnDemand => "on_demand",
            Priority::Background => "background",
        }
    }
}

/// The budget a token request counts against: its provider's, or for a
/// Microsoft app token its directory's (`microsoft/{directory}`).
pub fn budget(provider: ProviderKind, directory: Option<&str>) -> String {
    match directory {
        Some(d) => format!("{}/{d}", provider.as_str()),
        None => provider.as_str().to_owned(),
    }
}

/// The shared budget: requests per second per budget.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub per_second: i64,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace { per_second: 50 }
    }
}

impl Pace {
    /// The most requests of `priority` one second may hold.
    pub fn cap(&self, priority: Priority) -> i64 {
        match priority {
            Priority::OnDemand => self.per_second,
            Priority::Background => {
                (self.per_second * BACKGROUND_SHARE.0 / BACKGROUND_SHARE.1).max(1)
            }
        }
    }

    /// Waits for room for one request in `budget`. True when it may be
    /// sent: room was found, or an on-demand request waited
    /// [`ON_DEMAND_PATIENCE`], or the database could not count (a
    /// request is not refused for that; it is logged). False only for a
    /// background request that found no room before `until`: its work goes
    /// back for later.
    pub async fn admit(
        &self,
        db: &Db,
        budget: &str,
        priority: Priority,
        until: Option<Instant>,
    ) -> bool {
        let started = Instant::now();
        let give_up = match priority {
            Priority::OnDemand => Some(started + ON_DEMAND_PATIENCE),
            Priority::Background => until,
        };
        let provider = budget.split('/').next().unwrap_or(budget).to_owned();
        let mut waited = false;
        loop {
            let now = crate::now();
            match pace::take(db, budget, now, self.cap(priority)).await {
                Ok(true) => {
                    if waited {
                        count(&provider, priority, "admitted");
                    }
                    return true;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, budget, "could not count a provider request against its budget; sending it");
                    return true;
                }
            }
            // Room comes with the next second.
            let next = next_second();
            if give_up.is_some_and(|g| Instant::now() + next > g) {
                return match priority {
                    Priority::OnDemand => {
                        count(&provider, priority, "overran");
                        tracing::warn!(budget, "the provider's budget is spent by on-demand requests alone; sending anyway");
                        true
                    }
                    Priority::Background => {
                        count(&provider, priority, "deferred");
                        false
                    }
                };
            }
            waited = true;
            tokio::time::sleep(next).await;
        }
    }
}

/// Until the next whole second of the wall clock (the budget's windows),
/// plus a few milliseconds so that waiters do not all ask at once.
fn next_second() -> Duration {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let into = Duration::from_nanos(u64::from(since_epoch.subsec_nanos()));
    let jitter = Duration::from_millis(rand::thread_rng().gen_range(1..=25));
    Duration::from_secs(1).saturating_sub(into) + jitter
}

fn count(provider: &str, priority: Priority, outcome: &'static str) {
    ::metrics::counter!(metrics::PACE_WAITS, "provider" => provider.to_owned(), "priority" => priority.as_str(), "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> Db {
        let db = Db::connect("sqlite::memory:").await.unwrap();
        db.migrate().await.unwrap();
        db
    }

    #[test]
    fn background_work_gets_four_fifths_of_the_budget_and_at_least_one() {
        assert_eq!(Pace { per_second: 50 }.cap(Priority::Background), 40);
        assert_eq!(Pace { per_second: 50 }.cap(Priority::OnDemand), 50);
        assert_eq!(Pace { per_second: 1 }.cap(Priority::Background), 1);
        assert_eq!(Pace { per_second: 5 }.cap(Priority::Background), 4);
    }

    #[test]
    fn app_tokens_count_against_their_directory() {
        assert_eq!(budget(ProviderKind::Microsoft, None), "microsoft");
        assert_eq!(
            budget(ProviderKind::Microsoft, Some("contoso.com")),
            "microsoft/contoso.com"
        );
    }

    #[tokio::test]
    async fn a_second_holds_the_cap_and_no_more() {
        let db = db().await;
        for _ in 0..3 {
            assert!(pace::take(&db, "google", 100, 3).await.unwrap());
        }
        assert!(!pace::take(&db, "google", 100, 3).await.unwrap());
        // On-demand room above the background cap.
        assert!(pace::take(&db, "google", 100, 4).await.unwrap());
        assert!(!pace::take(&db, "google", 100, 4).await.unwrap());
        // Another second, another budget.
        assert!(pace::take(&db, "google", 101, 3).await.unwrap());
        assert!(pace::take(&db, "microsoft", 100, 3).await.unwrap());
        assert!(!pace::take(&db, "google", 102, 0).await.unwrap());
        assert_eq!(pace::sent_since(&db, "google", 100).await.unwrap(), 5);
        assert_eq!(pace::sent_since(&db, "google", 101).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_providers_count_includes_its_directories_and_no_other() {
        let db = db().await;
        assert!(pace::take(&db, "microsoft", 10, 5).await.unwrap());
        assert!(pace::take(&db, "microsoft/contoso.com", 10, 5)
            .await
            .unwrap());
        assert!(pace::take(&db, "microsoftish", 10, 5).await.unwrap());
        assert_eq!(pace::sent_since(&db, "microsoft", 0).await.unwrap(), 2);
        assert_eq!(pace::purge(&db, 11).await.unwrap(), 3);
        assert_eq!(pace::sent_since(&db, "microsoft", 0).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn background_work_without_room_is_deferred_and_on_demand_goes_first() {
        let db = db().await;
        let pace = Pace { per_second: 5 };
        loop {
            let second = crate::now();
            // The background share of this second is spent.
            while pace::take(&db, "oidc", second, pace.cap(Priority::Background))
                .await
                .unwrap()
            {}
            let soon = Some(Instant::now() + Duration::from_millis(1));
            let deferred = !pace.admit(&db, "oidc", Priority::Background, soon).await;
            assert!(pace.admit(&db, "oidc", Priority::OnDemand, None).await);
            if crate::now() != second {
                continue; // a new second began meanwhile: again
            }
            assert!(deferred, "background work finds no room");
            assert_eq!(
                pace::sent_since(&db, "oidc", second).await.unwrap(),
                5,
                "the on-demand request took the room kept for it"
            );
            return;
        }
    }

    #[tokio::test]
    async fn on_demand_requests_beyond_the_budget_wait_for_the_next_second() {
        let db = db().await;
        let pace = Pace { per_second: 1 };
        let started = Instant::now();
        assert!(pace.admit(&db, "oidc", Priority::OnDemand, None).await);
        let first = crate::now();
        assert!(pace.admit(&db, "oidc", Priority::OnDemand, None).await);
        assert!(
            crate::now() > first,
            "the second request went in a later second"
        );
        assert!(started.elapsed() < ON_DEMAND_PATIENCE + Duration::from_millis(500));
    }
}
