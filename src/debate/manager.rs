//! The debate manager: validates requests, persists them, queues them behind
//! ARAGORA_MAX_CONCURRENT_DEBATES workers, runs the engine, records the outcome, updates
//! ratings, and recovers this instance's unfinished debates after a restart.
//!
//! Rule: the store is the source of truth. A worker builds the debate from its stored record,
//! so a fresh request and a recovered one take the same path.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::consensus::ConsensusMode;
use super::engine::{self, DebateInput, DebateSettings, FinalStatus, Seat};
use super::prompts::STANCES;
use super::{AgentReply, DebateAgent, EventSink};
use crate::agents::{Agent, AgentError, AgentRegistry, CompletionRequest, DeltaSink};
use crate::bus::{EventBus, LiveEvent};
use crate::store::{DebateRecord, DebateUpdate, DynStore, NewDebate, NewEvent, StoreError};

pub const MIN_AGENTS: usize = 2;
pub const MAX_AGENTS: usize = 10;
pub const MAX_ROUNDS: u32 = 20;
pub const MAX_TASK_CHARS: usize = 20_000;

/// `POST /api/debates` body. Only `task` is required.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DebateRequest {
    /// The question or task to debate.
    pub task: String,
    /// Agent names (config/agents.toml, `ollama:<model>`, `demo`); 2–10.
    pub agents: Option<Vec<String>>,
    /// Rounds (1–20).
    pub rounds: Option<u32>,
    /// Earliest round at which consensus or convergence may end the debate.
    pub min_rounds: Option<u32>,
    /// majority, threshold, unanimous, judge or none.
    pub consensus: Option<String>,
    /// Share of weighted votes for `threshold`, (0, 1].
    pub consensus_threshold: Option<f64>,
    /// Judge agent for `judge` mode (default: the first agent).
    pub judge: Option<String>,
    /// Rating domain (e.g. `security`): Elo is also kept per domain.
    pub domain: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error("the debate queue is full ({queued} waiting); retry later")]
    QueueFull { queued: usize, retry_after: u64 },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("debate {0} not found")]
    NotFound(String),
    #[error("debate {id} already ended with status {status}")]
    AlreadyFinished { id: String, status: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct ManagerSettings {
    pub max_concurrent: usize,
    pub queue_size: usize,
    pub default_agents: Vec<String>,
    pub default_rounds: u32,
    pub threshold: f64,
    pub debate_timeout: Duration,
    pub instance_id: String,
    /// Prices of agent calls, for the usage rows each call writes.
    pub pricing: Arc<crate::pricing::Pricing>,
}

struct JobState {
    cancel: CancellationToken,
    started: bool,
}

pub struct DebateManager {
    store: DynStore,
    agents: Arc<AgentRegistry>,
    bus: Arc<dyn EventBus>,
    settings: ManagerSettings,
    queue_tx: mpsc::Sender<String>,
    queue_rx: Mutex<mpsc::Receiver<String>>,
    jobs: Mutex<HashMap<String, JobState>>,
    active: AtomicUsize,
    queued: AtomicUsize,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl DebateManager {
    pub fn new(
        store: DynStore,
        agents: Arc<AgentRegistry>,
        bus: Arc<dyn EventBus>,
        settings: ManagerSettings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        let (queue_tx, queue_rx) = mpsc::channel(settings.queue_size.max(1));
        Arc::new(DebateManager {
            store,
            agents,
            bus,
            settings,
            queue_tx,
            queue_rx: Mutex::new(queue_rx),
            jobs: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            shutdown,
            tasks,
        })
    }

    pub fn agents(&self) -> &Arc<AgentRegistry> {
        &self.agents
    }

    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Start the workers, then re-queue or close what this instance left unfinished.
    /// Start the workers, then re-queue or close `leftovers`: the unfinished debates listed
    /// before the server accepted any request (so a new debate is never taken for one).
    pub fn start(self: &Arc<Self>, leftovers: Vec<DebateRecord>) {
        for _ in 0..self.settings.max_concurrent {
            let me = self.clone();
            self.tasks.spawn(async move { me.worker().await });
        }
        let me = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                result = me.recover(leftovers) => if let Err(err) = result {
                    tracing::error!(target: "aragora::debate", error = %err, "recovering unfinished debates failed");
                },
                // A hung database must not hold shutdown hostage.
                _ = me.shutdown.cancelled() => {}
            }
        });
    }

    /// Validate, persist (status `queued`, event `debate_queued`) and enqueue.
    pub async fn create(
        &self,
        request: DebateRequest,
        owner_id: Option<String>,
        correlation_id: Option<String>,
    ) -> Result<DebateRecord, CreateError> {
        if self.shutdown.is_cancelled() {
            return Err(CreateError::ShuttingDown);
        }
        let plan = self.validate(&request)?;
        // Reserve the queue slot first so an accepted debate is never dropped for lack of room.
        let permit = self
            .queue_tx
            .try_reserve()
            .map_err(|_| CreateError::QueueFull {
                queued: self.queued(),
                retry_after: 10,
            })?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let options = json!({
            "consensus_threshold": plan.threshold,
            "min_rounds": plan.min_rounds,
            "judge": plan.judge,
            "domain": request.domain,
            "metadata": request.metadata,
            "runner": self.settings.instance_id,
        });
        let record = self
            .store
            .create_debate(&NewDebate {
                id: id.clone(),
                task: request.task.trim().to_owned(),
                agents: plan.agents.clone(),
                rounds: plan.rounds as i32,
                consensus: plan.mode.as_str().to_owned(),
                owner_id,
                correlation_id: correlation_id.clone(),
                options,
            })
            .await?;
        let recorder = Recorder::new(self.store.clone(), self.bus.clone(), &id);
        recorder
            .record(
                "debate_queued",
                None,
                None,
                json!({"task": record.task, "agents": plan.agents, "rounds": plan.rounds,
                       "consensus": plan.mode.as_str(), "correlation_id": correlation_id}),
            )
            .await
            .map_err(|e| CreateError::Store(StoreError::Conflict(e)))?;
        self.jobs.lock().await.insert(
            id.clone(),
            JobState {
                cancel: CancellationToken::new(),
                started: false,
            },
        );
        self.queued.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("aragora_debates_queued").set(self.queued() as f64);
        permit.send(id);
        Ok(record)
    }

    fn validate(&self, request: &DebateRequest) -> Result<Plan, CreateError> {
        let invalid = |field: &str, message: String| CreateError::Invalid {
            field: field.to_owned(),
            message,
        };
        let task = request.task.trim();
        if task.is_empty() {
            return Err(invalid("task", "`task` must not be empty".into()));
        }
        if task.chars().count() > MAX_TASK_CHARS {
            return Err(invalid(
                "task",
                format!("`task` is longer than {MAX_TASK_CHARS} characters"),
            ));
        }
        let agents: Vec<String> = request
            .agents
            .clone()
            .unwrap_or_else(|| self.settings.default_agents.clone())
            .into_iter()
            .map(|a| a.trim().to_owned())
            .collect();
        if !(MIN_AGENTS..=MAX_AGENTS).contains(&agents.len()) {
            return Err(invalid(
                "agents",
                format!(
                    "`agents` needs {MIN_AGENTS} to {MAX_AGENTS} names, got {}",
                    agents.len()
                ),
            ));
        }
        for name in &agents {
            if let Err(unknown) = self.agents.resolve(name) {
                return Err(invalid("agents", format!("`agents`: {unknown}")));
            }
        }
        let rounds = request.rounds.unwrap_or(self.settings.default_rounds);
        if !(1..=MAX_ROUNDS).contains(&rounds) {
            return Err(invalid(
                "rounds",
                format!("`rounds` must be 1 to {MAX_ROUNDS}, got {rounds}"),
            ));
        }
        let min_rounds = request.min_rounds.unwrap_or(1);
        if !(1..=rounds).contains(&min_rounds) {
            return Err(invalid(
                "min_rounds",
                format!("`min_rounds` must be 1 to rounds ({rounds}), got {min_rounds}"),
            ));
        }
        let mode: ConsensusMode = match &request.consensus {
            Some(m) => m.parse().map_err(|e: String| invalid("consensus", e))?,
            None => ConsensusMode::Threshold,
        };
        let threshold = request
            .consensus_threshold
            .unwrap_or(self.settings.threshold);
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(invalid(
                "consensus_threshold",
                format!(
                    "`consensus_threshold` must be greater than 0 and at most 1, got {threshold}"
                ),
            ));
        }
        let judge = match (&request.judge, mode) {
            (Some(j), _) => {
                let j = j.trim().to_owned();
                if let Err(unknown) = self.agents.resolve(&j) {
                    return Err(invalid("judge", format!("`judge`: {unknown}")));
                }
                Some(j)
            }
            (None, ConsensusMode::Judge) => Some(agents[0].clone()),
            (None, _) => None,
        };
        if let Some(domain) = &request.domain
            && (domain.is_empty()
                || domain.len() > 64
                || !domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(invalid(
                "domain",
                "`domain` must be 1-64 letters, digits, `-` or `_`".into(),
            ));
        }
        Ok(Plan {
            agents,
            rounds,
            min_rounds,
            mode,
            threshold,
            judge,
        })
    }

    /// Cancel a queued or running debate.
    pub async fn cancel(&self, id: &str) -> Result<DebateRecord, CancelError> {
        let record = self
            .store
            .get_debate(id)
            .await?
            .ok_or_else(|| CancelError::NotFound(id.to_owned()))?;
        if !matches!(record.status.as_str(), "queued" | "running") {
            return Err(CancelError::AlreadyFinished {
                id: id.to_owned(),
                status: record.status,
            });
        }
        let mut jobs = self.jobs.lock().await;
        match jobs.get(id) {
            Some(job) if job.started => {
                // The engine sees the token, stops, and records `cancelled` itself.
                job.cancel.cancel();
                drop(jobs);
                tracing::info!(target: "aragora::debate", debate_id = id, "debate cancelled while running");
                Ok(record)
            }
            _ => {
                if let Some(job) = jobs.remove(id) {
                    job.cancel.cancel();
                }
                drop(jobs);
                let updated = self
                    .finish_unstarted(id, "cancelled", "cancelled before it started")
                    .await?;
                Ok(updated)
            }
        }
    }

    async fn finish_unstarted(
        &self,
        id: &str,
        status: &str,
        reason: &str,
    ) -> Result<DebateRecord, StoreError> {
        let updated = self
            .store
            .update_debate(
                id,
                &DebateUpdate {
                    status: Some(status.to_owned()),
                    error: Some(reason.to_owned()),
                    finished_at: Some(Utc::now()),
                    ..DebateUpdate::default()
                },
            )
            .await?;
        let recorder = Recorder::new(self.store.clone(), self.bus.clone(), id);
        let _ = recorder
            .record(
                "debate_end",
                None,
                None,
                json!({"status": status, "error": reason, "rounds_used": 0}),
            )
            .await;
        metrics::counter!("aragora_debates_total", "status" => status.to_owned()).increment(1);
        Ok(updated)
    }

    async fn worker(self: Arc<Self>) {
        loop {
            let next = {
                let mut rx = self.queue_rx.lock().await;
                tokio::select! {
                    _ = self.shutdown.cancelled() => None,
                    id = rx.recv() => id,
                }
            };
            let Some(id) = next else { return };
            self.queued.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("aragora_debates_queued").set(self.queued() as f64);
            let cancel = {
                let mut jobs = self.jobs.lock().await;
                match jobs.get_mut(&id) {
                    Some(job) if !job.cancel.is_cancelled() => {
                        job.started = true;
                        job.cancel.clone()
                    }
                    // Cancelled while queued: already recorded.
                    _ => continue,
                }
            };
            self.active.fetch_add(1, Ordering::Relaxed);
            metrics::gauge!("aragora_active_debates").set(self.active() as f64);
            tokio::select! {
                _ = self.run_one(&id, cancel) => {}
                _ = self.shutdown.cancelled() => {
                    // Left `running` in the store: the next start recovers it.
                    tracing::info!(target: "aragora::debate", debate_id = %id, "debate interrupted by shutdown");
                }
            }
            self.jobs.lock().await.remove(&id);
            self.active.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("aragora_active_debates").set(self.active() as f64);
        }
    }

    async fn run_one(&self, id: &str, cancel: CancellationToken) {
        let record = match self.store.get_debate(id).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(err) => {
                tracing::error!(target: "aragora::debate", debate_id = id, error = %err, "cannot load debate");
                return;
            }
        };
        if record.status != "queued" {
            // Only a queued debate may start: never run one twice.
            tracing::warn!(target: "aragora::debate", debate_id = id, status = %record.status, "skipping a debate that is no longer queued");
            return;
        }
        let span = tracing::info_span!("debate", debate_id = %id, correlation_id = record.correlation_id.as_deref().unwrap_or(""));
        let result =
            tracing::Instrument::instrument(self.execute(record, cancel), span.clone()).await;
        if let Err(err) = result {
            // The debate could not be recorded; the next start recovers it from its status.
            span.in_scope(|| {
                tracing::error!(target: "aragora::debate", error = %err, "debate store write failed");
            });
        }
    }

    async fn execute(
        &self,
        record: DebateRecord,
        cancel: CancellationToken,
    ) -> Result<(), StoreError> {
        let id = record.id.clone();
        let input = match self.build_input(&record) {
            Ok(input) => input,
            Err(reason) => {
                self.finish_unstarted(&id, "failed", &reason).await?;
                return Ok(());
            }
        };
        let started = Instant::now();
        self.store
            .update_debate(
                &id,
                &DebateUpdate {
                    status: Some("running".into()),
                    started_at: Some(Utc::now()),
                    ..DebateUpdate::default()
                },
            )
            .await?;
        let recorder = Arc::new(Recorder::new(self.store.clone(), self.bus.clone(), &id));
        let outcome = engine::run(input, recorder, cancel).await;

        // Ratings first: whoever sees the final status also sees the ratings it produced.
        let domain = record.options.get("domain").and_then(Value::as_str);
        if !outcome.matches.is_empty()
            && let Err(err) = self
                .store
                .apply_match_results(&id, domain, &outcome.matches)
                .await
        {
            tracing::error!(target: "aragora::debate", debate_id = %id, error = %err, "rating update failed");
        }
        let mut result = outcome.result.clone();
        result["usage"] = serde_json::to_value(outcome.usage).unwrap_or_default();
        self.store
            .update_debate(
                &id,
                &DebateUpdate {
                    status: Some(outcome.status.as_str().to_owned()),
                    rounds_used: Some(outcome.rounds_used as i32),
                    result: Some(result),
                    error: outcome.error.clone(),
                    finished_at: Some(Utc::now()),
                    ..DebateUpdate::default()
                },
            )
            .await?;
        metrics::counter!("aragora_debates_total", "status" => outcome.status.as_str())
            .increment(1);
        if outcome.status == FinalStatus::Completed {
            metrics::counter!("aragora_consensus_reached_total").increment(1);
        }
        metrics::histogram!("aragora_debate_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            target: "aragora::debate",
            debate_id = %id,
            status = outcome.status.as_str(),
            rounds_used = outcome.rounds_used,
            duration_ms = started.elapsed().as_millis() as u64,
            "debate_end status={}", outcome.status.as_str()
        );
        Ok(())
    }

    /// An agent of `record` whose every successful call writes a usage row.
    fn metered(&self, record: &DebateRecord, agent: RegistryAgent) -> Arc<dyn DebateAgent> {
        Arc::new(MeteredAgent {
            inner: agent,
            store: self.store.clone(),
            pricing: self.settings.pricing.clone(),
            principal_id: record
                .owner_id
                .clone()
                .unwrap_or_else(|| crate::auth::ANONYMOUS_ID.to_owned()),
            debate_id: record.id.clone(),
        })
    }

    /// Resolve the stored debate into engine input (agents are resolved again, so a debate
    /// recovered after a configuration change fails clearly instead of running half-configured).
    fn build_input(&self, record: &DebateRecord) -> Result<DebateInput, String> {
        let mut seats = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in record.agents.iter().enumerate() {
            let agent = self.agents.resolve(name).map_err(|e| e.to_string())?;
            let n = seen.entry(name.as_str()).or_default();
            *n += 1;
            let seat = if *n == 1 {
                name.clone()
            } else {
                format!("{name}#{n}")
            };
            seats.push(Seat {
                name: seat,
                agent: self.metered(record, RegistryAgent(agent)),
                stance: STANCES[i % STANCES.len()].to_owned(),
            });
        }
        let opt = &record.options;
        let judge = match opt.get("judge").and_then(Value::as_str) {
            Some(j) => Some(self.metered(
                record,
                RegistryAgent(self.agents.resolve(j).map_err(|e| e.to_string())?),
            )),
            None => None,
        };
        Ok(DebateInput {
            task: record.task.clone(),
            seats,
            judge,
            settings: DebateSettings {
                rounds: record.rounds as u32,
                min_rounds: opt.get("min_rounds").and_then(Value::as_u64).unwrap_or(1) as u32,
                mode: record.consensus.parse().map_err(|e: String| e)?,
                threshold: opt
                    .get("consensus_threshold")
                    .and_then(Value::as_f64)
                    .unwrap_or(self.settings.threshold),
                timeout: self.settings.debate_timeout,
            },
        })
    }

    /// After a restart: debates this instance accepted but never started are queued again;
    /// debates it was running end `failed` with reason `interrupted` (their transcript kept).
    async fn recover(&self, leftovers: Vec<DebateRecord>) -> Result<(), StoreError> {
        for record in leftovers {
            let runner = record.options.get("runner").and_then(Value::as_str);
            if runner != Some(self.settings.instance_id.as_str()) {
                continue;
            }
            match record.status.as_str() {
                "queued" => {
                    tracing::info!(target: "aragora::debate", debate_id = %record.id, "re-queueing a debate accepted before the restart");
                    self.jobs.lock().await.insert(
                        record.id.clone(),
                        JobState {
                            cancel: CancellationToken::new(),
                            started: false,
                        },
                    );
                    self.queued.fetch_add(1, Ordering::Relaxed);
                    if self.queue_tx.send(record.id.clone()).await.is_err() {
                        return Ok(());
                    }
                }
                _ => {
                    tracing::warn!(target: "aragora::debate", debate_id = %record.id, "debate was interrupted by a restart");
                    self.finish_unstarted(
                        &record.id,
                        "failed",
                        "interrupted: the server stopped while this debate was running; its transcript is kept",
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

struct Plan {
    agents: Vec<String>,
    rounds: u32,
    min_rounds: u32,
    mode: ConsensusMode,
    threshold: f64,
    judge: Option<String>,
}

/// Registry agents as the engine sees them.
pub struct RegistryAgent(pub Agent);

#[async_trait]
impl DebateAgent for RegistryAgent {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn provider(&self) -> &str {
        self.0.provider_id()
    }
    fn model(&self) -> &str {
        self.0.model()
    }
    async fn call(
        &self,
        request: &CompletionRequest,
        deltas: Option<&DeltaSink>,
        cancel: &CancellationToken,
    ) -> Result<AgentReply, AgentError> {
        let outcome = self.0.call(request, deltas, cancel).await?;
        Ok(AgentReply {
            completion: outcome.completion,
            latency: outcome.latency,
        })
    }
}

/// An agent that records usage (principal, debate, agent, provider, model, tokens, cost)
/// after each successful call. A failed usage write is logged, never fails the debate.
struct MeteredAgent {
    inner: RegistryAgent,
    store: DynStore,
    pricing: Arc<crate::pricing::Pricing>,
    principal_id: String,
    debate_id: String,
}

#[async_trait]
impl DebateAgent for MeteredAgent {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn provider(&self) -> &str {
        self.inner.provider()
    }
    fn model(&self) -> &str {
        self.inner.model()
    }
    async fn call(
        &self,
        request: &CompletionRequest,
        deltas: Option<&DeltaSink>,
        cancel: &CancellationToken,
    ) -> Result<AgentReply, AgentError> {
        let reply = self.inner.call(request, deltas, cancel).await?;
        let usage = &reply.completion.usage;
        let (provider, model) = (self.provider(), self.model());
        let row = crate::store::NewUsage {
            principal_id: self.principal_id.clone(),
            debate_id: Some(self.debate_id.clone()),
            agent: self.name().to_owned(),
            provider: provider.to_owned(),
            model: model.to_owned(),
            input_tokens: usage.input_tokens as i64,
            output_tokens: usage.output_tokens as i64,
            estimated: usage.estimated,
            cost_usd: self
                .pricing
                .cost(provider, model, usage.input_tokens, usage.output_tokens),
        };
        if let Err(e) = self.store.record_usage(&row).await {
            tracing::warn!(target: "aragora::debate", debate_id = %self.debate_id, error = %e, "could not record agent usage");
        }
        Ok(reply)
    }
}

/// Persists each event, then publishes it live; logs it with the debate id.
pub struct Recorder {
    store: DynStore,
    bus: Arc<dyn EventBus>,
    debate_id: String,
}

impl Recorder {
    pub fn new(store: DynStore, bus: Arc<dyn EventBus>, debate_id: &str) -> Self {
        Recorder {
            store,
            bus,
            debate_id: debate_id.to_owned(),
        }
    }
}

#[async_trait]
impl EventSink for Recorder {
    async fn record(
        &self,
        kind: &str,
        round: Option<u32>,
        agent: Option<&str>,
        data: Value,
    ) -> Result<(), String> {
        let stored = self
            .store
            .append_event(
                &self.debate_id,
                &NewEvent {
                    kind: kind.to_owned(),
                    round: round.map(|r| r as i32),
                    agent: agent.map(str::to_owned),
                    data,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            target: "aragora::debate",
            debate_id = %self.debate_id,
            seq = stored.seq,
            round = stored.round,
            agent = stored.agent.as_deref(),
            "{kind}"
        );
        self.bus.publish(LiveEvent::from(&stored));
        Ok(())
    }

    fn token_delta(&self, round: u32, agent: &str, delta: &str) {
        self.bus.publish(LiveEvent {
            kind: "token_delta".into(),
            debate_id: self.debate_id.clone(),
            seq: None,
            timestamp: Utc::now(),
            round: Some(round as i32),
            agent: Some(agent.to_owned()),
            data: json!({"delta": delta}),
            ephemeral: true,
        });
    }
}
