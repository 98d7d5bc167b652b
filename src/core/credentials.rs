//! Warnings before a provider's credential expires (DESIGN.md
//! "Credentials"): a certificate's `notAfter` or a secret's
//! `*_CLIENT_SECRET_EXPIRES_AT` shows as a metric, and
//! `provider.credential_expiring` is sent 30, 7 and 1 days before, once per
//! threshold across every replica and restart.
//!
//! When a check finds several thresholds passed at once (a service started
//! five days before expiry has passed 30 and 7), it sends one event, for
//! the nearest threshold, and records the others as passed: a warning of
//! "30 days" five days before would only mislead.

use super::Core;
use crate::db::credentials;
use crate::domain::ProviderKind;
use crate::webhooks::{Event, EventType, Expiry};

/// The thresholds, in days before expiry, nearest last.
pub const THRESHOLDS: [i64; 3] = [30, 7, 1];

const DAY: i64 = 86_400;

/// Checks every configured provider's credential at `now`: the metric, and
/// the warning of a threshold newly passed.
pub async fn check_expiry(core: &Core, now: i64) {
    for kind in ProviderKind::ALL {
        let Some(provider) = core.provider(kind) else {
            continue;
        };
        let Some(expires_at) = provider.credential().expires_at() else {
            continue;
        };
        ::metrics::gauge!(crate::metrics::CREDENTIAL_EXPIRY, "provider" => kind.as_str())
            .set(expires_at as f64);
        if let Err(e) = warn_if_due(core, kind, expires_at, now).await {
            tracing::warn!(provider = %kind, error = format!("{e:#}"), "could not record a credential expiry warning");
        }
    }
}

/// Whole days left before `expires_at` (negative once it has passed).
pub fn days_left(expires_at: i64, now: i64) -> i64 {
    (expires_at - now).div_euclid(DAY)
}

async fn warn_if_due(
    core: &Core,
    kind: ProviderKind,
    expires_at: i64,
    now: i64,
) -> anyhow::Result<()> {
    let passed: Vec<i64> = THRESHOLDS
        .into_iter()
        .filter(|t| expires_at - now <= t * DAY)
        .collect();
    let Some(nearest) = passed.last().copied() else {
        return Ok(());
    };
    let provider = kind.as_str();
    let mut tx = core.db.pool.begin().await?;
    let mut send = false;
    for threshold in passed {
        let first =
            credentials::record_warning(&mut tx, provider, expires_at, threshold, now).await?;
        send |= first && threshold == nearest;
    }
    let days_left = days_left(expires_at, now);
    if send {
        core.webhooks
            .enqueue(
                &mut tx,
                &Event {
                    kind: EventType::ProviderCredentialExpiring,
                    tenant_id: None,
                    account_id: None,
                    provider,
                    email: None,
                    error: None,
                    directory: None,
                    cause: None,
                    expiry: Some(Expiry {
                        expires_at,
                        days_left,
                    }),
                },
                now,
            )
            .await?;
    }
    tx.commit().await?;
    if send {
        core.webhooks.written();
        tracing::warn!(
            %provider,
            days_left,
            expires_at = %crate::rfc3339(expires_at),
            "the provider's client credential expires soon: replace it"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_left_counts_whole_days_and_goes_negative_after() {
        let now = 1_800_000_000;
        assert_eq!(days_left(now + 5 * DAY + 3600, now), 5);
        assert_eq!(days_left(now + DAY - 1, now), 0);
        assert_eq!(days_left(now - 1, now), -1);
    }
}
