//! The browser admin console at /admin (embedded files, hardening headers, ETags,
//! config.json, the on/off switch) and the browser session it uses: the refresh token in an
//! HttpOnly cookie, rotated and revoked like a body token, refused from a foreign Origin.

use aragora::auth::passwords;
use aragora::store::NewUser;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

const SECRET: &str = "test-jwt-secret-0123456789abcdef-0123456789";
const PASSWORD: &str = "correct horse battery staple";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .to_str()
        .unwrap()
}

fn assert_console_headers(headers: &HeaderMap) {
    assert_eq!(header(headers, "content-security-policy"), CSP);
    assert_eq!(header(headers, "x-content-type-options"), "nosniff");
    assert_eq!(header(headers, "referrer-policy"), "no-referrer");
    assert_eq!(header(headers, "x-frame-options"), "DENY");
    assert_eq!(header(headers, "cache-control"), "no-cache");
}

async fn not_found_json(app: &TestApp, path: &str) {
    let r = app.get(path).await;
    assert_eq!(r.status(), 404, "{path}");
    assert!(
        header(r.headers(), "content-type").starts_with("application/json"),
        "{path}"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "not_found", "{path}: {v}");
    assert!(v["error"].is_string(), "{path}: {v}");
    assert!(
        v["correlation_id"].as_str().unwrap().starts_with("corr-"),
        "{v}"
    );
}

#[tokio::test]
async fn console_serves_index_with_hardening_headers_and_etags() {
    let app = spawn_app().await;
    let index = include_bytes!("../../src/admin/assets/index.html");
    let mut etag = String::new();
    for path in ["/admin", "/admin/", "/admin/index.html"] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            header(r.headers(), "content-type"),
            "text/html; charset=utf-8"
        );
        assert_console_headers(r.headers());
        let tag = header(r.headers(), "etag").to_owned();
        assert_eq!(tag.len(), 18, "{tag}");
        assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
        assert!(tag[1..17].chars().all(|c| c.is_ascii_hexdigit()), "{tag}");
        assert!(etag.is_empty() || etag == tag);
        etag = tag;
        assert_eq!(r.bytes().await.unwrap().as_ref(), index.as_slice());
    }

    // Revalidation: a matching If-None-Match gets 304 without a body, still hardened.
    let r = app
        .client
        .get(app.url("/admin/"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(header(r.headers(), "etag"), etag);
    assert_console_headers(r.headers());
    assert!(r.bytes().await.unwrap().is_empty());
    let r = app
        .client
        .get(app.url("/admin"))
        .header("If-None-Match", "\"0000000000000000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // HEAD answers like GET without a body.
    let r = app.client.head(app.url("/admin")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(r.headers(), "etag"), etag);
    assert_console_headers(r.headers());

    // Not rate limited (no rate-limit headers) and not in the OpenAPI document.
    let r = app.get("/admin").await;
    assert!(r.headers().get("x-ratelimit-limit").is_none());
    let doc: Value = app.get("/api/openapi.json").await.json().await.unwrap();
    assert!(
        doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .all(|p| !p.starts_with("/admin")),
        "{}",
        doc["paths"]
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn console_assets_have_their_types_and_nothing_else_is_served() {
    let app = spawn_app().await;
    for (path, content_type) in [
        ("/admin/app.js", "application/javascript; charset=utf-8"),
        ("/admin/app.css", "text/css; charset=utf-8"),
        ("/admin/favicon.svg", "image/svg+xml"),
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(r.headers(), "content-type"), content_type, "{path}");
        assert_console_headers(r.headers());
        assert!(r.headers().get("etag").is_some(), "{path}");
    }
    let js = app.get("/admin/app.js").await.bytes().await.unwrap();
    assert_eq!(
        js.as_ref(),
        include_bytes!("../../src/admin/assets/app.js").as_slice()
    );

    // Only the embedded files: no filesystem, no traversal.
    for path in [
        "/admin/../Cargo.toml",
        "/admin/nope.js",
        "/admin/%2e%2e%2fCargo.toml",
        "/admin/..%2fCargo.toml",
        "/admin/assets/app.js",
        "/admin/mod.rs",
    ] {
        not_found_json(&app, path).await;
    }
    // Requests are counted under the console's own route patterns.
    let metrics = app.get("/api/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"method="GET",route="/admin/{file}",status="200""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"method="GET",route="/admin/{file}",status="404""#),
        "{metrics}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn config_json_reflects_the_settings() {
    let app = spawn_app().await;
    let r = app.get("/admin/config.json").await;
    assert_eq!(r.status(), 200);
    assert!(header(r.headers(), "content-type").starts_with("application/json"));
    assert_console_headers(r.headers());
    let etag = header(r.headers(), "etag").to_owned();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({
            "api_base": "",
            "version": env!("CARGO_PKG_VERSION"),
            "auth_enabled": false,
            "password_login": false,
        })
    );
    let r = app
        .client
        .get(app.url("/admin/config.json"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    app.stop().await.unwrap();

    let app = spawn_app_with(&[
        ("ARAGORA_JWT_SECRET", SECRET),
        ("ARAGORA_ADMIN_API_URL", "https://api.example.com"),
    ])
    .await;
    let r = app.get("/admin/config.json").await;
    assert_eq!(
        header(r.headers(), "content-security-policy"),
        CSP.replace(
            "connect-src 'self' ws: wss:;",
            "connect-src 'self' ws: wss: https://api.example.com;"
        )
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["api_base"], "https://api.example.com");
    assert_eq!(v["auth_enabled"], true);
    assert_eq!(v["password_login"], true);
    // Auth on: the console's files still need no credentials (its data does).
    assert_eq!(app.get("/admin").await.status(), 200);
    assert_eq!(app.get("/api/debates").await.status(), 401);
    app.stop().await.unwrap();

    // The service token alone turns auth on but gives no password login.
    let app = spawn_app_with(&[("ARAGORA_API_TOKEN", "service-token-0123456789abcdef")]).await;
    let v: Value = app.get("/admin/config.json").await.json().await.unwrap();
    assert_eq!(v["auth_enabled"], true);
    assert_eq!(v["password_login"], false);
    assert_eq!(v["api_base"], "");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn console_can_be_turned_off() {
    let app = spawn_app_with(&[("ARAGORA_ADMIN_CONSOLE", "false")]).await;
    for path in ["/admin", "/admin/", "/admin/app.js", "/admin/config.json"] {
        not_found_json(&app, path).await;
    }
    assert_eq!(app.get("/api/health").await.status(), 200);
    app.stop().await.unwrap();
}

// ---- browser sessions -------------------------------------------------------------------

async fn cookie_app(extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("ARAGORA_JWT_SECRET", SECRET)];
    env.extend_from_slice(extra);
    let app = spawn_app_with(&env).await;
    app.state
        .store
        .create_user(&NewUser {
            id: uuid::Uuid::new_v4().to_string(),
            email: "cookie@example.com".into(),
            password_hash: passwords::hash(PASSWORD).unwrap(),
            role: "admin".into(),
        })
        .await
        .unwrap();
    app
}

/// The `aragora_refresh` Set-Cookie line of a response.
fn set_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("aragora_refresh="))
        .map(str::to_owned)
}

/// The cookie's value (`aragora_refresh=<value>; …`).
fn cookie_value(line: &str) -> String {
    line["aragora_refresh=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn attributes(line: &str) -> Vec<String> {
    line.split(';')
        .skip(1)
        .map(|a| a.trim().to_owned())
        .collect()
}

fn assert_clearing(line: &str) {
    assert_eq!(cookie_value(line), "", "{line}");
    let attrs = attributes(line);
    for a in ["HttpOnly", "SameSite=Strict", "Path=/api/auth", "Max-Age=0"] {
        assert!(attrs.iter().any(|x| x == a), "{a} missing in {line}");
    }
}

async fn cookie_login(app: &TestApp, origin: Option<&str>) -> reqwest::Response {
    let mut req = app.client.post(app.url("/api/auth/login")).json(&json!({
        "email": "cookie@example.com",
        "password": PASSWORD,
        "use_cookie": true,
    }));
    if let Some(origin) = origin {
        req = req.header("Origin", origin);
    }
    req.send().await.unwrap()
}

/// POST with only the cookie; `body` is `None` (no body at all) or a JSON body.
async fn with_cookie(
    app: &TestApp,
    path: &str,
    cookie: &str,
    body: Option<Value>,
    origin: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(path))
        .header("Cookie", format!("theme=dark; aragora_refresh={cookie}"));
    if let Some(body) = body {
        req = req.json(&body);
    }
    if let Some(origin) = origin {
        req = req.header("Origin", HeaderValue::from_str(origin).unwrap());
    }
    req.send().await.unwrap()
}

async fn me(app: &TestApp, access: &str) -> u16 {
    app.client
        .get(app.url("/api/auth/me"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn cookie_login_keeps_the_refresh_token_out_of_the_body() {
    let app = cookie_app(&[("ARAGORA_ALLOWED_ORIGINS", "https://console.example.com")]).await;

    let r = cookie_login(&app, None).await;
    assert_eq!(r.status(), 200);
    let line = set_cookie(&r).expect("Set-Cookie aragora_refresh");
    let v: Value = r.json().await.unwrap();
    assert!(v.get("refresh_token").is_none(), "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["refresh_expires_in"], 2_592_000);
    assert_eq!(me(&app, v["access_token"].as_str().unwrap()).await, 200);
    assert!(cookie_value(&line).starts_with("art_"), "{line}");
    let attrs = attributes(&line);
    for a in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/api/auth",
        "Max-Age=2592000",
    ] {
        assert!(attrs.iter().any(|x| x == a), "{a} missing in {line}");
    }
    assert!(!attrs.iter().any(|x| x == "Secure"), "{line}");

    // From an HTTPS page: Secure.
    let r = cookie_login(&app, Some("https://console.example.com")).await;
    assert_eq!(r.status(), 200);
    let line = set_cookie(&r).unwrap();
    assert!(attributes(&line).iter().any(|x| x == "Secure"), "{line}");

    // Without use_cookie: exactly as before, no cookie.
    let r = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": "cookie@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(set_cookie(&r).is_none());
    let v: Value = r.json().await.unwrap();
    assert!(v["refresh_token"].as_str().unwrap().starts_with("art_"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn secure_cookie_behind_a_trusted_https_proxy_only() {
    let app = cookie_app(&[("ARAGORA_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let r = app
        .client
        .post(app.url("/api/auth/login"))
        .header("X-Forwarded-Proto", "https")
        .json(&json!({"email": "cookie@example.com", "password": PASSWORD, "use_cookie": true}))
        .send()
        .await
        .unwrap();
    let line = set_cookie(&r).unwrap();
    assert!(attributes(&line).iter().any(|x| x == "Secure"), "{line}");
    app.stop().await.unwrap();

    // The same header from a peer that is not a trusted proxy is not believed.
    let app = cookie_app(&[]).await;
    let r = app
        .client
        .post(app.url("/api/auth/login"))
        .header("X-Forwarded-Proto", "https")
        .json(&json!({"email": "cookie@example.com", "password": PASSWORD, "use_cookie": true}))
        .send()
        .await
        .unwrap();
    let line = set_cookie(&r).unwrap();
    assert!(!attributes(&line).iter().any(|x| x == "Secure"), "{line}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn cookie_refresh_rotates_and_reuse_revokes_the_family() {
    let app = cookie_app(&[]).await;
    let r = cookie_login(&app, None).await;
    let cookie1 = cookie_value(&set_cookie(&r).unwrap());

    // No body at all: the cookie is used and rotated.
    let r = with_cookie(&app, "/api/auth/refresh", &cookie1, None, None).await;
    assert_eq!(r.status(), 200);
    let cookie2 = cookie_value(&set_cookie(&r).expect("rotated cookie"));
    assert_ne!(cookie1, cookie2);
    let v: Value = r.json().await.unwrap();
    assert!(v.get("refresh_token").is_none(), "{v}");
    assert_eq!(me(&app, v["access_token"].as_str().unwrap()).await, 200);

    // `{}` works too, and a same-origin Origin header is fine.
    let own = format!("http://{}", app.api);
    let r = with_cookie(
        &app,
        "/api/auth/refresh",
        &cookie2,
        Some(json!({})),
        Some(&own),
    )
    .await;
    assert_eq!(r.status(), 200);
    let cookie3 = cookie_value(&set_cookie(&r).unwrap());
    let v: Value = r.json().await.unwrap();
    assert!(v.get("refresh_token").is_none(), "{v}");
    assert!(v["access_token"].is_string());

    // Reusing a spent cookie: 401, the cookie is cleared, and the family is revoked.
    let r = with_cookie(&app, "/api/auth/refresh", &cookie1, None, None).await;
    assert_eq!(r.status(), 401);
    assert_clearing(&set_cookie(&r).expect("clearing cookie"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "unauthorized");
    let r = with_cookie(&app, "/api/auth/refresh", &cookie3, None, None).await;
    assert_eq!(r.status(), 401);
    assert_clearing(&set_cookie(&r).unwrap());

    // No body and no cookie: 401.
    let r = app
        .client
        .post(app.url("/api/auth/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A malformed JSON body is still rejected as before.
    let r = app
        .client
        .post(app.url("/api/auth/refresh"))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .post(app.url("/api/auth/refresh"))
        .body("refresh_token=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = app
        .client
        .post(app.url("/api/auth/refresh"))
        .json(&json!({"refresh_token": 42}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn cookie_calls_from_a_foreign_origin_are_refused() {
    let app = cookie_app(&[("ARAGORA_ALLOWED_ORIGINS", "https://console.example.com")]).await;
    let r = cookie_login(&app, None).await;
    let cookie = cookie_value(&set_cookie(&r).unwrap());

    for path in ["/api/auth/refresh", "/api/auth/logout"] {
        let r = with_cookie(&app, path, &cookie, None, Some("https://evil.example")).await;
        assert_eq!(r.status(), 403, "{path}");
        assert!(set_cookie(&r).is_none());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "forbidden");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("https://evil.example"),
            "{v}"
        );
    }
    // The refused calls changed nothing: the cookie still works from an allowed origin.
    let r = with_cookie(
        &app,
        "/api/auth/refresh",
        &cookie,
        None,
        Some("https://console.example.com"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let line = set_cookie(&r).unwrap();
    assert!(attributes(&line).iter().any(|x| x == "Secure"), "{line}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn cookie_logout_revokes_and_clears() {
    let app = cookie_app(&[]).await;
    let r = cookie_login(&app, None).await;
    let cookie = cookie_value(&set_cookie(&r).unwrap());

    let r = with_cookie(&app, "/api/auth/logout", &cookie, None, None).await;
    assert_eq!(r.status(), 204);
    assert_clearing(&set_cookie(&r).expect("clearing cookie"));

    let r = with_cookie(&app, "/api/auth/refresh", &cookie, Some(json!({})), None).await;
    assert_eq!(r.status(), 401);
    assert_clearing(&set_cookie(&r).unwrap());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn own_origin_behind_a_trusted_proxy_is_recognised() {
    let app = cookie_app(&[("ARAGORA_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let r = cookie_login(&app, None).await;
    let cookie = cookie_value(&set_cookie(&r).unwrap());
    // The proxy forwards https://aragora.example.net with its own Host to us.
    let r = app
        .client
        .post(app.url("/api/auth/refresh"))
        .header("Cookie", format!("aragora_refresh={cookie}"))
        .header("Origin", "https://aragora.example.net")
        .header("X-Forwarded-Host", "aragora.example.net")
        .header("X-Forwarded-Proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = set_cookie(&r).unwrap();
    assert!(attributes(&line).iter().any(|x| x == "Secure"), "{line}");
    assert!(cookie_value(&line).starts_with("art_"), "{line}");
    // The same forwarded host from an untrusted peer is not believed.
    app.stop().await.unwrap();
    let app = cookie_app(&[]).await;
    let r = cookie_login(&app, None).await;
    let cookie = cookie_value(&set_cookie(&r).unwrap());
    let r = app
        .client
        .post(app.url("/api/auth/refresh"))
        .header("Cookie", format!("aragora_refresh={cookie}"))
        .header("Origin", "https://aragora.example.net")
        .header("X-Forwarded-Host", "aragora.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    app.stop().await.unwrap();
}
