//! The debate engine: agents propose, critique each other, revise and vote over rounds until
//! consensus, convergence or the round limit.
//!
//! Rule: no HTTP in here. The engine talks to agents through `DebateAgent` and records every
//! step through `EventSink` as it happens; the manager (queue, concurrency, persistence of
//! the debate record) and the HTTP layer sit on top.

pub mod consensus;
pub mod convergence;
pub mod engine;
pub mod events;
pub mod json;
pub mod manager;
pub mod prompts;

#[cfg(test)]
mod engine_tests;

use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::agents::{AgentError, Completion, CompletionRequest, DeltaSink};

pub use consensus::ConsensusMode;
pub use engine::{DebateInput, DebateOutcome, DebateSettings, FinalStatus, Seat, run};
pub use events::{Event, EventBody};

/// Why an [`EventSink`] could not record the debate or read its checkpoint. Its text is the
/// underlying failure's, which a failed debate quotes in its `error`.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The store failed (after whatever retries the sink makes).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What the engine needs of an agent.
#[async_trait]
pub trait DebateAgent: Send + Sync {
    /// The configured agent name (`claude`, `demo`, `ollama:llama3`).
    fn name(&self) -> &str;
    fn provider(&self) -> &str;
    fn model(&self) -> &str;
    /// One call under the agent's own timeout, retry and circuit-breaker policy.
    async fn call(
        &self,
        request: &CompletionRequest,
        deltas: Option<&DeltaSink>,
        cancel: &CancellationToken,
    ) -> Result<AgentReply, AgentError>;
}

#[derive(Debug, Clone)]
pub struct AgentReply {
    pub completion: Completion,
    pub latency: Duration,
}

/// Where the engine records what happens. `record` is durable (the batch must be persisted,
/// all or nothing, before it returns); token deltas are live-only.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn record(&self, events: &[Event]) -> Result<(), SinkError>;

    fn token_delta(&self, round: u32, agent: &str, delta: &str);

    /// At a phase boundary: the moderator's messages so far and, when `cost` is asked for,
    /// the debate's priced usage. The default (a sink with no store) has neither.
    async fn checkpoint(&self, cost: bool) -> Result<engine::Checkpoint, SinkError> {
        let _ = cost;
        Ok(engine::Checkpoint::default())
    }

    /// The debate ended with `outcome`: record its `debate_end` event. A durable sink writes
    /// the final status in the same transaction.
    async fn finish(&self, end: &Event, outcome: &DebateOutcome) -> Result<(), SinkError> {
        let _ = outcome;
        self.record(std::slice::from_ref(end)).await
    }
}
