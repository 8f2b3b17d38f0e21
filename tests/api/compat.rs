//! The routes the published SDK calls under its own names (the SDK itself is exercised by
//! tests/sdk/sdk_check.py in CI): shapes, refusals and access.

use serde_json::{Value, json};

use crate::debates::wait_finished;
use crate::helpers::spawn_app;

#[tokio::test]
async fn sdk_routes_answer_like_the_routes_they_mirror() {
    let app = spawn_app().await;
    // create(protocol=…) maps rounds and consensus; a disagreement is named.
    let r = app
        .client
        .post(app.url("/api/v1/debates"))
        .json(&json!({"task": "mapped", "agents": ["demo", "demo"],
                      "protocol": {"rounds": 1, "consensus": "majority"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["debate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = wait_finished(&app, &id).await;
    assert_eq!(
        (d["rounds"].as_i64(), d["consensus"].as_str()),
        (Some(1), Some("majority"))
    );
    let r = app
        .client
        .post(app.url("/api/debates"))
        .json(&json!({"task": "clash", "rounds": 2, "protocol": {"rounds": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "protocol.rounds");
    let r = app
        .client
        .post(app.url("/api/debates"))
        .json(&json!({"task": "x", "protocol": {"early_stop": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        422,
        "unknown protocol fields are named, not ignored"
    );

    // Export: json (record + log), md, and a clear refusal for anything else.
    let e: Value = app
        .get(&format!("/api/v1/debates/{id}/export/json"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(e["debate"]["id"], id.as_str());
    assert_eq!(
        e["events"].as_array().unwrap().last().unwrap()["type"],
        "debate_end"
    );
    let md = app.get(&format!("/api/debates/{id}/export/md")).await;
    assert!(
        md.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/markdown")
    );
    assert!(md.text().await.unwrap().starts_with("# mapped"));
    let r = app.get(&format!("/api/debates/{id}/export/pdf")).await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "format");

    // Health, breakers, Elo, usage summary, /metrics.
    assert_eq!(app.get("/api/v1/health/detailed").await.status(), 200);
    let b: Value = app.get("/api/circuit-breakers").await.json().await.unwrap();
    assert!(b["circuit_breakers"].is_array());
    let elo: Value = app
        .get("/api/v1/agents/demo/elo")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(elo["agent"], "demo");
    assert!(elo["elo"].as_f64().unwrap() > 0.0);
    assert_eq!(
        app.get("/api/v1/agents/nobody-here/elo").await.status(),
        404
    );
    let s: Value = app
        .get("/api/v1/usage/summary?period=year")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s["period_name"], "year");
    assert!(s["calls"].as_i64().unwrap() >= 4, "{s}");
    assert_eq!(
        app.get("/api/v1/usage/summary?period=eon").await.status(),
        400
    );
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(text.contains("# TYPE aragora_debates_total counter"));
    let as_json: Value = app
        .client
        .get(app.url("/metrics"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(as_json["format"], "prometheus");
    assert!(
        as_json["metrics"]
            .as_str()
            .unwrap()
            .contains("aragora_debates_total")
    );
    app.stop().await.unwrap();
}
