//! Storage faults against real storage: SQLite on a small tmpfs that fills up mid-debate.
//! Needs root (to mount the tmpfs), as on the CI machine; it fails, not skips, otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;

use crate::durable::{events, get_json, wait_all_finished, wait_progress};
use crate::helpers::{http, spawn_app_with};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the CI machine runs tests as root)"
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the file system holding `path` with a file until it refuses more.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    let mut written = 0u64;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    // Single bytes for the last partial block.
    while f.write_all(&[0]).is_ok() {
        written += 1;
    }
    let _ = f.flush();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_answers_507_degrades_health_and_debates_finish_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let _mnt = Tmpfs::mount(dir.path(), "4m");
    let data = dir.path().join("data");
    let app = spawn_app_with(&[
        ("ARAGORA_DATA_DIR", data.to_str().unwrap()),
        ("ARAGORA_DEBATE_LEASE_SECONDS", "3"),
        ("ARAGORA_DEBATE_CLAIM_POLL_MS", "200"),
    ])
    .await;
    let base = app.url("");
    let body = json!({"task": "Where should the disk go?", "agents": ["demo:300", "demo:300", "demo:300"],
                      "rounds": 3, "min_rounds": 3});
    let r = http()
        .post(format!("{base}/api/debates"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["debate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_progress(&base, std::slice::from_ref(&id), 4).await;

    let filler = dir.path().join("filler");
    fill(&filler);
    // New debates with big tasks cannot be stored: 507 with a clear sentence, never a 500.
    let big = "x".repeat(19_000);
    let mut refused = None;
    for _ in 0..40 {
        let r = http()
            .post(format!("{base}/api/debates"))
            .json(&json!({"task": big, "agents": ["demo", "demo"]}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert!(matches!(status, 202 | 507), "{status}: {v}");
        if status == 507 {
            refused = Some(v);
            break;
        }
    }
    let refused = refused.expect("a full disk refuses new debates");
    assert_eq!(refused["code"], "storage_unavailable");
    assert!(
        refused["error"].as_str().unwrap().contains("disk is full"),
        "{refused}"
    );
    let health = get_json(&format!("{base}/api/health")).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(
        health["checks"]["database"]["writes"], "failing",
        "{health}"
    );

    // Space returns: the running debate goes on and ends, its status and log agreeing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::remove_file(&filler).unwrap();
    let done = wait_all_finished(&base, std::slice::from_ref(&id), Duration::from_secs(90)).await;
    let log = events(&base, &id).await;
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["seq"], i as i64 + 1);
    }
    let ends: Vec<&Value> = log.iter().filter(|e| e["type"] == "debate_end").collect();
    assert_eq!(ends.len(), 1, "one debate_end");
    assert_eq!(
        ends[0]["data"]["status"], done[0]["status"],
        "status and log agree"
    );
    assert!(
        matches!(
            done[0]["status"].as_str(),
            Some("completed" | "no_consensus")
        ),
        "{}",
        done[0]
    );
    // Health recovers with the next successful write.
    let r = http()
        .post(format!("{base}/api/debates"))
        .json(&json!({"task": "after", "agents": ["demo", "demo"], "rounds": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = get_json(&format!("{base}/api/health")).await;
        if h["status"] == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "health never recovered: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await.unwrap();
    // The database file is sound.
    let url = format!("sqlite://{}", data.join("aragora.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(check, "ok");
}

/// The same bad input gets the same clear 4xx on both backends.
async fn bad_input_is_refused_the_same(app: &crate::helpers::TestApp) {
    let base = app.url("");
    let post = |body: Value| {
        let base = base.clone();
        async move {
            let r = http()
                .post(format!("{base}/api/debates"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, v) = post(json!({"task": "a\u{0}b"})).await;
    assert_eq!((status, v["field"].as_str()), (400, Some("task")), "{v}");
    assert!(v["error"].as_str().unwrap().contains("U+0000"), "{v}");
    assert!(v["correlation_id"].is_string());
    let (status, v) = post(json!({"task": "ok", "metadata": {"tags": ["x", "y\u{0}"]}})).await;
    assert_eq!(
        (status, v["field"].as_str()),
        (400, Some("metadata.tags[1]")),
        "{v}"
    );
    let (status, v) = post(json!({"task": "ok", "agents": ["demo", "de\u{0}mo"]})).await;
    assert_eq!(
        (status, v["field"].as_str()),
        (400, Some("agents[1]")),
        "{v}"
    );
    // Prose may have newlines and tabs.
    let (status, v) =
        post(json!({"task": "line one\n\tline two", "agents": ["demo", "demo"], "rounds": 1}))
            .await;
    assert_eq!(status, 202, "{v}");

    for (path, field) in [
        ("/api/debates/abc%00def", "path"),
        ("/api/leaderboard?domain=a%00b", "domain"),
        ("/api/debates?status=running%01", "status"),
    ] {
        let r = http().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert!(r.headers().contains_key("x-correlation-id"));
        assert_eq!(r.json::<Value>().await.unwrap()["field"], field, "{path}");
    }

    // Bounds: a demo agent's delay, the agent-test prompt, the content type.
    let (status, v) = post(json!({"task": "slow", "agents": ["demo", "demo:1000000000000"]})).await;
    assert_eq!((status, v["field"].as_str()), (422, Some("agents")), "{v}");
    assert!(v["error"].as_str().unwrap().contains("60000"), "{v}");
    let r = http()
        .post(format!("{base}/api/debug/agent-test"))
        .json(&json!({"agent": "demo", "prompt": "x".repeat(20_001)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "prompt");
    let r = http()
        .post(format!("{base}/api/debug/agent-test"))
        .json(&json!({"agent": "demo", "prompt": "a\u{0}"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    for (content_type, expected) in [
        ("application/vnd.evil+json", 415),
        ("text/plain", 415),
        ("application/json; charset=utf-8", 202),
    ] {
        let r = http()
            .post(format!("{base}/api/debates"))
            .header("content-type", content_type)
            .body(r#"{"task": "typed", "agents": ["demo", "demo"], "rounds": 1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), expected, "{content_type}");
        if expected == 415 {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["code"], "unsupported_media_type");
        }
    }
    // A moderator's message with a NUL.
    let id = post(json!({"task": "steer", "agents": ["demo:500", "demo:500"], "rounds": 2}))
        .await
        .1["debate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = http()
        .post(format!("{base}/api/debates/{id}/intervention/inject"))
        .json(&json!({"content": "bad\u{0}note"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "content");
}

#[tokio::test]
async fn bad_text_and_unbounded_input_get_the_same_clear_4xx_on_sqlite() {
    let app = spawn_app_with(&[]).await;
    bad_input_is_refused_the_same(&app).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bad_text_and_unbounded_input_get_the_same_clear_4xx_on_postgres() {
    let (_schema, url) = crate::helpers::fresh_postgres_schema().await;
    let app = spawn_app_with(&[("ARAGORA_DATABASE_URL", url.as_str())]).await;
    bad_input_is_refused_the_same(&app).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn refused_debate_requests_do_not_use_up_the_debate_limit() {
    let app = spawn_app_with(&[("ARAGORA_RATE_LIMIT_DEBATE_RPM", "2")]).await;
    let post = |body: Value| {
        let url = app.url("/api/debates");
        async move {
            http()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for _ in 0..5 {
        assert_eq!(post(json!({"task": ""})).await, 422);
        assert_eq!(post(json!({"task": "nul\u{0}"})).await, 400);
    }
    let ok = json!({"task": "counted", "agents": ["demo", "demo"], "rounds": 1});
    assert_eq!(post(ok.clone()).await, 202);
    assert_eq!(post(ok.clone()).await, 202);
    assert_eq!(
        post(ok).await,
        429,
        "two accepted debates use the budget of two"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn too_many_headers_and_too_long_a_uri_get_the_json_error_body() {
    let app = spawn_app_with(&[]).await;
    let with_headers = |n: usize| {
        let mut r = http().get(app.url("/api/health/live"));
        for i in 0..n {
            r = r.header(format!("x-extra-{i}"), "v");
        }
        r
    };
    // Under the limit (64 in all, counting the client's own) the request is served.
    let r = with_headers(58).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = with_headers(80).send().await.unwrap();
    assert_eq!(r.status(), 431);
    assert!(r.headers().contains_key("x-correlation-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "request_header_fields_too_large");
    assert!(v["error"].as_str().unwrap().contains("at most 64"), "{v}");
    assert!(v["correlation_id"].as_str().unwrap().starts_with("corr-"));
    // Past hyper's own limit (100) hyper refuses the request itself, still with 431.
    let r = with_headers(120).send().await.unwrap();
    assert_eq!(r.status(), 431);

    let long = "a".repeat(20_000);
    let r = http()
        .get(app.url(&format!("/api/debates?cursor={long}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 414);
    assert!(r.headers().contains_key("x-correlation-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "uri_too_long");
    // Within the limits all is well.
    assert_eq!(app.get("/api/health/live").await.status(), 200);
    app.stop().await.unwrap();
}

async fn refused_requests_are_free(extra: &[(&str, &str)]) {
    let mut env = vec![("ARAGORA_RATE_LIMIT_RPM", "3")];
    env.extend_from_slice(extra);
    let app = spawn_app_with(&env).await;
    for _ in 0..10 {
        // Unknown debates and bad input cost nothing.
        assert_eq!(app.get("/api/debates/no-such-debate").await.status(), 404);
        assert_eq!(app.get("/api/debates?limit=0").await.status(), 400);
    }
    for _ in 0..3 {
        assert_eq!(app.get("/api/agents").await.status(), 200);
    }
    let r = app.get("/api/agents").await;
    assert_eq!(
        r.status(),
        429,
        "three answered requests used the budget of three"
    );
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn refused_requests_do_not_use_up_the_limit_in_memory() {
    refused_requests_are_free(&[]).await;
}

#[tokio::test]
async fn refused_requests_do_not_use_up_the_limit_in_redis() {
    let prefix = format!("t{}:rl:", uuid::Uuid::new_v4().simple());
    let redis = crate::helpers::redis_url();
    refused_requests_are_free(&[
        ("ARAGORA_REDIS_URL", redis.as_str()),
        ("ARAGORA_ENABLE_REDIS_RATE_LIMIT", "1"),
        ("ARAGORA_RATE_LIMIT_PREFIX", prefix.as_str()),
    ])
    .await;
}
