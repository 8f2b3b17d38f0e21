//! /api/openapi.json is generated from the handlers: every documented path is really served
//! (under /api and /api/v1), and the health schema matches what the endpoint returns.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn document_lists_the_served_routes() {
    let app = spawn_app().await;
    let r = app.get("/api/openapi.json").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for expected in [
        "/api/health",
        "/api/health/live",
        "/api/health/ready",
        "/api/metrics",
        "/api/openapi.json",
    ] {
        assert!(
            paths.contains_key(expected),
            "{expected} missing from {:?}",
            paths.keys()
        );
    }
    for expected in [
        "/api/debates",
        "/api/debates/{id}",
        "/api/debates/{id}/events",
        "/api/agents",
        "/api/leaderboard",
        "/api/debug/agent-test",
        "/api/v2/receipts",
        "/api/v2/receipts/verify",
        "/api/v2/receipts/{id}/export",
        "/api/debates/{id}/receipt",
    ] {
        assert!(paths.contains_key(expected), "{expected} missing");
    }
    assert!(paths["/api/debates"].get("post").is_some());
    for (path, item) in paths {
        // Every parameterless GET is requested for real under both prefixes.
        for method in item.as_object().unwrap().keys() {
            if method != "get" || path.contains('{') {
                continue;
            }
            // /api/v2/… (receipts) has no /api/v1 alias; every other path has.
            let prefixes: &[&str] = if path.starts_with("/api/v2/") {
                &[""]
            } else {
                &["", "/v1"]
            };
            for prefix in prefixes {
                let served = path.replacen("/api", &format!("/api{prefix}"), 1);
                let response = app.get(&served).await;
                assert_ne!(
                    response.status(),
                    404,
                    "{served} is documented but not served"
                );
            }
        }
    }
    // The health schema names the contract's fields.
    let health = &doc["components"]["schemas"]["HealthResponse"]["properties"];
    for field in ["status", "version", "uptime_seconds", "checks"] {
        assert!(health.get(field).is_some(), "HealthResponse.{field}");
    }
    let v1: Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    assert_eq!(v1, doc);
    app.stop().await.unwrap();
}
