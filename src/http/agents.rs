//! Agents API: the configured agents, their circuit breakers, an operator reset, and a
//! one-off test call (`/api/debug/agent-test`).

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use utoipa_axum::routes;

use super::ApiRouter;
use crate::agents::CompletionRequest;
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .public(routes!(list_agents))
        .public(routes!(list_circuit_breakers))
        .admin(routes!(reset_circuit))
        .admin(routes!(test_agent))
}

/// Configured agents: name, provider, model, available (key present), circuit state.
#[utoipa::path(get, path = "/agents", tag = "agents", responses((status = 200, description = "the configured agents", body = AgentList)))]
pub async fn list_agents(State(state): State<AppState>) -> Json<AgentList> {
    let agents = state.debates.agents().list();
    Json(AgentList {
        agents: agents
            .into_iter()
            .map(|a| AgentView {
                available: a.available,
                circuit: a.circuit,
                model: a.model,
                name: a.name,
                provider: a.provider,
            })
            .collect(),
    })
}

/// `GET /agents`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
}

/// One configured agent. Fields in alphabetical order, as the API has always written them.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AgentView {
    /// Credentials present (or none needed).
    pub available: bool,
    pub circuit: crate::agents::BreakerState,
    pub model: String,
    pub name: String,
    pub provider: String,
}

/// Every agent's circuit breaker.
#[utoipa::path(
    get,
    path = "/agents/circuit-breakers",
    tag = "agents",
    responses((status = 200, description = "every agent's breaker", body = BreakerList))
)]
pub async fn list_circuit_breakers(State(state): State<AppState>) -> Json<BreakerList> {
    breakers_json(&state)
}

/// Every agent's breaker, with how many are open and half open.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BreakerList {
    pub circuit_breakers: Vec<BreakerView>,
    pub half_open: usize,
    pub open: usize,
}

/// One agent's breaker. Fields in alphabetical order, as the API has always written them.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BreakerView {
    pub agent: String,
    pub consecutive_failures: u32,
    /// The most recent counted failure; null when none.
    pub last_failure: Option<crate::agents::resilience::FailureRecord>,
    /// RFC 3339; when an open breaker lets the next probe through.
    pub next_probe_at: Option<String>,
    /// RFC 3339; set while open or half-open.
    pub opened_at: Option<String>,
    pub state: crate::agents::BreakerState,
}

pub fn breakers_json(state: &AppState) -> Json<BreakerList> {
    let registry = state.debates.agents();
    let breakers: Vec<BreakerView> = registry
        .breakers()
        .into_iter()
        .map(|(name, snapshot)| BreakerView {
            agent: name.clone(),
            consecutive_failures: snapshot.consecutive_failures,
            last_failure: snapshot.last_failure,
            next_probe_at: snapshot.next_probe_at,
            opened_at: snapshot.opened_at,
            state: snapshot.state,
        })
        .collect();
    let (open, half_open) = registry.breaker_counts();
    Json(BreakerList {
        circuit_breakers: breakers,
        half_open,
        open,
    })
}

/// A breaker closed by an operator.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CircuitReset {
    pub agent: String,
    #[schema(example = "closed")]
    pub state: &'static str,
}

/// Close an agent's circuit breaker (operator action).
#[utoipa::path(
    post,
    path = "/agents/{name}/reset-circuit",
    tag = "agents",
    params(("name" = String, Path, description = "agent name")),
    responses((status = 200, description = "breaker closed", body = CircuitReset), (status = 404, description = "unknown agent", body = ErrorBody))
)]
pub async fn reset_circuit(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<CircuitReset>, ApiError> {
    let registry = state.debates.agents();
    if !registry.reset_breaker(&name) {
        let known = registry.known_names().join(", ");
        return Err(ApiError::NotFound(format!(
            "unknown agent `{name}`; known agents: {known}"
        )));
    }
    tracing::warn!(target: "aragora::agents", agent = %name, "circuit_breaker {name} reset by operator");
    Ok(Json(CircuitReset {
        agent: name,
        state: "closed",
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentTestRequest {
    /// Agent name.
    pub agent: String,
    /// Prompt (default "Say hello").
    pub prompt: Option<String>,
}

/// Call one agent once and report the answer, latency, tokens and circuit state. The body is
/// read as JSON whatever its Content-Type, so `curl -d '{"agent":"claude"}'` works.
#[utoipa::path(
    post,
    path = "/debug/agent-test",
    tag = "agents",
    request_body = AgentTestRequest,
    responses(
        (status = 200, description = "one streamed call, as a debate makes; ok=false with `error` when the call failed", body = AgentTestBody),
        (status = 400, description = "a control character in `prompt`", body = ErrorBody),
        (status = 422, description = "unknown agent, bad body, or a prompt over 20,000 characters", body = ErrorBody),
    )
)]
pub async fn test_agent(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<AgentTestBody>, ApiError> {
    let request: AgentTestRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::Validation {
            field: "agent".into(),
            message: format!(
                "body must be JSON like {{\"agent\": \"claude\", \"prompt\": \"Say hello\"}}: {e}"
            ),
        })?;
    let registry = state.debates.agents();
    let agent = registry
        .resolve(request.agent.trim())
        .map_err(|e| ApiError::Validation {
            field: "agent".into(),
            message: e.to_string(),
        })?;
    let prompt = request.prompt.unwrap_or_else(|| "Say hello".into());
    // The same bounds as a debate's task: the prompt goes to a paid provider.
    crate::text::check("prompt", &prompt, true).map_err(|e| ApiError::BadField {
        field: "prompt".into(),
        message: e.to_string(),
    })?;
    let max = crate::debate::manager::MAX_TASK_CHARS;
    if prompt.chars().count() > max {
        return Err(ApiError::Validation {
            field: "prompt".into(),
            message: format!("`prompt` is longer than {max} characters"),
        });
    }
    // The path a debate's answers take: streamed, token deltas read as they arrive. A
    // provider (or proxy) whose streaming is broken fails here, not only in every debate.
    let call = CompletionRequest {
        max_tokens: 256,
        stream: true,
        ..CompletionRequest::single(
            "You are being tested by an operator. Answer briefly.",
            prompt,
        )
    };
    let (sink, mut deltas) = crate::agents::DeltaSink::new(256);
    let counted = tokio::spawn(async move {
        let mut n = 0u64;
        while deltas.recv().await.is_some() {
            n += 1;
        }
        n
    });
    let started = Instant::now();
    let result = agent
        .call(&call, Some(&sink), &CancellationToken::new())
        .await;
    let latency_ms = started.elapsed().as_millis() as u64;
    drop(sink);
    let delta_count = counted.await.unwrap_or(0);
    let mut body = AgentTestBody {
        agent: agent.name().to_owned(),
        attempts: None,
        circuit_state: agent.breaker_state(),
        deltas: None,
        error: None,
        latency_ms,
        model: agent.model().to_owned(),
        ok: result.is_ok(),
        provider: agent.provider_id().to_owned(),
        response: None,
        streamed: None,
        tokens: None,
    };
    match result {
        Ok(outcome) => {
            body.response = Some(outcome.completion.text);
            body.tokens = Some(serde_json::to_value(outcome.completion.usage).unwrap_or_default());
            body.attempts = Some(outcome.attempts);
            body.streamed = Some(true);
            body.deltas = Some(delta_count);
        }
        Err(err) => {
            body.error = Some(AgentTestError {
                kind: err.kind(),
                message: err.to_string(),
            });
        }
    }
    // The breaker as the call left it.
    body.circuit_state = agent.breaker_state();
    Ok(Json(body))
}

/// `POST /debug/agent-test`. Fields in alphabetical order, as the API has always written
/// them; a failed call has `error` instead of `response`, `tokens`, `attempts`,
/// `streamed` and `deltas`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AgentTestBody {
    pub agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The breaker as the call left it.
    pub circuit_state: crate::agents::BreakerState,
    /// Token deltas streamed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deltas: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<AgentTestError>,
    pub latency_ms: u64,
    pub model: String,
    pub ok: bool,
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streamed: Option<bool>,
    /// The call's token usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tokens: Option<Value>,
}

/// Why the test call failed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AgentTestError {
    pub kind: &'static str,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::BreakerState;

    fn same_bytes_as_a_json_object<T: serde::Serialize>(body: &T) -> String {
        let text = serde_json::to_string(body).unwrap();
        assert_eq!(text, serde_json::to_value(body).unwrap().to_string());
        text
    }

    #[test]
    fn agent_bodies_write_their_keys_in_alphabetical_order() {
        same_bytes_as_a_json_object(&AgentList {
            agents: vec![AgentView {
                available: true,
                circuit: BreakerState::HalfOpen,
                model: "m".into(),
                name: "a".into(),
                provider: "p".into(),
            }],
        });
        let text = same_bytes_as_a_json_object(&BreakerList {
            circuit_breakers: vec![BreakerView {
                agent: "a".into(),
                consecutive_failures: 2,
                last_failure: Some(crate::agents::resilience::FailureRecord {
                    at: "2026-01-01T00:00:00Z".into(),
                    kind: "timeout".into(),
                }),
                next_probe_at: None,
                opened_at: Some("2026-01-01T00:00:00Z".into()),
                state: BreakerState::Open,
            }],
            half_open: 0,
            open: 1,
        });
        assert!(text.contains("\"next_probe_at\":null"));
        let ok = AgentTestBody {
            agent: "a".into(),
            attempts: Some(1),
            circuit_state: BreakerState::Closed,
            deltas: Some(3),
            error: None,
            latency_ms: 12,
            model: "m".into(),
            ok: true,
            provider: "p".into(),
            response: Some("hello".into()),
            streamed: Some(true),
            tokens: Some(serde_json::json!({"input_tokens": 1, "output_tokens": 2})),
        };
        let text = same_bytes_as_a_json_object(&ok);
        assert!(!text.contains("\"error\""));
        let failed = AgentTestBody {
            attempts: None,
            deltas: None,
            error: Some(AgentTestError {
                kind: "timeout",
                message: "timed out".into(),
            }),
            ok: false,
            response: None,
            streamed: None,
            tokens: None,
            ..ok
        };
        let text = same_bytes_as_a_json_object(&failed);
        for absent in ["response", "tokens", "attempts", "streamed", "deltas"] {
            assert!(
                !text.contains(&format!("\"{absent}\"")),
                "{absent} in {text}"
            );
        }
    }
}
