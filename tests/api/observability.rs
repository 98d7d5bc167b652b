//! What operators see besides metrics (those are tested alone, in
//! tests/metrics.rs, where no other test moves the counters).

use crate::helpers::*;

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    let r = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "caller-chosen-id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "caller-chosen-id");
}
