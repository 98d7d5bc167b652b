//! Signed webhooks that tell the platform when a mailbox (or a provider)
//! needs attention.
//!
//! Events are written to an outbox ([`crate::db::outbox`]) in the same
//! transaction as the state change that causes them, one row per configured
//! endpoint, and delivered by [`deliver::Deliverer`] in the background:
//! at-least-once, in order per account, retried with exponential backoff,
//! on any replica. Each request is signed as the Standard Webhooks
//! specification says, so receivers can use its published verifiers.

pub mod deliver;

use std::fmt;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::Notify;
use url::Url;

use crate::db::{outbox, Db};
use crate::diagnosis::Cause;

/// The event types, as sent in `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    AccountConnected,
    AccountReconnected,
    AccountNeedsReauth,
    AccountRecovered,
    AccountDisconnected,
    ProviderMisconfigured,
    ProviderRecovered,
    TenantAdminConsented,
    ProviderCredentialExpiring,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AccountConnected => "account.connected",
            EventType::AccountReconnected => "account.reconnected",
            EventType::AccountNeedsReauth => "account.needs_reauth",
            EventType::AccountRecovered => "account.recovered",
            EventType::AccountDisconnected => "account.disconnected",
            EventType::ProviderMisconfigured => "provider.misconfigured",
            EventType::ProviderRecovered => "provider.recovered",
            EventType::TenantAdminConsented => "tenant.admin_consented",
            EventType::ProviderCredentialExpiring => "provider.credential_expiring",
        }
    }
}

/// What an event says. Provider events carry no tenant, account or address.
pub struct Event<'a> {
    pub kind: EventType,
    pub tenant_id: Option<&'a str>,
    pub account_id: Option<&'a str>,
    pub provider: &'a str,
    pub email: Option<&'a str>,
    /// The provider's OAuth error code (`invalid_grant`, `invalid_client`…).
    pub error: Option<&'a str>,
    /// The Microsoft directory (tenant id) of an admin consent.
    pub directory: Option<&'a str>,
    /// Why (DESIGN.md "Diagnosis"): `account.needs_reauth`,
    /// `provider.misconfigured`.
    pub cause: Option<Cause>,
    /// `provider.credential_expiring`: when, and in how many whole days.
    pub expiry: Option<Expiry>,
}

/// When a provider's credential expires, as `provider.credential_expiring`
/// tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub expires_at: i64,
    pub days_left: i64,
}

/// The JSON body. Never holds a token: only ids, the address and codes.
#[derive(Serialize)]
struct Payload<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    tenant_id: Option<&'a str>,
    account_id: Option<&'a str>,
    provider: &'a str,
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    directory: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<Cause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    days_left: Option<i64>,
}

/// A human sentence for a provider's error code.
pub fn reason(error: &str) -> &'static str {
    match error {
        "invalid_grant" => {
            "The provider no longer accepts this mailbox's grant: consent was revoked, \
             the password changed, or the refresh token expired. An admin must reconnect it."
        }
        "interaction_required" | "consent_required" | "login_required" => {
            "The provider requires the user to sign in again (multi-factor authentication, \
             conditional access or new consent). An admin must reconnect the mailbox."
        }
        "invalid_client" | "unauthorized_client" => {
            "The provider refused mailconnect's client credentials (an expired or wrong \
             client secret, or a deleted app registration). The operator must fix the \
             configuration; no mailbox was changed."
        }
        _ => "The provider refused the request; see the error code.",
    }
}

/// A `whsec_…` signing secret. Debug never shows it.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// `whsec_` followed by standard base64 of 16 to 128 random bytes.
    pub fn parse(raw: &str) -> Result<WebhookSecret, String> {
        let b64 = raw
            .trim()
            .strip_prefix("whsec_")
            .ok_or("must start with whsec_ followed by base64")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "the part after whsec_ is not valid base64")?;
        if !(16..=128).contains(&bytes.len()) {
            return Err("must hold 16 to 128 bytes (24 to 64 recommended)".into());
        }
        Ok(WebhookSecret(bytes))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

/// The `webhook-signature` value for a message: `v1,` and the base64 of
/// HMAC-SHA256 over `{id}.{timestamp}.{body}`, per Standard Webhooks.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// One receiver: its URL and signing secret.
#[derive(Clone)]
pub struct Endpoint {
    pub url: Url,
    pub secret: WebhookSecret,
}

impl Endpoint {
    /// The URL as stored in the outbox (the endpoint's identity).
    pub fn key(&self) -> &str {
        self.url.as_str()
    }

    /// For logs: scheme, host and port only (a query may hold a token).
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("origin", &self.origin())
            .field("secret", &self.secret)
            .finish()
    }
}

/// How deliveries are paced.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// The longest sleep between looks for due deliveries.
    pub poll: Duration,
    /// Wait after the n-th failed attempt: `base * 2^(n-1)`, capped.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Retry this long after the event was written, then give up.
    pub give_up_after: Duration,
    /// One request's timeout.
    pub timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            poll: Duration::from_secs(2),
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(3_600),
            give_up_after: Duration::from_secs(3 * 86_400),
            timeout: Duration::from_secs(10),
        }
    }
}

impl DeliveryConfig {
    /// The wait before attempt `attempts + 1`, with up to 20 % jitter.
    pub fn backoff(&self, attempts: i64) -> Duration {
        use rand::Rng;
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << (attempts - 1).clamp(0, 20) as u32)
            .min(self.backoff_cap);
        let jitter = rand::thread_rng().gen_range(0..=exp.as_millis() as u64 / 5);
        exp + Duration::from_millis(jitter)
    }
}

/// The webhook settings of DESIGN.md.
#[derive(Clone, Debug, Default)]
pub struct WebhookConfig {
    pub endpoints: Vec<Endpoint>,
    pub delivery: DeliveryConfig,
}

/// The endpoints at run time, and a bell that wakes this replica's
/// deliverer when an event was just written.
pub struct Webhooks {
    pub config: WebhookConfig,
    pub wake: Notify,
}

impl Webhooks {
    pub fn new(config: WebhookConfig) -> Webhooks {
        Webhooks {
            config,
            wake: Notify::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.config.endpoints.is_empty()
    }

    /// Writes `event` to the outbox for every endpoint, on the caller's
    /// transaction. Nothing is written when no endpoint is configured.
    /// Call [`Webhooks::written`] after the commit.
    pub async fn enqueue(
        &self,
        conn: &mut sqlx::AnyConnection,
        event: &Event<'_>,
        now: i64,
    ) -> sqlx::Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        let id = uuid::Uuid::now_v7().to_string();
        let body = serde_json::to_string(&Payload {
            id: &id,
            kind: event.kind.as_str(),
            time: crate::rfc3339(now),
            tenant_id: event.tenant_id,
            account_id: event.account_id,
            provider: event.provider,
            email: event.email,
            error: event.error,
            reason: event.error.map(reason),
            directory: event.directory,
            cause: event.cause,
            expires_at: event.expiry.map(|e| crate::rfc3339(e.expires_at)),
            days_left: event.expiry.map(|e| e.days_left),
        })
        .expect("the payload serialises");
        // An account's events stay in order; a tenant's own (admin
        // consent) in theirs; a provider's in theirs.
        let ordering_key = match (event.account_id, event.directory, event.tenant_id) {
            (Some(account), _, _) => account.to_owned(),
            (None, Some(_), Some(tenant)) => format!("tenant:{tenant}"),
            _ => format!("provider:{}", event.provider),
        };
        for endpoint in &self.config.endpoints {
            outbox::insert(
                conn,
                &outbox::NewDelivery {
                    endpoint: endpoint.key(),
                    event_id: &id,
                    event_type: event.kind.as_str(),
                    ordering_key: &ordering_key,
                    tenant_id: event.tenant_id,
                    account_id: event.account_id,
                    body: &body,
                },
                now,
            )
            .await?;
        }
        tracing::debug!(event_id = %id, event_type = event.kind.as_str(), "webhook event written");
        Ok(())
    }

    /// Wakes the deliverer: an event was committed.
    pub fn written(&self) {
        if self.enabled() {
            self.wake.notify_one();
        }
    }
}

/// Delivery figures for metrics: finished deliveries still kept (7 days),
/// those pending, and the age of the oldest pending one.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub sent: i64,
    pub failed: i64,
    pub pending: i64,
    pub oldest_pending_age_secs: i64,
}

pub async fn stats(db: &Db) -> sqlx::Result<Stats> {
    let mut s = Stats::default();
    for (state, n, oldest) in outbox::counts(db).await? {
        match state.as_str() {
            "delivered" => s.sent = n,
            "failed" => s.failed = n,
            "pending" => {
                s.pending = n;
                s.oldest_pending_age_secs = oldest.map_or(0, |t| (crate::now() - t).max(0));
            }
            _ => {}
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_vector() {
        // The test vector of the Standard Webhooks reference libraries.
        let secret = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            sign(
                &secret,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                r#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_and_never_show() {
        assert!(WebhookSecret::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_err());
        assert!(WebhookSecret::parse("whsec_not base64!").is_err());
        assert!(WebhookSecret::parse("whsec_AAAA").is_err());
        let s = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(format!("{s:?}"), "WebhookSecret([redacted])");
        // 16 to 128 bytes.
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        for (n, ok) in [(15, false), (16, true), (128, true), (129, false)] {
            assert_eq!(
                WebhookSecret::parse(&format!("whsec_{}", b64(n))).is_ok(),
                ok,
                "{n} bytes"
            );
        }
        // The same message under another secret signs differently.
        let other = WebhookSecret::parse(&format!("whsec_{}", b64(32))).unwrap();
        assert_ne!(sign(&s, "m", 1, "{}"), sign(&other, "m", 1, "{}"));
        assert_ne!(sign(&s, "m", 1, "{}"), sign(&s, "m", 2, "{}"));
    }

    #[test]
    fn an_endpoint_shows_only_its_origin() {
        let e = Endpoint {
            url: Url::parse("https://hooks.example.com:8443/in?token=secret-in-query").unwrap(),
            secret: WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap(),
        };
        assert_eq!(e.origin(), "https://hooks.example.com:8443");
        assert_eq!(
            e.key(),
            "https://hooks.example.com:8443/in?token=secret-in-query"
        );
        let shown = format!("{e:?}");
        assert_eq!(
            shown,
            r#"Endpoint { origin: "https://hooks.example.com:8443", secret: WebhookSecret([redacted]) }"#
        );
    }

    #[test]
    fn each_error_class_has_its_sentence() {
        assert!(reason("invalid_grant").contains("grant"));
        for e in ["interaction_required", "consent_required", "login_required"] {
            assert!(reason(e).contains("sign in again"), "{e}");
        }
        for e in ["invalid_client", "unauthorized_client"] {
            assert!(reason(e).contains("client credentials"), "{e}");
        }
        assert!(reason("invalid_scope").contains("see the error code"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = DeliveryConfig::default();
        for _ in 0..100 {
            let first = c.backoff(1);
            assert!(first >= Duration::from_secs(5) && first <= Duration::from_secs(6));
        }
        // Up to a fifth of jitter, spread over that range.
        let most = (0..200).map(|_| c.backoff(1)).max().unwrap();
        assert!(most > Duration::from_millis(5_500), "{most:?}");
        let tenth = c.backoff(10);
        assert!(tenth >= Duration::from_secs(2_560) && tenth <= Duration::from_secs(3_600 * 6 / 5));
        assert!(c.backoff(40) <= Duration::from_secs(3_600 * 6 / 5));
    }
}
