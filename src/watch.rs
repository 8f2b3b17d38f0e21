//! `aragora watch <debate_id> [--server ws://host:8766/ws]`: print a debate live from a
//! server. On a dropped connection it reconnects with exponential backoff and jitter and
//! resubscribes with `since` = the last seq printed, so the transcript has no gap and no
//! duplicate (each wait is shown, and it gives up after [`MAX_FAILURES`] refused attempts).
//! Exits 0 after `debate_end`, with the final answer and the winner; 2 for a URL that is not
//! `ws://`/`wss://` or an unknown debate; quietly when its output is closed (`| head`).

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

/// A server URL `watch` cannot use; the text says what to give instead.
#[derive(Debug, thiserror::Error)]
pub enum BadServerUrl {
    /// A URL of another scheme (the scheme).
    #[error(
        "--server must be a WebSocket URL (ws:// or wss://), got `{0}://…`; the server's \
         WebSocket is ws://<host>:8766/ws, or ws://<host>:8080/ws on the API port"
    )]
    NotWebSocket(String),
    #[error("--server `{server}` is not a URL: {source}")]
    NotUrl {
        server: String,
        #[source]
        source: url::ParseError,
    },
}

/// Refuse a server URL `watch` cannot use, saying what to give instead.
pub fn check_server_url(server: &str) -> Result<(), BadServerUrl> {
    match url::Url::parse(server) {
        Ok(u) if matches!(u.scheme(), "ws" | "wss") => Ok(()),
        Ok(u) => Err(BadServerUrl::NotWebSocket(u.scheme().to_owned())),
        Err(source) => Err(BadServerUrl::NotUrl {
            server: server.to_owned(),
            source,
        }),
    }
}

/// Writes to stdout; false once stdout is closed (the reader went away: stop quietly).
fn out(text: &str) -> bool {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).is_ok() && stdout.flush().is_ok()
}

/// What the end of the debate needs: the latest answer of each seat and any judge or
/// synthesis final answer.
#[derive(Default)]
struct Transcript {
    answers: std::collections::HashMap<String, String>,
    final_answer: Option<String>,
}

impl Transcript {
    fn note(&mut self, kind: &str, agent: Option<&str>, data: &Value) {
        match kind {
            "agent_message" => {
                let content = data["content"].as_str().unwrap_or_default().to_owned();
                if data["role"] == "synthesis" {
                    self.final_answer = Some(content);
                } else if let Some(seat) = agent {
                    self.answers.insert(seat.to_owned(), content);
                }
            }
            "consensus" => {
                if let Some(answer) = data["final_answer"].as_str() {
                    self.final_answer = Some(answer.to_owned());
                }
            }
            _ => {}
        }
    }

    /// The closing lines: how it ended, the winner, the final answer.
    fn summary(&self, end: &Value) -> String {
        let status = end["status"].as_str().unwrap_or("?");
        let mut text = String::new();
        match end["winner"].as_str() {
            Some(w) if end["consensus_reached"] == true => {
                text.push_str(&format!("Consensus reached: {w} won.\n"));
            }
            Some(w) => text.push_str(&format!(
                "No consensus: {w} had the most votes, short of the consensus rule.\n"
            )),
            None if status == "completed" => {}
            None => text.push_str("No winner.\n"),
        }
        if let Some(err) = end["error"].as_str() {
            text.push_str(&format!("Why it stopped: {err}\n"));
        }
        let answer = self.final_answer.clone().or_else(|| {
            end["winner"]
                .as_str()
                .and_then(|w| self.answers.get(w).cloned())
        });
        if let Some(answer) = answer {
            // Indented, so no line of it can be read as an event line (`#<seq> …`).
            text.push_str("\nFinal answer:\n");
            for line in answer.lines() {
                text.push_str(&format!("  {line}\n"));
            }
        }
        text
    }
}

enum Session {
    /// The debate ended: done.
    Finished,
    /// Stdout was closed: stop without a word.
    OutputClosed,
    /// The connection dropped; try again.
    Dropped(String),
    /// The server refused the subscription for good (unknown debate).
    Fatal(String),
}

pub async fn run(server: &str, debate_id: &str) -> ExitCode {
    let mut last_seq: i64 = 0;
    let mut transcript = Transcript::default();
    let mut failures = 0u32;
    let mut backoff = INITIAL_BACKOFF;
    loop {
        match tokio_tungstenite::connect_async(server).await {
            Ok((ws, _)) => {
                failures = 0;
                backoff = INITIAL_BACKOFF;
                match session(ws, debate_id, &mut last_seq, &mut transcript).await {
                    Session::Finished | Session::OutputClosed => return ExitCode::SUCCESS,
                    Session::Fatal(msg) => {
                        eprintln!("aragora watch: {msg}");
                        return ExitCode::from(2);
                    }
                    Session::Dropped(why) => {
                        eprintln!(
                            "aragora watch: connection lost ({why}); resuming after seq {last_seq}"
                        );
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
        if failures > 0 {
            eprintln!(
                "aragora watch: retrying in {:.1} s (attempt {} of {MAX_FAILURES})",
                wait.as_secs_f64(),
                failures + 1
            );
        }
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
    transcript: &mut Transcript,
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
                if *last_seq == 0
                    && !out(&format!(
                        "Watching debate {debate_id} (status {}, {} events so far)\n",
                        v["status"].as_str().unwrap_or("?"),
                        v["last_seq"]
                    ))
                {
                    return Session::OutputClosed;
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
                let agent = v["agent"].as_str();
                transcript.note(kind, agent, &v["data"]);
                let mut line = format_event(kind, round, agent, &v["data"]);
                if line.trim().is_empty() {
                    line = kind.replace('_', " ");
                }
                let mut text = format!("#{seq} {}", line.trim_start_matches('\n'));
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                if kind == "debate_end" {
                    text.push_str(&transcript.summary(&v["data"]));
                }
                if !out(&text) {
                    return Session::OutputClosed;
                }
                if kind == "debate_end" {
                    return Session::Finished;
                }
            }
        }
    }
    Session::Dropped("stream ended".into())
}
