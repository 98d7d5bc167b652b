//! The provider budget (MAILCONNECT_PROVIDER_RATE_LIMIT), counted at the
//! fake provider: two replicas together stay within it, and a worker's
//! token request is not starved by a backlog of background refreshes.

use std::time::{Duration, Instant};

use mailconnect_sandbox::FakeUser;

use crate::helpers::*;

/// `n` connected accounts (connected without a budget), then the first
/// app is stopped; returns it (for its database and fake) and the ids.
async fn accounts(n: usize) -> (TestApp, Vec<String>) {
    let users: Vec<String> = (0..n).map(|i| format!("user{i}@contoso.com")).collect();
    let mut app = TestApp::spawn_with(Options {
        users: users.iter().map(|u| FakeUser::work(u)).collect(),
        ..Options::default()
    })
    .await;
    let mut ids = Vec::new();
    for u in &users {
        ids.push(app.connect(TENANT, u).await);
    }
    app.stop().await;
    (app, ids)
}

/// A replica on `first`'s database and fake, with a budget of `per_second`
/// and a refresher that looks every second.
async fn replica(first: &TestApp, per_second: u32) -> TestApp {
    TestApp::spawn_with(Options {
        db_dir: Some(first.dir.clone()),
        db_url: Some(first.db_url.clone()),
        fake: Some((first.ms.clone(), first.google.clone())),
        env: vec![
            ("MAILCONNECT_PROVIDER_RATE_LIMIT", per_second.to_string()),
            ("MAILCONNECT_REFRESH_POLL_SECS", "1".into()),
        ],
        ..Options::default()
    })
    .await
}

async fn make_all_due(app: &TestApp) {
    sqlx::query("UPDATE accounts SET refresh_due_at = $1")
        .bind(chrono::Utc::now().timestamp() - 1)
        .execute(&app.db)
        .await
        .unwrap();
}

/// Accounts refreshed since `since` (unix seconds).
async fn refreshed_since(app: &TestApp, since: i64) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE last_refresh_at >= $1")
        .bind(since)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_replicas_together_send_no_more_than_the_budget() {
    const N: usize = 24;
    const BUDGET: u32 = 5;
    // Background work takes four fifths of each second.
    const BACKGROUND: usize = 4;
    let (first, _) = accounts(N).await;
    let a = replica(&first, BUDGET).await;
    let b = replica(&first, BUDGET).await;
    let since = chrono::Utc::now().timestamp();
    a.ms.record_token_requests(true);
    make_all_due(&a).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while refreshed_since(&a, since).await < N as i64 {
        assert!(Instant::now() < deadline, "not all refreshed in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = a.ms.token_request_log();
    assert_eq!(log.len(), N, "each account refreshed once");
    let first_at = log.iter().map(|r| r.at).min().unwrap();
    let last_at = log.iter().map(|r| r.at).max().unwrap();
    // N requests at BACKGROUND a second fill N / BACKGROUND seconds: more
    // than N / BACKGROUND - 2 seconds lie between the first and the last.
    // Each replica on a budget of its own would have taken half that.
    let spread = last_at - first_at;
    let least = Duration::from_secs_f64(N as f64 / BACKGROUND as f64 - 2.0);
    assert!(
        spread >= least,
        "{N} requests in {spread:?}, budget {BUDGET}/s"
    );
    // No three-second stretch holds more than four seconds' worth.
    for r in &log {
        let window = log
            .iter()
            .filter(|o| o.at >= r.at && o.at < r.at + Duration::from_secs(3))
            .count();
        assert!(window <= 4 * BACKGROUND, "{window} requests within 3 s");
    }
    // Both replicas took part, and the status route counts what was sent.
    let status = a.status(TENANT).await;
    let microsoft = &status["providers"]["microsoft"];
    assert_eq!(microsoft["rate_limit"], BUDGET);
    assert!(
        microsoft["requests_last_hour"].as_i64().unwrap() >= N as i64,
        "{microsoft}"
    );
    drop(b);
}

#[tokio::test]
async fn a_workers_request_goes_before_a_backlog_of_background_work() {
    const N: usize = 30;
    let (first, ids) = accounts(N).await;
    // A budget of 3 a second: 2 for the refresher (15 s of backlog), 1 kept
    // for on-demand requests.
    let app = replica(&first, 3).await;
    make_all_due(&app).await;
    // The refresher is busy with the backlog.
    let since = chrono::Utc::now().timestamp();
    let deadline = Instant::now() + Duration::from_secs(10);
    while refreshed_since(&app, since).await < 2 {
        assert!(Instant::now() < deadline, "the refresher never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An account outside the backlog must be refreshed for this request.
    let id = ids.last().unwrap();
    sqlx::query("UPDATE accounts SET refresh_due_at = $1 WHERE id = $2")
        .bind(chrono::Utc::now().timestamp() + 3600)
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    app.expire_stored_token(id).await;
    let started = Instant::now();
    let r = app.token(TENANT, id).await;
    let took = started.elapsed();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Room for it comes within a second; behind the backlog, or sent only
    // after waiting its patience (2 s), it would take longer.
    assert!(took < Duration::from_millis(1_800), "took {took:?}");
    assert!(
        refreshed_since(&app, since).await < N as i64,
        "the backlog was still there"
    );
}
