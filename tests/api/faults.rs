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
