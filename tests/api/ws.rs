//! The WebSocket listener over real sockets: connection_info, ping/pong, bad input keeps the
//! connection, 1012 on reload, 1001 on shutdown.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::spawn_app;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    ws
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("no protocol error");
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

async fn next_close(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("no protocol error");
        if let Message::Close(frame) = msg {
            let frame = frame.expect("close frame has a code");
            return (frame.code, frame.reason.to_string());
        }
    }
}

#[tokio::test]
async fn connection_info_then_ping_pong_on_every_endpoint() {
    let app = spawn_app().await;
    for url in [
        format!("ws://{}/ws", app.ws),
        format!("ws://{}/", app.ws),
        format!("ws://{}/ws", app.api),
    ] {
        let mut ws = connect(&url).await;
        let info = next_json(&mut ws).await;
        assert_eq!(info["type"], "connection_info", "{url}");
        assert!(
            info["data"]["client_id"]
                .as_str()
                .unwrap()
                .starts_with("ws-")
        );
        assert_eq!(info["data"]["authenticated"], false);
        assert_eq!(info["data"]["server_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(info["data"]["heartbeat_interval_s"], 15);
        ws.send(Message::Text(
            json!({"type": "ping", "ts": 42}).to_string().into(),
        ))
        .await
        .unwrap();
        let pong = next_json(&mut ws).await;
        assert_eq!(pong, json!({"type": "pong", "ts": 42}));
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_json_gets_an_error_frame_and_the_connection_stays() {
    let app = spawn_app().await;
    let mut ws = connect(&format!("ws://{}/ws", app.ws)).await;
    next_json(&mut ws).await;
    ws.send(Message::Text("{not json".into())).await.unwrap();
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["data"]["code"], "invalid_json");
    ws.send(Message::Text(
        json!({"type": "ping", "ts": 1}).to_string().into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn health_counts_live_connections() {
    let app = spawn_app().await;
    let mut a = connect(&format!("ws://{}/ws", app.ws)).await;
    let mut b = connect(&format!("ws://{}/ws", app.ws)).await;
    next_json(&mut a).await;
    next_json(&mut b).await;
    let body: Value = app.get("/api/health").await.json().await.unwrap();
    assert_eq!(body["checks"]["websocket"]["connections"], 2);
    a.close(None).await.unwrap();
    drop(a);
    let mut n = 2;
    for _ in 0..50 {
        let body: Value = app.get("/api/health").await.json().await.unwrap();
        n = body["checks"]["websocket"]["connections"].as_u64().unwrap();
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(n, 1);
    drop(b);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn reload_closes_with_1012_and_rest_keeps_serving() {
    let app = spawn_app().await;
    let mut ws = connect(&format!("ws://{}/ws", app.ws)).await;
    next_json(&mut ws).await;
    app.state.ws.reload();
    let (code, _) = next_close(&mut ws).await;
    assert_eq!(u16::from(code), 1012);
    assert_eq!(app.get("/api/health").await.status(), 200);
    // New connections are accepted after the reload.
    let mut again = connect(&format!("ws://{}/ws", app.ws)).await;
    assert_eq!(next_json(&mut again).await["type"], "connection_info");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let app = spawn_app().await;
    let mut ws = connect(&format!("ws://{}/ws", app.ws)).await;
    next_json(&mut ws).await;
    app.shutdown.cancel();
    let (code, reason) = next_close(&mut ws).await;
    assert_eq!(code, CloseCode::Away);
    assert!(reason.contains("shutting down"), "{reason}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let app = spawn_app().await;
    let mut ws = connect(&format!("ws://{}/ws", app.ws)).await;
    next_json(&mut ws).await;
    let big = format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    ws.send(Message::Text(big.into())).await.unwrap();
    let (code, _) = next_close(&mut ws).await;
    assert_eq!(u16::from(code), 1009);
    app.stop().await.unwrap();
}
