//! OpenAI Chat Completions adapter, also used for every OpenAI-compatible service
//! (OpenRouter, xAI, DeepSeek, Mistral, Ollama): `POST {base}/chat/completions`.
//!
//! Conventions a caller must know:
//! - `base_url` *includes* the version prefix: `https://api.openai.com/v1`,
//!   `https://openrouter.ai/api/v1`, `https://api.x.ai/v1`, `https://api.deepseek.com/v1`,
//!   `https://api.mistral.ai/v1`, `http://localhost:11434/v1`.
//! - `Authorization: Bearer <key>` is sent whenever a key is set (also for ollama).
//! - Per-service differences come from the catalogue's
//!   [`WireFormat::OpenAiChat`](super::providers::WireFormat::OpenAiChat): the output limit
//!   is sent as `max_completion_tokens` to `openai` (its reasoning models reject
//!   `max_tokens`) and as `max_tokens` to every compatible service; `stream_options:
//!   {include_usage: true}` is sent when streaming to the services that accept it (all but
//!   Mistral, which validates its parameters strictly and reports usage in its last chunk
//!   unasked).
//! - Without usage in the answer (common with Ollama and some proxies) the usage is
//!   estimated from the text (`Usage::estimated == true`).
//! - A stream must end with `data: [DONE]`; otherwise the call fails as `Malformed`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::debug;

use super::http::{self, Connection, ProviderClient};
use super::providers::WireFormat;
use super::*;

#[derive(Debug)]
pub struct OpenAiCompatible {
    connection: Connection,
    max_completion_tokens: bool,
    stream_usage: bool,
}

impl OpenAiCompatible {
    /// Base URL including the version prefix (e.g. `https://api.openai.com/v1`,
    /// `http://localhost:11434/v1`).
    pub fn new(connection: Connection) -> Self {
        let (max_completion_tokens, stream_usage) = match connection.info.wire {
            WireFormat::OpenAiChat {
                max_completion_tokens,
                stream_usage,
            } => (max_completion_tokens, stream_usage),
            _ => (false, false),
        };
        OpenAiCompatible {
            connection,
            max_completion_tokens,
            stream_usage,
        }
    }
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

/// A chat completion, or one chunk of a streamed one (`delta` instead of `message`).
#[derive(Deserialize)]
struct ChatResponse {
    model: Option<String>,
    choices: Option<Vec<Choice>>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    index: Option<u64>,
    message: Option<ChoiceMessage>,
    delta: Option<ChoiceMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
    /// The explanation of a refusal (then `content` is null).
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl ChatResponse {
    /// The model that answered, when named.
    fn model(&self) -> Option<&str> {
        self.model.as_deref().filter(|m| !m.is_empty())
    }

    /// `usage.prompt_tokens` / `completion_tokens`, when reported.
    fn usage(&self) -> Option<Usage> {
        let usage = self.usage.as_ref()?;
        if usage.prompt_tokens.is_none() && usage.completion_tokens.is_none() {
            return None;
        }
        Some(Usage {
            input_tokens: usage.prompt_tokens.unwrap_or(0),
            output_tokens: usage.completion_tokens.unwrap_or(0),
            estimated: false,
        })
    }

    /// The choice with index 0, else the first.
    fn first_choice(self) -> Option<Choice> {
        let mut choices = self.choices?;
        let at = choices.iter().position(|c| c.index == Some(0)).unwrap_or(0);
        (at < choices.len()).then(|| choices.swap_remove(at))
    }
}

/// An `error` object in a 200 answer or a stream chunk.
fn has_error(value: &Value) -> bool {
    value.get("error").is_some_and(|e| !e.is_null())
}

fn wire_messages(request: &CompletionRequest) -> Vec<WireMessage<'_>> {
    let system = (!request.system.is_empty()).then(|| WireMessage {
        role: "system",
        content: &request.system,
    });
    system
        .into_iter()
        .chain(request.messages.iter().map(|m| WireMessage {
            role: match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            },
            content: &m.content,
        }))
        .collect()
}

#[async_trait]
impl Provider for OpenAiCompatible {
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
        let key = self.connection.key()?;
        let client = self.connection.client()?;
        let sink = deltas.filter(|_| request.stream);
        let streaming = sink.is_some();
        let body = ChatRequest {
            model,
            messages: wire_messages(request),
            max_tokens: (!self.max_completion_tokens).then_some(request.max_tokens),
            max_completion_tokens: self.max_completion_tokens.then_some(request.max_tokens),
            temperature: request.temperature,
            stream: streaming,
            stream_options: (streaming && self.stream_usage).then_some(StreamOptions {
                include_usage: true,
            }),
        };
        let provider = self.id();
        debug!(
            target: "aragora::agents::openai",
            provider,
            model,
            stream = streaming,
            messages = request.messages.len(),
            "request"
        );
        let mut builder = client
            .inner()
            .post(format!("{}/chat/completions", self.connection.base_url()))
            .header(
                reqwest::header::ACCEPT,
                if streaming {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .json(&body);
        if let Some(key) = key {
            builder = builder.header(
                reqwest::header::AUTHORIZATION,
                http::key_header("Bearer ", key)?,
            );
        }
        let response = client.send(builder, key).await?;
        let completion = match sink {
            Some(sink) if !http::is_json_body(&response) => {
                read_stream(client, response, key, model, request, sink).await?
            }
            // Asked to stream, answered with one JSON document: read it as such and pass
            // its text on as a single delta.
            streamed => {
                let value = client.read_json(response, key).await?;
                let completion = parse_response(&value, model, request, key)?;
                if let Some(sink) = streamed {
                    sink.send(&completion.text);
                }
                completion
            }
        };
        debug!(
            target: "aragora::agents::openai",
            provider,
            model = %completion.model,
            input_tokens = completion.usage.input_tokens,
            output_tokens = completion.usage.output_tokens,
            estimated = completion.usage.estimated,
            finish_reason = completion.finish_reason.as_deref().unwrap_or(""),
            "response"
        );
        Ok(completion)
    }
}

fn parse_response(
    value: &Value,
    model: &str,
    request: &CompletionRequest,
    key: Option<&str>,
) -> Result<Completion, AgentError> {
    if has_error(value) && value.get("choices").is_none() {
        return Err(http::error_from_payload(value, 500, key));
    }
    let response: ChatResponse = http::decode(value, "chat completion")?;
    let answered_model = response.model().map(str::to_owned);
    let usage = response.usage();
    let choice = response
        .first_choice()
        .ok_or_else(|| AgentError::Malformed("chat completion has no choices".into()))?;
    let message = choice
        .message
        .ok_or_else(|| AgentError::Malformed("chat completion choice has no message".into()))?;
    // A refusal comes with `content: null` and the explanation in `refusal`.
    let text = message.content.or(message.refusal).unwrap_or_default();
    Ok(Completion {
        usage: usage.unwrap_or_else(|| http::estimate_usage(request, &text)),
        model: answered_model.unwrap_or_else(|| model.to_owned()),
        finish_reason: choice.finish_reason,
        text,
    })
}

async fn read_stream(
    client: &ProviderClient,
    response: reqwest::Response,
    key: Option<&str>,
    model: &str,
    request: &CompletionRequest,
    sink: &DeltaSink,
) -> Result<Completion, AgentError> {
    let mut events = http::sse_events(response);
    let mut text = String::new();
    let mut answered_model: Option<String> = None;
    let mut usage: Option<Usage> = None;
    let mut finish_reason: Option<String> = None;
    loop {
        let event = match events.next_event().await {
            Ok(Some(event)) => event,
            Ok(None) => {
                return Err(AgentError::Malformed(
                    "chat completion stream ended without [DONE]".into(),
                ));
            }
            Err(e) => return Err(client.map_sse_error(&e, key)),
        };
        let data = event.data.trim();
        if data == "[DONE]" {
            break;
        }
        if data.is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(data).map_err(|e| {
            AgentError::Malformed(format!("invalid JSON in chat completion chunk: {e}"))
        })?;
        if has_error(&value) || event.event == "error" {
            return Err(http::error_from_payload(&value, 500, key));
        }
        let chunk: ChatResponse = http::decode(&value, "chat completion chunk")?;
        if let Some(m) = chunk.model() {
            answered_model = Some(m.to_owned());
        }
        if let Some(reported) = chunk.usage() {
            usage = Some(reported);
        }
        if let Some(choice) = chunk.first_choice() {
            if let Some(piece) = choice
                .delta
                .and_then(|d| d.content)
                .filter(|p| !p.is_empty())
            {
                sink.send(&piece);
                text.push_str(&piece);
            }
            if let Some(reason) = choice.finish_reason {
                finish_reason = Some(reason);
            }
        }
    }
    Ok(Completion {
        usage: usage.unwrap_or_else(|| http::estimate_usage(request, &text)),
        text,
        model: answered_model.unwrap_or_else(|| model.to_owned()),
        finish_reason,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::agents::conformance::{ErrorReply, Fixture};
    use crate::agents::http::testing::*;
    use crate::agents::providers::{self, PROVIDERS};

    const KEY: &str = "sk-proj-test-SECRET-9876543210";
    const MODEL: &str = "gpt-4.1-mini";
    const ANSWERED: &str = "gpt-4.1-mini-2025-04-14";

    /// A catalogue provider of this wire format at the fake server.
    fn provider(id: &str, server: &FakeServer, key: Option<&str>) -> OpenAiCompatible {
        let info = providers::get(id).unwrap();
        OpenAiCompatible::new(Connection::new(
            info,
            &format!("{}/v1", server.base),
            key.map(str::to_owned),
        ))
    }

    fn request(stream: bool) -> CompletionRequest {
        CompletionRequest {
            system: "You argue against the motion.".into(),
            messages: vec![
                ChatMessage {
                    role: Role::User,
                    content: "Rebut this.".into(),
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: "First,".into(),
                },
                ChatMessage {
                    role: Role::User,
                    content: "Continue.".into(),
                },
            ],
            max_tokens: 256,
            temperature: Some(0.25),
            stream,
        }
    }

    fn chunk(content: Option<&str>, finish: Option<&str>) -> Value {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": ANSWERED,
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
        })
    }

    fn data(value: Value) -> String {
        format!("data: {value}\n\n")
    }

    /// OpenRouter's keep-alive comment, a role chunk, one chunk per piece, the finish
    /// reason, a usage-only chunk (`stream_options.include_usage`) when `usage`, `[DONE]`.
    fn events(pieces: &[&str], usage: bool) -> Vec<String> {
        let mut events = vec![
            ": OPENROUTER PROCESSING\n\n".to_owned()
                + &data(
                    json!({"id":"chatcmpl-1","model":ANSWERED,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}),
                ),
        ];
        events.extend(pieces.iter().map(|p| data(chunk(Some(p), None))));
        events.push(data(chunk(None, Some("stop"))));
        if usage {
            events.push(data(
                json!({"id":"chatcmpl-1","model":ANSWERED,"choices":[],"usage":{"prompt_tokens":33,"completion_tokens":12,"total_tokens":45}}),
            ));
        }
        events.push("data: [DONE]\n\n".into());
        events
    }

    fn stream_events(pieces: &[&str]) -> Vec<String> {
        events(pieces, true)
    }

    pub(in crate::agents) fn conformance() -> Fixture {
        Fixture {
            provider: "openai",
            key_env: "OPENAI_API_KEY",
            key: KEY,
            model: MODEL,
            base: |root| format!("{root}/v1/"),
            alt_base: |root| format!("{root}/v1"),
            request,
            reply: json!({
                "id": "chatcmpl-1", "object": "chat.completion", "model": ANSWERED,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "No, because…", "refusal": null}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}
            }),
            completion: Completion {
                text: "No, because…".into(),
                usage: Usage {
                    input_tokens: 40,
                    output_tokens: 9,
                    estimated: false,
                },
                model: ANSWERED.into(),
                finish_reason: Some("stop".into()),
            },
            target: "/v1/chat/completions",
            key_header: ("authorization", format!("Bearer {KEY}")),
            headers: Vec::new(),
            body: json!({
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "You argue against the motion."},
                    {"role": "user", "content": "Rebut this."},
                    {"role": "assistant", "content": "First,"},
                    {"role": "user", "content": "Continue."}
                ],
                "max_completion_tokens": 256,
                "temperature": 0.25
            }),
            stream: stream_events,
            terminated: true,
            streamed: Completion {
                text: UNICODE_PIECES.concat(),
                usage: Usage {
                    input_tokens: 33,
                    output_tokens: 12,
                    estimated: false,
                },
                model: ANSWERED.into(),
                finish_reason: Some("stop".into()),
            },
            stream_target: "/v1/chat/completions",
            stream_fields: json!({"stream": true, "stream_options": {"include_usage": true}}),
            json_for_stream: (
                json!({
                    "id": "chatcmpl-2", "object": "chat.completion", "model": "gpt-4o",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Whole answer."}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 3}
                }),
                "Whole answer.",
            ),
            stream_errors: vec![
                (
                    data(json!({"error": {"message": "Provider returned error", "code": 502}})),
                    AgentError::Server {
                        status: 502,
                        message: "Provider returned error".into(),
                    },
                ),
                (
                    data(
                        json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}),
                    ),
                    AgentError::RateLimited { retry_after: None },
                ),
            ],
            rate_limits: vec![
                // `retry-after-ms` wins over `retry-after`.
                ErrorReply::new(
                    429,
                    json!({"error": {"message": "Rate limit reached for gpt-4.1-mini", "type": "requests", "code": "rate_limit_exceeded"}}),
                    AgentError::RateLimited {
                        retry_after: Some(Duration::from_millis(19_500)),
                    },
                )
                .with_header("retry-after", "20")
                .with_header("retry-after-ms", "19500"),
                ErrorReply::new(
                    429,
                    json!({"error": {"message": "slow"}}),
                    AgentError::RateLimited {
                        retry_after: Some(Duration::from_secs(3)),
                    },
                )
                .with_header("retry-after", "3"),
            ],
            server_errors: vec![ErrorReply::new(
                500,
                json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}),
                AgentError::Server {
                    status: 500,
                    message: "The server had an error while processing your request.".into(),
                },
            )],
            bad_keys: vec![ErrorReply::new(
                401,
                json!({"error": {"message": format!("Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys."), "type": "invalid_request_error", "code": "invalid_api_key"}}),
                AgentError::Auth {
                    status: 401,
                    message: "Incorrect API key provided: [redacted]. You can find your API key at https://platform.openai.com/account/api-keys.".into(),
                },
            )],
        }
    }

    /// The same suite through a compatible service (xAI): `max_tokens`, its own key variable.
    pub(in crate::agents) fn compatible_conformance() -> Fixture {
        let mut fixture = conformance();
        fixture.provider = "xai";
        fixture.key_env = "XAI_API_KEY";
        let body = fixture.body.as_object_mut().unwrap();
        body.remove("max_completion_tokens");
        body.insert("max_tokens".into(), json!(256));
        fixture
    }

    #[tokio::test]
    async fn compatible_service_body_uses_max_tokens() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({"model": "deepseek-chat", "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
        ))
        .await;
        let mut req = request(false);
        req.temperature = None;
        req.system.clear();
        provider("deepseek", &server, Some(KEY))
            .complete("deepseek-chat", &req, None)
            .await
            .unwrap();
        let body = server.only_request().json();
        assert_eq!(body["max_tokens"], json!(256));
        assert!(body.get("max_completion_tokens").is_none());
        assert!(body.get("temperature").is_none());
        assert_eq!(
            body["messages"][0]["role"],
            json!("user"),
            "no empty system message"
        );
    }

    /// Each catalogue service gets its own limit field and usage request when streaming.
    #[tokio::test]
    async fn streamed_request_fields_follow_the_catalogue() {
        for info in &PROVIDERS {
            let WireFormat::OpenAiChat {
                max_completion_tokens,
                stream_usage,
            } = info.wire
            else {
                continue;
            };
            let server = FakeServer::start(sse_reply(&events(&["x"], false).concat(), 64)).await;
            let (sink, _rx) = sink();
            let adapter = provider(info.id, &server, Some(KEY));
            assert_eq!(adapter.id(), info.id);
            adapter
                .complete("m", &request(true), Some(&sink))
                .await
                .unwrap();
            let body = server.only_request().json();
            let id = info.id;
            assert_eq!(body["stream"], json!(true), "{id}");
            assert_eq!(
                body.get("stream_options").is_some(),
                stream_usage,
                "{id}: {body}"
            );
            assert_eq!(
                body.get("max_completion_tokens").is_some(),
                max_completion_tokens,
                "{id}"
            );
            assert_eq!(
                body.get("max_tokens").is_some(),
                !max_completion_tokens,
                "{id}"
            );
        }
        let mistral = providers::get("mistral").unwrap().wire;
        assert!(matches!(
            mistral,
            WireFormat::OpenAiChat {
                stream_usage: false,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn ollama_stream_without_usage_is_estimated() {
        let server = FakeServer::start(sse_reply(
            &events(&["Four", " words", " here", " now"], false).concat(),
            4,
        ))
        .await;
        let provider = provider("ollama", &server, None);
        assert!(provider.available());
        let (sink, mut rx) = sink();
        let req = request(true);
        let completion = provider
            .complete("llama3.2", &req, Some(&sink))
            .await
            .unwrap();
        assert_eq!(drain(&mut rx).concat(), "Four words here now");
        assert!(completion.usage.estimated);
        assert_eq!(
            completion.usage,
            http::estimate_usage(&req, "Four words here now")
        );
        // Usage was asked for; an Ollama too old to send it leaves it estimated.
        let sent = server.only_request();
        assert_eq!(
            sent.json()["stream_options"],
            json!({"include_usage": true})
        );
        assert_eq!(sent.header("authorization"), None, "no key, no header");
    }

    #[tokio::test]
    async fn reply_without_usage_is_estimated() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({"model": "llama3.2", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Twelve chars"}, "finish_reason": "stop"}]}),
        ))
        .await;
        let req = request(false);
        let completion = provider("ollama", &server, None)
            .complete("llama3.2", &req, None)
            .await
            .unwrap();
        assert_eq!(completion.text, "Twelve chars");
        let expected_input = "You argue against the motion.\nRebut this.\nFirst,\nContinue.";
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: (expected_input.chars().count() as u64).div_ceil(4),
                output_tokens: 3,
                estimated: true
            }
        );
    }

    #[tokio::test]
    async fn refusal_is_the_text_and_choice_zero_is_read() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({"model": "", "choices": [
                {"index": 1, "message": {"content": "other"}, "finish_reason": "stop"},
                {"index": 0, "message": {"content": null, "refusal": "I can't argue that."}, "finish_reason": "stop"}
            ]}),
        ))
        .await;
        let completion = provider("openai", &server, Some(KEY))
            .complete(MODEL, &request(false), None)
            .await
            .unwrap();
        assert_eq!(completion.text, "I can't argue that.");
        assert_eq!(completion.model, MODEL, "an empty model name is no name");
    }

    #[tokio::test]
    async fn error_body_with_200_status() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({"error": {"message": "No endpoints found", "code": 404}}),
        ))
        .await;
        let err = provider("openrouter", &server, Some(KEY))
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AgentError::BadRequest {
                status: 404,
                message: "No endpoints found".into()
            }
        );
    }

    #[tokio::test]
    async fn answers_without_the_vendor_shape_are_malformed() {
        for body in [
            json!({"model": "m"}),
            json!({"choices": [{"index": 0}]}),
            json!({"choices": "none"}),
        ] {
            let server = FakeServer::start(json_reply(200, &body)).await;
            let err = provider("openai", &server, Some(KEY))
                .complete(MODEL, &request(false), None)
                .await
                .unwrap_err();
            assert!(matches!(err, AgentError::Malformed(_)), "{body}: {err:?}");
        }
    }
}
