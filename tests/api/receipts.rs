//! Decision receipts end to end: issued for every decided debate, signed, exported
//! byte-identical, verified by the API and by `aragora receipt verify` (signature and
//! transcript chain), visible only to whom the debate is, kept across a restart and a key
//! rotation, and the start refused for an unsafe or malformed key. (.ci/run also verifies
//! them with the published `aragora-verify`.)

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::auth::{SERVICE, add_user, auth_app, create_debate, get_as, tokens, wait_done};
use crate::debates::wait_finished;
use crate::helpers::{TestApp, fresh_postgres_schema, spawn_app, spawn_app_with};
use crate::process::{Server, command};

const BIN: &str = env!("CARGO_BIN_EXE_aragora");

async fn start_debate(app: &TestApp, task: &str) -> String {
    let r = app
        .client
        .post(app.url("/api/debates"))
        .json(&json!({"task": task, "agents": ["demo", "demo", "demo"], "rounds": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["debate_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The debate's record once its receipt is issued (right after its end, asynchronously).
async fn wait_receipt(app: &TestApp, id: &str) -> Value {
    let done = wait_finished(app, id).await;
    assert!(
        matches!(done["status"].as_str(), Some("completed" | "no_consensus")),
        "{done}"
    );
    for _ in 0..200 {
        let d: Value = app
            .get(&format!("/api/debates/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if d["receipt_id"].is_string() {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("debate {id} got no receipt_id");
}

async fn text(app: &TestApp, path: &str) -> (u16, String) {
    let r = app.get(path).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn verify_via_api(app: &TestApp, doc: &Value) -> Value {
    let r = app
        .client
        .post(app.url("/api/v2/receipts/verify"))
        .json(doc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn failing(result: &Value) -> Vec<String> {
    result["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `aragora receipt verify` on files: (exit code, stdout).
fn cli_verify(dir: &std::path::Path, doc: &str, extra: &[(&str, &str)]) -> (i32, String) {
    let file = dir.join("receipt.json");
    std::fs::write(&file, doc).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["receipt", "verify"]).arg(&file);
    for (flag, content) in extra {
        let path = dir.join(format!("{}.arg", flag.trim_start_matches('-')));
        std::fs::write(&path, content).unwrap();
        cmd.arg(flag).arg(&path);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn a_decided_debate_gets_a_signed_receipt_that_exports_identically_and_verifies() {
    let app = spawn_app().await;
    let id = start_debate(&app, "Should the team adopt trunk-based development?").await;
    let debate = wait_receipt(&app, &id).await;
    let receipt_id = debate["receipt_id"].as_str().unwrap().to_owned();

    // The debate's receipt and the receipt by id are the same native document.
    let (status, by_debate) = text(&app, &format!("/api/debates/{id}/receipt")).await;
    assert_eq!(status, 200);
    let (status, by_id) = text(&app, &format!("/api/v2/receipts/{receipt_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(by_debate, by_id);
    let native: Value = serde_json::from_str(&by_id).unwrap();
    assert_eq!(native["debate_id"], id.as_str());
    assert_eq!(native["receipt_id"], receipt_id.as_str());
    let verdict = if debate["status"] == "completed" {
        "consensus"
    } else {
        "no_consensus"
    };
    assert_eq!(native["verdict"], verdict);
    assert_eq!(native["participating_agents"].as_array().unwrap().len(), 3);
    assert_eq!(native["signed"], true);
    // The v1 alias serves the debate's receipt too.
    assert_eq!(
        text(&app, &format!("/api/v1/debates/{id}/receipt")).await.1,
        by_id
    );

    // The signing key: JSON and the well-known PEM agree; the receipt names it.
    let key: Value = app
        .get("/api/v2/receipts/signing-key")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(key["algorithm"], "Ed25519");
    assert_eq!(native["key_id"], key["key_id"]);
    let r = app.get("/.well-known/aragora-odr-signing-key").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-aragora-key-id"],
        key["key_id"].as_str().unwrap()
    );
    assert_eq!(r.headers()["cache-control"], "public, max-age=300");
    let pem = r.text().await.unwrap();
    assert_eq!(pem, key["public_key_pem"].as_str().unwrap());
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));

    // Exports: byte-identical each time; ODR 0.2 by default, 0.1 on request.
    let export = |q: &str| format!("/api/v2/receipts/{receipt_id}/export?{q}");
    let (status, odr) = text(&app, &export("format=odr")).await;
    assert_eq!(status, 200);
    assert_eq!(text(&app, &export("format=odr")).await.1, odr);
    assert_eq!(
        text(&app, &export("format=odr&odr_version=0.2")).await.1,
        odr
    );
    let (_, odr01) = text(&app, &export("format=odr&odr_version=0.1")).await;
    assert_eq!(text(&app, &export("odr_version=0.1")).await.1, odr01);
    let doc: Value = serde_json::from_str(&odr).unwrap();
    let doc01: Value = serde_json::from_str(&odr01).unwrap();
    assert_eq!(doc["odr_version"], "0.2");
    assert_eq!(doc01["odr_version"], "0.1");
    assert_eq!(doc["subject"]["identifier"], id.as_str());
    assert_eq!(doc["claim"]["verdict"], verdict);
    assert_eq!(doc["signatures"][0]["role"], "emitter");
    assert_eq!(doc["signatures"][0]["issuer"], "aragora");
    assert!(doc01["signatures"][0].get("issuer").is_none());
    assert!(doc01["quorum"].get("verdicts").is_none());
    assert_eq!(text(&app, &export("format=json")).await.1, by_id);
    let (status, md) = text(&app, &export("format=md")).await;
    assert_eq!(status, 200);
    assert!(
        md.contains(&format!("# Decision receipt {receipt_id}")),
        "{md}"
    );
    assert!(md.contains(&format!("Verdict: **{verdict}**")), "{md}");

    // The API verifies both versions; any edit fails a named check.
    for d in [&doc, &doc01] {
        let result = verify_via_api(&app, d).await;
        assert_eq!(result["verified"], true, "{result}");
        assert_eq!(result["key_id"], key["key_id"]);
        assert_eq!(result["receipt_id"], receipt_id.as_str());
    }
    let mut claim = doc.clone();
    claim["claim"]["verdict"] = json!("something else");
    let result = verify_via_api(&app, &claim).await;
    assert_eq!(result["verified"], false);
    assert_eq!(failing(&result), ["signature"]);
    let mut participants = doc.clone();
    participants["quorum"]["participants"][0]["agent"] = json!("mallory");
    let result = verify_via_api(&app, &participants).await;
    assert_eq!(result["verified"], false);
    assert!(
        failing(&result).contains(&"quorum_consistency".to_owned()),
        "{result}"
    );
    let mut issuer = doc.clone();
    issuer["signatures"][0]["issuer"] = json!("someone-else");
    assert_eq!(failing(&verify_via_api(&app, &issuer).await), ["signature"]);
    let result = verify_via_api(&app, &json!({"odr_version": "9"})).await;
    assert_eq!(failing(&result), ["schema_conformance"]);

    // Offline: the CLI checks the signature with the public key and the transcript chain
    // with the events the API serves.
    let dir = tempfile::tempdir().unwrap();
    let events = app
        .get(&format!("/api/debates/{id}/events"))
        .await
        .text()
        .await
        .unwrap();
    let (code, out) = cli_verify(
        dir.path(),
        &odr,
        &[("--pubkey", &pem), ("--events", &events)],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[PASS] event_chain"), "{out}");
    assert!(out.contains("[PASS] signature"), "{out}");
    let (code, out) = cli_verify(dir.path(), &odr01, &[("--pubkey", &pem)]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli_verify(dir.path(), &odr, &[]);
    assert_eq!(code, 3, "signed but unchecked: {out}");
    let (code, out) = cli_verify(dir.path(), &claim.to_string(), &[("--pubkey", &pem)]);
    assert_eq!(code, 1, "{out}");
    let mut edited: Value = serde_json::from_str(&events).unwrap();
    edited["events"][2]["data"] = json!({"edited": true});
    let (code, out) = cli_verify(
        dir.path(),
        &odr,
        &[("--pubkey", &pem), ("--events", &edited.to_string())],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("[FAIL] event_chain"), "{out}");
    let mut short: Value = serde_json::from_str(&events).unwrap();
    short["events"].as_array_mut().unwrap().pop();
    let (code, _) = cli_verify(
        dir.path(),
        &odr,
        &[("--pubkey", &pem), ("--events", &short.to_string())],
    );
    assert_eq!(code, 1);
    // Another key: the signature does not verify.
    let other = aragora::receipts::Signer::generate();
    let (code, out) = cli_verify(dir.path(), &odr, &[("--pubkey", other.public_pem())]);
    assert_eq!(code, 1, "{out}");

    // The listing shows it.
    let list: Value = app
        .get("/api/v2/receipts?limit=5")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1);
    assert_eq!(list["receipts"][0]["receipt_id"], receipt_id.as_str());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bad_export_arguments_and_unknown_receipts_are_named() {
    let app = spawn_app().await;
    let id = start_debate(&app, "Monorepo or polyrepo?").await;
    let receipt_id = wait_receipt(&app, &id).await["receipt_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (query, field) in [
        ("format=pdf", "format"),
        ("format=odr&odr_version=0.3", "odr_version"),
    ] {
        let r = app
            .get(&format!("/api/v2/receipts/{receipt_id}/export?{query}"))
            .await;
        assert_eq!(r.status(), 422, "{query}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["field"], field, "{body}");
    }
    for path in [
        "/api/v2/receipts/rcpt-nope".to_owned(),
        "/api/v2/receipts/rcpt-nope/export?format=odr".to_owned(),
        "/api/debates/nope/receipt".to_owned(),
    ] {
        assert_eq!(app.get(&path).await.status(), 404, "{path}");
    }
    let r = app.get("/api/v2/receipts?limit=0").await;
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .post(app.url("/api/v2/receipts/verify"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn only_decided_debates_get_receipts() {
    let app = spawn_app().await;
    // Slow agents, cancelled while running: no receipt, and the answer says why.
    let r = app
        .client
        .post(app.url("/api/debates"))
        .json(&json!({"task": "Slow one", "agents": ["demo:2000", "demo:2000"], "rounds": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["debate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .client
        .post(app.url(&format!("/api/debates/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let done = wait_finished(&app, &id).await;
    assert_eq!(done["status"], "cancelled");
    assert!(done["receipt_id"].is_null());
    let r = app.get(&format!("/api/debates/{id}/receipt")).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("cancelled"),
        "{body}"
    );
    let list: Value = app.get("/api/v2/receipts").await.json().await.unwrap();
    assert_eq!(list["total"], 0);
    app.stop().await.unwrap();
}

/// A debate that ended `completed` (its end stored) and has no receipt yet.
async fn decided_without_receipt(store: &aragora::store::DynStore, id: &str, task: &str) {
    use aragora::store::{DebateUpdate, NewEvent};
    store
        .create_debate(&crate::helpers::queued_debate(id, task, &["demo", "demo"]))
        .await
        .unwrap();
    store
        .finish_queued(
            id,
            &DebateUpdate {
                status: Some("completed".parse().unwrap()),
                rounds_used: Some(1),
                result: Some(
                    json!({"final_answer": "Yes", "consensus_reached": true, "confidence": 1.0,
                                    "winner": null, "mode": "majority", "votes": []}),
                ),
                ..Default::default()
            },
            &NewEvent {
                kind: "debate_end".into(),
                round: None,
                agent: None,
                data: json!({"status": "completed", "rounds_used": 1}),
            },
        )
        .await
        .unwrap()
        .expect("finished");
}

/// An instance that ends a debate and dies before issuing its receipt: the sweeper of any
/// instance issues it.
/// The receipt issued right after a debate's end comes from the log as this instance wrote
/// it (folded event by event, nothing read back). On both backends — on Postgres the events
/// come back through JSONB — it is the receipt the stored log gives: the same chain and
/// count as the events the API serves, and the same document as facts gathered anew from
/// the stored record and log.
#[tokio::test]
async fn a_receipt_from_the_log_as_written_is_the_one_the_stored_log_gives() {
    let (_schema, url) = fresh_postgres_schema().await;
    for app in [
        spawn_app().await,
        spawn_app_with(&[("ARAGORA_DATABASE_URL", url.as_str())]).await,
    ] {
        let id = start_debate(&app, "Should the build cache be shared?").await;
        let debate = wait_receipt(&app, &id).await;
        assert_eq!(app.state.receipts.issued_from_folded_logs(), 1);
        let receipt_id = debate["receipt_id"].as_str().unwrap();
        let (_, native) = text(&app, &format!("/api/v2/receipts/{receipt_id}")).await;
        let native: Value = serde_json::from_str(&native).unwrap();

        let served: Value = app
            .get(&format!("/api/debates/{id}/events?limit=1000"))
            .await
            .json()
            .await
            .unwrap();
        let served = served["events"].as_array().unwrap();
        assert!(served.len() > 10, "{served:?}");
        let digest = &native["transcript_digest"];
        assert_eq!(digest["event_count"], served.len());
        assert_eq!(
            digest["value"],
            aragora::receipts::chain::chain_head(served.iter())
        );

        let record = app.state.store.get_debate(&id).await.unwrap().unwrap();
        let events = app
            .state
            .store
            .events_since(&id, 0, u32::MAX)
            .await
            .unwrap();
        let anew = aragora::receipts::document::Facts::gather(
            &record,
            &events,
            receipt_id.to_owned(),
            native["issued_at"].as_str().unwrap().to_owned(),
            &|_| None,
        );
        assert_eq!(
            anew.native(native["key_id"].as_str(), app.state.receipts.issuer()),
            native
        );
        app.stop().await.unwrap();
    }
}

#[tokio::test]
async fn the_sweeper_issues_receipts_a_dead_instance_did_not() {
    // One slot, held by a debate that outlasts the test: this server claims nothing else,
    // so the debate below stays the one "another instance" ended.
    let app = spawn_app_with(&[
        ("ARAGORA_MAX_CONCURRENT_DEBATES", "1"),
        ("ARAGORA_DEBATE_CLAIM_POLL_MS", "50"),
        ("ARAGORA_SHUTDOWN_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    let busy =
        crate::helpers::queued_debate("busy", "Holds the only slot", &["demo:60000", "demo:60000"]);
    app.state.store.create_debate(&busy).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = app.state.store.get_debate("busy").await.unwrap().unwrap();
        if d.status == aragora::store::DebateStatus::Running {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    decided_without_receipt(&app.state.store, "orphan", "Finished elsewhere").await;
    // The sweeper (this call, or the server's own periodic one if it came first) issues it,
    // once.
    let issued = app.state.receipts.sweep().await.unwrap();
    assert!(issued <= 1);
    assert_eq!(app.state.receipts.sweep().await.unwrap(), 0, "issued once");
    let d: Value = app.get("/api/debates/orphan").await.json().await.unwrap();
    let receipt_id = d["receipt_id"].as_str().expect("receipt id set");
    let (_, odr) = text(&app, &format!("/api/v2/receipts/{receipt_id}/export")).await;
    let doc: Value = serde_json::from_str(&odr).unwrap();
    assert_eq!(doc["claim"]["statement"], "Yes");
    assert_eq!(verify_via_api(&app, &doc).await["verified"], true);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn members_list_their_own_receipts_and_export_verify_and_key_are_public() {
    let app = auth_app(&[]).await;
    add_user(&app, "alice@example.com", "member").await;
    add_user(&app, "bob@example.com", "member").await;
    let (alice, _) = tokens(&app, "alice@example.com").await;
    let (bob, _) = tokens(&app, "bob@example.com").await;
    let id = create_debate(&app, &alice).await;
    wait_done(&app, &alice, &id).await;
    let mut receipt = Value::Null;
    for _ in 0..200 {
        receipt =
            crate::auth::get_json_as(&app, &format!("/api/debates/{id}/receipt"), &alice).await;
        if receipt["receipt_id"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let receipt_id = receipt["receipt_id"]
        .as_str()
        .expect("alice's receipt")
        .to_owned();

    let mine = crate::auth::get_json_as(&app, "/api/v2/receipts", &alice).await;
    assert_eq!(mine["total"], 1);
    let theirs = crate::auth::get_json_as(&app, "/api/v2/receipts", &bob).await;
    assert_eq!(theirs["total"], 0);
    assert_eq!(
        get_as(&app, &format!("/api/v2/receipts/{receipt_id}"), &bob)
            .await
            .status(),
        404
    );
    assert_eq!(
        get_as(&app, &format!("/api/debates/{id}/receipt"), &bob)
            .await
            .status(),
        404
    );
    let all = crate::auth::get_json_as(&app, "/api/v2/receipts", SERVICE).await;
    assert_eq!(all["total"], 1);

    // Without credentials: listing and reading are refused, the rest is public.
    assert_eq!(app.get("/api/v2/receipts").await.status(), 401);
    assert_eq!(
        app.get(&format!("/api/v2/receipts/{receipt_id}"))
            .await
            .status(),
        401
    );
    let (status, odr) = text(
        &app,
        &format!("/api/v2/receipts/{receipt_id}/export?format=odr"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(app.get("/api/v2/receipts/signing-key").await.status(), 200);
    assert_eq!(
        app.get("/.well-known/aragora-odr-signing-key")
            .await
            .status(),
        200
    );
    let doc: Value = serde_json::from_str(&odr).unwrap();
    assert_eq!(verify_via_api(&app, &doc).await["verified"], true);
    app.stop().await.unwrap();
}

/// Postgres, the real binary and an operator's key file: a receipt survives a restart and
/// verifies the same; after a key rotation old receipts still verify (by their own key) and
/// new ones are signed with the new key.
#[tokio::test]
async fn receipts_survive_a_restart_and_a_key_rotation_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let (_schema, url) = fresh_postgres_schema().await;
    let write_key = |name: &str| {
        let path = dir.path().join(name);
        // A fresh PKCS#8 key, written by the same code the server uses for development keys.
        let (signer, created) = aragora::receipts::Signer::load_or_create(&path).unwrap();
        assert!(created);
        (path, signer.key_id().to_owned())
    };
    let (first_key, first_id) = write_key("first.pem");
    let env = |key: &std::path::Path| {
        vec![
            ("ARAGORA_DATABASE_URL".to_owned(), url.clone()),
            (
                "ARAGORA_ODR_SIGNING_KEY_FILE".to_owned(),
                key.display().to_string(),
            ),
            (
                "ARAGORA_ODR_ISSUER".to_owned(),
                "receipts.example.test".to_owned(),
            ),
        ]
    };
    let start = |key: &std::path::Path| {
        let vars = env(key);
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::start(dir.path(), &pairs)
    };
    let client = crate::helpers::http();
    let mut server = start(&first_key);
    server.wait_healthy().await;
    let r: Value = client
        .post(server.url("/api/debates"))
        .json(&json!({"task": "Keep the receipt", "agents": ["demo", "demo", "demo"], "rounds": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["debate_id"].as_str().unwrap().to_owned();
    let mut receipt_id = String::new();
    for _ in 0..400 {
        let d: Value = client
            .get(server.url(&format!("/api/debates/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(rid) = d["receipt_id"].as_str() {
            receipt_id = rid.to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!receipt_id.is_empty(), "receipt issued");
    let export = format!("/api/v2/receipts/{receipt_id}/export?format=odr");
    let get_text = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let before = get_text(server.url(&export)).await;
    let doc: Value = serde_json::from_str(&before).unwrap();
    assert_eq!(doc["signatures"][0]["key_id"], first_id.as_str());
    assert_eq!(doc["signatures"][0]["issuer"], "receipts.example.test");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, _, _) = server.wait_exit(Duration::from_secs(20));
    assert_eq!(code, 0);

    // Same key, restarted: identical bytes, still verified.
    let mut server = start(&first_key);
    server.wait_healthy().await;
    assert_eq!(get_text(server.url(&export)).await, before);
    let verify = |server_url: String, doc: Value| {
        let client = client.clone();
        async move {
            client
                .post(server_url)
                .json(&doc)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let result = verify(server.url("/api/v2/receipts/verify"), doc.clone()).await;
    assert_eq!(result["verified"], true, "{result}");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    server.wait_exit(Duration::from_secs(20));

    // Rotated key: the old receipt is unchanged and verifies by its own key, which the API
    // still serves by id; the current key is the new one.
    let (second_key, second_id) = write_key("second.pem");
    assert_ne!(first_id, second_id);
    let mut server = start(&second_key);
    server.wait_healthy().await;
    assert_eq!(get_text(server.url(&export)).await, before);
    let result = verify(server.url("/api/v2/receipts/verify"), doc).await;
    assert_eq!(result["verified"], true, "{result}");
    assert_eq!(result["key_id"], first_id.as_str());
    let current: Value =
        serde_json::from_str(&get_text(server.url("/api/v2/receipts/signing-key")).await).unwrap();
    assert_eq!(current["key_id"], second_id.as_str());
    let old: Value = serde_json::from_str(
        &get_text(server.url(&format!("/api/v2/receipts/signing-key?key_id={first_id}"))).await,
    )
    .unwrap();
    assert_eq!(old["key_id"], first_id.as_str());
    assert!(
        aragora::receipts::keys::public_key_from_pem(old["public_key_pem"].as_str().unwrap())
            .is_some()
    );
}

#[tokio::test]
async fn an_unsafe_or_malformed_key_file_stops_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let loose = dir.path().join("loose.pem");
    aragora::receipts::Signer::load_or_create(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o664)).unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key\n").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (path, expected) in [
        (&loose, "writable by group or others"),
        (&bad, "not an Ed25519 private key"),
        (
            &dir.path().join("missing.pem"),
            "cannot read the receipt signing key",
        ),
    ] {
        let out = command(
            dir.path(),
            &[("ARAGORA_ODR_SIGNING_KEY_FILE", path.to_str().unwrap())],
        )
        .args(["serve", "--api-port", "0", "--ws-port", "0"])
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.trim().lines().last().unwrap_or_default();
        assert!(last.starts_with("aragora: "), "{stderr}");
        assert!(last.contains(expected), "{stderr}");
        assert!(
            !stderr.contains("PRIVATE KEY-----\n"),
            "no key material: {stderr}"
        );
    }
    // Production without a key is refused unless unsigned receipts are asked for; then
    // receipts carry no signature and the key routes say so.
    let out = command(
        dir.path(),
        &[
            ("ARAGORA_ENV", "production"),
            ("ARAGORA_JWT_SECRET", crate::auth::SECRET),
        ],
    )
    .args(["serve", "--api-port", "0", "--ws-port", "0"])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ARAGORA_ODR_SIGNING_KEY_FILE"));

    let app = spawn_app_with(&[("ARAGORA_ODR_UNSIGNED", "1")]).await;
    let id = start_debate(&app, "Unsigned?").await;
    let receipt_id = wait_receipt(&app, &id).await["receipt_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, odr) = text(&app, &format!("/api/v2/receipts/{receipt_id}/export")).await;
    let doc: Value = serde_json::from_str(&odr).unwrap();
    assert_eq!(doc["signatures"], json!([]));
    let result = verify_via_api(&app, &doc).await;
    assert_eq!(result["verified"], false);
    assert!(failing(&result).is_empty(), "{result}");
    assert_eq!(app.get("/api/v2/receipts/signing-key").await.status(), 404);
    assert_eq!(
        app.get("/.well-known/aragora-odr-signing-key")
            .await
            .status(),
        404
    );
    app.stop().await.unwrap();
}

/// Debates queued for the receipt worker are left to it by the sweeper (no receipt is
/// computed twice while the worker is behind); what it has not queued, the sweeper issues.
#[tokio::test]
async fn the_sweeper_leaves_debates_queued_for_the_worker_to_it() {
    use aragora::receipts::Receipts;
    use aragora::store::PoolSettings;
    let dir = tempfile::tempdir().unwrap();
    let store = aragora::store::connect(
        &format!("sqlite://{}", dir.path().join("r.db").display()),
        PoolSettings {
            size: 2,
            max_overflow: 0,
            acquire_timeout: Duration::from_secs(5),
            intake: 0,
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    for id in ["queued-1", "unqueued-1"] {
        decided_without_receipt(&store, id, "Decided").await;
    }
    let receipts = Receipts::start(store.clone(), None, "test".into(), Box::new(|_| None))
        .await
        .unwrap();
    let receipt_of = |id: &'static str| {
        let store = store.clone();
        async move { store.get_debate(id).await.unwrap().unwrap().receipt_id }
    };
    receipts.enqueue("queued-1".into());
    assert_eq!(receipts.sweep().await.unwrap(), 1);
    assert!(receipt_of("unqueued-1").await.is_some());
    assert!(receipt_of("queued-1").await.is_none(), "left to the worker");
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(receipts.clone().run_worker(stop.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while receipt_of("queued-1").await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never issued it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receipts.sweep().await.unwrap(), 0, "nothing left to sweep");
    stop.cancel();
    worker.await.unwrap();
    store.close().await;
}
