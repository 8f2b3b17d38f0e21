//! Graceful shutdown in-process: requests already in flight get their answer; new
//! connections are refused; the whole drain respects the shutdown budget.

use std::time::{Duration, Instant};

use crate::helpers::spawn_app_behind_db_proxy;

#[tokio::test]
async fn in_flight_requests_finish_and_new_connections_are_refused() {
    // A blackholed database makes /api/health/ready take the whole 1.5 s check budget: a
    // request that is reliably still in flight when shutdown starts.
    let (app, proxy) = spawn_app_behind_db_proxy(&[
        ("ARAGORA_HEALTH_CHECK_TIMEOUT_MS", "1500"),
        ("ARAGORA_SHUTDOWN_TIMEOUT_SECONDS", "10"),
    ])
    .await;
    proxy.blackhole();

    let in_flight = tokio::spawn(app.client.get(app.url("/api/health/ready")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    app.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let refused = crate::helpers::http()
        .get(app.url("/api/health/live"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "new connections are refused once shutdown starts"
    );

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request got an answer");
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");

    app.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn shutdown_budget_bounds_a_stuck_drain() {
    // The in-flight request outlives a 1 s shutdown budget: run() returns anyway.
    let (app, proxy) = spawn_app_behind_db_proxy(&[
        ("ARAGORA_HEALTH_CHECK_TIMEOUT_MS", "20000"),
        ("ARAGORA_REQUEST_TIMEOUT_SECONDS", "60"),
        ("ARAGORA_SHUTDOWN_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    proxy.blackhole();
    let _stuck = tokio::spawn(app.client.get(app.url("/api/health/ready")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    app.stop().await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "took {took:?}"
    );
}
