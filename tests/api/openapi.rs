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

/// Every `$ref` of the document names a schema it defines.
fn check_refs(value: &Value, schemas: &serde_json::Map<String, Value>, at: &str) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                let name = target
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_else(|| panic!("{at}: $ref {target} is not a component schema"));
                assert!(
                    schemas.contains_key(name),
                    "{at}: $ref {target} is not defined"
                );
            }
            for (key, inner) in map {
                check_refs(inner, schemas, &format!("{at}/{key}"));
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                check_refs(inner, schemas, &format!("{at}/{i}"));
            }
        }
        _ => {}
    }
}

/// Every operation documents each status the pipeline can answer it with (limits, content
/// type, credentials, rate limits, timeouts) with the error body, every error response has a
/// schema, and every schema reference resolves.
#[tokio::test]
async fn every_operation_documents_the_pipeline_statuses() {
    let app = spawn_app().await;
    let doc: Value = app.get("/api/openapi.json").await.json().await.unwrap();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    check_refs(&doc, schemas, "#");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            let has_body = op.get("requestBody").is_some();
            let mut expected = vec!["400", "414", "431", "500", "503"];
            if method == "post" {
                expected.extend(["413", "507"]);
                if !path.ends_with("/debug/agent-test") {
                    expected.push("415");
                }
            }
            if has_body {
                expected.push("422");
            }
            if path.starts_with("/api/debates") || path == "/api/auth/me" {
                expected.push("401");
            }
            if path.starts_with("/api/system") || path.starts_with("/api/debug") {
                expected.extend(["401", "403"]);
            }
            if !path.starts_with("/api/health") && path != "/api/metrics" {
                expected.push("429");
            }
            for status in expected {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} does not document {status}: {:?}",
                    responses.keys()
                );
            }
            for (status, response) in responses {
                if !status.starts_with('4') && !status.starts_with('5') {
                    continue;
                }
                let schema = &response["content"]["application/json"]["schema"];
                assert!(
                    schema.get("$ref").is_some(),
                    "{method} {path} {status} has no schema: {response}"
                );
            }
        }
    }
    assert!(operations > 40, "{operations} operations");
    // The error body documents the fields errors carry.
    let error_body = &schemas["ErrorBody"]["properties"];
    for field in ["error", "code", "correlation_id", "field", "retry_after"] {
        assert!(error_body.get(field).is_some(), "ErrorBody.{field}");
    }
    app.stop().await.unwrap();
}

/// What the server really answers, without credentials and with a body of the wrong type, is
/// documented for that operation (a small schemathesis: every operation, auth on and off).
#[tokio::test]
async fn statuses_served_are_documented() {
    let auth_on: &[(&str, &str)] = &[
        (
            "ARAGORA_JWT_SECRET",
            "openapi-test-secret-0123456789abcdef0123456789",
        ),
        ("ARAGORA_API_TOKEN", "openapi-test-service-token-0123456789"),
    ];
    for env in [auth_on, &[]] {
        let app = crate::helpers::spawn_app_with(env).await;
        let doc: Value = app.get("/api/openapi.json").await.json().await.unwrap();
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            // Without auth it would really dial every provider.
            if env.is_empty() && path.ends_with("/connectivity-check") {
                continue;
            }
            let url = app.url(&path.replace('{', "x").replace('}', ""));
            for (method, op) in item.as_object().unwrap() {
                let documented = op["responses"].as_object().unwrap();
                let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let plain = app
                    .client
                    .request(method.clone(), &url)
                    .send()
                    .await
                    .unwrap();
                let wrong_type = app
                    .client
                    .request(method.clone(), &url)
                    .header("content-type", "text/plain")
                    .body("x")
                    .send()
                    .await
                    .unwrap();
                let empty_json = app
                    .client
                    .request(method.clone(), &url)
                    .json(&serde_json::json!({}))
                    .send()
                    .await
                    .unwrap();
                for response in [plain, wrong_type, empty_json] {
                    let status = response.status().as_u16().to_string();
                    assert!(
                        documented.contains_key(&status),
                        "{method} {path} answered {status} (auth {}), not documented: {:?}",
                        if env.is_empty() { "off" } else { "on" },
                        documented.keys()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 120, "{checked} requests");
        app.stop().await.unwrap();
    }
}
