//! The background refresher, one outcome at a time: a due account is
//! claimed and refreshed; each kind of failure is counted (or not), and the
//! account comes due again when the outcome says, with the provider asked
//! exactly as often as it should be. A refresh token that the provider lets
//! die after some idle time is kept alive before it does.

use std::time::{Duration, Instant};

use mailconnect_sandbox::{FakeUser, Fault};
use serde_json::Value;

use crate::helpers::*;

/// An app whose refresher looks for due accounts every second.
async fn spawn(users: &[&str]) -> TestApp {
    TestApp::spawn_with(Options {
        users: users.iter().map(|u| FakeUser::work(u)).collect(),
        env: vec![("MAILCONNECT_REFRESH_POLL_SECS", "1".into())],
        ..Options::default()
    })
    .await
}

/// What the refresher reads and writes of an account.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct Sched {
    status: String,
    consecutive_failures: i64,
    last_error: Option<String>,
    refresh_due_at: Option<i64>,
    last_refresh_at: Option<i64>,
    lease_owner: Option<String>,
}

async fn sched(app: &TestApp, id: &str) -> Sched {
    sqlx::query_as(
        "SELECT status, consecutive_failures, last_error, refresh_due_at, last_refresh_at, lease_owner \
         FROM accounts WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Makes the account due now.
async fn make_due(app: &TestApp, id: &str) {
    sqlx::query("UPDATE accounts SET refresh_due_at = $1 WHERE id = $2")
        .bind(chrono::Utc::now().timestamp() - 1)
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
}

/// Waits (10 s at most) until the refresher has dealt with the account:
/// its due time is in the future again and its lease is released.
async fn dealt_with(app: &TestApp, id: &str) -> Sched {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = sched(app, id).await;
        let now = chrono::Utc::now().timestamp();
        if s.refresh_due_at.is_some_and(|d| d > now) && s.lease_owner.is_none() {
            return s;
        }
        assert!(Instant::now() < deadline, "never dealt with: {s:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `due` is `secs` from now, give or take the time the test took.
fn due_in(s: &Sched, secs: std::ops::RangeInclusive<i64>) {
    let now = chrono::Utc::now().timestamp();
    let due = s.refresh_due_at.unwrap() - now;
    assert!(
        (secs.start() - 2..=*secs.end()).contains(&due),
        "due in {due} s, wanted {secs:?}: {s:?}"
    );
}

#[tokio::test]
async fn a_due_account_is_refreshed_and_its_failures_are_forgotten() {
    let app = spawn(&["ops@contoso.com"]).await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let rt = app.stored_refresh_token(&id).await;
    sqlx::query("UPDATE accounts SET consecutive_failures = 3, last_error = 'provider_unavailable: HTTP 503' WHERE id = $1")
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    let grants = app.ms.refresh_grants();
    make_due(&app, &id).await;
    let s = dealt_with(&app, &id).await;
    assert_eq!(app.ms.refresh_grants(), grants + 1);
    assert_eq!((s.consecutive_failures, s.last_error.as_deref()), (0, None));
    assert!(s.last_refresh_at.is_some());
    // Next due ten minutes (and up to a quarter of that) before expiry.
    let exp: i64 = app.row(&id).await["exp"].clone().unwrap().parse().unwrap();
    let lead = exp - s.refresh_due_at.unwrap();
    assert!((600..=750).contains(&lead), "{lead}");
    assert!(!app.ms.refresh_token_is_live(&rt), "rotated");
    assert!(app
        .ms
        .refresh_token_is_live(&app.stored_refresh_token(&id).await));
}

#[tokio::test]
async fn a_passing_failure_is_counted_and_backed_off_exponentially() {
    let app = spawn(&["ops@contoso.com"]).await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let before = app.row(&id).await;
    app.ms.set_fault(Some(Fault::Unavailable));
    let asked = app.ms.token_requests();
    make_due(&app, &id).await;
    let s = dealt_with(&app, &id).await;
    assert_eq!(app.ms.token_requests(), asked + 1);
    assert_eq!(s.consecutive_failures, 1);
    assert_eq!(
        s.last_error.as_deref(),
        Some("provider_unavailable: HTTP 503")
    );
    assert_eq!(s.status, "connected");
    due_in(&s, 30..=45);
    // The second failure in a row waits twice as long; nothing else moves.
    make_due(&app, &id).await;
    let s = dealt_with(&app, &id).await;
    assert_eq!(app.ms.token_requests(), asked + 2);
    assert_eq!(s.consecutive_failures, 2);
    due_in(&s, 60..=75);
    let mut after = app.row(&id).await;
    after.insert("last_error".into(), None);
    assert_eq!(after, before, "tokens and status untouched");
}

#[tokio::test]
async fn a_refused_refresh_is_counted_with_the_providers_error() {
    let app = spawn(&["ops@contoso.com"]).await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.ms.set_fault_once(Fault::UnreadableError);
    make_due(&app, &id).await;
    let s = dealt_with(&app, &id).await;
    assert_eq!(s.consecutive_failures, 1);
    assert_eq!(s.last_error.as_deref(), Some("unreadable_error_response"));
    assert_eq!(s.status, "connected");
    due_in(&s, 30..=45);
}

#[tokio::test]
async fn retry_after_pauses_every_account_of_that_provider() {
    let app = spawn(&["a@contoso.com", "b@contoso.com"]).await;
    let a = app.connect(TENANT, "a@contoso.com").await;
    let b = app.connect(TENANT, "b@contoso.com").await;
    app.ms.set_fault_once(Fault::TooManyRequests {
        retry_after_secs: 120,
    });
    let asked = app.ms.token_requests();
    make_due(&app, &a).await;
    let s = dealt_with(&app, &a).await;
    assert_eq!(
        (s.consecutive_failures, s.status.as_str()),
        (1, "connected")
    );
    due_in(&s, 120..=120);
    // The throttle is the client's, not one account's: the next due
    // account of the provider waits without asking.
    make_due(&app, &b).await;
    let s = dealt_with(&app, &b).await;
    assert_eq!(app.ms.token_requests(), asked + 1, "asked while paused");
    assert_eq!((s.consecutive_failures, s.last_error.as_deref()), (0, None));
    due_in(&s, 60..=60);
    // Seconds later it still waits: the pause is the provider's 120 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    make_due(&app, &b).await;
    dealt_with(&app, &b).await;
    assert_eq!(app.ms.token_requests(), asked + 1, "asked while paused");
}

/// A refresher doing one refresh at a time (the smallest setting), with
/// `users` connected.
async fn one_at_a_time(users: &[&str]) -> (TestApp, Vec<String>) {
    let app = TestApp::spawn_with(Options {
        users: users.iter().map(|u| FakeUser::work(u)).collect(),
        env: vec![
            ("MAILCONNECT_REFRESH_POLL_SECS", "1".into()),
            ("MAILCONNECT_REFRESH_CONCURRENCY", "1".into()),
        ],
        ..Options::default()
    })
    .await;
    let mut ids = Vec::new();
    for u in users {
        ids.push(app.connect(TENANT, u).await);
    }
    (app, ids)
}

/// One refresh at a time (the smallest setting) still gets through every
/// due account.
#[tokio::test]
async fn one_refresh_at_a_time_still_refreshes_every_due_account() {
    let users = ["a@contoso.com", "b@contoso.com", "c@contoso.com"];
    let (app, ids) = one_at_a_time(&users).await;
    for id in &ids {
        make_due(&app, id).await;
    }
    for id in &ids {
        let s = dealt_with(&app, id).await;
        assert!(s.last_refresh_at.is_some(), "{s:?}");
    }
}

/// A replica that stops hands back the leases of accounts it claimed but
/// did not start, so another replica takes them at once instead of after
/// the lease.
#[tokio::test]
async fn stopping_hands_back_the_accounts_it_had_not_started() {
    let users = ["a@contoso.com", "b@contoso.com", "c@contoso.com"];
    let (mut app, ids) = one_at_a_time(&users).await;
    app.ms
        .set_fault(Some(Fault::Slow(Duration::from_millis(1500))));
    let asked = app.ms.token_requests();
    for id in &ids {
        make_due(&app, id).await;
    }
    // One refresh in flight, a second account claimed behind it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.ms.token_requests() == asked {
        assert!(Instant::now() < deadline, "no refresh started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
    let db = sqlx::AnyPool::connect(&app.db_url).await.unwrap();
    let (held,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM accounts WHERE lease_owner IS NOT NULL")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(held, 0, "every lease handed back or released");
    assert_eq!(app.ms.token_requests(), asked + 1, "nothing new started");
}

#[tokio::test]
async fn invalid_client_pauses_the_provider_and_changes_no_account() {
    let app = spawn(&["a@contoso.com", "b@contoso.com"]).await;
    let a = app.connect(TENANT, "a@contoso.com").await;
    let b = app.connect(TENANT, "b@contoso.com").await;
    let row_a = app.row(&a).await;
    app.ms.set_fault_once(Fault::InvalidClient);
    let asked = app.ms.token_requests();
    make_due(&app, &a).await;
    let s = dealt_with(&app, &a).await;
    assert_eq!(app.ms.token_requests(), asked + 1);
    assert_eq!(
        (s.consecutive_failures, s.last_error.as_deref()),
        (0, None),
        "no account changes"
    );
    assert_eq!(app.row(&a).await, row_a);
    due_in(&s, 60..=60);
    let status = app.status(TENANT).await;
    assert!(status["providers"]["microsoft"]["last_error"]
        .as_str()
        .unwrap()
        .contains("invalid_client"));
    // Every account would get the same answer: the others wait unasked.
    make_due(&app, &b).await;
    let s = dealt_with(&app, &b).await;
    assert_eq!(app.ms.token_requests(), asked + 1, "asked while paused");
    due_in(&s, 60..=60);
}

#[tokio::test]
async fn an_unconfigured_provider_waits_for_a_replica_that_has_it() {
    let app = spawn(&["ops@contoso.com"]).await;
    let id = app.connect_google(TENANT, "ops@gmail.com").await;
    let mut app = app;
    app.stop().await;
    let app = TestApp::spawn_with(Options {
        google: false,
        db_dir: Some(app.dir.clone()),
        db_url: Some(app.db_url.clone()),
        fake: Some((app.ms.clone(), app.google.clone())),
        env: vec![("MAILCONNECT_REFRESH_POLL_SECS", "1".into())],
        ..Options::default()
    })
    .await;
    let asked = app.google.token_requests();
    make_due(&app, &id).await;
    let s = dealt_with(&app, &id).await;
    assert_eq!(app.google.token_requests(), asked);
    assert_eq!((s.consecutive_failures, s.last_error.as_deref()), (0, None));
    due_in(&s, 600..=600);
    // The token route says why it cannot help.
    let r = app.token(TENANT, &id).await;
    let status = r.status();
    assert_json_error(
        status,
        &r.json().await.unwrap(),
        409,
        "provider_not_configured",
    );
}

#[tokio::test]
async fn an_unknown_provider_is_postponed_an_hour() {
    let app = spawn(&["ops@contoso.com"]).await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    sqlx::query("UPDATE accounts SET provider = 'yahoo' WHERE id = $1")
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    let asked = app.ms.token_requests();
    make_due(&app, &id).await;
    let s = dealt_with(&app, &id).await;
    assert_eq!(app.ms.token_requests(), asked);
    assert_eq!((s.consecutive_failures, s.last_error.as_deref()), (0, None));
    due_in(&s, 3600..=3600);
}

#[tokio::test]
async fn an_internal_error_is_counted_and_retried_in_an_hour() {
    let app = spawn(&["ops@contoso.com"]).await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    // A refresh token whose ciphertext was altered cannot be opened.
    let sealed = app.row(&id).await["refresh_token_enc"].clone().unwrap();
    sqlx::query("UPDATE accounts SET refresh_token_enc = $1 WHERE id = $2")
        .bind(tamper(&sealed))
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    let asked = app.ms.token_requests();
    let mark = log_mark();
    make_due(&app, &id).await;
    let s = dealt_with(&app, &id).await;
    assert_eq!(app.ms.token_requests(), asked, "nothing to send");
    assert_eq!(s.consecutive_failures, 1);
    assert_eq!(s.last_error.as_deref(), Some("internal_error"));
    assert_eq!(s.status, "connected");
    due_in(&s, 3600..=3600);
    assert!(logged_since(
        mark,
        &["refresh could not run", "opening the refresh token"]
    ));
}

/// The same ciphertext with one character of its sealed part changed.
pub fn tamper(sealed: &str) -> String {
    let mut chars: Vec<char> = sealed.chars().collect();
    let last = chars.len() - 3;
    chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn a_refresh_of_the_refresher_and_one_of_the_token_route_never_overlap() {
    let app = spawn(&["ops@contoso.com"]).await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let grants = app.ms.refresh_grants();
    app.ms
        .set_fault(Some(Fault::Slow(Duration::from_millis(1200))));
    make_due(&app, &id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.ms.token_requests_in_flight() == 0 {
        assert!(Instant::now() < deadline, "the refresher never asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The refresher holds the lease, for its length (60 s) and no more.
    let s: (Option<String>, Option<i64>) =
        sqlx::query_as("SELECT lease_owner, lease_until FROM accounts WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(s.0.as_deref().unwrap().ends_with(":background"));
    assert!((now + 55..=now + 61).contains(&s.1.unwrap()), "{s:?}");
    // A worker needs a token meanwhile: it waits for that refresh and
    // shares its result instead of asking again.
    app.expire_stored_token(&id).await;
    let r = app.token(TENANT, &id).await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(app.ms.refresh_grants(), grants + 1);
    assert_eq!(app.ms.most_token_requests_in_flight(), 1);
    assert!(
        app.ms
            .access_token_info(t["access_token"].as_str().unwrap())
            .unwrap()
            .valid
    );
}

#[tokio::test]
async fn an_account_coming_due_soon_is_refreshed_when_due_not_at_the_next_poll() {
    let app = TestApp::spawn().await; // polls every 15 s
    let id = app.connect(TENANT, "ops@contoso.com").await;
    sqlx::query("UPDATE accounts SET refresh_due_at = $1 WHERE id = $2")
        .bind(chrono::Utc::now().timestamp() + 2)
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    // A new replica on that database sleeps until the account is due.
    let app = app.restart(KEY_OLD).await;
    let started = Instant::now();
    while sched(&app, &id).await.last_refresh_at.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "not refreshed when due"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn an_idle_refresh_token_is_renewed_before_the_provider_lets_it_die() {
    // Access tokens that last a month, refresh tokens that die after two
    // idle weeks (Microsoft: 90 days): the week of MAILCONNECT_REFRESH_IDLE_SECS
    // is what keeps them alive.
    let app = spawn(&["kept@contoso.com", "left@contoso.com"]).await;
    app.ms
        .set_access_token_lifetime(Duration::from_secs(30 * 86_400));
    app.ms
        .set_refresh_token_max_idle(Some(Duration::from_secs(14 * 86_400)));
    let kept = app.connect(TENANT, "kept@contoso.com").await;
    let left = app.connect(TENANT, "left@contoso.com").await;
    let s = sched(&app, &kept).await;
    due_in(&s, 7 * 86_400..=7 * 86_400);

    // A week passes: the refresh comes due and renews the token in time.
    app.ms.age_refresh_tokens(Duration::from_secs(7 * 86_400));
    let rt = app.stored_refresh_token(&kept).await;
    make_due(&app, &kept).await;
    let s = dealt_with(&app, &kept).await;
    assert_eq!(
        (s.status.as_str(), s.consecutive_failures),
        ("connected", 0)
    );
    due_in(&s, 7 * 86_400..=7 * 86_400);
    let fresh = app.stored_refresh_token(&kept).await;
    assert_ne!(fresh, rt);
    app.ms.age_refresh_tokens(Duration::from_secs(7 * 86_400));
    assert!(app.ms.refresh_token_is_live(&fresh), "renewed a week ago");

    // Without that renewal (two weeks and more idle), the grant is dead.
    let left_rt = app.stored_refresh_token(&left).await;
    assert!(!app.ms.refresh_token_is_live(&left_rt));
    make_due(&app, &left).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sched(&app, &left).await.status != "needs_reauth" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        sched(&app, &left).await.last_error.as_deref(),
        Some("invalid_grant")
    );
}
