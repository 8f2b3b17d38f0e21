//! GET /api/health and friends: the contract's shape, and honest status codes when a
//! dependency is down — answered within the check budget, never a hang.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{
    Proxy, fresh_postgres_schema, redis_url, spawn_app, spawn_app_behind_db_proxy, spawn_app_with,
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
    let started = Instant::now();
    let response = app.get("/api/health").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "error");
    assert_eq!(body["checks"]["database"]["status"], "ok");
    app.stop().await.unwrap();
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
    let started = Instant::now();
    let response = app.get("/api/health").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(elapsed < Duration::from_secs(1), "health took {elapsed:?}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unhealthy");
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
    ])
    .await;
    assert_eq!(app.get("/api/health").await.status(), 200);
    proxy.blackhole();
    let started = Instant::now();
    let response = app.get("/api/health").await;
    assert_eq!(response.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
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
