//! The debate event vocabulary: one serde-tagged enum for every durable event a debate
//! records. The engine emits it, the manager stores it (as `type` + `data` JSON), the resumer
//! reads it back to rebuild a debate's state, and the WebSocket, `aragora watch` and the
//! OpenAPI document show it. `token_delta` is not here: it is live-only and never stored.
//!
//! Rule: the JSON of a variant is the `data` object of the stored event and of the
//! WebSocket envelope; adding a field is fine, renaming one breaks stored logs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::consensus::Vote;
use super::convergence::ConvergenceReport;
use crate::agents::Usage;
use crate::store::{NewEvent, StoredEvent};

/// One durable event: where it happened (round, seat) and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub round: Option<u32>,
    /// The seat (or judge) the event is about.
    pub agent: Option<String>,
    pub body: EventBody,
}

impl Event {
    pub fn new(round: Option<u32>, agent: Option<&str>, body: EventBody) -> Event {
        Event {
            round,
            agent: agent.map(str::to_owned),
            body,
        }
    }

    /// The event's `type`.
    pub fn kind(&self) -> &'static str {
        self.body.kind()
    }

    /// The event's `data` object.
    pub fn data(&self) -> Value {
        self.body.data()
    }

    /// Read a stored event back. Fails for a kind this version does not know or a payload
    /// that does not match its kind.
    pub fn from_stored(e: &StoredEvent) -> Result<Event, UnreadableEvent> {
        let body: EventBody = serde_json::from_value(
            serde_json::json!({"type": e.kind, "data": e.data}),
        )
        .map_err(|source| UnreadableEvent {
            seq: e.seq,
            kind: e.kind.clone(),
            source,
        })?;
        Ok(Event {
            round: e.round.and_then(|r| u32::try_from(r).ok()),
            agent: e.agent.clone(),
            body,
        })
    }
}

/// A stored event this version cannot read: an unknown kind, or a payload that does not
/// match its kind.
#[derive(Debug, thiserror::Error)]
#[error("event seq {seq} ({kind}): {source}")]
pub struct UnreadableEvent {
    pub seq: i64,
    pub kind: String,
    #[source]
    pub source: serde_json::Error,
}

impl From<&Event> for NewEvent {
    fn from(e: &Event) -> NewEvent {
        NewEvent {
            kind: e.kind().to_owned(),
            round: e.round.and_then(|r| i32::try_from(r).ok()),
            agent: e.agent.clone(),
            data: e.data(),
        }
    }
}

/// Every durable event, tagged as `{"type": "<snake_case>", "data": {…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum EventBody {
    DebateQueued(Queued),
    DebateStart(Start),
    RoundStart(RoundStart),
    /// A proposal, revision or synthesis (`role`).
    AgentMessage(Message),
    Critique(Critique),
    Vote(VoteData),
    Convergence(ConvergenceReport),
    Consensus(Consensus),
    AgentError(AgentFailure),
    CircuitOpen(AgentFailure),
    /// The seam where an instance continued a debate from its durable log.
    DebateResumed(Resumed),
    /// The debate stopped at a phase boundary because its owner or an admin paused it.
    DebatePaused(Paused),
    /// A moderator's message: every agent's prompt from the next phase on includes it.
    Intervention(Intervention),
    DebateEnd(End),
}

impl EventBody {
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::DebateQueued(_) => "debate_queued",
            EventBody::DebateStart(_) => "debate_start",
            EventBody::RoundStart(_) => "round_start",
            EventBody::AgentMessage(_) => "agent_message",
            EventBody::Critique(_) => "critique",
            EventBody::Vote(_) => "vote",
            EventBody::Convergence(_) => "convergence",
            EventBody::Consensus(_) => "consensus",
            EventBody::AgentError(_) => "agent_error",
            EventBody::CircuitOpen(_) => "circuit_open",
            EventBody::DebateResumed(_) => "debate_resumed",
            EventBody::DebatePaused(_) => "debate_paused",
            EventBody::Intervention(_) => "intervention",
            EventBody::DebateEnd(_) => "debate_end",
        }
    }

    pub fn data(&self) -> Value {
        // Serialising plain structs of strings, numbers and maps cannot fail.
        match serde_json::to_value(self) {
            Ok(Value::Object(mut o)) => o.remove("data").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Queued {
    pub task: String,
    pub agents: Vec<String>,
    pub rounds: u32,
    pub consensus: String,
    pub correlation_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SeatInfo {
    pub seat: String,
    pub agent: String,
    pub provider: String,
    pub model: String,
    pub stance: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Start {
    pub task: String,
    pub agents: Vec<SeatInfo>,
    pub rounds: u32,
    pub consensus: String,
    pub threshold: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoundStart {
    pub round: u32,
    pub of: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// proposal, revision or synthesis.
    pub role: String,
    pub content: String,
    pub agent_name: String,
    pub provider: String,
    pub model: String,
    pub stance: String,
    pub latency_ms: u64,
    #[schema(value_type = Object)]
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Critique {
    /// The seat criticised; `null` for an unstructured critique addressed to every other seat.
    pub target: Option<String>,
    pub severity: Option<f64>,
    pub text: String,
    pub parsed: bool,
    /// The critique call's usage, on the first critique event of that call only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VoteData {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub vote: Vote,
    /// The model's text when the vote could not be parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Usage>,
}

/// The consensus check of a round (vote modes), or the judge's ruling (`mode: judge`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, Default)]
pub struct Consensus {
    pub reached: bool,
    pub mode: String,
    pub winner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_votes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_votes: Option<usize>,
    /// Judge mode: the judge agent and its ruling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentFailure {
    pub phase: String,
    pub kind: String,
    pub error: String,
}

/// Why a debate was continued by an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResumeReason {
    /// The previous runner stopped gracefully and handed the debate back.
    Restart,
    /// This instance died while running it and came back.
    Crash,
    /// Another instance's lease ran out (it died or lost the database).
    LeaseExpired,
    /// Its owner or an admin resumed it after a pause.
    ResumedByUser,
}

impl ResumeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeReason::Restart => "restart",
            ResumeReason::Crash => "crash",
            ResumeReason::LeaseExpired => "lease_expired",
            ResumeReason::ResumedByUser => "resumed_by_user",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resumed {
    /// The last durable seq before the seam.
    pub from_seq: i64,
    /// The instance that continues the debate.
    pub instance: String,
    pub reason: ResumeReason,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Paused {
    /// Who asked (user id; `service` for the API token).
    pub by: Option<String>,
    /// Rounds completed or under way when it stopped.
    pub rounds_used: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Intervention {
    /// Who sent it (user id; `service` for the API token).
    pub by: Option<String>,
    /// Always `moderator` for now.
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct End {
    pub status: String,
    pub rounds_used: u32,
    #[serde(default)]
    pub consensus_reached: bool,
    #[serde(default)]
    pub winner: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips() {
        let e = Event::new(
            Some(2),
            Some("demo#2"),
            EventBody::Critique(Critique {
                target: Some("demo".into()),
                severity: Some(0.5),
                text: "weak".into(),
                parsed: true,
                usage: None,
            }),
        );
        let stored = NewEvent::from(&e);
        assert_eq!(stored.kind, "critique");
        assert_eq!(stored.data["target"], "demo");
        assert!(stored.data.get("usage").is_none());
        let back = Event::from_stored(&StoredEvent {
            debate_id: "d".into(),
            seq: 7,
            kind: stored.kind,
            round: stored.round,
            agent: stored.agent,
            data: stored.data,
            timestamp: chrono::Utc::now(),
        })
        .unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn unknown_kind_is_an_error_naming_the_seq() {
        let err = Event::from_stored(&StoredEvent {
            debate_id: "d".into(),
            seq: 3,
            kind: "mystery".into(),
            round: None,
            agent: None,
            data: serde_json::json!({}),
            timestamp: chrono::Utc::now(),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("seq 3"), "{err}");
    }

    #[test]
    fn resume_reason_is_snake_case() {
        let body = EventBody::DebateResumed(Resumed {
            from_seq: 9,
            instance: "a:8080".into(),
            reason: ResumeReason::LeaseExpired,
        });
        assert_eq!(body.kind(), "debate_resumed");
        assert_eq!(body.data()["reason"], "lease_expired");
    }
}
