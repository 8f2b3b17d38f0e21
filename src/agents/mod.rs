//! Agents: the LLM providers a debate talks to.
//!
//! Rule: one `Provider` trait; one catalogue of providers (`providers.rs`: id, wire format,
//! key and base URL variables, pricing key) that config, registry, pricing and the
//! connectivity check all read; one file per vendor wire format (`anthropic.rs`, `openai.rs`
//! for OpenAI and every OpenAI-compatible service, `gemini.rs`), each decoding its vendor's
//! answers into typed structs and passing the one conformance suite (`conformance.rs`); a
//! deterministic `demo.rs` that needs no network; `agents.toml` parsing in `spec.rs`, name
//! resolution and breakers in `registry.rs`, and all retry / circuit-breaker policy in
//! `resilience.rs`. Nothing here knows about HTTP routes or debates.

pub mod anthropic;
#[cfg(test)]
mod conformance;
pub mod demo;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod providers;
pub mod registry;
pub mod resilience;
pub mod spec;
pub mod sse;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use registry::{Agent, AgentRegistry, UnknownAgent};
pub use resilience::{BreakerConfig, BreakerState, CircuitBreaker, RetryPolicy};
pub use spec::AgentSpec;

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// One completion request, provider-neutral.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// System prompt (role, stance, output format).
    pub system: String,
    /// The conversation; the last message is the user's turn.
    pub messages: Vec<ChatMessage>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    /// Stream token deltas (SSE) when the caller supplies a delta sink.
    pub stream: bool,
}

impl CompletionRequest {
    /// A single-turn request.
    pub fn single(system: impl Into<String>, prompt: impl Into<String>) -> Self {
        CompletionRequest {
            system: system.into(),
            messages: vec![ChatMessage {
                role: Role::User,
                content: prompt.into(),
            }],
            max_tokens: 1024,
            temperature: Some(0.7),
            stream: false,
        }
    }
}

/// Token usage of one call. `estimated` is true when the provider reported none and the
/// figures were estimated from text length (≈ 4 characters per token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub estimated: bool,
}

impl Usage {
    /// Estimate from text when a provider gives no usage.
    pub fn estimate(input_text: &str, output_text: &str) -> Usage {
        let tokens = |s: &str| (s.chars().count() as u64).div_ceil(4);
        Usage {
            input_tokens: tokens(input_text),
            output_tokens: tokens(output_text),
            estimated: true,
        }
    }
}

/// What a provider returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub usage: Usage,
    /// The model that answered, as the provider reports it.
    pub model: String,
    /// Provider's finish reason (`stop`, `end_turn`, `length`, …) when given.
    pub finish_reason: Option<String>,
}

/// Receives streamed text deltas. Deltas are ephemeral (live display only): when the
/// receiver lags, deltas are dropped rather than slowing the call down; the final
/// `Completion::text` is always complete.
#[derive(Debug, Clone)]
pub struct DeltaSink(mpsc::Sender<String>);

impl DeltaSink {
    pub fn new(capacity: usize) -> (DeltaSink, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(capacity);
        (DeltaSink(tx), rx)
    }

    pub fn send(&self, delta: &str) {
        let _ = self.0.try_send(delta.to_owned());
    }

    /// Whether the next delta would be dropped: the receiver holds as many as it can take
    /// (or is gone). A provider that produces text faster than it is forwarded yields
    /// before sending more.
    pub fn is_full(&self) -> bool {
        self.0.capacity() == 0
    }
}

/// Why a call failed. `is_retryable` decides what resilience retries.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("rate limited by the provider (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    #[error("provider error {status}: {message}")]
    Server { status: u16, message: String },
    /// 401/403: a bad or missing key. Never retried.
    #[error("authentication failed ({status}): {message}")]
    Auth { status: u16, message: String },
    /// Other 4xx: the request itself is wrong. Never retried.
    #[error("request rejected ({status}): {message}")]
    BadRequest { status: u16, message: String },
    /// The provider answered with something that does not follow its own format
    /// (malformed JSON or SSE). Retried once like a server error.
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("no API key: set {0}")]
    MissingKey(String),
    #[error("circuit breaker open for this agent; next probe in {0:?}")]
    CircuitOpen(Duration),
    #[error("cancelled")]
    Cancelled,
}

impl AgentError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AgentError::Timeout(_)
                | AgentError::Connection(_)
                | AgentError::RateLimited { .. }
                | AgentError::Server { .. }
                | AgentError::Malformed(_)
        )
    }

    /// Whether this failure counts against the agent's circuit breaker (provider health),
    /// as opposed to a problem of the caller (bad request, cancellation, missing key).
    pub fn counts_for_breaker(&self) -> bool {
        self.is_retryable() || matches!(self, AgentError::Auth { .. })
    }

    /// Every [`kind`](Self::kind), for metrics published at zero before the first failure.
    pub const KINDS: [&'static str; 10] = [
        "timeout",
        "connection",
        "rate_limited",
        "server_error",
        "auth",
        "bad_request",
        "malformed",
        "missing_key",
        "circuit_open",
        "cancelled",
    ];

    /// Stable snake_case kind for events, metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::Timeout(_) => "timeout",
            AgentError::Connection(_) => "connection",
            AgentError::RateLimited { .. } => "rate_limited",
            AgentError::Server { .. } => "server_error",
            AgentError::Auth { .. } => "auth",
            AgentError::BadRequest { .. } => "bad_request",
            AgentError::Malformed(_) => "malformed",
            AgentError::MissingKey(_) => "missing_key",
            AgentError::CircuitOpen(_) => "circuit_open",
            AgentError::Cancelled => "cancelled",
        }
    }
}

/// One vendor wire format. Implementations do exactly one attempt: no retries, no timeout
/// of their own beyond the HTTP client's (resilience owns both).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Provider id: `anthropic`, `openai`, `openrouter`, `xai`, `deepseek`, `mistral`,
    /// `ollama`, `gemini`, `demo`.
    fn id(&self) -> &str;

    /// Whether credentials are present (demo and ollama need none).
    fn available(&self) -> bool;

    /// One call. With `request.stream` and a sink, text deltas are sent as they arrive.
    async fn complete(
        &self,
        model: &str,
        request: &CompletionRequest,
        deltas: Option<&DeltaSink>,
    ) -> Result<Completion, AgentError>;
}
