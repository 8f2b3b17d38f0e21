//! OpenAI Chat Completions adapter, also used for every OpenAI-compatible service
//! (OpenRouter, xAI, DeepSeek, Mistral, Ollama): `POST {base}/chat/completions`.
//!
//! Conventions a caller must know:
//! - `base_url` *includes* the version prefix: `https://api.openai.com/v1`,
//!   `https://openrouter.ai/api/v1`, `https://api.x.ai/v1`, `https://api.deepseek.com/v1`,
//!   `https://api.mistral.ai/v1`, `http://localhost:11434/v1`.
//! - `Authorization: Bearer <key>` is sent whenever a key is set (also for ollama).
//! - The output limit is sent as `max_completion_tokens` to `openai` (its reasoning models
//!   reject `max_tokens`) and as `max_tokens` to every compatible service.
//! - `stream_options: {include_usage: true}` is sent when streaming to the services that
//!   accept it (`openai`, `openrouter`, `xai`, `deepseek`, and `ollama`, whose OpenAI layer
//!   honours it in current releases and ignores unknown fields in older ones); Mistral
//!   validates its parameters strictly and reports usage in its last chunk unasked.
//! - Without usage in the answer (common with Ollama and some proxies) the usage is
//!   estimated from the text (`Usage::estimated == true`).
//! - A stream must end with `data: [DONE]`; otherwise the call fails as `Malformed`.

use serde::Serialize;
use serde_json::Value;
use tracing::debug;

use super::http::{self, ProviderClient};
use super::*;

/// Provider ids known to accept `stream_options.include_usage`.
const STREAM_USAGE_IDS: [&str; 5] = ["openai", "openrouter", "xai", "deepseek", "ollama"];

pub struct OpenAiCompatible {
    id: String,
    base_url: String,
    api_key: Option<String>,
    key_env: &'static str,
    key_required: bool,
    client: Result<ProviderClient, AgentError>,
}

impl std::fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("id", &self.id)
            .field("base_url", &self.base_url)
            .field("has_key", &self.api_key.is_some())
            .field("key_required", &self.key_required)
            .finish()
    }
}

impl OpenAiCompatible {
    /// `id`: openai, openrouter, xai, deepseek, mistral or ollama. `base_url` includes the
    /// version prefix (e.g. `https://api.openai.com/v1`, `http://localhost:11434/v1`).
    /// `key_env` names the variable the key comes from (for error messages); `api_key` None
    /// with `key_required` false (ollama) is fine.
    pub fn new(
        id: &str,
        base_url: String,
        api_key: Option<String>,
        key_env: &'static str,
        key_required: bool,
    ) -> Self {
        OpenAiCompatible {
            id: id.to_owned(),
            base_url: http::normalize_base(&base_url, None),
            api_key: http::normalize_key(api_key),
            key_env,
            key_required,
            client: ProviderClient::shared(),
        }
    }

    /// Use this client instead of the shared one (tests, custom timeouts).
    pub fn with_client(mut self, client: ProviderClient) -> Self {
        self.client = Ok(client);
        self
    }

    fn tag(&self) -> &'static str {
        // `tracing` targets must be static: the six known ids, else the generic one.
        match self.id.as_str() {
            "openai" => "openai",
            "openrouter" => "openrouter",
            "xai" => "xai",
            "deepseek" => "deepseek",
            "mistral" => "mistral",
            "ollama" => "ollama",
            _ => "compatible",
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
        &self.id
    }

    fn available(&self) -> bool {
        self.api_key.is_some() || !self.key_required
    }

    async fn complete(
        &self,
        model: &str,
        request: &CompletionRequest,
        deltas: Option<&DeltaSink>,
    ) -> Result<Completion, AgentError> {
        let key = self.api_key.as_deref();
        if key.is_none() && self.key_required {
            return Err(AgentError::MissingKey(self.key_env.into()));
        }
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let sink = deltas.filter(|_| request.stream);
        let streaming = sink.is_some();
        let is_openai = self.id == "openai";
        let body = ChatRequest {
            model,
            messages: wire_messages(request),
            max_tokens: (!is_openai).then_some(request.max_tokens),
            max_completion_tokens: is_openai.then_some(request.max_tokens),
            temperature: request.temperature,
            stream: streaming,
            stream_options: (streaming && STREAM_USAGE_IDS.contains(&self.id.as_str())).then_some(
                StreamOptions {
                    include_usage: true,
                },
            ),
        };
        debug!(
            target: "aragora::agents::openai",
            provider = self.tag(),
            model,
            stream = streaming,
            messages = request.messages.len(),
            "request"
        );
        let mut builder = client
            .inner()
            .post(format!("{}/chat/completions", self.base_url))
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
            provider = self.tag(),
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

/// `usage.prompt_tokens` / `completion_tokens`, when the object is there.
fn reported_usage(value: &Value) -> Option<Usage> {
    let usage = value.get("usage").filter(|u| u.is_object())?;
    let field = |name: &str| usage.get(name).and_then(Value::as_u64);
    let (input, output) = (field("prompt_tokens"), field("completion_tokens"));
    if input.is_none() && output.is_none() {
        return None;
    }
    Some(Usage {
        input_tokens: input.unwrap_or(0),
        output_tokens: output.unwrap_or(0),
        estimated: false,
    })
}

fn first_choice(value: &Value) -> Option<&Value> {
    let choices = value.get("choices")?.as_array()?;
    choices
        .iter()
        .find(|c| c.get("index").and_then(Value::as_u64) == Some(0))
        .or_else(|| choices.first())
}

fn parse_response(
    value: &Value,
    model: &str,
    request: &CompletionRequest,
    key: Option<&str>,
) -> Result<Completion, AgentError> {
    if value.get("error").is_some_and(|e| !e.is_null()) && value.get("choices").is_none() {
        return Err(http::error_from_payload(value, 500, key));
    }
    let choice = first_choice(value)
        .ok_or_else(|| AgentError::Malformed("chat completion has no choices".into()))?;
    let message = choice
        .get("message")
        .ok_or_else(|| AgentError::Malformed("chat completion choice has no message".into()))?;
    // A refusal comes with `content: null` and the explanation in `refusal`.
    let text = message
        .get("content")
        .and_then(Value::as_str)
        .or_else(|| message.get("refusal").and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned();
    let usage = reported_usage(value).unwrap_or_else(|| http::estimate_usage(request, &text));
    Ok(Completion {
        model: value
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .unwrap_or(model)
            .to_owned(),
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned),
        text,
        usage,
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
        if value.get("error").is_some_and(|e| !e.is_null()) || event.event == "error" {
            return Err(http::error_from_payload(&value, 500, key));
        }
        if let Some(m) = value
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
        {
            answered_model = Some(m.to_owned());
        }
        if let Some(reported) = reported_usage(&value) {
            usage = Some(reported);
        }
        if let Some(choice) = first_choice(&value) {
            if let Some(piece) = choice.pointer("/delta/content").and_then(Value::as_str)
                && !piece.is_empty()
            {
                sink.send(piece);
                text.push_str(piece);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                finish_reason = Some(reason.to_owned());
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
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::agents::http::testing::*;

    const KEY: &str = "sk-proj-test-SECRET-9876543210";
    const MODEL: &str = "gpt-4.1-mini";

    fn provider(server: &FakeServer) -> OpenAiCompatible {
        OpenAiCompatible::new(
            "openai",
            format!("{}/v1/", server.base),
            Some(KEY.into()),
            "OPENAI_API_KEY",
            true,
        )
    }

    fn ollama(server: &FakeServer) -> OpenAiCompatible {
        OpenAiCompatible::new(
            "ollama",
            format!("{}/v1", server.base),
            None,
            "OLLAMA_API_KEY",
            false,
        )
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
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1-mini-2025-04-14",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
        })
    }

    fn stream_body(pieces: &[&str], usage: bool, done: bool) -> String {
        let mut body = String::from(": OPENROUTER PROCESSING\n\n");
        body.push_str(&format!(
            "data: {}\n\n",
            json!({"id":"chatcmpl-1","model":"gpt-4.1-mini-2025-04-14","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})
        ));
        for piece in pieces {
            body.push_str(&format!("data: {}\n\n", chunk(Some(piece), None)));
        }
        body.push_str(&format!("data: {}\n\n", chunk(None, Some("stop"))));
        if usage {
            body.push_str(&format!(
                "data: {}\n\n",
                json!({"id":"chatcmpl-1","model":"gpt-4.1-mini-2025-04-14","choices":[],"usage":{"prompt_tokens":33,"completion_tokens":12,"total_tokens":45}})
            ));
        }
        if done {
            body.push_str("data: [DONE]\n\n");
        }
        body
    }

    #[tokio::test]
    async fn a_json_answer_to_a_streamed_request_is_read_whole() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({
                "id": "chatcmpl-2", "object": "chat.completion", "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Whole answer."}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3}
            }),
        ))
        .await;
        let (sink, mut rx) = sink();
        let completion = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap();
        assert_eq!(completion.text, "Whole answer.");
        assert_eq!(drain(&mut rx), ["Whole answer."]);
        assert!(!completion.usage.estimated);
        assert_eq!(server.only_request().json()["stream"], json!(true));
    }

    #[tokio::test]
    async fn normal_reply() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({
                "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4.1-mini-2025-04-14",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "No, because…", "refusal": null}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}
            }),
        ))
        .await;
        let completion = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap();
        assert_eq!(completion.text, "No, because…");
        assert_eq!(completion.model, "gpt-4.1-mini-2025-04-14");
        assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 40,
                output_tokens: 9,
                estimated: false
            }
        );

        let req = server.only_request();
        assert_eq!(req.method, "POST");
        assert_eq!(req.target, "/v1/chat/completions");
        assert_eq!(
            req.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(
            req.json(),
            json!({
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "You argue against the motion."},
                    {"role": "user", "content": "Rebut this."},
                    {"role": "assistant", "content": "First,"},
                    {"role": "user", "content": "Continue."}
                ],
                "max_completion_tokens": 256,
                "temperature": 0.25
            })
        );
    }

    #[tokio::test]
    async fn compatible_service_body_uses_max_tokens() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({"model": "deepseek-chat", "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
        ))
        .await;
        let provider = OpenAiCompatible::new(
            "deepseek",
            format!("{}/v1", server.base),
            Some(KEY.into()),
            "DEEPSEEK_API_KEY",
            true,
        );
        let mut req = request(false);
        req.temperature = None;
        req.system.clear();
        provider
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

    #[tokio::test]
    async fn streamed_reply_in_small_chunks() {
        let server =
            FakeServer::start(sse_reply(&stream_body(&UNICODE_PIECES, true, true), 3)).await;
        let (sink, mut rx) = sink();
        let completion = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap();
        let deltas = drain(&mut rx);
        assert_eq!(deltas, UNICODE_PIECES);
        assert_eq!(completion.text, deltas.concat());
        assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
        assert_eq!(completion.model, "gpt-4.1-mini-2025-04-14");
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 33,
                output_tokens: 12,
                estimated: false
            }
        );
        let body = server.only_request().json();
        assert_eq!(body["stream"], json!(true));
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
    }

    #[tokio::test]
    async fn ollama_stream_without_usage_is_estimated() {
        let server = FakeServer::start(sse_reply(
            &stream_body(&["Four", " words", " here", " now"], false, true),
            4,
        ))
        .await;
        let provider = ollama(&server);
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
        assert_eq!(
            server.only_request().json()["stream_options"],
            json!({"include_usage": true})
        );
        let sent = server.only_request();
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
        let completion = ollama(&server)
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
    async fn rate_limited_with_retry_after() {
        let server = FakeServer::start(json_reply_with(
            429,
            &json!({"error": {"message": "Rate limit reached for gpt-4.1-mini", "type": "requests", "code": "rate_limit_exceeded"}}),
            &[("retry-after", "20"), ("retry-after-ms", "19500")],
        ))
        .await;
        let err = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AgentError::RateLimited {
                retry_after: Some(Duration::from_millis(19_500))
            }
        );

        let server = FakeServer::start(json_reply_with(
            429,
            &json!({"error": {"message": "slow"}}),
            &[("retry-after", "3")],
        ))
        .await;
        let err = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AgentError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
    }

    #[tokio::test]
    async fn server_error_is_retryable() {
        let server = FakeServer::start(json_reply(
            500,
            &json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}),
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
                message: "The server had an error while processing your request.".into()
            }
        );
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn hang_maps_to_timeout() {
        let server = FakeServer::start(Reply::Hang).await;
        let pending = tokio::time::timeout(
            Duration::from_millis(200),
            provider(&server).complete(MODEL, &request(false), None),
        )
        .await;
        assert!(pending.is_err(), "the adapter returned early: {pending:?}");
        let provider =
            provider(&server).with_client(client_with_read_timeout(Duration::from_millis(150)));
        let err = provider
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(err, AgentError::Timeout(Duration::from_millis(150)));
    }

    #[tokio::test]
    async fn stream_stalled_mid_way_times_out() {
        // Headers and one event, then silence: the chunked body never ends.
        let first = format!("data: {}\n\n", chunk(Some("partial"), None));
        let server = FakeServer::start(Reply::Stall {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks: vec![first.into_bytes()],
        })
        .await;
        let provider =
            provider(&server).with_client(client_with_read_timeout(Duration::from_millis(200)));
        let (sink, mut rx) = sink();
        let err = provider
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap_err();
        assert_eq!(err, AgentError::Timeout(Duration::from_millis(200)));
        assert_eq!(drain(&mut rx), ["partial"]);
    }

    #[tokio::test]
    async fn stream_without_done_is_malformed() {
        let server = FakeServer::start(sse_reply(&stream_body(&["x"], true, false), 5)).await;
        let (sink, _rx) = sink();
        let err = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Malformed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn invalid_json_chunk_is_malformed() {
        let server = FakeServer::start(sse_reply("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\": [\n\ndata: [DONE]\n\n", 6)).await;
        let (sink, _rx) = sink();
        let err = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Malformed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn error_payload_mid_stream() {
        let mut body = stream_body(&["a"], false, false);
        body.push_str(&format!(
            "data: {}\n\n",
            json!({"error": {"message": "Provider returned error", "code": 502}})
        ));
        let server = FakeServer::start(sse_reply(&body, 9)).await;
        let (sink, _rx) = sink();
        let err = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AgentError::Server {
                status: 502,
                message: "Provider returned error".into()
            }
        );

        let body = format!(
            "data: {}\n\n",
            json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error"}})
        );
        let server = FakeServer::start(sse_reply(&body, 9)).await;
        let err = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::RateLimited { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn error_body_with_200_status() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({"error": {"message": "No endpoints found", "code": 404}}),
        ))
        .await;
        let err = provider(&server)
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
    async fn bad_key_is_auth_without_the_key() {
        let server = FakeServer::start(json_reply(
            401,
            &json!({"error": {"message": format!("Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys."), "type": "invalid_request_error", "code": "invalid_api_key"}}),
        ))
        .await;
        let err = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_auth_without_key(&err, KEY);
        assert!(
            err.to_string().contains("Incorrect API key provided"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn missing_key_makes_no_request() {
        let server = FakeServer::start(Reply::Hang).await;
        let provider = OpenAiCompatible::new("xai", server.base.clone(), None, "XAI_API_KEY", true);
        assert!(!provider.available());
        let err = provider
            .complete("grok-4", &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(err, AgentError::MissingKey("XAI_API_KEY".into()));
        assert!(server.requests().is_empty());
    }
}
