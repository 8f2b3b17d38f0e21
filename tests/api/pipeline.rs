//! The request pipeline: correlation ids, JSON errors with stable codes, body limit, request
//! timeout, CORS, metrics switch.

use reqwest::header::{ACCESS_CONTROL_ALLOW_ORIGIN, ORIGIN};
use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_behind_db_proxy, spawn_app_with};

fn correlation_header(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-correlation-id")
        .expect("every response carries X-Correlation-ID")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn generated_correlation_id_has_the_contract_shape() {
    let app = spawn_app().await;
    let r = app.get("/api/health").await;
    let id = correlation_header(&r);
    assert!(id.starts_with("corr-") && id.len() == 17, "{id}");
    assert!(id[5..].chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    let other = correlation_header(&app.get("/api/health").await);
    assert_ne!(id, other, "each request gets its own id");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn caller_correlation_id_is_propagated_into_headers_and_error_bodies() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/api/nope"))
        .header("X-Correlation-ID", "corr-from-caller")
        .send()
        .await
        .unwrap();
    assert_eq!(correlation_header(&r), "corr-from-caller");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["correlation_id"], "corr-from-caller");

    let r = app
        .client
        .get(app.url("/api/health"))
        .header("X-Request-ID", "req-7")
        .send()
        .await
        .unwrap();
    assert_eq!(correlation_header(&r), "req-7");

    // Malformed ids are not echoed (log / header injection); a fresh one is made.
    let r = app
        .client
        .get(app.url("/api/health"))
        .header("X-Correlation-ID", "bad id {with} junk")
        .send()
        .await
        .unwrap();
    assert!(correlation_header(&r).starts_with("corr-"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_route_is_json_404() {
    let app = spawn_app().await;
    for path in [
        "/api/does-not-exist",
        "/nothing/here",
        "/api/v1/does-not-exist",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 404, "{path}");
        let id = correlation_header(&r);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "not_found");
        assert!(body["error"].as_str().unwrap().contains(path), "{body}");
        assert_eq!(body["correlation_id"], id.as_str());
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_method_is_json_405() {
    let app = spawn_app().await;
    let r = app
        .client
        .delete(app.url("/api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers().get("allow").is_some(), "Allow header kept");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_body_is_json_413() {
    let app = spawn_app_with(&[("ARAGORA_MAX_BODY_BYTES", "2048")]).await;
    let r = app
        .client
        .post(app.url("/api/health"))
        .header("content-type", "application/json")
        .body(vec![b'x'; 10_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "payload_too_large");
    assert!(
        body["correlation_id"]
            .as_str()
            .unwrap()
            .starts_with("corr-")
    );
    app.stop().await.unwrap();
}

/// A body limit above axum's own (2 MiB) reaches the JSON extractor: a 3 MiB body under a
/// 4 MiB limit is read and judged on its content (the task is too long), not refused as
/// too large; over the limit it is the JSON 413.
#[tokio::test]
async fn a_body_limit_above_two_mib_reaches_the_json_extractor() {
    let app = spawn_app_with(&[("ARAGORA_MAX_BODY_BYTES", "4194304")]).await;
    let post = |task_len: usize| {
        let body = json!({"task": "x".repeat(task_len), "agents": ["demo", "demo"]});
        app.client
            .post(app.url("/api/debates"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let r = post(3 << 20).await.unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "task", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("longer than"),
        "{body}"
    );
    let r = post(5 << 20).await.unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "payload_too_large");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn slow_request_times_out_with_json_503() {
    // The database is blackholed and the health check budget is longer than the request
    // budget, so the request deadline is what ends the request.
    let (app, proxy) = spawn_app_behind_db_proxy(&[
        ("ARAGORA_REQUEST_TIMEOUT_SECONDS", "1"),
        ("ARAGORA_HEALTH_CHECK_TIMEOUT_MS", "5000"),
    ])
    .await;
    proxy.blackhole();
    let started = std::time::Instant::now();
    let r = app.get("/api/health/ready").await;
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "request_timeout", "{body}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let app = spawn_app_with(&[("ARAGORA_ALLOWED_ORIGINS", "https://admin.example.com")]).await;
    let allowed = app
        .client
        .get(app.url("/api/health"))
        .header(ORIGIN, "https://admin.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(),
        "https://admin.example.com"
    );
    let refused = app
        .client
        .get(app.url("/api/health"))
        .header(ORIGIN, "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert!(refused.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/health"))
        .header(ORIGIN, "https://admin.example.com")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight
            .headers()
            .get(ACCESS_CONTROL_ALLOW_ORIGIN)
            .unwrap(),
        "https://admin.example.com"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_served_and_switchable() {
    let app = spawn_app().await;
    app.get("/api/health").await;
    let r = app.get("/api/metrics").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("aragora_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/api/health\""), "{text}");
    assert!(text.contains("aragora_build_info"), "{text}");
    app.stop().await.unwrap();

    let app = spawn_app_with(&[("METRICS_ENABLED", "false")]).await;
    let r = app.get("/api/metrics").await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "metrics_disabled");
    app.stop().await.unwrap();
}
