//! Anthropic Messages API adapter (`POST {base}/v1/messages`, `anthropic-version: 2023-06-01`).
//!
//! `base_url` is the API root without the version (`https://api.anthropic.com`); a base
//! given with a trailing `/v1` is accepted too. Streaming (`stream: true`) is used only when
//! the request asks for it and a delta sink is given.
//!
//! Usage: `input_tokens` includes the cache read / creation tokens Anthropic reports
//! separately; `output_tokens` is the final (cumulative) count from `message_delta`.

use serde::Serialize;
use serde_json::Value;
use tracing::debug;

use super::http::{self, ProviderClient};
use super::*;

pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub const API_VERSION: &str = "2023-06-01";
const KEY_ENV: &str = "ANTHROPIC_API_KEY";

pub struct Anthropic {
    base_url: String,
    api_key: Option<String>,
    client: Result<ProviderClient, AgentError>,
}

impl std::fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anthropic")
            .field("base_url", &self.base_url)
            .field("has_key", &self.api_key.is_some())
            .finish()
    }
}

impl Anthropic {
    /// `base_url` e.g. `https://api.anthropic.com`; `api_key` from ANTHROPIC_API_KEY.
    pub fn new(base_url: String, api_key: Option<String>) -> Self {
        Anthropic {
            base_url: http::normalize_base(&base_url, Some("/v1")),
            api_key: http::normalize_key(api_key),
            client: ProviderClient::shared(),
        }
    }

    /// Use this client instead of the shared one (tests, custom timeouts).
    pub fn with_client(mut self, client: ProviderClient) -> Self {
        self.client = Ok(client);
        self
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

#[async_trait]
impl Provider for Anthropic {
    fn id(&self) -> &str {
        "anthropic"
    }

    fn available(&self) -> bool {
        self.api_key.is_some()
    }

    async fn complete(
        &self,
        model: &str,
        request: &CompletionRequest,
        deltas: Option<&DeltaSink>,
    ) -> Result<Completion, AgentError> {
        let key = self
            .api_key
            .as_deref()
            .ok_or_else(|| AgentError::MissingKey(KEY_ENV.into()))?;
        let client = self.client.as_ref().map_err(Clone::clone)?;
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
            .post(format!("{}/v1/messages", self.base_url))
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

/// Input tokens of a `usage` object, cache tokens included.
fn input_tokens(usage: &Value) -> Option<u64> {
    let field = |name: &str| usage.get(name).and_then(Value::as_u64);
    let base = field("input_tokens")?;
    Some(
        base + field("cache_creation_input_tokens").unwrap_or(0)
            + field("cache_read_input_tokens").unwrap_or(0),
    )
}

fn parse_message(
    value: &Value,
    model: &str,
    request: &CompletionRequest,
) -> Result<Completion, AgentError> {
    let content = value
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| AgentError::Malformed("Anthropic response has no content array".into()))?;
    let text: String = content
        .iter()
        .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|block| block.get("text").and_then(Value::as_str))
        .collect();
    let usage = value.get("usage");
    let input = usage.and_then(input_tokens);
    let output = usage
        .and_then(|u| u.get("output_tokens"))
        .and_then(Value::as_u64);
    let usage = match (input, output) {
        (None, None) => http::estimate_usage(request, &text),
        (input, output) => Usage {
            input_tokens: input.unwrap_or(0),
            output_tokens: output.unwrap_or(0),
            estimated: false,
        },
    };
    Ok(Completion {
        model: value
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(model)
            .to_owned(),
        finish_reason: value
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(str::to_owned),
        text,
        usage,
    })
}

/// Map an `error` event of the stream.
fn stream_error(value: &Value, key: &str) -> AgentError {
    let error = value.get("error");
    let kind = error
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let message = http::clean_message(
        error
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("error event in the stream"),
        Some(key),
    );
    match kind {
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
        let value: Value = serde_json::from_str(&event.data).map_err(|e| {
            AgentError::Malformed(format!(
                "invalid JSON in Anthropic '{}' event: {e}",
                event.event
            ))
        })?;
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(&event.event);
        match kind {
            "message_start" => {
                let message = value.get("message");
                if let Some(m) = message.and_then(|m| m.get("model")).and_then(Value::as_str) {
                    answered_model = Some(m.to_owned());
                }
                let usage = message.and_then(|m| m.get("usage"));
                input = usage.and_then(input_tokens).or(input);
                output = usage
                    .and_then(|u| u.get("output_tokens"))
                    .and_then(Value::as_u64)
                    .or(output);
            }
            "content_block_delta" => {
                let delta = value.get("delta");
                if delta.and_then(|d| d.get("type")).and_then(Value::as_str) == Some("text_delta")
                    && let Some(piece) = delta.and_then(|d| d.get("text")).and_then(Value::as_str)
                    && !piece.is_empty()
                {
                    sink.send(piece);
                    text.push_str(piece);
                }
            }
            "message_delta" => {
                if let Some(reason) = value.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    stop_reason = Some(reason.to_owned());
                }
                let usage = value.get("usage");
                output = usage
                    .and_then(|u| u.get("output_tokens"))
                    .and_then(Value::as_u64)
                    .or(output);
                // Newer API versions repeat (cumulative) input counts here.
                input = usage.and_then(input_tokens).or(input);
            }
            "message_stop" => break,
            "error" => return Err(stream_error(&value, key)),
            // content_block_start / _stop, ping, and event types added later.
            _ => {}
        }
    }
    let usage = match (input, output) {
        (None, None) => http::estimate_usage(request, &text),
        (input, output) => Usage {
            input_tokens: input.unwrap_or(0),
            output_tokens: output.unwrap_or(0),
            estimated: false,
        },
    };
    Ok(Completion {
        text,
        usage,
        model: answered_model.unwrap_or_else(|| model.to_owned()),
        finish_reason: stop_reason,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::agents::http::testing::*;

    const KEY: &str = "sk-ant-test-SECRET-0123456789";
    const MODEL: &str = "claude-sonnet-4-5";

    fn provider(server: &FakeServer) -> Anthropic {
        Anthropic::new(format!("{}/", server.base), Some(KEY.into()))
    }

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

    fn stream_body(pieces: &[&str], terminate: bool) -> String {
        let mut body = String::new();
        let mut event = |name: &str, data: Value| {
            body.push_str(&format!("event: {name}\r\ndata: {data}\r\n\r\n"));
        };
        event(
            "message_start",
            json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"usage":{"input_tokens":25,"cache_read_input_tokens":5,"output_tokens":1}}}),
        );
        event(
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        );
        event("ping", json!({"type":"ping"}));
        for piece in pieces {
            event(
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":piece}}),
            );
        }
        event(
            "content_block_stop",
            json!({"type":"content_block_stop","index":0}),
        );
        event(
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":42}}),
        );
        if terminate {
            event("message_stop", json!({"type":"message_stop"}));
        }
        body
    }

    #[tokio::test]
    async fn normal_reply() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({
                "id": "msg_1", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "x"},
                    {"type": "text", "text": "The motion "},
                    {"type": "text", "text": "stands."}
                ],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 30, "output_tokens": 7}
            }),
        ))
        .await;
        let completion = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap();
        assert_eq!(completion.text, "The motion stands.");
        assert_eq!(completion.model, "claude-sonnet-4-5-20250929");
        assert_eq!(completion.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 30,
                output_tokens: 7,
                estimated: false
            }
        );

        let req = server.only_request();
        assert_eq!(req.method, "POST");
        assert_eq!(req.target, "/v1/messages");
        assert_eq!(req.header("x-api-key"), Some(KEY));
        assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert!(req.header("user-agent").unwrap().starts_with("aragora/"));
        assert_eq!(
            req.json(),
            json!({
                "model": MODEL,
                "max_tokens": 512,
                "system": "You argue for the motion.",
                "messages": [
                    {"role": "user", "content": "Opening statement?"},
                    {"role": "assistant", "content": "Gladly."},
                    {"role": "user", "content": "Go on."}
                ],
                "temperature": 0.5
            })
        );
    }

    #[tokio::test]
    async fn streamed_reply_in_small_chunks() {
        let server = FakeServer::start(sse_reply(&stream_body(&UNICODE_PIECES, true), 3)).await;
        let (sink, mut rx) = sink();
        let completion = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap();
        let deltas = drain(&mut rx);
        assert_eq!(deltas, UNICODE_PIECES);
        assert_eq!(completion.text, deltas.concat());
        assert_eq!(completion.model, "claude-sonnet-4-5-20250929");
        assert_eq!(completion.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 30,
                output_tokens: 42,
                estimated: false
            }
        );
        let body = server.only_request().json();
        assert_eq!(body["stream"], json!(true));
    }

    #[tokio::test]
    async fn a_json_message_answering_a_streamed_request_is_read_whole() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({"model": MODEL, "content": [{"type": "text", "text": "Whole message."}], "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 2}}),
        ))
        .await;
        let (sink, mut rx) = sink();
        let completion = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap();
        assert_eq!(completion.text, "Whole message.");
        assert_eq!(drain(&mut rx), ["Whole message."]);
        assert_eq!(server.only_request().json()["stream"], json!(true));
    }

    #[tokio::test]
    async fn stream_flag_without_sink_is_not_streamed() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({"model": MODEL, "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}}),
        ))
        .await;
        let completion = provider(&server)
            .complete(MODEL, &request(true), None)
            .await
            .unwrap();
        assert_eq!(completion.text, "ok");
        assert!(server.only_request().json().get("stream").is_none());
    }

    #[tokio::test]
    async fn rate_limited_with_retry_after() {
        let server = FakeServer::start(json_reply_with(
            429,
            &json!({"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}),
            &[("retry-after", "17")],
        ))
        .await;
        let err = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AgentError::RateLimited {
                retry_after: Some(Duration::from_secs(17))
            }
        );
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn server_error_and_overloaded() {
        let server = FakeServer::start(json_reply(
            500,
            &json!({"type":"error","error":{"type":"api_error","message":"Internal server error"}}),
        ))
        .await;
        let err = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AgentError::Server {
                status: 500,
                message: "Internal server error".into()
            }
        );
        assert!(err.is_retryable());

        let server = FakeServer::start(json_reply(
            529,
            &json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
        ))
        .await;
        let err = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AgentError::Server {
                status: 529,
                message: "Overloaded".into()
            }
        );
    }

    #[tokio::test]
    async fn hang_maps_to_timeout() {
        let server = FakeServer::start(Reply::Hang).await;
        // Shared client (no timeout of its own): still pending when the caller gives up.
        let pending = tokio::time::timeout(
            Duration::from_millis(200),
            provider(&server).complete(MODEL, &request(false), None),
        )
        .await;
        assert!(pending.is_err(), "the adapter returned early: {pending:?}");
        // With a read timeout configured on the client, reqwest's timeout maps to Timeout.
        let provider =
            provider(&server).with_client(client_with_read_timeout(Duration::from_millis(150)));
        let err = provider
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(err, AgentError::Timeout(Duration::from_millis(150)));
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn truncated_stream_is_malformed() {
        let server = FakeServer::start(sse_reply(&stream_body(&["partial"], false), 5)).await;
        let (sink, _rx) = sink();
        let err = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Malformed(_)), "{err:?}");
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn invalid_json_in_stream_is_malformed() {
        let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\nevent: content_block_delta\ndata: {not json\n\n";
        let server = FakeServer::start(sse_reply(body, 7)).await;
        let (sink, _rx) = sink();
        let err = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Malformed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn error_events_mid_stream() {
        let cases = [
            (
                "overloaded_error",
                AgentError::Server {
                    status: 529,
                    message: "Overloaded".into(),
                },
            ),
            (
                "rate_limit_error",
                AgentError::RateLimited { retry_after: None },
            ),
            (
                "authentication_error",
                AgentError::Auth {
                    status: 401,
                    message: "Overloaded".into(),
                },
            ),
            (
                "api_error",
                AgentError::Server {
                    status: 500,
                    message: "Overloaded".into(),
                },
            ),
        ];
        for (kind, expected) in cases {
            let mut body = stream_body(&["a"], false);
            body.push_str(&format!(
                "event: error\ndata: {}\n\n",
                json!({"type":"error","error":{"type":kind,"message":"Overloaded"}})
            ));
            let server = FakeServer::start(sse_reply(&body, 64)).await;
            let (sink, _rx) = sink();
            let err = provider(&server)
                .complete(MODEL, &request(true), Some(&sink))
                .await
                .unwrap_err();
            assert_eq!(err, expected, "{kind}");
        }
    }

    #[tokio::test]
    async fn bad_key_is_auth_without_the_key() {
        let server = FakeServer::start(json_reply(
            401,
            &json!({"type":"error","error":{"type":"authentication_error","message":format!("invalid x-api-key {KEY}")}}),
        ))
        .await;
        let err = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_auth_without_key(&err, KEY);
    }

    #[tokio::test]
    async fn missing_key_makes_no_request() {
        let server = FakeServer::start(Reply::Hang).await;
        let provider = Anthropic::new(server.base.clone(), Some("  ".into()));
        assert!(!provider.available());
        let err = provider
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(err, AgentError::MissingKey("ANTHROPIC_API_KEY".into()));
        assert!(server.requests().is_empty());
        assert!(Anthropic::new(server.base.clone(), Some(KEY.into())).available());
        assert!(
            !format!(
                "{:?}",
                Anthropic::new(server.base.clone(), Some(KEY.into()))
            )
            .contains(KEY)
        );
    }
}
