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

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::debug;

use super::http::{self, Connection};
use super::*;

#[derive(Debug)]
pub struct Gemini {
    connection: Connection,
}

impl Gemini {
    /// Base URL e.g. `https://generativelanguage.googleapis.com` (a trailing `/v1beta` is
    /// dropped).
    pub fn new(connection: Connection) -> Self {
        Gemini {
            connection: connection.without_base_suffix("/v1beta"),
        }
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

/// A GenerateContentResponse: the whole answer, or one chunk of a stream.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    candidates: Option<Vec<Candidate>>,
    model_version: Option<String>,
    usage_metadata: Option<UsageMetadata>,
    prompt_feedback: Option<PromptFeedback>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<CandidateContent>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct CandidateContent {
    parts: Option<Vec<AnswerPart>>,
}

#[derive(Deserialize)]
struct AnswerPart {
    text: Option<String>,
    /// A thinking model's reasoning: not part of the answer.
    thought: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
    block_reason_message: Option<String>,
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
        let model_name = model.strip_prefix("models/").unwrap_or(model);
        let base = self.connection.base_url();
        let url = match sink {
            Some(_) => {
                format!("{base}/v1beta/models/{model_name}:streamGenerateContent?alt=sse")
            }
            None => format!("{base}/v1beta/models/{model_name}:generateContent"),
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
        let response: GenerateResponse = http::decode(value, "Gemini response")?;
        self.chunks += 1;
        if let Some(m) = response.model_version {
            self.model = Some(m);
        }
        if let Some(meta) = response.usage_metadata {
            self.usage = Some(Usage {
                input_tokens: meta.prompt_token_count.unwrap_or(0),
                output_tokens: meta.candidates_token_count.unwrap_or(0)
                    + meta.thoughts_token_count.unwrap_or(0),
                estimated: false,
            });
        }
        let Some(candidate) = response.candidates.and_then(|c| c.into_iter().next()) else {
            if let Some(feedback) = response.prompt_feedback
                && let Some(reason) = feedback.block_reason
            {
                let detail = feedback
                    .block_reason_message
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
        let parts = candidate.content.and_then(|c| c.parts).unwrap_or_default();
        for part in parts {
            if part.thought == Some(true) {
                continue;
            }
            if let Some(piece) = part.text.filter(|t| !t.is_empty()) {
                if let Some(sink) = sink {
                    sink.send(&piece);
                }
                self.text.push_str(&piece);
            }
        }
        if let Some(reason) = candidate.finish_reason {
            self.finish_reason = Some(reason);
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
pub(super) mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::agents::conformance::{ErrorReply, Fixture};
    use crate::agents::http::testing::*;
    use crate::agents::providers;

    const KEY: &str = "AIzaSy-test-SECRET-abcdef012345";
    const MODEL: &str = "gemini-2.5-flash";
    const ANSWERED: &str = "gemini-2.5-flash-001";

    fn provider(server: &FakeServer) -> Gemini {
        let info = providers::get("gemini").unwrap();
        Gemini::new(Connection::new(info, &server.base, Some(KEY.into())))
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
        let mut value = json!({"candidates": [candidate], "modelVersion": ANSWERED});
        if usage {
            value["usageMetadata"] = json!({"promptTokenCount": 21, "candidatesTokenCount": 14, "thoughtsTokenCount": 6, "totalTokenCount": 41});
        }
        value
    }

    /// One chunk per piece; the last carries the finish reason and the usage. No
    /// terminator: the stream just ends.
    fn stream_events(pieces: &[&str]) -> Vec<String> {
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let last = i + 1 == pieces.len();
                format!(
                    "data: {}\r\n\r\n",
                    chunk(piece, last.then_some("STOP"), last)
                )
            })
            .collect()
    }

    pub(in crate::agents) fn conformance() -> Fixture {
        Fixture {
            provider: "gemini",
            key_env: "GEMINI_API_KEY",
            key: KEY,
            model: MODEL,
            base: str::to_owned,
            alt_base: |root| format!("{root}/v1beta/"),
            request,
            reply: json!({
                "candidates": [{
                    "content": {"role": "model", "parts": [
                        {"text": "pondering", "thought": true},
                        {"text": "The affirmative "},
                        {"text": "wins."}
                    ]},
                    "finishReason": "STOP", "index": 0
                }],
                "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 4, "totalTokenCount": 54},
                "modelVersion": ANSWERED
            }),
            completion: Completion {
                text: "The affirmative wins.".into(),
                usage: Usage {
                    input_tokens: 50,
                    output_tokens: 4,
                    estimated: false,
                },
                model: ANSWERED.into(),
                finish_reason: Some("STOP".into()),
            },
            target: "/v1beta/models/gemini-2.5-flash:generateContent",
            key_header: ("x-goog-api-key", KEY.into()),
            headers: Vec::new(),
            body: json!({
                "systemInstruction": {"parts": [{"text": "You judge the debate."}]},
                "contents": [
                    {"role": "user", "parts": [{"text": "Who won?"}]},
                    {"role": "model", "parts": [{"text": "Let me think."}]},
                    {"role": "user", "parts": [{"text": "Decide."}]}
                ],
                "generationConfig": {"maxOutputTokens": 300, "temperature": 0.0}
            }),
            stream: stream_events,
            terminated: false,
            streamed: Completion {
                text: UNICODE_PIECES.concat(),
                // Thinking tokens count as output.
                usage: Usage {
                    input_tokens: 21,
                    output_tokens: 20,
                    estimated: false,
                },
                model: ANSWERED.into(),
                finish_reason: Some("STOP".into()),
            },
            stream_target: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            stream_fields: json!({}),
            // streamGenerateContent without SSE answers a JSON array of chunks.
            json_for_stream: (
                json!([{
                    "candidates": [{"content": {"role": "model", "parts": [{"text": "Whole "}, {"text": "answer."}]},
                                    "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 2},
                    "modelVersion": ANSWERED
                }]),
                "Whole answer.",
            ),
            stream_errors: vec![(
                format!(
                    "data: {}\n\n",
                    json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
                ),
                AgentError::Server {
                    status: 503,
                    message: "The model is overloaded.".into(),
                },
            )],
            rate_limits: vec![
                ErrorReply::new(
                    429,
                    json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}),
                    AgentError::RateLimited {
                        retry_after: Some(Duration::from_secs(9)),
                    },
                )
                .with_header("retry-after", "9"),
                // Without the header, Google's RetryInfo gives the delay.
                ErrorReply::new(
                    429,
                    json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": [
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31s"}
                    ]}}),
                    AgentError::RateLimited {
                        retry_after: Some(Duration::from_secs(31)),
                    },
                ),
            ],
            server_errors: vec![ErrorReply::new(
                500,
                json!({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}),
                AgentError::Server {
                    status: 500,
                    message: "An internal error has occurred.".into(),
                },
            )],
            bad_keys: vec![
                // Google answers an invalid key with 400 API_KEY_INVALID.
                ErrorReply::new(
                    400,
                    json!({"error": {"code": 400, "message": format!("API key not valid: {KEY}. Please pass a valid API key."), "status": "INVALID_ARGUMENT", "details": [
                        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}
                    ]}}),
                    AgentError::Auth {
                        status: 400,
                        message: "API key not valid: [redacted]. Please pass a valid API key."
                            .into(),
                    },
                ),
                ErrorReply::new(
                    403,
                    json!({"error": {"code": 403, "message": format!("Method doesn't allow unregistered callers ({KEY})."), "status": "PERMISSION_DENIED"}}),
                    AgentError::Auth {
                        status: 403,
                        message: "Method doesn't allow unregistered callers ([redacted]).".into(),
                    },
                ),
            ],
        }
    }

    #[tokio::test]
    async fn model_may_carry_the_models_prefix() {
        let server = FakeServer::start(json_reply(200, &conformance().reply)).await;
        let completion = provider(&server)
            .complete(&format!("models/{MODEL}"), &request(false), None)
            .await
            .unwrap();
        assert_eq!(completion.text, "The affirmative wins.");
        assert_eq!(
            server.only_request().target,
            "/v1beta/models/gemini-2.5-flash:generateContent"
        );
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
}
