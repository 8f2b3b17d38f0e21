//! Accounts and access over real sockets: login, refresh rotation and reuse, logout, me,
//! API keys, the service token, roles (401 vs 403), debate visibility, lockout, rate limit,
//! registration, forged tokens, WebSocket credentials, usage, CORS, secrets in logs, and
//! `aragora user create` with the real binary.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aragora::auth::passwords;
use aragora::store::NewUser;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{TestApp, free_port, http, spawn_app_with};

pub const SECRET: &str = "test-jwt-secret-0123456789abcdef-0123456789";
pub const SERVICE: &str = "service-token-0123456789abcdef";
pub const PASSWORD: &str = "correct horse battery staple";
const BIN: &str = env!("CARGO_BIN_EXE_aragora");

pub async fn auth_app(extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![
        ("ARAGORA_JWT_SECRET", SECRET),
        ("ARAGORA_API_TOKEN", SERVICE),
    ];
    env.extend_from_slice(extra);
    spawn_app_with(&env).await
}

pub async fn add_user(app: &TestApp, email: &str, role: &str) -> String {
    let user = app
        .state
        .store
        .create_user(&NewUser {
            id: uuid::Uuid::new_v4().to_string(),
            email: email.into(),
            password_hash: passwords::hash(PASSWORD).unwrap(),
            role: role.into(),
        })
        .await
        .unwrap();
    user.id
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    post(
        app,
        "/api/auth/login",
        json!({"email": email, "password": password}),
    )
    .await
}

/// (access token, refresh token) of a fresh login.
pub async fn tokens(app: &TestApp, email: &str) -> (String, String) {
    let r = login(app, email, PASSWORD).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    (
        v["access_token"].as_str().unwrap().to_owned(),
        v["refresh_token"].as_str().unwrap().to_owned(),
    )
}

pub async fn get_as(app: &TestApp, path: &str, bearer: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

pub async fn get_json_as(app: &TestApp, path: &str, bearer: &str) -> Value {
    get_as(app, path, bearer).await.json().await.unwrap()
}

pub async fn post_as(app: &TestApp, path: &str, bearer: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn error_code(r: reqwest::Response) -> (u16, String, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("a JSON error body");
    (status, v["code"].as_str().unwrap_or_default().to_owned(), v)
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn claims(sub: &str, role: &str, iat: i64, exp: i64) -> Value {
    json!({"sub": sub, "role": role, "iat": iat, "exp": exp, "jti": "j1", "type": "access"})
}

fn sign_hs256(key: &str, header: &Value, payload: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(key.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{signing_input}.{sig}")
}

#[tokio::test]
async fn login_refresh_rotates_reuse_revokes_the_family_and_logout_ends_it() {
    let app = auth_app(&[]).await;
    let id = add_user(&app, "ann@example.com", "member").await;

    let r = login(&app, "ANN@example.com", PASSWORD).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 900);
    assert_eq!(v["user"]["id"], id.as_str());
    let access = v["access_token"].as_str().unwrap();
    let refresh1 = v["refresh_token"].as_str().unwrap().to_owned();
    // The access token is an HS256 JWT with the documented claims.
    let header = jsonwebtoken::decode_header(access).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "iat", "sub"]);
    let data = jsonwebtoken::decode::<Value>(
        access,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .unwrap();
    for claim in ["sub", "role", "iat", "exp", "jti", "type"] {
        assert!(data.claims.get(claim).is_some(), "missing {claim}");
    }
    assert_eq!(data.claims["role"], "member");
    assert_eq!(data.claims["type"], "access");
    assert_eq!(get_as(&app, "/api/auth/me", access).await.status(), 200);

    // Rotation: the new pair works, the old refresh token is spent.
    let r = post(
        &app,
        "/api/auth/refresh",
        json!({"refresh_token": refresh1}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let refresh2 = v["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh1, refresh2);
    assert_eq!(
        get_as(&app, "/api/auth/me", v["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );

    // Reuse of the rotated token: 401, and the whole family (refresh2 too) is revoked.
    let (status, code, _) = error_code(
        post(
            &app,
            "/api/auth/refresh",
            json!({"refresh_token": refresh1}),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    let r = post(
        &app,
        "/api/auth/refresh",
        json!({"refresh_token": refresh2}),
    )
    .await;
    assert_eq!(r.status(), 401, "reuse revoked the family");

    // Logout revokes a fresh family.
    let (_, refresh3) = tokens(&app, "ann@example.com").await;
    let r = post(&app, "/api/auth/logout", json!({"refresh_token": refresh3})).await;
    assert_eq!(r.status(), 204);
    let r = post(
        &app,
        "/api/auth/refresh",
        json!({"refresh_token": refresh3}),
    )
    .await;
    assert_eq!(r.status(), 401);
    let r = post(
        &app,
        "/api/auth/refresh",
        json!({"refresh_token": "art_garbage"}),
    )
    .await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn api_key_is_shown_once_works_as_bearer_and_x_api_key_and_revocation_is_immediate() {
    let app = auth_app(&[]).await;
    let id = add_user(&app, "kim@example.com", "member").await;
    let (access, _) = tokens(&app, "kim@example.com").await;

    let me: Value = get_as(&app, "/api/auth/me", &access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], id.as_str());
    assert_eq!(me["email"], "kim@example.com");
    assert_eq!(me["role"], "member");
    assert!(me["created_at"].is_string());
    assert!(me["api_key"].is_null());

    let r = post_as(&app, "/api/auth/api-key", &access, json!({})).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let key = v["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("ara_") && key.len() == 44, "{key}");
    assert_eq!(v["prefix"], &key[..12]);

    // Shown once: /me only has the prefix.
    let me: Value = get_as(&app, "/api/auth/me", &access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["api_key"]["prefix"], &key[..12]);
    assert!(!me.to_string().contains(&key));

    // Accepted as Bearer and as X-API-Key; last use is recorded.
    let r = get_as(&app, "/api/debates", &key).await;
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(app.url("/api/auth/me"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["kind"], "api_key");
    assert!(me["api_key"]["last_used_at"].is_string(), "{me}");

    // A new key replaces the old one.
    let v: Value = post_as(&app, "/api/auth/api-key", &access, json!({}))
        .await
        .json()
        .await
        .unwrap();
    let key2 = v["api_key"].as_str().unwrap().to_owned();
    assert_eq!(get_as(&app, "/api/debates", &key).await.status(), 401);
    assert_eq!(get_as(&app, "/api/debates", &key2).await.status(), 200);

    // DELETE revokes at once.
    let r = app
        .client
        .delete(app.url("/api/auth/api-key"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, code, body) = error_code(get_as(&app, "/api/debates", &key2).await).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    assert!(!body.to_string().contains(&key2), "no key in an error body");
    let r = app
        .client
        .get(app.url("/api/debates"))
        .header("X-API-Key", &key2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// The gate's refusals are answered inside the request's scope: 401 and 403 carry the
/// caller's correlation id in the body and the header, whether the principal was known at
/// once (no credential, a cached token) or looked up.
#[tokio::test]
async fn refusals_of_the_gate_carry_the_correlation_id() {
    let app = auth_app(&[]).await;
    add_user(&app, "mem@example.com", "member").await;
    let (member, _) = tokens(&app, "mem@example.com").await;
    let cases = [
        (None, "/api/debates", 401),
        (Some("Bearer not-a-real-token"), "/api/debates", 401),
        (Some(member.as_str()), "/api/system/errors", 403),
        // The member's token again: cached by now, so the gate decides at once.
        (Some(member.as_str()), "/api/system/errors", 403),
    ];
    for (i, (credential, path, status)) in cases.into_iter().enumerate() {
        let id = format!("corr-gate-{i}");
        let mut r = app
            .client
            .get(app.url(path))
            .header("X-Correlation-ID", &id);
        if let Some(credential) = credential {
            let value = if credential.starts_with("Bearer ") {
                credential.to_owned()
            } else {
                format!("Bearer {credential}")
            };
            r = r.header("Authorization", value);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), status, "{path} case {i}");
        assert_eq!(r.headers()["x-correlation-id"], id.as_str());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["correlation_id"], id.as_str(), "{body}");
    }
}

#[tokio::test]
async fn roles_401_without_credentials_403_with_too_little_and_service_token_is_owner() {
    let app = auth_app(&[]).await;
    add_user(&app, "mem@example.com", "member").await;
    add_user(&app, "adm@example.com", "admin").await;
    let (member, _) = tokens(&app, "mem@example.com").await;
    let (admin, _) = tokens(&app, "adm@example.com").await;

    // Public routes need nothing.
    for path in [
        "/api/health",
        "/api/agents",
        "/api/ws/stats",
        "/api/openapi.json",
        "/api/leaderboard",
    ] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    let doc: Value = app.get("/api/openapi.json").await.json().await.unwrap();
    for path in [
        "/api/auth/login",
        "/api/auth/me",
        "/api/auth/api-key",
        "/api/billing/usage",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // Member routes: 401 without credentials.
    let (status, code, _) = error_code(app.get("/api/debates").await).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));

    let admin_routes = [
        "/api/agents/demo/reset-circuit",
        "/api/v1/agents/demo/reset-circuit",
        "/api/debug/agent-test",
    ];
    for path in admin_routes {
        let r = post(&app, path, json!({"agent": "demo", "prompt": "hi"})).await;
        let (status, code, _) = error_code(r).await;
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{path}");
        let (status, code, body) = error_code(
            post_as(
                &app,
                path,
                &member,
                json!({"agent": "demo", "prompt": "hi"}),
            )
            .await,
        )
        .await;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{path}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains("member") && msg.contains("admin"), "{msg}");
        let r = post_as(&app, path, &admin, json!({"agent": "demo", "prompt": "hi"})).await;
        assert_eq!(r.status(), 200, "{path}");
        let r = post_as(
            &app,
            path,
            SERVICE,
            json!({"agent": "demo", "prompt": "hi"}),
        )
        .await;
        assert_eq!(r.status(), 200, "{path} with the service token");
    }
    // Unknown admin paths: still 401/403 before anything else is revealed.
    assert_eq!(app.get("/api/system/errors").await.status(), 401);
    assert_eq!(
        get_as(&app, "/api/system/errors", &member).await.status(),
        403
    );

    let me: Value = get_as(&app, "/api/auth/me", SERVICE)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me["role"].as_str(), me["kind"].as_str()),
        (Some("owner"), Some("service_token"))
    );
    // A wrong service token is not accepted.
    assert_eq!(
        get_as(&app, "/api/auth/me", "service-token-0123456789abcdeX")
            .await
            .status(),
        401
    );
}

pub async fn create_debate(app: &TestApp, bearer: &str) -> String {
    let r = post_as(
        app,
        "/api/debates",
        bearer,
        json!({"task": "Tabs or spaces?", "agents": ["demo", "demo"], "rounds": 1}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    v["debate_id"].as_str().unwrap().to_owned()
}

pub async fn wait_done(app: &TestApp, bearer: &str, id: &str) -> Value {
    for _ in 0..400 {
        let d: Value = get_as(app, &format!("/api/debates/{id}"), bearer)
            .await
            .json()
            .await
            .unwrap();
        if !matches!(d["status"].as_str(), Some("queued" | "running")) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("debate {id} did not finish");
}

#[tokio::test]
async fn members_see_only_their_own_debates_admins_see_all_and_usage_is_recorded() {
    let app = auth_app(&[]).await;
    let a_id = add_user(&app, "a@example.com", "member").await;
    let b_id = add_user(&app, "b@example.com", "member").await;
    add_user(&app, "boss@example.com", "admin").await;
    let (a, _) = tokens(&app, "a@example.com").await;
    let (b, _) = tokens(&app, "b@example.com").await;
    let (boss, _) = tokens(&app, "boss@example.com").await;

    let da = create_debate(&app, &a).await;
    let db = create_debate(&app, &b).await;
    let record = app.state.store.get_debate(&da).await.unwrap().unwrap();
    assert_eq!(record.owner_id.as_deref(), Some(a_id.as_str()));

    let list: Value = get_as(&app, "/api/debates", &a).await.json().await.unwrap();
    let ids: Vec<&str> = list["debates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![da.as_str()]);

    // Another member's debate does not exist for a (404, like an unknown id).
    for path in [
        format!("/api/debates/{db}"),
        format!("/api/debates/{db}/messages"),
        format!("/api/debates/{db}/events"),
    ] {
        let (status, code, _) = error_code(get_as(&app, &path, &a).await).await;
        assert_eq!((status, code.as_str()), (404, "not_found"), "{path}");
    }
    let r = post_as(&app, &format!("/api/debates/{db}/cancel"), &a, json!({})).await;
    assert_eq!(r.status(), 404);

    let list: Value = get_as(&app, "/api/debates", &boss)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["debates"].as_array().unwrap().len(), 2);
    assert_eq!(
        get_as(&app, &format!("/api/debates/{db}"), &boss)
            .await
            .status(),
        200
    );

    // Usage: every agent call of a's debate is on a's bill, none on b's before b's ran.
    wait_done(&app, &a, &da).await;
    wait_done(&app, &b, &db).await;
    let u: Value = get_as(&app, "/api/billing/usage", &a)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(u["principal_id"], a_id.as_str());
    assert_eq!(u["debates"], 1, "{u}");
    assert!(u["input_tokens"].as_i64().unwrap() > 0, "{u}");
    assert!(u["output_tokens"].as_i64().unwrap() > 0, "{u}");
    assert_eq!(u["cost_usd"], 0.0, "demo calls are free");
    let lines = u["by_provider"].as_array().unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (lines[0]["provider"].as_str(), lines[0]["model"].as_str()),
        (Some("demo"), Some("demo"))
    );
    assert!(lines[0]["calls"].as_i64().unwrap() >= 2);
    assert!(
        u["period"]["from"]
            .as_str()
            .unwrap()
            .ends_with("01T00:00:00Z"),
        "{u}"
    );
    // An empty period.
    let u: Value = get_as(&app, "/api/billing/usage?from=2001-01-01&to=2001-01-31", &a)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (u["debates"].as_i64(), u["input_tokens"].as_i64()),
        (Some(0), Some(0))
    );
    // Members may not read someone else's usage; admins may.
    let r = get_as(&app, &format!("/api/billing/usage?user_id={b_id}"), &a).await;
    assert_eq!(r.status(), 403);
    let u: Value = get_as(&app, &format!("/api/billing/usage?user_id={b_id}"), &boss)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (u["principal_id"].as_str(), u["debates"].as_i64()),
        (Some(b_id.as_str()), Some(1))
    );
    assert_eq!(app.get("/api/billing/usage").await.status(), 401);
}

#[tokio::test]
async fn failed_logins_lock_the_account_without_revealing_which_emails_exist() {
    let app = auth_app(&[("ARAGORA_LOGIN_MAX_FAILURES", "3")]).await;
    add_user(&app, "lock@example.com", "member").await;

    let (s1, c1, unknown) =
        error_code(login(&app, "nobody@example.com", "wrong password!").await).await;
    let (s2, c2, known) =
        error_code(login(&app, "lock@example.com", "wrong password!").await).await;
    assert_eq!((s1, c1.as_str()), (401, "unauthorized"));
    assert_eq!((s2, c2.as_str()), (401, "unauthorized"));
    assert_eq!(
        unknown["error"], known["error"],
        "same answer for unknown and known emails"
    );

    for _ in 0..2 {
        assert_eq!(
            login(&app, "lock@example.com", "wrong password!")
                .await
                .status(),
            401
        );
    }
    // Locked now: even the right password is refused, with Retry-After.
    let r = login(&app, "lock@example.com", PASSWORD).await;
    assert_eq!(r.status(), 423);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 900, "{retry}");
    let (_, code, body) = error_code(r).await;
    assert_eq!(code, "account_locked");
    assert!(!body.to_string().contains(PASSWORD));

    // An email no account has locks the same way, with the same answer: a lockout does not
    // reveal which emails exist.
    for _ in 0..2 {
        assert_eq!(
            login(&app, "nobody@example.com", "wrong password!")
                .await
                .status(),
            401
        );
    }
    let r = login(&app, "NoBody@example.com", "wrong password!").await;
    assert_eq!(r.status(), 423, "matched lower-cased");
    assert!(r.headers().contains_key("retry-after"));
    let (_, code_unknown, body_unknown) = error_code(r).await;
    assert_eq!(code_unknown, code);
    assert_eq!(body_unknown["error"], body["error"]);
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_client_ip() {
    let app = auth_app(&[("ARAGORA_LOGIN_IP_MAX_FAILURES", "4")]).await;
    add_user(&app, "ip@example.com", "member").await;
    for i in 0..4 {
        let email = format!("guess{i}@example.com");
        assert_eq!(login(&app, &email, "not the password").await.status(), 401);
    }
    let r = login(&app, "ip@example.com", PASSWORD).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let (_, code, _) = error_code(r).await;
    assert_eq!(code, "rate_limited");
}

#[tokio::test]
async fn registration_is_off_by_default_and_creates_members_when_on() {
    let app = auth_app(&[]).await;
    let r = post(
        &app,
        "/api/auth/register",
        json!({"email": "new@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 404);
    assert!(
        app.state
            .store
            .user_by_email("new@example.com")
            .await
            .unwrap()
            .is_none()
    );

    let app = auth_app(&[("ARAGORA_REGISTRATION_ENABLED", "1")]).await;
    let r = post(
        &app,
        "/api/auth/register",
        json!({"email": "new@example.com", "password": "short"}),
    )
    .await;
    assert_eq!(r.status(), 422);
    // A role in the body is ignored: registration only ever creates members.
    let r = post(
        &app,
        "/api/auth/register",
        json!({"email": "new@example.com", "password": PASSWORD, "role": "owner"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["role"], "member");
    let r = post(
        &app,
        "/api/auth/register",
        json!({"email": "new@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 409);
    let (access, _) = tokens(&app, "new@example.com").await;
    assert_eq!(
        get_as(&app, "/api/system/errors", &access).await.status(),
        403
    );
}

#[tokio::test]
async fn forged_expired_and_tampered_tokens_are_rejected() {
    let app = auth_app(&[]).await;
    let id = add_user(&app, "m@example.com", "member").await;
    let (valid, _) = tokens(&app, "m@example.com").await;
    let now = chrono::Utc::now().timestamp();
    let owner_claims = claims(&id, "owner", now, now + 600);

    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes()),
        b64(owner_claims.to_string().as_bytes())
    );
    // HS/RS confusion: an RS256 header, HMAC-signed with the server's secret as key material.
    let rs_confusion = sign_hs256(
        SECRET,
        &json!({"alg": "RS256", "typ": "JWT"}),
        &owner_claims,
    );
    let hs512 = sign_hs256(
        SECRET,
        &json!({"alg": "HS512", "typ": "JWT"}),
        &owner_claims,
    );
    let wrong_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &owner_claims,
        &EncodingKey::from_secret(b"some-other-secret-0123456789abcdef-xx"),
    )
    .unwrap();
    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&id, "member", now - 3600, now - 60),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut no_exp = claims(&id, "member", now, now + 600);
    no_exp.as_object_mut().unwrap().remove("exp");
    let missing_exp = sign_hs256(SECRET, &json!({"alg": "HS256", "typ": "JWT"}), &no_exp);
    // Tampered payload: the member's real token with role changed to owner, same signature.
    let parts: Vec<&str> = valid.split('.').collect();
    let mut insecure = jsonwebtoken::Validation::new(Algorithm::HS256);
    insecure.insecure_disable_signature_validation();
    let mut payload: Value = jsonwebtoken::decode::<Value>(
        &valid,
        &jsonwebtoken::DecodingKey::from_secret(b""),
        &insecure,
    )
    .unwrap()
    .claims;
    payload["role"] = json!("owner");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(payload.to_string().as_bytes()),
        parts[2]
    );

    for (name, token) in [
        ("alg none", &alg_none),
        ("RS256 header", &rs_confusion),
        ("HS512", &hs512),
        ("wrong secret", &wrong_secret),
        ("expired", &expired),
        ("missing exp", &missing_exp),
        ("tampered role", &tampered),
    ] {
        let (status, code, _) = error_code(get_as(&app, "/api/auth/me", token).await).await;
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{name}");
        let r = post_as(&app, "/api/agents/demo/reset-circuit", token, json!({})).await;
        assert_eq!(r.status(), 401, "{name} on an admin route");
    }
    assert_eq!(get_as(&app, "/api/auth/me", &valid).await.status(), 200);

    // Role escalation with a correctly signed token claiming owner: the account's stored
    // role decides, so it is still a member.
    let escalated = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &owner_claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let me: Value = get_as(&app, "/api/auth/me", &escalated)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "member");
    let r = post_as(
        &app,
        "/api/agents/demo/reset-circuit",
        &escalated,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn cors_answers_only_allowed_origins() {
    let app = auth_app(&[("ARAGORA_ALLOWED_ORIGINS", "https://admin.example.com")]).await;
    for (origin, allowed) in [
        ("https://admin.example.com", true),
        ("https://evil.example.com", false),
    ] {
        let r = app
            .client
            .request(reqwest::Method::OPTIONS, app.url("/api/auth/me"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
            .await
            .unwrap();
        let acao = r
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned());
        if allowed {
            assert_eq!(acao.as_deref(), Some(origin));
        } else {
            assert_eq!(acao, None, "{origin} must not be allowed");
        }
    }
}

#[tokio::test]
async fn local_operator_gives_loopback_callers_owner_rights_unless_proxied() {
    let app = auth_app(&[("ARAGORA_LOCAL_OPERATOR", "1")]).await;
    let r = post(&app, "/api/agents/demo/reset-circuit", json!({})).await;
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .post(app.url("/api/agents/demo/reset-circuit"))
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Off by default.
    let app = auth_app(&[]).await;
    let r = post(&app, "/api/agents/demo/reset-circuit", json!({})).await;
    assert_eq!(r.status(), 401);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_msg(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("no protocol error")
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        if let Message::Text(text) = next_msg(ws).await {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn websocket_credentials_visibility_and_1008() {
    let app = auth_app(&[]).await;
    add_user(&app, "wa@example.com", "member").await;
    add_user(&app, "wb@example.com", "member").await;
    let (a, _) = tokens(&app, "wa@example.com").await;
    let (b, _) = tokens(&app, "wb@example.com").await;
    let da = create_debate(&app, &a).await;
    let base = format!("ws://{}/ws", app.ws);

    // No credentials: closed with 1008.
    let (mut ws, _) = tokio_tungstenite::connect_async(&base).await.unwrap();
    loop {
        match next_msg(&mut ws).await {
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1008);
                break;
            }
            Message::Close(None) => panic!("close without a code"),
            _ => {}
        }
    }

    // ?token= works; the owner sees its debate.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{base}?token={a}"))
        .await
        .unwrap();
    let info = next_json(&mut ws).await;
    assert_eq!(info["data"]["authenticated"], true);
    ws.send(Message::Text(
        json!({"type": "subscribe", "debate_id": da})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");

    // The subprotocol carries b's token and is echoed; b may not see a's debate.
    let mut req = base.clone().into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("access_token.{b}").parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"].to_str().unwrap(),
        format!("access_token.{b}")
    );
    assert_eq!(next_json(&mut ws).await["data"]["authenticated"], true);
    ws.send(Message::Text(
        json!({"type": "subscribe", "debate_id": da})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["data"]["code"], "debate_not_found", "{frame}");

    // Authorization header on the API port's /ws.
    let mut req = format!("ws://{}/ws", app.api)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {SERVICE}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut ws).await["data"]["authenticated"], true);
}

#[tokio::test]
async fn user_create_bootstraps_an_owner_from_stdin_never_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ARAGORA_DATA_DIR", dir.path().join("data"))
            .env("ARAGORA_LOCK_DIR", dir.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        // A refused command line exits before reading stdin: a broken pipe is expected then.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let create = [
        "user",
        "create",
        "--email",
        "root@example.com",
        "--role",
        "owner",
    ];
    let (code, out, err) = run(&create, &format!("{PASSWORD}\n"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("root@example.com") && out.contains("owner"),
        "{out}"
    );
    assert!(!out.contains(PASSWORD) && !err.contains(PASSWORD));
    let (code, _, err) = run(&create, &format!("{PASSWORD}\n"));
    assert_eq!(code, 1, "the email exists: {err}");
    let (code, _, err) = run(&["user", "create", "--email", "x@example.com"], "short\n");
    assert_eq!(code, 2, "too short: {err}");
    let (code, _, _) = run(
        &[
            "user",
            "create",
            "--email",
            "x@example.com",
            "--role",
            "god",
        ],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(code, 2);
    let (code, _, _) = run(
        &[
            "user",
            "create",
            "--email",
            "x@example.com",
            "--password",
            PASSWORD,
        ],
        "",
    );
    assert_eq!(code, 2, "there is no password flag");

    // The created owner can log in on a server using that data dir.
    let mut server = LoggedServer::start(dir.path(), &[]);
    server.wait_healthy().await;
    let r = http()
        .post(server.url("/api/auth/login"))
        .json(&json!({"email": "root@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["user"]["role"], "owner");
}

/// The real binary with auth on, its stdout (JSON logs) captured in a file.
struct LoggedServer {
    child: std::process::Child,
    api_port: u16,
    ws_port: u16,
    out: std::path::PathBuf,
}

impl LoggedServer {
    fn start(dir: &Path, extra: &[(&str, &str)]) -> LoggedServer {
        let (api_port, ws_port) = (free_port(), free_port());
        let out = dir.join(format!("stdout-{api_port}.log"));
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ARAGORA_DATA_DIR", dir.join("data"))
            .env("ARAGORA_LOCK_DIR", dir)
            .env("ARAGORA_JWT_SECRET", SECRET)
            .env("ARAGORA_API_TOKEN", SERVICE)
            .env("ARAGORA_LOG_LEVEL", "debug,sqlx=warn,hyper=warn,h2=warn");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .args([
                "serve",
                "--api-port",
                &api_port.to_string(),
                "--ws-port",
                &ws_port.to_string(),
            ])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        LoggedServer {
            child,
            api_port,
            ws_port,
            out,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    async fn wait_healthy(&mut self) {
        for _ in 0..400 {
            if let Ok(r) = http().get(self.url("/api/health")).send().await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("server exited early with {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not become healthy");
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn no_password_token_or_key_appears_in_any_log_line_or_error_body() {
    let dir = tempfile::tempdir().unwrap();
    // The owner account is bootstrapped with the CLI; its password is on stdin only.
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ARAGORA_DATA_DIR", dir.path().join("data"))
        .env("ARAGORA_LOCK_DIR", dir.path())
        .args([
            "user",
            "create",
            "--email",
            "log@example.com",
            "--role",
            "member",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .unwrap();
    }
    assert!(child.wait().unwrap().success());

    let mut server = LoggedServer::start(dir.path(), &[]);
    server.wait_healthy().await;
    let client = http();
    let mut secrets: Vec<String> = vec![PASSWORD.into(), SECRET.into(), SERVICE.into()];
    let mut bodies = String::new();

    // A wrong password, then a right one.
    let r = client
        .post(server.url("/api/auth/login"))
        .json(&json!({"email": "log@example.com", "password": "wrong-password-123"}))
        .send()
        .await
        .unwrap();
    bodies.push_str(&r.text().await.unwrap());
    secrets.push("wrong-password-123".into());
    let v: Value = client
        .post(server.url("/api/auth/login"))
        .json(&json!({"email": "log@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = v["access_token"].as_str().unwrap().to_owned();
    let refresh = v["refresh_token"].as_str().unwrap().to_owned();
    secrets.push(access.clone());
    secrets.push(refresh.clone());
    // Refresh, reuse (a warning is logged), API key create/use/revoke/use.
    for _ in 0..2 {
        let r = client
            .post(server.url("/api/auth/refresh"))
            .json(&json!({"refresh_token": refresh}))
            .send()
            .await
            .unwrap();
        let text = r.text().await.unwrap();
        if let Ok(v) = serde_json::from_str::<Value>(&text)
            && let Some(t) = v["refresh_token"].as_str()
        {
            secrets.push(t.to_owned());
            secrets.push(v["access_token"].as_str().unwrap().to_owned());
        } else {
            bodies.push_str(&text);
        }
    }
    let v: Value = client
        .post(server.url("/api/auth/api-key"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = v["api_key"].as_str().unwrap().to_owned();
    secrets.push(key.clone());
    for _ in 0..2 {
        let r = client
            .get(server.url("/api/debates"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        bodies.push_str(&r.text().await.unwrap());
        client
            .delete(server.url("/api/auth/api-key"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
    }
    // Bad and good credentials on admin routes and in the WebSocket query string.
    let r = client
        .post(server.url("/api/agents/demo/reset-circuit"))
        .bearer_auth(format!("{access}x"))
        .send()
        .await
        .unwrap();
    bodies.push_str(&r.text().await.unwrap());
    for token in [
        access.as_str(),
        "ara_notAKeyButSecretLooking0123456789abcdefgh",
    ] {
        let url = format!("ws://127.0.0.1:{}/ws?token={token}", server.ws_port);
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
        }
    }
    secrets.push("ara_notAKeyButSecretLooking0123456789abcdefgh".into());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = std::fs::read_to_string(&server.out).unwrap();
    assert!(logs.lines().count() > 10, "logs were captured: {logs}");
    assert!(
        logs.contains("refresh token reuse detected"),
        "the reuse is logged"
    );
    assert!(logs.contains("login failed"));
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret leaked into the logs"
        );
        assert!(
            !bodies.contains(secret.as_str()),
            "a secret leaked into an error body"
        );
    }
    // No token fragment either (JWT header+payload are distinctive).
    let head = access.split('.').nth(1).unwrap();
    assert!(!logs.contains(head));
}

#[tokio::test]
async fn anonymous_websocket_readers_when_allowed_see_no_owned_debate() {
    let app = auth_app(&[("ARAGORA_WS_ANONYMOUS_READ", "1")]).await;
    add_user(&app, "owned@example.com", "member").await;
    let (a, _) = tokens(&app, "owned@example.com").await;
    let owned = create_debate(&app, &a).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.ws))
        .await
        .unwrap();
    let info = next_json(&mut ws).await;
    assert_eq!(info["data"]["authenticated"], false);
    ws.send(Message::Text(
        json!({"type": "subscribe", "debate_id": owned})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["data"]["code"], "debate_not_found", "{frame}");
    // Invalid credentials are still refused with 1008.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?token=bogus", app.ws))
        .await
        .unwrap();
    loop {
        if let Message::Close(frame) = next_msg(&mut ws).await {
            assert_eq!(u16::from(frame.expect("a close code").code), 1008);
            break;
        }
    }
}

/// A database outage is not the caller's fault: valid credentials that cannot be checked
/// get 503 database_unavailable (HTTP) or 1013 (WebSocket), never 401/1008, so a browser
/// keeps its session through the outage. Public routes still answer.
#[tokio::test]
async fn credentials_that_cannot_be_checked_are_503_not_401() {
    let (app, proxy) = crate::helpers::spawn_app_behind_db_proxy(&[
        ("ARAGORA_JWT_SECRET", SECRET),
        ("ARAGORA_DB_ACQUIRE_TIMEOUT_MS", "1000"),
    ])
    .await;
    add_user(&app, "outage@example.com", "owner").await;
    let (access, _) = tokens(&app, "outage@example.com").await;
    assert_eq!(get_as(&app, "/api/auth/me", &access).await.status(), 200);

    proxy.cut();
    let r = get_as(&app, "/api/auth/me", &access).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "database_unavailable", "{body}");
    // A token that is invalid on its face is still a 401 (no database needed to say so).
    assert_eq!(
        get_as(&app, "/api/auth/me", "not-a-token").await.status(),
        401
    );
    // Public routes ignore the credential they cannot check.
    assert_eq!(
        get_as(&app, "/api/health/live", &access).await.status(),
        200
    );

    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={access}", app.ws))
            .await
            .unwrap();
    loop {
        match next_msg(&mut ws).await {
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1013, "{frame:?}");
                assert!(frame.reason.contains("database"), "{frame:?}");
                break;
            }
            Message::Close(None) => panic!("close without a code"),
            _ => {}
        }
    }
    app.stop().await.unwrap();
}

/// Two instances on one database: a key and an account resolved on B are reused there for at
/// most `auth_cache_ms`, so a revocation or a demotion made through A (or straight in the
/// database) applies on B within that time, and on A at once.
#[tokio::test]
async fn revocation_and_role_changes_reach_every_instance_within_the_auth_cache() {
    let (schema, url) = crate::helpers::fresh_postgres_schema().await;
    let a = auth_app(&[("ARAGORA_DATABASE_URL", url.as_str())]).await;
    let b = auth_app(&[("ARAGORA_DATABASE_URL", url.as_str())]).await;
    let id = add_user(&a, "two@example.com", "admin").await;
    let (access, _) = tokens(&a, "two@example.com").await;
    let v: Value = post_as(&a, "/api/auth/api-key", &access, json!({}))
        .await
        .json()
        .await
        .unwrap();
    let key = v["api_key"].as_str().unwrap().to_owned();
    // B resolves both (and caches them); the key works many times in a row.
    for _ in 0..5 {
        assert_eq!(get_as(&b, "/api/debates", &key).await.status(), 200);
        assert_eq!(
            get_as(&b, "/api/system/errors", &access).await.status(),
            200
        );
    }

    // Revoked through A: refused by A at once, by B within the TTL (1 s).
    let r = a
        .client
        .delete(a.url("/api/auth/api-key"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revoked = Instant::now();
    assert_eq!(get_as(&a, "/api/debates", &key).await.status(), 401);
    let refused_after = loop {
        let status = get_as(&b, "/api/debates", &key).await.status();
        if status == 401 {
            break revoked.elapsed();
        }
        assert_eq!(status, 200);
        assert!(
            revoked.elapsed() < Duration::from_secs(3),
            "B still accepts the key"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(
        refused_after <= Duration::from_millis(1100),
        "{refused_after:?}"
    );

    // Demoted straight in the database: the admin route answers 403 on B within the TTL.
    let pool = sqlx::PgPool::connect(&crate::helpers::with_search_path(
        &crate::helpers::postgres_url(),
        &schema,
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE users SET role = 'member' WHERE id = $1")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    let demoted = Instant::now();
    let denied_after = loop {
        let status = get_as(&b, "/api/system/errors", &access).await.status();
        if status == 403 {
            break demoted.elapsed();
        }
        assert_eq!(status, 200);
        assert!(
            demoted.elapsed() < Duration::from_secs(3),
            "B still sees an admin"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(
        denied_after <= Duration::from_millis(1100),
        "{denied_after:?}"
    );
    pool.close().await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
