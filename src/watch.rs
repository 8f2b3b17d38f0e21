//! `aragora watch <debate_id> [--server ws://host:8766/ws]`: print a debate live from a
//! server. On a dropped connection it reconnects with exponential backoff and jitter and
//! resubscribes with `since` = the last seq printed, so the transcript has no gap and no
//! duplicate. Exits 0 after `debate_end`.

use std::process::ExitCode;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::debate_cli::format_event;

const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Consecutive failed connection attempts before giving up (about three minutes).
const MAX_FAILURES: u32 = 25;

enum Session {
    /// The debate ended: done.
    Finished,
    /// The connection dropped; try again.
    Dropped(String),
    /// The server refused the subscription for good (unknown debate).
    Fatal(String),
}

pub async fn run(server: &str, debate_id: &str) -> ExitCode {
    let mut last_seq: i64 = 0;
    let mut failures = 0u32;
    let mut backoff = INITIAL_BACKOFF;
    loop {
        match tokio_tungstenite::connect_async(server).await {
            Ok((ws, _)) => {
                failures = 0;
                backoff = INITIAL_BACKOFF;
                match session(ws, debate_id, &mut last_seq).await {
                    Session::Finished => return ExitCode::SUCCESS,
                    Session::Fatal(msg) => {
                        eprintln!("aragora watch: {msg}");
                        return ExitCode::from(2);
                    }
                    Session::Dropped(why) => {
                        eprintln!(
                            "aragora watch: connection lost ({why}); resuming after seq {last_seq}"
                        )
                    }
                }
            }
            Err(err) => {
                failures += 1;
                if failures >= MAX_FAILURES {
                    eprintln!("aragora watch: giving up after {failures} failed attempts: {err}");
                    return ExitCode::FAILURE;
                }
                eprintln!("aragora watch: cannot connect to {server}: {err}");
            }
        }
        // Full jitter: many watchers reconnecting after a restart don't arrive together.
        let wait = rand::rng().random_range(backoff / 2..=backoff);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(
    mut ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    debate_id: &str,
    last_seq: &mut i64,
) -> Session {
    let subscribe = json!({"type": "subscribe", "debate_id": debate_id, "since": *last_seq});
    if let Err(e) = ws.send(Message::Text(subscribe.to_string().into())).await {
        return Session::Dropped(e.to_string());
    }
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(frame)) => {
                let why = frame.map_or_else(
                    || "closed".to_owned(),
                    |f| format!("closed {} {}", u16::from(f.code), f.reason),
                );
                return Session::Dropped(why);
            }
            Ok(_) => continue,
            Err(e) => return Session::Dropped(e.to_string()),
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let kind = v["type"].as_str().unwrap_or_default();
        match kind {
            "connection_info" | "heartbeat" | "pong" | "token_delta" => {}
            "subscribed" => {
                if *last_seq == 0 {
                    println!(
                        "Watching debate {debate_id} (status {}, {} events so far)",
                        v["status"].as_str().unwrap_or("?"),
                        v["last_seq"]
                    );
                }
            }
            "error" => {
                let code = v["data"]["code"].as_str().unwrap_or_default();
                let message = v["data"]["message"].as_str().unwrap_or_default().to_owned();
                if code == "debate_not_found" {
                    return Session::Fatal(message);
                }
                return Session::Dropped(message);
            }
            _ => {
                let Some(seq) = v["seq"].as_i64() else {
                    continue;
                };
                if seq <= *last_seq {
                    continue;
                }
                *last_seq = seq;
                let round = v["round"].as_u64().map(|r| r as u32);
                let line = format_event(kind, round, v["agent"].as_str(), &v["data"]);
                print!("#{seq} {}", line.trim_start_matches('\n'));
                if !line.ends_with('\n') {
                    println!();
                }
                if kind == "debate_end" {
                    return Session::Finished;
                }
            }
        }
    }
    Session::Dropped("stream ended".into())
}
