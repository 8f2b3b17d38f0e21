//! Gemini API adapter: `POST {base}/v1beta/models/{model}:generateContent`, streamed with
//! `:streamGenerateContent?alt=sse`, key in the `x-goog-api-key` header (never in the URL).
//!
//! Conventions a caller must know:
//! - `base_url` is the API root without the version (`https://generativelanguage.googleapis.com`);
//!   a trailing `/v1beta` is accepted too. `model` may be given with or without `models/`.
//! - Assistant turns are sent with role `model`; the system prompt as `systemInstruction`.
//! - Output tokens include `thoughtsTokenCount` (thinking models bill them as output);
//!   parts marked `thought: true` are not part of the text.
//! - A prompt blocked by Google's filters (`promptFeedback.blockReason`, no candidates) fails
//!   as `BadRequest { status: 400 }` naming the reason. A candidate stopped by a filter
//!   (`finishReason: SAFETY`, …) is returned as is, with its finish reason.
//! - Gemini streams have no terminator: a clean end of stream after at least one chunk
//!   completes the call; an empty stream or one cut inside an event is `Malformed`.
//! - Google reports an invalid key as 400 `API_KEY_INVALID`; that is mapped to `Auth`.

use serde::Serialize;
use serde_json::Value;
use tracing::debug;

use super::http::{self, ProviderClient};
use super::*;

pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
const KEY_ENV: &str = "GEMINI_API_KEY";

pub struct Gemini {
    base_url: String,
    api_key: Option<String>,
    client: Result<ProviderClient, AgentError>,
}

impl std::fmt::Debug for Gemini {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gemini")
            .field("base_url", &self.base_url)
            .field("has_key", &self.api_key.is_some())
            .finish()
    }
}

impl Gemini {
    /// `base_url` e.g. `https://generativelanguage.googleapis.com`; key from GEMINI_API_KEY.
    pub fn new(base_url: String, api_key: Option<String>) -> Self {
        Gemini {
            base_url: http::normalize_base(&base_url, Some("/v1beta")),
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
struct Part<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct Content<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: [Part<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    max_output_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content<'a>>,
    contents: Vec<Content<'a>>,
    generation_config: GenerationConfig,
}

fn build_body(request: &CompletionRequest) -> GenerateRequest<'_> {
    GenerateRequest {
        system_instruction: (!request.system.is_empty()).then(|| Content {
            role: None,
            parts: [Part {
                text: &request.system,
            }],
        }),
        contents: request
            .messages
            .iter()
            .map(|m| Content {
                role: Some(match m.role {
                    Role::User => "user",
                    Role::Assistant => "model",
                }),
                parts: [Part { text: &m.content }],
            })
            .collect(),
        generation_config: GenerationConfig {
            max_output_tokens: request.max_tokens,
            temperature: request.temperature,
        },
    }
}

#[async_trait]
impl Provider for Gemini {
    fn id(&self) -> &str {
        "gemini"
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
        let model_name = model.strip_prefix("models/").unwrap_or(model);
        let url = match sink {
            Some(_) => format!(
                "{}/v1beta/models/{model_name}:streamGenerateContent?alt=sse",
                self.base_url
            ),
            None => format!(
                "{}/v1beta/models/{model_name}:generateContent",
                self.base_url
            ),
        };
        debug!(
            target: "aragora::agents::gemini",
            model = model_name,
            stream = sink.is_some(),
            messages = request.messages.len(),
            "request"
        );
        let builder = client
            .inner()
            .post(url)
            .header("x-goog-api-key", http::key_header("", key)?)
            .json(&build_body(request));
        let response = client.send(builder, Some(key)).await?;
        let mut acc = Accumulator::default();
        match sink {
            Some(sink) if !http::is_json_body(&response) => {
                let mut events = http::sse_events(response);
                loop {
                    match events.next_event().await {
                        Ok(Some(event)) => {
                            let value: Value = serde_json::from_str(&event.data).map_err(|e| {
                                AgentError::Malformed(format!(
                                    "invalid JSON in Gemini stream chunk: {e}"
                                ))
                            })?;
                            acc.absorb(&value, Some(sink), key)?;
                        }
                        Ok(None) => break,
                        Err(e) => return Err(client.map_sse_error(&e, Some(key))),
                    }
                }
                if acc.chunks == 0 {
                    return Err(AgentError::Malformed(
                        "Gemini stream ended without any chunk".into(),
                    ));
                }
            }
            // Not streamed, or asked to stream and answered with one JSON document: the
            // whole text goes out as a single delta.
            streamed => {
                let value = client.read_json(response, Some(key)).await?;
                // streamGenerateContent without SSE answers a JSON array of chunks.
                match value.as_array() {
                    Some(chunks) => {
                        for chunk in chunks {
                            acc.absorb(chunk, streamed, key)?;
                        }
                    }
                    None => acc.absorb(&value, streamed, key)?,
                }
            }
        }
        let completion = acc.finish(model_name, request);
        debug!(
            target: "aragora::agents::gemini",
            model = %completion.model,
            input_tokens = completion.usage.input_tokens,
            output_tokens = completion.usage.output_tokens,
            finish_reason = completion.finish_reason.as_deref().unwrap_or(""),
            "response"
        );
        Ok(completion)
    }
}

/// The state built from one or more GenerateContentResponse objects.
#[derive(Default)]
struct Accumulator {
    chunks: usize,
    text: String,
    model: Option<String>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl Accumulator {
    fn absorb(
        &mut self,
        value: &Value,
        sink: Option<&DeltaSink>,
        key: &str,
    ) -> Result<(), AgentError> {
        // Errors can arrive as the payload of a 200 (mid-stream); Google wraps them in an
        // array at times.
        let error_holder = match value {
            Value::Array(items) => items.first().unwrap_or(value),
            other => other,
        };
        if error_holder.get("error").is_some_and(|e| !e.is_null()) {
            return Err(http::error_from_payload(error_holder, 500, Some(key)));
        }
        if !value.is_object() {
            return Err(AgentError::Malformed(
                "Gemini response is not a JSON object".into(),
            ));
        }
        self.chunks += 1;
        if let Some(m) = value.get("modelVersion").and_then(Value::as_str) {
            self.model = Some(m.to_owned());
        }
        if let Some(meta) = value.get("usageMetadata").filter(|m| m.is_object()) {
            let field = |name: &str| meta.get(name).and_then(Value::as_u64);
            self.usage = Some(Usage {
                input_tokens: field("promptTokenCount").unwrap_or(0),
                output_tokens: field("candidatesTokenCount").unwrap_or(0)
                    + field("thoughtsTokenCount").unwrap_or(0),
                estimated: false,
            });
        }
        let candidates = value.get("candidates").and_then(Value::as_array);
        let Some(candidate) = candidates.and_then(|c| c.first()) else {
            if let Some(reason) = value
                .pointer("/promptFeedback/blockReason")
                .and_then(Value::as_str)
            {
                let detail = value
                    .pointer("/promptFeedback/blockReasonMessage")
                    .and_then(Value::as_str)
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return Err(AgentError::BadRequest {
                    status: 400,
                    message: http::clean_message(
                        &format!("prompt blocked by Gemini ({reason}){detail}"),
                        Some(key),
                    ),
                });
            }
            // A streamed chunk with only usage metadata is normal.
            return Ok(());
        };
        for part in candidate
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(piece) = part.get("text").and_then(Value::as_str)
                && !piece.is_empty()
            {
                if let Some(sink) = sink {
                    sink.send(piece);
                }
                self.text.push_str(piece);
            }
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_owned());
        }
        Ok(())
    }

    fn finish(self, model: &str, request: &CompletionRequest) -> Completion {
        Completion {
            usage: self
                .usage
                .unwrap_or_else(|| http::estimate_usage(request, &self.text)),
            model: self.model.unwrap_or_else(|| model.to_owned()),
            finish_reason: self.finish_reason,
            text: self.text,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::agents::http::testing::*;

    const KEY: &str = "AIzaSy-test-SECRET-abcdef012345";
    const MODEL: &str = "gemini-2.5-flash";

    fn provider(server: &FakeServer) -> Gemini {
        Gemini::new(server.base.clone(), Some(KEY.into()))
    }

    fn request(stream: bool) -> CompletionRequest {
        CompletionRequest {
            system: "You judge the debate.".into(),
            messages: vec![
                ChatMessage {
                    role: Role::User,
                    content: "Who won?".into(),
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: "Let me think.".into(),
                },
                ChatMessage {
                    role: Role::User,
                    content: "Decide.".into(),
                },
            ],
            max_tokens: 300,
            temperature: Some(0.0),
            stream,
        }
    }

    fn chunk(text: &str, finish: Option<&str>, usage: bool) -> Value {
        let mut candidate =
            json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": 0});
        if let Some(finish) = finish {
            candidate["finishReason"] = json!(finish);
        }
        let mut value = json!({"candidates": [candidate], "modelVersion": "gemini-2.5-flash-001"});
        if usage {
            value["usageMetadata"] = json!({"promptTokenCount": 21, "candidatesTokenCount": 14, "thoughtsTokenCount": 6, "totalTokenCount": 41});
        }
        value
    }

    fn stream_body(pieces: &[&str]) -> String {
        let mut body = String::new();
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            body.push_str(&format!(
                "data: {}\r\n\r\n",
                chunk(piece, last.then_some("STOP"), last)
            ));
        }
        body
    }

    #[tokio::test]
    async fn normal_reply() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({
                "candidates": [{
                    "content": {"role": "model", "parts": [
                        {"text": "pondering", "thought": true},
                        {"text": "The affirmative "},
                        {"text": "wins."}
                    ]},
                    "finishReason": "STOP", "index": 0
                }],
                "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 4, "totalTokenCount": 54},
                "modelVersion": "gemini-2.5-flash-001"
            }),
        ))
        .await;
        let completion = provider(&server)
            .complete(&format!("models/{MODEL}"), &request(false), None)
            .await
            .unwrap();
        assert_eq!(completion.text, "The affirmative wins.");
        assert_eq!(completion.model, "gemini-2.5-flash-001");
        assert_eq!(completion.finish_reason.as_deref(), Some("STOP"));
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 50,
                output_tokens: 4,
                estimated: false
            }
        );

        let req = server.only_request();
        assert_eq!(req.method, "POST");
        assert_eq!(
            req.target,
            "/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(req.header("x-goog-api-key"), Some(KEY));
        assert!(!req.target.contains(KEY));
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(
            req.json(),
            json!({
                "systemInstruction": {"parts": [{"text": "You judge the debate."}]},
                "contents": [
                    {"role": "user", "parts": [{"text": "Who won?"}]},
                    {"role": "model", "parts": [{"text": "Let me think."}]},
                    {"role": "user", "parts": [{"text": "Decide."}]}
                ],
                "generationConfig": {"maxOutputTokens": 300, "temperature": 0.0}
            })
        );
    }

    #[tokio::test]
    async fn streamed_reply_in_small_chunks() {
        let server = FakeServer::start(sse_reply(&stream_body(&UNICODE_PIECES), 3)).await;
        let (sink, mut rx) = sink();
        let completion = Gemini::new(format!("{}/v1beta/", server.base), Some(KEY.into()))
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap();
        let deltas = drain(&mut rx);
        assert_eq!(deltas, UNICODE_PIECES);
        assert_eq!(completion.text, deltas.concat());
        assert_eq!(completion.finish_reason.as_deref(), Some("STOP"));
        assert_eq!(completion.model, "gemini-2.5-flash-001");
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 21,
                output_tokens: 20,
                estimated: false
            }
        );
        let req = server.only_request();
        assert_eq!(
            req.target,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(req.header("x-goog-api-key"), Some(KEY));
    }

    #[tokio::test]
    async fn a_json_answer_to_a_streamed_request_is_read_whole() {
        let server = FakeServer::start(json_reply(
            200,
            &json!([{
                "candidates": [{"content": {"role": "model", "parts": [{"text": "Whole "}, {"text": "answer."}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 2},
                "modelVersion": "gemini-2.5-flash-001"
            }]),
        ))
        .await;
        let (sink, mut rx) = sink();
        let completion = Gemini::new(format!("{}/v1beta/", server.base), Some(KEY.into()))
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap();
        assert_eq!(completion.text, "Whole answer.");
        assert_eq!(drain(&mut rx).concat(), "Whole answer.");
    }

    #[tokio::test]
    async fn blocked_prompt_is_bad_request() {
        let server = FakeServer::start(json_reply(
            200,
            &json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []}, "usageMetadata": {"promptTokenCount": 8}}),
        ))
        .await;
        let err = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        match &err {
            AgentError::BadRequest {
                status: 400,
                message,
            } => assert!(message.contains("SAFETY"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn rate_limited_with_retry_after() {
        let server = FakeServer::start(json_reply_with(
            429,
            &json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}),
            &[("retry-after", "9")],
        ))
        .await;
        let err = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AgentError::RateLimited {
                retry_after: Some(Duration::from_secs(9))
            }
        );

        // Without the header, Google's RetryInfo gives the delay.
        let server = FakeServer::start(json_reply(
            429,
            &json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31s"}
            ]}}),
        ))
        .await;
        let err = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AgentError::RateLimited {
                retry_after: Some(Duration::from_secs(31))
            }
        );
    }

    #[tokio::test]
    async fn server_error_is_retryable() {
        let server = FakeServer::start(json_reply(
            500,
            &json!({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}),
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
                message: "An internal error has occurred.".into()
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
    async fn empty_stream_is_malformed() {
        let server = FakeServer::start(sse_reply(": nothing\n\n", 4)).await;
        let (sink, _rx) = sink();
        let err = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Malformed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn stream_cut_mid_event_is_malformed() {
        let mut body = stream_body(&["one", "two"]);
        body.push_str("data: {\"candidates\": [{\"content\":");
        let server = FakeServer::start(sse_reply(&body, 11)).await;
        let (sink, _rx) = sink();
        let err = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Malformed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn invalid_json_chunk_is_malformed() {
        let body = format!("data: {}\n\ndata: not json\n\n", chunk("a", None, false));
        let server = FakeServer::start(sse_reply(&body, 11)).await;
        let (sink, _rx) = sink();
        let err = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Malformed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn error_payload_mid_stream() {
        let body = format!(
            "data: {}\n\ndata: {}\n\n",
            chunk("a", None, false),
            json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
        );
        let server = FakeServer::start(sse_reply(&body, 13)).await;
        let (sink, _rx) = sink();
        let err = provider(&server)
            .complete(MODEL, &request(true), Some(&sink))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AgentError::Server {
                status: 503,
                message: "The model is overloaded.".into()
            }
        );
    }

    #[tokio::test]
    async fn bad_key_is_auth_without_the_key() {
        // Google answers an invalid key with 400 API_KEY_INVALID.
        let server = FakeServer::start(json_reply(
            400,
            &json!({"error": {"code": 400, "message": format!("API key not valid: {KEY}. Please pass a valid API key."), "status": "INVALID_ARGUMENT", "details": [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}
            ]}}),
        ))
        .await;
        let err = provider(&server)
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_auth_without_key(&err, KEY);

        let server = FakeServer::start(json_reply(
            403,
            &json!({"error": {"code": 403, "message": "Method doesn't allow unregistered callers.", "status": "PERMISSION_DENIED"}}),
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
        let provider = Gemini::new(server.base.clone(), None);
        assert!(!provider.available());
        let err = provider
            .complete(MODEL, &request(false), None)
            .await
            .unwrap_err();
        assert_eq!(err, AgentError::MissingKey("GEMINI_API_KEY".into()));
        assert!(server.requests().is_empty());
    }
}
