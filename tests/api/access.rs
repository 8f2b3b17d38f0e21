//! Access is declared beside each route and published in /api/openapi.json (`x-access` on
//! every operation, a `security` requirement on those that need credentials). This walks the
//! document and calls every operation — under /api and /api/v1 — without credentials, as a
//! member and as an admin, and checks the answer matches the declaration: the gate's 401
//! without credentials, its 403 for too low a role, and neither when the caller may pass.

use serde_json::{Value, json};

use crate::auth::{add_user, auth_app, tokens};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    Anonymous,
    Member,
    Admin,
}

/// The gate's refusal this response is, if it is one: 401 (no credentials) or 403 (role too
/// low), told apart from a handler's own 401/403 (a bad refresh token, a foreign Origin) by
/// the gate's messages.
fn gate_refusal(status: u16, body: &Value) -> Option<u16> {
    let message = body["error"].as_str().unwrap_or_default();
    match status {
        401 if message.starts_with("authentication required") => Some(401),
        403 if message.starts_with("this needs the ") => Some(403),
        _ => None,
    }
}

/// What the gate answers `caller` on an operation declared `access` (`None`: it lets it in).
fn expected(access: &str, caller: Caller) -> Option<u16> {
    match (access, caller) {
        ("public", _) | ("member", Caller::Member | Caller::Admin) | ("admin", Caller::Admin) => {
            None
        }
        ("member" | "admin", Caller::Anonymous) => Some(401),
        ("admin", Caller::Member) => Some(403),
        (other, _) => panic!("unknown access `{other}`"),
    }
}

#[tokio::test]
async fn every_operation_answers_as_its_declared_access() {
    let app = auth_app(&[]).await;
    add_user(&app, "walk-member@example.com", "member").await;
    add_user(&app, "walk-admin@example.com", "admin").await;
    let (member, _) = tokens(&app, "walk-member@example.com").await;
    let (admin, _) = tokens(&app, "walk-admin@example.com").await;
    let doc: Value = app.get("/api/openapi.json").await.json().await.unwrap();

    let mut calls = 0;
    let mut declared = std::collections::BTreeMap::<String, usize>::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if !["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let access = operation["x-access"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} declares no access (x-access)"));
            *declared.entry(access.to_owned()).or_default() += 1;
            let secured = operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty());
            assert_eq!(
                secured,
                access != "public",
                "{method} {path}: `security` disagrees with x-access {access}"
            );
            // Statuses the operation answers by itself (a bad refresh token's 401).
            let documented = |status: u16| operation["responses"].get(status.to_string()).is_some();
            let concrete = path
                .split('/')
                .map(|seg| {
                    if seg.starts_with('{') {
                        "walk-test"
                    } else {
                        seg
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            // /api/v2/… (receipts) has no /api/v1 alias; every other path has.
            let prefixes: &[&str] = if path.starts_with("/api/v2/") {
                &[""]
            } else {
                &["", "/v1"]
            };
            for prefix in prefixes {
                let url = concrete.replacen("/api", &format!("/api{prefix}"), 1);
                for (caller, bearer) in [
                    (Caller::Anonymous, None),
                    (Caller::Member, Some(&member)),
                    (Caller::Admin, Some(&admin)),
                ] {
                    let mut request = app
                        .client
                        .request(method.to_uppercase().parse().unwrap(), app.url(&url));
                    if let Some(bearer) = bearer {
                        request = request.bearer_auth(bearer);
                    }
                    if method == "post" {
                        request = request.json(&json!({}));
                    }
                    let r = request.send().await.unwrap();
                    calls += 1;
                    let status = r.status().as_u16();
                    let challenge = r
                        .headers()
                        .get("www-authenticate")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let want = expected(access, caller);
                    let context = format!(
                        "{} {url} as {caller:?} (declared {access}): {status} {body}",
                        method.to_uppercase()
                    );
                    assert_eq!(gate_refusal(status, &body), want, "{context}");
                    match want {
                        Some(401) => {
                            assert_eq!(body["code"], "unauthorized", "{context}");
                            assert_eq!(challenge.as_deref(), Some("Bearer"), "{context}");
                        }
                        Some(_) => assert_eq!(body["code"], "forbidden", "{context}"),
                        // Let in: no 401/403 at all, unless the operation itself documents
                        // it (public routes only).
                        None => assert!(
                            !matches!(status, 401 | 403)
                                || (access == "public" && documented(status)),
                            "{context}"
                        ),
                    }
                }
            }
        }
    }
    // Every kind is exercised, over the whole API.
    for access in ["public", "member", "admin"] {
        assert!(
            declared.get(access).copied().unwrap_or(0) >= 3,
            "{declared:?}"
        );
    }
    assert!(calls > 200, "{calls} calls");

    // Routes outside the document are declared public where they are mounted.
    for path in [
        "/metrics",
        "/admin",
        "/admin/app.js",
        "/.well-known/aragora-odr-signing-key",
    ] {
        let status = app.get(path).await.status().as_u16();
        assert!(!matches!(status, 401 | 403 | 404), "{path}: {status}");
    }
    // An unknown route is a 404 whoever asks.
    for path in ["/api/nope", "/api/v1/nope", "/nope"] {
        assert_eq!(app.get(path).await.status(), 404, "{path}");
    }
    app.stop().await.unwrap();
}
