//! The background deliverer: sends what the outbox holds, on one replica or
//! many.
//!
//! For each endpoint it claims (with a lease) the oldest pending event of
//! each account, sends them concurrently, and records each outcome: a 2xx
//! finishes the delivery; anything else (another status, a timeout, a
//! refused connection, a redirect, which is never followed) schedules a
//! retry with exponential backoff, until the event is older than the
//! give-up limit. The next event of an account is claimed only once the
//! previous one is finished. A replica that dies holding a lease delays
//! those events by the lease; they are then sent again (at-least-once:
//! receivers drop duplicates by `webhook-id`). Outcomes are audited once
//! per delivery, never per attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use super::{sign, Endpoint, Webhooks};
use crate::db::audit;
use crate::db::outbox::{self, DeliveryRow};
use crate::db::Db;

/// Deliveries claimed per endpoint per look.
const BATCH: i64 = 32;
/// Requests in flight per endpoint.
const CONCURRENCY: usize = 8;
/// Finished deliveries are kept this long (for stats and investigation).
const KEEP_FINISHED_SECS: i64 = 7 * 86_400;

pub struct Deliverer {
    db: Db,
    webhooks: Arc<Webhooks>,
    client: reqwest::Client,
    owner: String,
}

/// How one attempt went.
enum Attempt {
    Delivered,
    Failed(String),
}

impl Deliverer {
    /// `owner` names this replica as a lease holder.
    pub fn new(db: Db, webhooks: Arc<Webhooks>, owner: &str) -> anyhow::Result<Deliverer> {
        let timeout = webhooks.config.delivery.timeout;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .user_agent(concat!("mailconnect-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer {
            owner: format!("{owner}:webhooks"),
            db,
            webhooks,
            client,
        })
    }

    /// Runs until `shutdown` turns true; deliveries in flight finish first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let endpoints: Vec<Arc<Endpoint>> = self
            .webhooks
            .config
            .endpoints
            .iter()
            .cloned()
            .map(Arc::new)
            .collect();
        tracing::info!(endpoints = endpoints.len(), "webhook deliverer started");
        let mut last_purge = Instant::now() - Duration::from_secs(3_600);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let mut busy = false;
            for endpoint in &endpoints {
                match self.claim(endpoint).await {
                    Ok(rows) => {
                        busy |= !rows.is_empty();
                        let (me, stop) = (&self, &shutdown);
                        futures::stream::iter(rows)
                            .for_each_concurrent(CONCURRENCY, |row| async move {
                                if *stop.borrow() {
                                    me.hand_back(&row).await;
                                } else {
                                    me.deliver(endpoint, row).await;
                                }
                            })
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not claim webhook deliveries; retrying")
                    }
                }
            }
            if last_purge.elapsed() > Duration::from_secs(3_600) {
                last_purge = Instant::now();
                let before = crate::now() - KEEP_FINISHED_SECS;
                if let Err(e) = outbox::purge_finished(&self.db, before).await {
                    tracing::warn!(error = %e, "could not purge finished webhook deliveries");
                }
            }
            if busy {
                continue;
            }
            let wait = self.idle_wait(&endpoints).await;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.webhooks.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!("webhook deliverer stopped");
    }

    async fn claim(&self, endpoint: &Endpoint) -> sqlx::Result<Vec<DeliveryRow>> {
        let now_ms = now_ms();
        // Longer than any request may take, so a live replica keeps its lease.
        let lease = self.webhooks.config.delivery.timeout + Duration::from_secs(10);
        outbox::claim(
            &self.db,
            endpoint.key(),
            &self.owner,
            now_ms + lease.as_millis() as i64,
            now_ms,
            BATCH,
        )
        .await
    }

    /// Until the next retry is due, never longer than the poll setting (other
    /// replicas write events too).
    async fn idle_wait(&self, endpoints: &[Arc<Endpoint>]) -> Duration {
        let poll = self.webhooks.config.delivery.poll;
        let mut wait = poll;
        for endpoint in endpoints {
            if let Ok(Some(due)) = outbox::earliest_due_ms(&self.db, endpoint.key()).await {
                let until = Duration::from_millis((due - now_ms()).max(10) as u64);
                wait = wait.min(until);
            }
        }
        wait
    }

    #[tracing::instrument(skip_all, fields(event_id = %row.event_id, event_type = %row.event_type, endpoint = %endpoint.origin()))]
    async fn deliver(&self, endpoint: &Endpoint, row: DeliveryRow) {
        let result = match self.attempt(endpoint, &row).await {
            Attempt::Delivered => self.finish(&row, "delivered", None).await,
            Attempt::Failed(error) => {
                let cfg = &self.webhooks.config.delivery;
                let attempts = row.attempts + 1;
                let age = crate::now() - row.created_at;
                if age >= cfg.give_up_after.as_secs() as i64 {
                    tracing::error!(attempts, error = %error, "webhook delivery failed; giving up");
                    self.finish(&row, "failed", Some(&error)).await
                } else {
                    let wait = cfg.backoff(attempts);
                    tracing::warn!(attempts, error = %error, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed; will retry");
                    outbox::retry_later(
                        &self.db,
                        &row,
                        &self.owner,
                        &error,
                        now_ms() + wait.as_millis() as i64,
                    )
                    .await
                    .map_err(anyhow::Error::from)
                }
            }
        };
        if let Err(e) = result {
            tracing::error!(
                error = format!("{e:#}"),
                "could not record a webhook delivery; it will be sent again"
            );
        }
    }

    async fn attempt(&self, endpoint: &Endpoint, row: &DeliveryRow) -> Attempt {
        let timestamp = crate::now();
        let signature = sign(&endpoint.secret, &row.event_id, timestamp, &row.body);
        let sent = self
            .client
            .post(endpoint.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &row.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(row.body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Attempt::Delivered,
            Ok(r) => Attempt::Failed(format!("http_{}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Attempt::Failed("timeout".into()),
            Err(e) if e.is_connect() => Attempt::Failed("connection_failed".into()),
            Err(_) => Attempt::Failed("request_failed".into()),
        }
    }

    /// Ends a delivery and audits it in one transaction: one audit event
    /// per delivery, whatever the number of attempts.
    async fn finish(
        &self,
        row: &DeliveryRow,
        state: &str,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let now = crate::now();
        let mut tx = self.db.pool.begin().await?;
        let mine = outbox::finish(&mut tx, row, &self.owner, state, error, now).await?;
        if mine {
            if let Some(tenant) = row.tenant_id.as_deref() {
                let detail = format!(
                    "{} {} after {} attempt(s){}",
                    row.event_type,
                    row.event_id,
                    row.attempts + 1,
                    error
                        .map(|e| format!(", last error {e}"))
                        .unwrap_or_default()
                );
                audit::record(
                    &mut *tx,
                    &audit::NewEvent {
                        tenant_id: tenant,
                        account_id: row.account_id.as_deref(),
                        provider: None,
                        action: if state == "delivered" {
                            "webhook_delivered"
                        } else {
                            "webhook_failed"
                        },
                        actor: "system",
                        outcome: if state == "delivered" {
                            "delivered"
                        } else {
                            "gave_up"
                        },
                        detail: Some(&detail),
                    },
                    now,
                )
                .await?;
            }
        }
        tx.commit().await?;
        if mine && state == "delivered" {
            tracing::info!(attempts = row.attempts + 1, "webhook delivered");
        }
        Ok(())
    }

    /// Hands back a claimed delivery that was not attempted.
    async fn hand_back(&self, row: &DeliveryRow) {
        if let Err(e) = outbox::release(&self.db, row, &self.owner).await {
            tracing::warn!(error = %e, "could not hand back a webhook lease; it lapses by itself");
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
