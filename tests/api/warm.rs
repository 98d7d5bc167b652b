//! Adaptive keep-warm (MAILCONNECT_REFRESH_WARM_WINDOW_SECS): the
//! background refresher renews ahead of expiry only the accounts whose
//! token was handed out within the window; the others are only kept alive
//! (one refresh every seven days) and refreshed on demand when asked for,
//! which makes them warm again.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::*;

const DAY: i64 = 86_400;

/// An app whose refresher looks every second and whose token uses are
/// written every second, with the warm window `window`.
async fn spawn(window: &str) -> TestApp {
    TestApp::spawn_with(Options {
        env: vec![
            ("MAILCONNECT_REFRESH_POLL_SECS", "1".into()),
            ("MAILCONNECT_USE_FLUSH_SECS", "1".into()),
            ("MAILCONNECT_REFRESH_WARM_WINDOW_SECS", window.into()),
        ],
        ..Options::default()
    })
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Sched {
    refresh_due_at: Option<i64>,
    token_expires_at: Option<i64>,
    last_used_at: Option<i64>,
    lease_owner: Option<String>,
}

async fn sched(app: &TestApp, id: &str) -> Sched {
    sqlx::query_as(
        "SELECT refresh_due_at, token_expires_at, last_used_at, lease_owner FROM accounts WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Makes the account due now.
async fn make_due(app: &TestApp, id: &str) {
    sqlx::query("UPDATE accounts SET refresh_due_at = $1 WHERE id = $2")
        .bind(now() - 1)
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
}

/// Waits (10 s at most) until `done` holds for the account's schedule.
async fn until(app: &TestApp, id: &str, what: &str, done: impl Fn(&Sched) -> bool) -> Sched {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = sched(app, id).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: never: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Due again (in the future) with no lease held: the refresher is done.
fn dealt_with(s: &Sched) -> bool {
    s.refresh_due_at.is_some_and(|d| d > now()) && s.lease_owner.is_none()
}

/// Due ahead of expiry (the lead, 600 s, and up to 150 s of jitter).
fn warm_due(s: &Sched) -> bool {
    let lead = s.token_expires_at.unwrap() - s.refresh_due_at.unwrap();
    (600..=750).contains(&lead)
}

/// Due only to keep the refresh token alive: seven days on.
fn keep_alive_due(s: &Sched) -> bool {
    let due = s.refresh_due_at.unwrap() - now();
    (7 * DAY - 10..=7 * DAY).contains(&due)
}

#[tokio::test]
async fn an_unused_account_is_only_kept_alive_and_refreshed_on_demand_when_asked_for() {
    let app = spawn("2").await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let s = sched(&app, &id).await;
    assert!(keep_alive_due(&s), "not due ahead of expiry: {s:?}");
    assert_eq!(s.last_used_at, None);

    // Its keep-alive date comes: one refresh, and the next is seven days on,
    // not ten minutes before the new token expires.
    let grants = app.ms.refresh_grants();
    make_due(&app, &id).await;
    let s = until(&app, &id, "kept alive", dealt_with).await;
    assert_eq!(app.ms.refresh_grants(), grants + 1);
    assert!(keep_alive_due(&s), "{s:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.ms.refresh_grants(), grants + 1, "refreshed again");

    // A worker asks for it once its token has run out: refreshed on
    // demand, and warm from then on.
    app.expire_stored_token(&id).await;
    let r = app.token(TENANT, &id).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.ms.refresh_grants(), grants + 2);
    let s = until(&app, &id, "use recorded", |s| s.last_used_at.is_some()).await;
    assert!(
        (now() - 5..=now()).contains(&s.last_used_at.unwrap()),
        "{s:?}"
    );
    assert!(warm_due(&s), "warm after the use: {s:?}");

    let metrics = app.metrics().await;
    for reason in ["keep_alive", "on_demand"] {
        let line = format!(
            "mailconnect_provider_token_requests_total{{provider=\"microsoft\",reason=\"{reason}\"}}"
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(
        metrics.contains("mailconnect_accounts_by_temperature{temperature=\"idle\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_used_account_is_kept_warm_by_the_background_refresher() {
    let app = spawn("600").await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    assert!(keep_alive_due(&sched(&app, &id).await));

    // A worker gets its (still fresh) token: no refresh, but the use is
    // written and pulls the account's due time ahead of expiry.
    let grants = app.ms.refresh_grants();
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
    let s = until(&app, &id, "use recorded", |s| s.last_used_at.is_some()).await;
    assert_eq!(
        s.refresh_due_at,
        s.token_expires_at.map(|e| e - 600),
        "pulled forward: {s:?}"
    );
    assert_eq!(app.ms.refresh_grants(), grants);

    // Its due time comes: renewed, and due again ahead of expiry.
    make_due(&app, &id).await;
    let s = until(&app, &id, "kept warm", dealt_with).await;
    assert_eq!(app.ms.refresh_grants(), grants + 1);
    assert!(warm_due(&s), "{s:?}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            "mailconnect_provider_token_requests_total{provider=\"microsoft\",reason=\"keep_warm\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn all_keeps_an_unused_account_warm() {
    let app = spawn("all").await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let s = sched(&app, &id).await;
    assert!(warm_due(&s), "{s:?}");
    let grants = app.ms.refresh_grants();
    make_due(&app, &id).await;
    let s = until(&app, &id, "kept warm", dealt_with).await;
    assert_eq!(app.ms.refresh_grants(), grants + 1);
    assert!(warm_due(&s), "{s:?}");
    assert_eq!(s.last_used_at, None);
}

#[tokio::test]
async fn uses_noted_at_shutdown_are_written() {
    let mut app = TestApp::spawn_with(Options {
        env: vec![
            ("MAILCONNECT_USE_FLUSH_SECS", "300".into()),
            ("MAILCONNECT_REFRESH_WARM_WINDOW_SECS", "3600".into()),
        ],
        ..Options::default()
    })
    .await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
    let db = sqlx::AnyPool::connect(&app.db_url).await.unwrap();
    app.stop().await;
    let (used,): (Option<i64>,) = sqlx::query_as("SELECT last_used_at FROM accounts WHERE id = $1")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(used.is_some_and(|t| t >= now() - 10), "{used:?}");
}

#[tokio::test]
async fn verify_counts_as_a_use() {
    let app = TestApp::spawn_with(Options {
        exchange: true,
        env: vec![
            ("MAILCONNECT_USE_FLUSH_SECS", "1".into()),
            ("MAILCONNECT_REFRESH_WARM_WINDOW_SECS", "600".into()),
        ],
        ..Options::default()
    })
    .await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    assert!(keep_alive_due(&sched(&app, &id).await));
    let v = crate::exchange::verify(&app, &id).await;
    assert_eq!(v["imap"]["ok"], true, "{v}");
    let s = until(&app, &id, "use recorded", |s| s.last_used_at.is_some()).await;
    assert!(warm_due(&s), "{s:?}");
}
