//! Provider health, recorded in the database so that every replica reports
//! the same and `provider.misconfigured` / `provider.recovered` fire once
//! per transition, not once per attempt or per replica.

use super::super::Core;
use crate::db::accounts::Failure;
use crate::db::providers;
use crate::diagnosis::Cause;
use crate::webhooks::{Event, EventType};

/// The provider refused our own client credentials (`invalid_client`, an
/// expired secret), whatever asked: a refresh or a code redemption. Counted,
/// logged loudly, and recorded as the provider's state; no account changes.
pub async fn refused_credentials(core: &Core, provider: &str, error: &str, cause: Cause) {
    ::metrics::counter!(crate::metrics::PROVIDER_CONFIG_ERRORS, "provider" => provider.to_owned(), "cause" => cause.as_str())
        .increment(1);
    tracing::error!(
        provider,
        error,
        "the provider refused our client credentials: check the client id and secret"
    );
    misconfigured(core, provider, error, cause).await;
}

/// `provider.misconfigured`, once per transition across every replica.
/// A failure to record it is logged; the refresh outcome stands.
pub async fn misconfigured(core: &Core, provider: &str, error: &str, cause: Cause) {
    let result: anyhow::Result<bool> = async {
        let now = crate::now();
        let mut tx = core.db.pool.begin().await?;
        let failure = Failure { error, cause };
        let changed = providers::transition(&mut tx, provider, Some(failure), now).await?;
        if changed {
            core.webhooks
                .enqueue(
                    &mut tx,
                    &Event {
                        cause: Some(cause),
                        expiry: None,
                        ..provider_event(EventType::ProviderMisconfigured, provider, Some(error))
                    },
                    now,
                )
                .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }
    .await;
    match result {
        Ok(true) => core.webhooks.written(),
        Ok(false) => {}
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "could not record the provider as misconfigured"
        ),
    }
}

/// `provider.recovered`: the first success after `provider.misconfigured`.
pub async fn recovered(core: &Core, provider: &str) {
    let result: anyhow::Result<bool> = async {
        if !providers::misconfigured(&core.db, provider).await? {
            return Ok(false);
        }
        let now = crate::now();
        let mut tx = core.db.pool.begin().await?;
        let changed = providers::recovered(&mut tx, provider, now).await?;
        if changed {
            core.webhooks
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
            core.webhooks.written()
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
        directory: None,
        cause: None,
        expiry: None,
    }
}
