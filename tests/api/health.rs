//! GET /api/health and friends: the contract's shape, and honest status codes when a
//! dependency is down — answered within the check budget, never a hang.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{
    Proxy, TestApp, fresh_postgres_schema, redis_url, spawn_app, spawn_app_behind_db_proxy,
    spawn_app_with,
};

#[tokio::test]
async fn health_has_the_contract_shape() {
    let app = spawn_app().await;
    let response = app.get("/api/health").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["uptime_seconds"].is_u64());
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["checked_at"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    let checks = &body["checks"];
    assert_eq!(checks["database"]["status"], "ok");
    assert!(checks["database"]["latency_ms"].is_u64());
    assert_eq!(checks["database"]["backend"], "sqlite");
    assert_eq!(checks["redis"]["status"], "disabled");
    assert_eq!(checks["websocket"]["status"], "ok");
    assert_eq!(checks["websocket"]["connections"], 0);
    assert_eq!(checks["circuit_breakers"]["open"], 0);
    assert_eq!(checks["circuit_breakers"]["half_open"], 0);
    // This test process really uses memory; the figure comes from /proc.
    assert!(checks["memory_mb"].as_u64().unwrap() > 0);
    assert_eq!(checks["active_debates"], 0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn v1_alias_live_and_ready() {
    let app = spawn_app().await;
    let v1: Value = app.get("/api/v1/health").await.json().await.unwrap();
    assert_eq!(v1["status"], "healthy");
    let live = app.get("/api/health/live").await;
    assert_eq!(live.status(), 200);
    assert_eq!(live.json::<Value>().await.unwrap()["status"], "alive");
    let ready = app.get("/api/health/ready").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn redis_reported_ok_when_configured_and_reachable() {
    let url = redis_url();
    let app = spawn_app_with(&[("ARAGORA_REDIS_URL", url.as_str())]).await;
    let body: Value = app.get("/api/health").await.json().await.unwrap();
    assert_eq!(body["checks"]["redis"]["status"], "ok", "{body}");
    assert_eq!(body["status"], "healthy");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn redis_down_is_degraded_not_unhealthy() {
    // Nothing listens on this port once the proxy is cut.
    let proxy = Proxy::start("127.0.0.1:6379").await;
    let url = format!("redis://{}/0", proxy.addr);
    let app = spawn_app_with(&[("ARAGORA_REDIS_URL", url.as_str())]).await;
    let body: Value = app.get("/api/health").await.json().await.unwrap();
    assert_eq!(body["checks"]["redis"]["status"], "ok", "{body}");
    proxy.cut();
    let body = first_answer_after_cut(&app, |body| body["status"] != "healthy").await;
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "error");
    assert_eq!(body["checks"]["database"]["status"], "ok");
    app.stop().await.unwrap();
}

/// Poll `/api/health` from the moment of a cut until `changed` holds for its body. Every
/// answer comes within a second (the check budget), and the change shows within a second of
/// the cut: one round of checks answers calls for at most `health_cache_ms` (100 ms), and a
/// failing check takes at most its budget (800 ms).
async fn first_answer_after_cut(app: &TestApp, changed: impl Fn(&Value) -> bool) -> Value {
    let cut = Instant::now();
    loop {
        let started = Instant::now();
        let response = app.get("/api/health").await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "health took {took:?}");
        let code = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if changed(&body) {
            assert_eq!(
                code,
                if body["status"] == "unhealthy" {
                    503
                } else {
                    200
                }
            );
            let after = cut.elapsed();
            assert!(
                after < Duration::from_secs(1),
                "health still said the old state {after:?} after the cut"
            );
            return body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn postgres_backend_reports_ok() {
    let (_schema, url) = fresh_postgres_schema().await;
    let app = spawn_app_with(&[("ARAGORA_DATABASE_URL", url.as_str())]).await;
    let body: Value = app.get("/api/health").await.json().await.unwrap();
    assert_eq!(body["checks"]["database"]["status"], "ok", "{body}");
    assert_eq!(body["checks"]["database"]["backend"], "postgres");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn dead_database_is_unhealthy_503_within_a_second() {
    let (app, proxy) = spawn_app_behind_db_proxy(&[]).await;
    assert_eq!(app.get("/api/health").await.status(), 200);

    proxy.cut();
    let body = first_answer_after_cut(&app, |body| body["status"] == "unhealthy").await;
    assert_eq!(body["checks"]["database"]["status"], "error");
    // Public body: no connection details.
    assert!(!body.to_string().contains(&proxy.addr.to_string()));
    assert_eq!(app.get("/api/health/ready").await.status(), 503);
    assert_eq!(app.get("/api/health/live").await.status(), 200);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn hanging_database_still_answers_within_the_check_budget() {
    let (app, proxy) = spawn_app_behind_db_proxy(&[
        ("ARAGORA_DB_POOL_SIZE", "1"),
        ("ARAGORA_DB_MAX_OVERFLOW", "0"),
        // A check that hangs takes its whole budget: 100 ms of cache + 600 ms stay under 1 s.
        ("ARAGORA_HEALTH_CHECK_TIMEOUT_MS", "600"),
    ])
    .await;
    assert_eq!(app.get("/api/health").await.status(), 200);
    proxy.blackhole();
    first_answer_after_cut(&app, |body| body["status"] == "unhealthy").await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_burst_of_health_calls_shares_one_round_of_checks() {
    let app = spawn_app_with(&[("ARAGORA_HEALTH_CACHE_MS", "1000")]).await;
    let calls = (0..50).map(|_| app.get("/api/health"));
    let mut rounds = std::collections::BTreeSet::new();
    for response in futures::future::join_all(calls).await {
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        rounds.insert(body["checked_at"].as_str().unwrap().to_owned());
    }
    // 50 concurrent calls within one period: one round of checks (two if the burst
    // straddled the end of a period), never one per call.
    assert!(
        rounds.len() <= 2,
        "{} rounds for 50 calls: {rounds:?}",
        rounds.len()
    );
    // With no cache every call runs its own round.
    let uncached = spawn_app_with(&[("ARAGORA_HEALTH_CACHE_MS", "0")]).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let body: Value = uncached.get("/api/health").await.json().await.unwrap();
        seen.insert(body["checked_at"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    uncached.stop().await.unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn dead_database_answers_503_database_unavailable_not_500() {
    let (app, proxy) =
        spawn_app_behind_db_proxy(&[("ARAGORA_DB_ACQUIRE_TIMEOUT_MS", "1000")]).await;
    assert_eq!(app.get("/api/debates").await.status(), 200);

    proxy.cut();
    let started = Instant::now();
    let response = app.get("/api/debates").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(response.headers()["retry-after"], "5");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "database_unavailable", "{body}");
    assert_eq!(body["retry_after"], 5);
    assert!(
        body["error"].as_str().unwrap().contains("/api/health"),
        "{body}"
    );
    assert!(
        body["correlation_id"]
            .as_str()
            .unwrap()
            .starts_with("corr-")
    );
    // No connection details in the public body.
    assert!(!body.to_string().contains(&proxy.addr.to_string()));
    assert_eq!(app.get("/api/health").await.status(), 503);
    app.stop().await.unwrap();
}
