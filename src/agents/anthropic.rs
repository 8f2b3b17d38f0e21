//! Anthropic Messages API adapter (`POST {base}/v1/messages`, `anthropic-version: 2023-06-01`).
//!
//! `base_url` is the API root without the version (`https://api.anthropic.com`); a base
//! given with a trailing `/v1` is accepted too. Streaming (`stream: true`) is used only when
//! the request asks for it and a delta sink is given.
//!
//! Usage: `input_tokens` includes the cache read / creation tokens Anthropic reports
//! separately; `output_tokens` is the final (cumulative) count from `message_delta`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::debug;

use super::http::{self, Connection, ProviderClient};
use super::*;

pub const API_VERSION: &str = "2023-06-01";

#[derive(Debug)]
pub struct Anthropic {
    connection: Connection,
}

impl Anthropic {
    /// Base URL e.g. `https://api.anthropic.com` (a trailing `/v1` is dropped).
    pub fn new(connection: Connection) -> Self {
        Anthropic {
            connection: connection.without_base_suffix("/v1"),
        }
    }
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    system: &'a str,
    messages: &'a [ChatMessage],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

/// A Message (the non-streamed answer, and `message_start.message`).
#[derive(Deserialize)]
struct Message {
    content: Option<Vec<ContentBlock>>,
    model: Option<String>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl WireUsage {
    /// Input tokens, cache tokens included.
    fn input(&self) -> Option<u64> {
        Some(
            self.input_tokens?
                + self.cache_creation_input_tokens.unwrap_or(0)
                + self.cache_read_input_tokens.unwrap_or(0),
        )
    }
}

/// One event of a stream; `kind` falls back to the SSE event name.
#[derive(Deserialize)]
struct StreamEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    /// `message_start`.
    message: Option<Message>,
    /// `content_block_delta` (`type`, `text`) and `message_delta` (`stop_reason`).
    delta: Option<Delta>,
    /// `message_delta`.
    usage: Option<WireUsage>,
    /// `error`.
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
}

/// Usage from what the answer reported, estimated when it reported nothing.
fn usage_of(
    input: Option<u64>,
    output: Option<u64>,
    request: &CompletionRequest,
    text: &str,
) -> Usage {
    match (input, output) {
        (None, None) => http::estimate_usage(request, text),
        (input, output) => Usage {
            input_tokens: input.unwrap_or(0),
            output_tokens: output.unwrap_or(0),
            estimated: false,
        },
    }
}

#[async_trait]
impl Provider for Anthropic {
    fn id(&self) -> &str {
        self.connection.info.id
    }

    fn available(&self) -> bool {
        self.connection.available()
    }

    async fn complete(
        &self,
        model: &str,
        request: &CompletionRequest,
        deltas: Option<&DeltaSink>,
    ) -> Result<Completion, AgentError> {
        let key = self.connection.required_key()?;
        let client = self.connection.client()?;
        let sink = deltas.filter(|_| request.stream);
        let body = MessagesRequest {
            model,
            max_tokens: request.max_tokens,
            system: &request.system,
            messages: &request.messages,
            temperature: request.temperature,
            stream: sink.is_some(),
        };
        debug!(
            target: "aragora::agents::anthropic",
            model,
            stream = sink.is_some(),
            messages = request.messages.len(),
            "request"
        );
        let builder = client
            .inner()
            .post(format!("{}/v1/messages", self.connection.base_url()))
            .header("x-api-key", http::key_header("", key)?)
            .header("anthropic-version", API_VERSION)
            .header(
                reqwest::header::ACCEPT,
                if sink.is_some() {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .json(&body);
        let response = client.send(builder, Some(key)).await?;
        let completion = match sink {
            Some(sink) if !http::is_json_body(&response) => {
                read_stream(client, response, key, model, request, sink).await?
            }
            // Asked to stream, answered with one JSON Message (some proxies do): read it as
            // such and pass its text on as a single delta.
            streamed => {
                let value = client.read_json(response, Some(key)).await?;
                let completion = parse_message(&value, model, request)?;
                if let Some(sink) = streamed {
                    sink.send(&completion.text);
                }
                completion
            }
        };
        debug!(
            target: "aragora::agents::anthropic",
            model = %completion.model,
            input_tokens = completion.usage.input_tokens,
            output_tokens = completion.usage.output_tokens,
            finish_reason = completion.finish_reason.as_deref().unwrap_or(""),
            "response"
        );
        Ok(completion)
    }
}

fn parse_message(
    value: &Value,
    model: &str,
    request: &CompletionRequest,
) -> Result<Completion, AgentError> {
    let message: Message = http::decode(value, "Anthropic message")?;
    let content = message
        .content
        .ok_or_else(|| AgentError::Malformed("Anthropic response has no content array".into()))?;
    let text: String = content
        .into_iter()
        .filter(|block| block.kind.as_deref() == Some("text"))
        .filter_map(|block| block.text)
        .collect();
    let usage = message.usage.as_ref();
    let usage = usage_of(
        usage.and_then(WireUsage::input),
        usage.and_then(|u| u.output_tokens),
        request,
        &text,
    );
    Ok(Completion {
        model: message.model.unwrap_or_else(|| model.to_owned()),
        finish_reason: message.stop_reason,
        text,
        usage,
    })
}

/// Map an `error` event of the stream.
fn stream_error(error: Option<ErrorBody>, key: &str) -> AgentError {
    let (kind, message) = error.map_or((None, None), |e| (e.kind, e.message));
    let message = http::clean_message(
        message.as_deref().unwrap_or("error event in the stream"),
        Some(key),
    );
    match kind.as_deref().unwrap_or_default() {
        "overloaded_error" => AgentError::Server {
            status: 529,
            message,
        },
        "rate_limit_error" => AgentError::RateLimited { retry_after: None },
        "authentication_error" => AgentError::Auth {
            status: 401,
            message,
        },
        "permission_error" => AgentError::Auth {
            status: 403,
            message,
        },
        "invalid_request_error" => AgentError::BadRequest {
            status: 400,
            message,
        },
        "request_too_large" => AgentError::BadRequest {
            status: 413,
            message,
        },
        "not_found_error" => AgentError::BadRequest {
            status: 404,
            message,
        },
        _ => AgentError::Server {
            status: 500,
            message,
        },
    }
}

async fn read_stream(
    client: &ProviderClient,
    response: reqwest::Response,
    key: &str,
    model: &str,
    request: &CompletionRequest,
    sink: &DeltaSink,
) -> Result<Completion, AgentError> {
    let mut events = http::sse_events(response);
    let mut text = String::new();
    let mut answered_model: Option<String> = None;
    let mut input: Option<u64> = None;
    let mut output: Option<u64> = None;
    let mut stop_reason: Option<String> = None;
    loop {
        let event = match events.next_event().await {
            Ok(Some(event)) => event,
            Ok(None) => {
                return Err(AgentError::Malformed(
                    "Anthropic stream ended before message_stop".into(),
                ));
            }
            Err(e) => return Err(client.map_sse_error(&e, Some(key))),
        };
        if event.event == "ping" {
            continue;
        }
        let parsed: StreamEvent = serde_json::from_str(&event.data).map_err(|e| {
            AgentError::Malformed(format!(
                "invalid JSON in Anthropic '{}' event: {e}",
                event.event
            ))
        })?;
        match parsed.kind.as_deref().unwrap_or(&event.event) {
            "message_start" => {
                let message = parsed.message;
                if let Some(m) = message.as_ref().and_then(|m| m.model.clone()) {
                    answered_model = Some(m);
                }
                let usage = message.as_ref().and_then(|m| m.usage.as_ref());
                input = usage.and_then(WireUsage::input).or(input);
                output = usage.and_then(|u| u.output_tokens).or(output);
            }
            "content_block_delta" => {
                if let Some(delta) = parsed.delta
                    && delta.kind.as_deref() == Some("text_delta")
                    && let Some(piece) = delta.text.filter(|t| !t.is_empty())
                {
                    sink.send(&piece);
                    text.push_str(&piece);
                }
            }
            "message_delta" => {
                if let Some(reason) = parsed.delta.and_then(|d| d.stop_reason) {
                    stop_reason = Some(reason);
                }
                let usage = parsed.usage.as_ref();
                output = usage.and_then(|u| u.output_tokens).or(output);
                // Newer API versions repeat (cumulative) input counts here.
                input = usage.and_then(WireUsage::input).or(input);
            }
            "message_stop" => break,
            "error" => return Err(stream_error(parsed.error, key)),
            // content_block_start / _stop, ping, and event types added later.
            _ => {}
        }
    }
    Ok(Completion {
        usage: usage_of(input, output, request, &text),
        text,
        model: answered_model.unwrap_or_else(|| model.to_owned()),
        finish_reason: stop_reason,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::agents::conformance::{ErrorReply, Fixture};
    use crate::agents::http::testing::UNICODE_PIECES;

    const KEY: &str = "sk-ant-test-SECRET-0123456789";
    const MODEL: &str = "claude-sonnet-4-5";
    const ANSWERED: &str = "claude-sonnet-4-5-20250929";

    fn request(stream: bool) -> CompletionRequest {
        CompletionRequest {
            system: "You argue for the motion.".into(),
            messages: vec![
                ChatMessage {
                    role: Role::User,
                    content: "Opening statement?".into(),
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: "Gladly.".into(),
                },
                ChatMessage {
                    role: Role::User,
                    content: "Go on.".into(),
                },
            ],
            max_tokens: 512,
            temperature: Some(0.5),
            stream,
        }
    }

    /// A Messages stream: start (usage with cache reads), a ping, one delta per piece, the
    /// stop reason and final output count, message_stop.
    fn stream_events(pieces: &[&str]) -> Vec<String> {
        let event = |name: &str, data: Value| format!("event: {name}\r\ndata: {data}\r\n\r\n");
        let mut events = vec![
            event(
                "message_start",
                json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":ANSWERED,"content":[],"stop_reason":null,"usage":{"input_tokens":25,"cache_read_input_tokens":5,"output_tokens":1}}}),
            ),
            event(
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            ),
            event("ping", json!({"type":"ping"})),
        ];
        for piece in pieces {
            events.push(event(
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":piece}}),
            ));
        }
        events.push(event(
            "content_block_stop",
            json!({"type":"content_block_stop","index":0}),
        ));
        events.push(event(
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":42}}),
        ));
        events.push(event("message_stop", json!({"type":"message_stop"})));
        events
    }

    fn error_event(kind: &str) -> String {
        format!(
            "event: error\ndata: {}\n\n",
            json!({"type":"error","error":{"type":kind,"message":"Overloaded"}})
        )
    }

    pub(in crate::agents) fn conformance() -> Fixture {
        Fixture {
            provider: "anthropic",
            key_env: "ANTHROPIC_API_KEY",
            key: KEY,
            model: MODEL,
            base: |root| format!("{root}/"),
            alt_base: |root| format!("{root}/v1"),
            request,
            reply: json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": ANSWERED,
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "x"},
                    {"type": "text", "text": "The motion "},
                    {"type": "text", "text": "stands."}
                ],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 30, "output_tokens": 7}
            }),
            completion: Completion {
                text: "The motion stands.".into(),
                usage: Usage {
                    input_tokens: 30,
                    output_tokens: 7,
                    estimated: false,
                },
                model: ANSWERED.into(),
                finish_reason: Some("end_turn".into()),
            },
            target: "/v1/messages",
            key_header: ("x-api-key", KEY.into()),
            headers: vec![("anthropic-version", "2023-06-01")],
            body: json!({
                "model": MODEL,
                "max_tokens": 512,
                "system": "You argue for the motion.",
                "messages": [
                    {"role": "user", "content": "Opening statement?"},
                    {"role": "assistant", "content": "Gladly."},
                    {"role": "user", "content": "Go on."}
                ],
                "temperature": 0.5
            }),
            stream: stream_events,
            terminated: true,
            streamed: Completion {
                text: UNICODE_PIECES.concat(),
                // 25 input + 5 cache reads; the final output count of message_delta.
                usage: Usage {
                    input_tokens: 30,
                    output_tokens: 42,
                    estimated: false,
                },
                model: ANSWERED.into(),
                finish_reason: Some("end_turn".into()),
            },
            stream_target: "/v1/messages",
            stream_fields: json!({"stream": true}),
            json_for_stream: (
                json!({"model": MODEL, "content": [{"type": "text", "text": "Whole message."}], "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 2}}),
                "Whole message.",
            ),
            stream_errors: vec![
                (
                    error_event("overloaded_error"),
                    AgentError::Server {
                        status: 529,
                        message: "Overloaded".into(),
                    },
                ),
                (
                    error_event("rate_limit_error"),
                    AgentError::RateLimited { retry_after: None },
                ),
                (
                    error_event("authentication_error"),
                    AgentError::Auth {
                        status: 401,
                        message: "Overloaded".into(),
                    },
                ),
                (
                    error_event("api_error"),
                    AgentError::Server {
                        status: 500,
                        message: "Overloaded".into(),
                    },
                ),
            ],
            rate_limits: vec![
                ErrorReply::new(
                    429,
                    json!({"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}),
                    AgentError::RateLimited {
                        retry_after: Some(Duration::from_secs(17)),
                    },
                )
                .with_header("retry-after", "17"),
            ],
            server_errors: vec![
                ErrorReply::new(
                    500,
                    json!({"type":"error","error":{"type":"api_error","message":"Internal server error"}}),
                    AgentError::Server {
                        status: 500,
                        message: "Internal server error".into(),
                    },
                ),
                ErrorReply::new(
                    529,
                    json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
                    AgentError::Server {
                        status: 529,
                        message: "Overloaded".into(),
                    },
                ),
            ],
            bad_keys: vec![ErrorReply::new(
                401,
                json!({"type":"error","error":{"type":"authentication_error","message":format!("invalid x-api-key {KEY}")}}),
                AgentError::Auth {
                    status: 401,
                    message: "invalid x-api-key [redacted]".into(),
                },
            )],
        }
    }
}
