//! WebSocket subscriptions over real sockets: replay from the store, the replay/live seam
//! while a debate is producing events, errors, unsubscribe, back-pressure and limits.

use std::collections::HashSet;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::debates::{wait_finished, wait_running};
use crate::helpers::{TestApp, spawn_app, spawn_app_with};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects")
        .0
}

/// Next JSON message that is not a heartbeat; `None` on close.
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a message in time")?;
        match msg.ok()? {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] != "heartbeat" {
                    return Some(v);
                }
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

async fn start_debate(app: &TestApp, body: Value) -> String {
    let r = app
        .client
        .post(app.url("/api/debates"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["debate_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Read durable events until debate_end; returns their seqs (and checks ephemeral ones).
async fn collect_until_end(ws: &mut Ws) -> Vec<i64> {
    let mut seqs = Vec::new();
    loop {
        let v = next(ws).await.expect("stream open until debate_end");
        match v["seq"].as_i64() {
            Some(seq) => {
                seqs.push(seq);
                if v["type"] == "debate_end" {
                    return seqs;
                }
            }
            None => {
                if v["type"] == "token_delta" {
                    assert_eq!(v["ephemeral"], true);
                    assert!(v["data"]["delta"].is_string());
                }
            }
        }
    }
}

#[tokio::test]
async fn subscribe_replays_a_finished_debate_from_since() {
    let app = spawn_app().await;
    let id = start_debate(
        &app,
        json!({"task": "t", "agents": ["demo", "demo"], "rounds": 1}),
    )
    .await;
    wait_finished(&app, &id).await;
    let events: Value = app
        .get(&format!("/api/debates/{id}/events"))
        .await
        .json()
        .await
        .unwrap();
    let last = events["last_seq"].as_i64().unwrap();

    let mut ws = connect(&format!("ws://{}/ws", app.ws)).await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "connection_info");
    send(&mut ws, json!({"type": "subscribe", "debate_id": id})).await;
    let sub = next(&mut ws).await.unwrap();
    assert_eq!(sub["type"], "subscribed");
    assert_eq!(sub["debate_id"], id.as_str());
    assert_eq!(sub["last_seq"], last);
    let record: Value = app
        .get(&format!("/api/debates/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(sub["status"], record["status"], "{sub}");
    let seqs = collect_until_end(&mut ws).await;
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
    // Identical to the HTTP log, event for event.
    let first = events["events"][0].clone();
    assert_eq!(first["seq"], 1);

    // `replay_from_seq` is an alias; only later events come.
    let mut ws = connect(&format!("ws://{}/", app.ws)).await;
    next(&mut ws).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "debate_id": id, "replay_from_seq": last - 3}),
    )
    .await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "subscribed");
    assert_eq!(
        collect_until_end(&mut ws).await,
        vec![last - 2, last - 1, last]
    );

    // Subscribe on connect with the query string, on the API port.
    let mut ws = connect(&format!(
        "ws://{}/ws?debate_id={id}&since={}",
        app.api,
        last - 1
    ))
    .await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "connection_info");
    assert_eq!(next(&mut ws).await.unwrap()["type"], "subscribed");
    assert_eq!(collect_until_end(&mut ws).await, vec![last]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_replay_live_seam_has_no_gap_and_no_duplicate_under_load() {
    let app = spawn_app().await;
    // Six seats, many rounds, 5 ms per call: a few hundred events over a couple of seconds.
    let id = start_debate(
        &app,
        json!({"task": "load", "agents": ["demo:5", "demo:5", "demo:5", "demo:5", "demo:5", "demo:5"], "rounds": 6, "min_rounds": 6}),
    )
    .await;
    let url = format!("ws://{}/ws", app.ws);
    let mut clients = Vec::new();
    // Watchers join at staggered moments while events are being produced, each from a
    // different `since`.
    for i in 0..12u64 {
        let url = url.clone();
        let id = id.clone();
        clients.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 120)).await;
            let since = (i as i64 * 7) % 20;
            let mut ws = connect(&url).await;
            next(&mut ws).await;
            send(
                &mut ws,
                json!({"type": "subscribe", "debate_id": id, "since": since}),
            )
            .await;
            assert_eq!(next(&mut ws).await.unwrap()["type"], "subscribed");
            (since, collect_until_end(&mut ws).await)
        }));
    }
    let d = wait_finished(&app, &id).await;
    let events: Value = app
        .get(&format!("/api/debates/{id}/events?limit=1000"))
        .await
        .json()
        .await
        .unwrap();
    let last = events["last_seq"].as_i64().unwrap();
    assert!(
        last > 200,
        "a busy debate: {last} events, status {}",
        d["status"]
    );
    for c in clients {
        let (since, seqs) = c.await.unwrap();
        assert_eq!(
            seqs,
            ((since + 1)..=last).collect::<Vec<_>>(),
            "watcher from since={since}"
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_debate_unsubscribe_and_bad_messages_keep_the_connection() {
    let app = spawn_app().await;
    let mut ws = connect(&format!("ws://{}/ws", app.ws)).await;
    next(&mut ws).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "debate_id": "nope-123"}),
    )
    .await;
    let err = next(&mut ws).await.unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["data"]["code"], "debate_not_found");
    assert_eq!(err["data"]["debate_id"], "nope-123");
    assert!(
        err["data"]["message"]
            .as_str()
            .unwrap()
            .contains("nope-123")
    );
    send(&mut ws, json!({"type": "subscribe"})).await;
    assert_eq!(
        next(&mut ws).await.unwrap()["data"]["code"],
        "invalid_message"
    );
    send(
        &mut ws,
        json!({"type": "subscribe", "debate_id": "x", "since": -4}),
    )
    .await;
    assert_eq!(
        next(&mut ws).await.unwrap()["data"]["code"],
        "invalid_message"
    );
    send(&mut ws, json!({"type": "ping", "ts": 7})).await;
    assert_eq!(
        next(&mut ws).await.unwrap(),
        json!({"type": "pong", "ts": 7})
    );

    // Unsubscribe from a running debate: no more of its events arrive.
    let id = start_debate(
        &app,
        json!({"task": "t", "agents": ["demo:200", "demo:200"], "rounds": 3, "min_rounds": 3}),
    )
    .await;
    send(&mut ws, json!({"type": "subscribe", "debate_id": id})).await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "subscribed");
    send(&mut ws, json!({"type": "subscribe", "debate_id": id})).await;
    // Replayed events may come first; the duplicate subscription is refused.
    let mut refused = false;
    for _ in 0..20 {
        let v = next(&mut ws).await.unwrap();
        if v["type"] == "error" {
            assert_eq!(v["data"]["code"], "already_subscribed");
            refused = true;
            break;
        }
    }
    assert!(refused);
    send(&mut ws, json!({"type": "unsubscribe", "debate_id": id})).await;
    loop {
        let v = next(&mut ws).await.unwrap();
        if v["type"] == "unsubscribed" {
            break;
        }
    }
    send(&mut ws, json!({"type": "ping", "ts": 1})).await;
    // After the pong, nothing more from that debate within a second.
    let mut after = Vec::new();
    while let Ok(Some(v)) = tokio::time::timeout(Duration::from_millis(1000), next(&mut ws)).await {
        after.push(v);
    }
    assert!(after.iter().all(|v| v["debate_id"].is_null()), "{after:?}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_client_is_closed_with_4008_and_its_last_seq_while_others_get_everything() {
    let app = spawn_app_with(&[
        ("ARAGORA_WS_SEND_QUEUE", "16"),
        ("ARAGORA_WS_SLOW_CONSUMER_MS", "300"),
        ("ARAGORA_WS_SOCKET_SEND_BUFFER", "16384"),
    ])
    .await;
    // Large logs to replay: ten seats, many rounds.
    let agents: Vec<&str> = vec!["demo"; 10];
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(start_debate(&app, json!({"task": format!("big {i}"), "agents": agents, "rounds": 12, "min_rounds": 12})).await);
    }
    for id in &ids {
        wait_finished(&app, id).await;
    }
    // The slow client: a tiny receive buffer and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.ws).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", app.ws), stream)
        .await
        .unwrap();
    for id in &ids {
        let sub = json!({"type": "subscribe", "debate_id": id}).to_string();
        slow.send(Message::Text(sub.into())).await.unwrap();
    }
    // A normal client reading everything at the same time.
    let mut fast = connect(&format!("ws://{}/ws", app.ws)).await;
    next(&mut fast).await;
    send(&mut fast, json!({"type": "subscribe", "debate_id": ids[0]})).await;
    assert_eq!(next(&mut fast).await.unwrap()["type"], "subscribed");
    let seqs = collect_until_end(&mut fast).await;
    let last: i64 = *seqs.last().unwrap();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>());

    // Give the server time to notice, then read what the slow client got.
    let mut stats = Value::Null;
    for _ in 0..100 {
        stats = app.get("/api/ws/stats").await.json().await.unwrap();
        if stats["slow_clients_dropped"].as_u64() == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stats["slow_clients_dropped"], 1, "{stats}");
    let mut delivered: std::collections::HashMap<String, i64> = Default::default();
    let close = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), slow.next())
            .await
            .unwrap();
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if let (Some(d), Some(s)) = (v["debate_id"].as_str(), v["seq"].as_i64()) {
                    let prev = delivered.insert(d.to_owned(), s).unwrap_or(0);
                    assert_eq!(s, prev + 1, "in order, no gap");
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 4008);
    assert!(
        close.reason.contains("slow consumer; last seq"),
        "{}",
        close.reason
    );
    // The reason names exactly what was delivered (the client resumes from it).
    assert!(!delivered.is_empty());
    if delivered.len() == 1 {
        let seq = delivered.values().next().unwrap();
        assert_eq!(
            close.reason.as_str(),
            format!("slow consumer; last seq {seq}")
        );
    } else {
        for (debate, seq) in &delivered {
            let exact = format!("{debate}:{seq}");
            // The reason is capped at 123 bytes; entries that fit are exact.
            assert!(
                close.reason.contains(&exact) || close.reason.len() >= 100,
                "{} vs {exact}",
                close.reason
            );
        }
    }
    app.stop().await.unwrap();
}

/// Stats until `done` says so (at most ~10 s).
async fn stats_until(app: &TestApp, done: impl Fn(&Value) -> bool) -> Value {
    let mut stats = Value::Null;
    for _ in 0..500 {
        stats = app.get("/api/ws/stats").await.json().await.unwrap();
        if done(&stats) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stats
}

/// Live delivery is written by the connection task from the debate's channel: a watcher that
/// stops reading while the debate streams is closed with 4008 naming exactly the last seq it
/// was sent, and resuming from that seq gives the rest, so it sees every seq once; a watcher
/// that reads gets everything; afterwards no subscription or debate channel is left behind.
#[tokio::test]
async fn a_slow_live_watcher_is_closed_with_4008_and_resumes_from_its_last_seq() {
    let app = spawn_app_with(&[
        ("ARAGORA_MAX_CONCURRENT_DEBATES", "1"),
        ("ARAGORA_WS_SEND_QUEUE", "16"),
        ("ARAGORA_WS_SLOW_CONSUMER_MS", "300"),
        ("ARAGORA_WS_SOCKET_SEND_BUFFER", "16384"),
    ])
    .await;
    // A blocker holds the only worker, so the watched debate stays queued (one stored event)
    // until the blocker is cancelled: both watchers are live before it produces anything.
    let blocker = start_debate(
        &app,
        json!({"task": "block", "agents": ["demo:60000", "demo:60000"], "rounds": 1}),
    )
    .await;
    wait_running(&app, &blocker, 200).await;
    let agents: Vec<&str> = vec!["demo"; 10];
    let id = start_debate(
        &app,
        json!({"task": "stream", "agents": agents, "rounds": 8, "min_rounds": 8}),
    )
    .await;
    let watch_url = format!("ws://{}/ws?debate_id={id}", app.ws);

    // The slow watcher: a tiny receive buffer, and it reads nothing until it is closed.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.ws).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(watch_url.as_str(), stream)
        .await
        .unwrap();
    let mut fast = connect(&watch_url).await;
    assert_eq!(next(&mut fast).await.unwrap()["type"], "connection_info");
    assert_eq!(next(&mut fast).await.unwrap()["type"], "subscribed");
    let fast = tokio::spawn(async move { collect_until_end(&mut fast).await });
    stats_until(&app, |s| s["subscriptions"] == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = app
        .client
        .post(app.url(&format!("/api/debates/{blocker}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let stats = stats_until(&app, |s| s["slow_clients_dropped"] == 1).await;
    assert_eq!(stats["slow_clients_dropped"], 1, "{stats}");
    let mut got: Vec<i64> = Vec::new();
    let close = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), slow.next())
            .await
            .unwrap();
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if let Some(seq) = v["seq"].as_i64() {
                    got.push(seq);
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 4008);
    let last_sent = *got.last().expect("the queued event at least");
    assert_eq!(got, (1..=last_sent).collect::<Vec<_>>(), "in order, once");
    assert_eq!(
        close.reason.as_str(),
        format!("slow consumer; last seq {last_sent}")
    );

    let everything = fast.await.unwrap();
    let last = *everything.last().unwrap();
    assert_eq!(everything, (1..=last).collect::<Vec<_>>());
    assert!(
        last_sent < last,
        "the slow watcher was closed while the debate streamed ({last_sent} of {last})"
    );
    // Resuming from the seq in the close reason gives exactly the rest.
    let mut resumed = connect(&format!("{watch_url}&since={last_sent}")).await;
    assert_eq!(next(&mut resumed).await.unwrap()["type"], "connection_info");
    let sub = next(&mut resumed).await.unwrap();
    assert_eq!(sub["type"], "subscribed");
    assert_eq!(sub["since"], last_sent);
    assert_eq!(
        collect_until_end(&mut resumed).await,
        ((last_sent + 1)..=last).collect::<Vec<_>>()
    );
    drop(resumed);
    drop(slow);
    // Every subscription ended with its connection, and the debate's channel went with it.
    let stats = stats_until(&app, |s| {
        s["subscriptions"] == 0 && s["watched_debates"] == 0
    })
    .await;
    assert_eq!(stats["subscriptions"], 0, "{stats}");
    assert_eq!(stats["watched_debates"], 0, "{stats}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn connection_limits_close_with_4029_and_stats_report_them() {
    let app = spawn_app_with(&[
        ("ARAGORA_WS_MAX_PER_IP", "2"),
        ("ARAGORA_WS_MAX_CONNECTIONS", "3"),
    ])
    .await;
    let url = format!("ws://{}/ws", app.ws);
    let mut a = connect(&url).await;
    let mut b = connect(&url).await;
    next(&mut a).await;
    next(&mut b).await;
    let mut c = connect(&url).await;
    let msg = tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Close(Some(frame)) = msg else {
        panic!("expected close, got {msg:?}")
    };
    assert_eq!(u16::from(frame.code), 4029);
    assert!(frame.reason.contains("per-client"), "{}", frame.reason);
    // The two admitted connections still work.
    send(&mut a, json!({"type": "ping", "ts": 1})).await;
    assert_eq!(next(&mut a).await.unwrap()["type"], "pong");

    let stats: Value = app.get("/api/ws/stats").await.json().await.unwrap();
    assert_eq!(stats["connections"], 2);
    assert_eq!(stats["per_ip_max"], 2);
    assert_eq!(stats["per_ip_peak"], 2);
    assert_eq!(stats["rejected_connections"], 1);
    assert_eq!(stats["limits"]["max_per_ip"], 2);
    assert_eq!(stats["limits"]["max_connections"], 3);
    assert_eq!(stats["limits"]["max_message_bytes"], 65536);
    assert_eq!(stats["event_bus"]["backend"], "local");
    assert!(stats["messages_sent"].as_u64().unwrap() >= 1);
    let metrics = app.get("/api/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("aragora_ws_connection_errors_total"),
        "rejections count as connection errors"
    );
    let seen: HashSet<&str> = [
        "connections",
        "subscriptions",
        "slow_clients_dropped",
        "errors",
    ]
    .into();
    for k in seen {
        assert!(stats.get(k).is_some(), "{k}");
    }
    app.stop().await.unwrap();
}
