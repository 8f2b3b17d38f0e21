//! The debate manager: validates requests and persists them as `queued`; claims debates from
//! the store's queue (any instance with a free slot of ARAGORA_MAX_CONCURRENT_DEBATES), holds
//! each under a renewed lease, runs or resumes it with the engine, and records its end.
//!
//! Rule: the store is the source of truth and the only queue. A debate is built from its
//! stored record and continued from its stored event log, so a fresh debate, one handed back
//! by a graceful stop and one left by a dead instance take the same path; every write carries
//! the lease generation, so an instance that lost a debate can never write into it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::consensus::{ConsensusMode, UnknownConsensusMode};
use super::engine::{
    self, Checkpoint, DebateInput, DebateOutcome, DebateSettings, DurableEnd, FinalStatus, Replay,
    Resume, Seat,
};
use super::events::{self as ev, Event, EventBody, ResumeReason};
use super::prompts::STANCES;
use super::{AgentReply, DebateAgent, EventSink, SinkError};
use crate::agents::{Agent, AgentError, AgentRegistry, CompletionRequest, DeltaSink, UnknownAgent};

use crate::bus::{EventBus, LiveEvent};
use crate::receipts::document::FoldedLog;
use crate::store::{
    ClaimedDebate, Control, DebateRecord, DebateStatus, DebateUpdate, DynStore, GroupCommit, Lease,
    NewDebate, NewEvent, StepWrite, StoreError, StoreResult, StoredEvent,
};

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
    /// Cost cap in USD: once the debate's priced usage reaches it, the debate ends after the
    /// current phase with status `budget_exceeded` (default ARAGORA_DEBATE_MAX_COST_USD).
    pub max_cost_usd: Option<f64>,
    /// The published SDK's form of the same settings (`create(protocol=…)`); a value given
    /// both here and at the top level must agree.
    pub protocol: Option<Protocol>,
}

/// `protocol` of a debate request, as the published SDK sends it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    pub rounds: Option<u32>,
    pub min_rounds: Option<u32>,
    pub consensus: Option<String>,
    pub consensus_threshold: Option<f64>,
    pub judge: Option<String>,
}

impl DebateRequest {
    /// Fold `protocol` into the top-level fields; a field set in both with different values
    /// is refused, naming it.
    pub fn merge_protocol(mut self) -> Result<DebateRequest, CreateError> {
        let Some(p) = self.protocol.take() else {
            return Ok(self);
        };
        fn merge<T: PartialEq + std::fmt::Debug>(
            field: &str,
            top: &mut Option<T>,
            inner: Option<T>,
        ) -> Result<(), CreateError> {
            match (top.as_ref(), inner) {
                (Some(a), Some(b)) if *a != b => Err(CreateError::Invalid {
                    field: format!("protocol.{field}"),
                    message: format!(
                        "`protocol.{field}` ({b:?}) disagrees with `{field}` ({a:?}); give one"
                    ),
                }),
                (None, Some(b)) => {
                    *top = Some(b);
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        merge("rounds", &mut self.rounds, p.rounds)?;
        merge("min_rounds", &mut self.min_rounds, p.min_rounds)?;
        merge("consensus", &mut self.consensus, p.consensus)?;
        merge(
            "consensus_threshold",
            &mut self.consensus_threshold,
            p.consensus_threshold,
        )?;
        merge("judge", &mut self.judge, p.judge)?;
        Ok(self)
    }
}

/// Longest moderator message (characters).
pub const MAX_INTERVENTION_CHARS: usize = 4_000;

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// A control character (NUL…) in a text field: 400 naming it.
    #[error("{message}")]
    BadText { field: String, message: String },
    #[error("the debate queue is full ({queued} waiting); retry later")]
    QueueFull { queued: usize, retry_after: u64 },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a cancel, pause, resume or intervention was refused.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("debate {0} not found")]
    NotFound(String),
    #[error("debate {id} already ended with status {status}")]
    AlreadyFinished { id: String, status: String },
    /// The debate is not in a state the action applies to (e.g. resuming a running one).
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// A control character (NUL…) in a text field: 400 naming it.
    #[error("{message}")]
    BadText { field: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type CancelError = SteerError;

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
    /// Lease of a running debate (renewed every third of it).
    pub lease: Duration,
    /// How often an idle instance looks for work.
    pub claim_poll: Duration,
    /// Graceful-stop budget: agent calls in flight get this long (less a margin) to finish.
    pub shutdown_timeout: Duration,
    /// Cost cap of a debate whose request names none.
    pub max_cost_usd: Option<f64>,
}

/// A debate this instance runs right now.
struct Job {
    /// The user's cancel: the engine ends the debate `cancelled`.
    cancel: CancellationToken,
    /// The lease is gone (another instance claimed it): stop without writing anything.
    lost: CancellationToken,
    /// Pause at the next phase boundary.
    pause: CancellationToken,
    /// Who asked for the pause, when it was asked here.
    paused_by: Arc<parking_lot::Mutex<Option<String>>>,
    generation: i64,
    claimed_at: Instant,
    /// Set when a moderator message was added here: the next phase boundary reads them.
    notes: Arc<AtomicBool>,
    /// Set once the run is writing the debate's end. That write drops the lease, possibly
    /// before the run hears back (ends are written in groups), so a renewal that finds the
    /// lease gone then is no sign of another instance: the end's own answer decides.
    ending: Arc<AtomicBool>,
}

impl Job {
    /// Act on what the store says was asked of this debate.
    fn apply(&self, control: &Control) {
        if control.cancel {
            self.cancel.cancel();
        }
        if control.pause {
            self.pause.cancel();
        }
    }
}

/// How often cancels and pauses requested on other instances are looked for.
const CANCEL_POLL: Duration = Duration::from_secs(1);
/// Leaves this much of the shutdown budget to release leases and close the pool.
const RELEASE_MARGIN: Duration = Duration::from_secs(2);
/// Grouped appends in flight at once (docs/debates.md, "Writing the log").
const APPEND_WRITERS: usize = 2;

pub struct DebateManager {
    store: DynStore,
    /// Every running debate's appends go through it, so one commit carries many debates.
    appends: Arc<GroupCommit>,
    agents: Arc<AgentRegistry>,
    bus: Arc<dyn EventBus>,
    settings: ManagerSettings,
    jobs: parking_lot::Mutex<HashMap<String, Job>>,
    active: AtomicUsize,
    /// Fleet-wide queued debates at the last look.
    queued: AtomicUsize,
    wake: Notify,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Told the id of every debate this instance ends `completed` or `no_consensus`.
    on_decided: std::sync::OnceLock<DecidedHook>,
}

/// What runs when a debate ends with a decision (the receipts service issues its receipt):
/// told its id and, when this instance wrote its whole log, the final record and the log
/// folded as it was written ([`FoldedLog`]), so neither is read back.
pub type DecidedHook = Arc<dyn Fn(String, Option<(DebateRecord, FoldedLog)>) + Send + Sync>;

impl DebateManager {
    pub fn new(
        store: DynStore,
        agents: Arc<AgentRegistry>,
        bus: Arc<dyn EventBus>,
        settings: ManagerSettings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(DebateManager {
            appends: Arc::new(GroupCommit::new(store.clone(), APPEND_WRITERS)),
            store,
            agents,
            bus,
            settings,
            jobs: parking_lot::Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            wake: Notify::new(),
            shutdown,
            tasks,
            on_decided: std::sync::OnceLock::new(),
        })
    }

    /// Call `hook` with every debate this instance ends `completed` or `no_consensus`, right
    /// after its end is stored. Set once, at start-up.
    pub fn on_decided(&self, hook: DecidedHook) {
        let _ = self.on_decided.set(hook);
    }

    pub fn agents(&self) -> &Arc<AgentRegistry> {
        &self.agents
    }

    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    pub fn instance_id(&self) -> &str {
        &self.settings.instance_id
    }

    /// Debates this instance is running.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Debates waiting to be claimed, fleet-wide, at the last look.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn jobs(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Job>> {
        // A panic while holding the map cannot leave it inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.jobs.lock()
    }

    /// Start claiming work: the claim loop and the lease keeper.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        self.tasks.spawn(async move { me.claim_loop().await });
        let me = self.clone();
        self.tasks.spawn(async move { me.lease_keeper().await });
    }

    /// Validate, persist (status `queued`, event `debate_queued`) and wake a claimer.
    pub async fn create(
        &self,
        request: DebateRequest,
        owner_id: Option<String>,
        correlation_id: Option<String>,
    ) -> Result<DebateRecord, CreateError> {
        if self.shutdown.is_cancelled() {
            return Err(CreateError::ShuttingDown);
        }
        let request = request.merge_protocol()?;
        let plan = self.validate(&request)?;
        // The queue's length as this instance last counted it (its claim loop counts after
        // every pass, at least once per claim poll) plus what it accepted since. While that
        // is under half the bound the queue cannot be full unless other instances queued
        // the other half within one poll period, so no count is taken: one statement less
        // per submission. Nearer the bound every submission counts.
        let estimate = self.queued.load(Ordering::Relaxed);
        let counted = (estimate + 1) * 2 > self.settings.queue_size;
        let queued = if counted {
            let queued = self.store.count_queued().await?;
            self.note_queued(queued);
            queued
        } else {
            estimate as i64
        };
        if queued >= self.settings.queue_size as i64 {
            return Err(CreateError::QueueFull {
                queued: queued as usize,
                retry_after: 10,
            });
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let options = json!({
            "consensus_threshold": plan.threshold,
            "min_rounds": plan.min_rounds,
            "judge": plan.judge,
            "domain": request.domain,
            "metadata": request.metadata,
            "max_cost_usd": plan.max_cost_usd,
            // The trace of the request that created it: every run of the debate, on any
            // instance, joins that trace (null when traces are off).
            "trace_context": crate::telemetry::traces::current_context(),
        });
        let queued_event = Event::new(
            None,
            None,
            EventBody::DebateQueued(ev::Queued {
                task: request.task.trim().to_owned(),
                agents: plan.agents.clone(),
                rounds: plan.rounds,
                consensus: plan.mode.as_str().to_owned(),
                correlation_id: correlation_id.clone(),
            }),
        );
        // The debate and its `debate_queued` in one transaction: accepted whole, or not at all.
        let (record, stored) = self
            .store
            .create_debate_with(
                &NewDebate {
                    id: id.clone(),
                    task: request.task.trim().to_owned(),
                    agents: plan.agents.clone(),
                    rounds: plan.rounds as i32,
                    consensus: plan.mode.as_str().to_owned(),
                    owner_id,
                    correlation_id,
                    options,
                },
                &[NewEvent::from(&queued_event)],
            )
            .await?;
        for e in &stored {
            log_event(e);
            self.bus.publish(LiveEvent::from(e));
        }
        // Counted or not, the estimate now holds this debate too.
        let now = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        crate::telemetry::metrics::debates_queued().set(now as f64);
        crate::store::note_storage_ok();
        self.wake.notify_one();
        Ok(record)
    }

    fn note_queued(&self, queued: i64) {
        let queued = usize::try_from(queued).unwrap_or(0);
        self.queued.store(queued, Ordering::Relaxed);
        crate::telemetry::metrics::debates_queued().set(queued as f64);
    }

    fn validate(&self, request: &DebateRequest) -> Result<Plan, CreateError> {
        let invalid = |field: &str, message: String| CreateError::Invalid {
            field: field.to_owned(),
            message,
        };
        let task = request.task.trim();
        let text = |field: &str, value: &str, multiline: bool| {
            crate::text::check(field, value, multiline).map_err(|e| CreateError::BadText {
                field: field.to_owned(),
                message: e.to_string(),
            })
        };
        text("task", task, true)?;
        for (i, name) in request.agents.iter().flatten().enumerate() {
            text(&format!("agents[{i}]"), name, false)?;
        }
        for (field, value) in [
            ("consensus", request.consensus.as_deref()),
            ("judge", request.judge.as_deref()),
            ("domain", request.domain.as_deref()),
        ] {
            if let Some(v) = value {
                text(field, v, false)?;
            }
        }
        if let Some(metadata) = &request.metadata {
            crate::text::check_json("metadata", metadata).map_err(|e| CreateError::BadText {
                message: e.to_string(),
                field: e.field,
            })?;
        }
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
            Some(m) => m
                .parse()
                .map_err(|e: UnknownConsensusMode| invalid("consensus", e.to_string()))?,
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
        let max_cost_usd = request.max_cost_usd.or(self.settings.max_cost_usd);
        if let Some(cap) = max_cost_usd
            && !(cap.is_finite() && cap > 0.0)
        {
            return Err(invalid(
                "max_cost_usd",
                format!("`max_cost_usd` must be a positive number of US dollars, got {cap}"),
            ));
        }
        Ok(Plan {
            max_cost_usd,
            agents,
            rounds,
            min_rounds,
            mode,
            threshold,
            judge,
        })
    }

    /// Cancel a queued or running debate, wherever it runs: here at once; on another
    /// instance through the store (its runner stops within about a second).
    pub async fn cancel(&self, id: &str) -> Result<DebateRecord, CancelError> {
        let record = self
            .store
            .get_debate(id)
            .await?
            .ok_or_else(|| CancelError::NotFound(id.to_owned()))?;
        if record.status.is_final() {
            return Err(CancelError::AlreadyFinished {
                id: id.to_owned(),
                status: record.status.to_string(),
            });
        }
        if let Some(job) = self.jobs().get(id) {
            // The engine sees the token, stops, and records `cancelled` itself.
            job.cancel.cancel();
            tracing::info!(target: "aragora::debate", debate_id = id, "debate cancelled while running");
            return Ok(record);
        }
        let reason = match record.status {
            DebateStatus::Queued => Some("cancelled before it started"),
            DebateStatus::Paused => Some("cancelled while paused"),
            _ => None,
        };
        if let Some(reason) = reason
            && let Some(updated) = self
                .finish_unstarted(id, DebateStatus::Cancelled, reason)
                .await?
        {
            return Ok(updated);
        }
        if self.store.request_cancel(id).await? {
            tracing::info!(target: "aragora::debate", debate_id = id, instance = record.instance.as_deref(), "cancel requested from the debate's runner");
            return Ok(record);
        }
        // It ended meanwhile.
        let now = self
            .store
            .get_debate(id)
            .await?
            .ok_or_else(|| CancelError::NotFound(id.to_owned()))?;
        Err(CancelError::AlreadyFinished {
            id: id.to_owned(),
            status: now.status.to_string(),
        })
    }

    /// Pause a debate at its next phase boundary (a running agent call finishes and is
    /// recorded first), wherever it runs; a queued one is paused at once. Its slot and lease
    /// are released; `resume` queues it again. `by`: who asked.
    pub async fn pause(&self, id: &str, by: Option<String>) -> Result<DebateRecord, SteerError> {
        let record = self.steerable(id).await?;
        if record.status == DebateStatus::Paused {
            return Ok(record);
        }
        if let Some(job) = self.jobs().get(id) {
            *job.paused_by.lock() = by;
            job.pause.cancel();
            tracing::info!(target: "aragora::debate", debate_id = id, "pause requested; the debate stops at its next phase boundary");
            return Ok(record);
        }
        if record.status == DebateStatus::Queued {
            let event = Event::new(
                None,
                None,
                EventBody::DebatePaused(ev::Paused {
                    by,
                    rounds_used: record.rounds_used.max(0) as u32,
                }),
            );
            let update = DebateUpdate {
                status: Some(DebateStatus::Paused),
                ..DebateUpdate::default()
            };
            if let Some((updated, stored)) = self
                .store
                .finish_queued(id, &update, &NewEvent::from(&event))
                .await?
            {
                log_event(&stored);
                self.bus.publish(LiveEvent::from(&stored));
                return Ok(updated);
            }
        }
        if self.store.request_pause(id).await? {
            return Ok(record);
        }
        Err(self.changed_meanwhile(id).await)
    }

    /// Queue a paused debate again: an instance claims it and continues where it stopped
    /// (`debate_resumed`, reason `resumed_by_user`).
    pub async fn resume(&self, id: &str) -> Result<DebateRecord, SteerError> {
        let record = self.steerable(id).await?;
        if record.status != DebateStatus::Paused {
            return Err(SteerError::Conflict(format!(
                "debate {id} is {}, not paused",
                record.status
            )));
        }
        match self.store.unpause(id).await? {
            Some(updated) => {
                self.wake.notify_one();
                tracing::info!(target: "aragora::debate", debate_id = id, "paused debate queued again");
                Ok(updated)
            }
            None => Err(self.changed_meanwhile(id).await),
        }
    }

    /// Record a moderator's message; every agent's prompt from the debate's next phase on
    /// carries it. Running, queued and paused debates take it.
    pub async fn inject(
        &self,
        id: &str,
        by: Option<String>,
        content: &str,
    ) -> Result<StoredEvent, SteerError> {
        let content = content.trim();
        let invalid = |message: String| SteerError::Invalid {
            field: "content".into(),
            message,
        };
        crate::text::check("content", content, true).map_err(|e| SteerError::BadText {
            field: "content".into(),
            message: e.to_string(),
        })?;
        if content.is_empty() {
            return Err(invalid("`content` must not be empty".into()));
        }
        if content.chars().count() > MAX_INTERVENTION_CHARS {
            return Err(invalid(format!(
                "`content` is longer than {MAX_INTERVENTION_CHARS} characters"
            )));
        }
        self.steerable(id).await?;
        let event = Event::new(
            None,
            None,
            EventBody::Intervention(ev::Intervention {
                by,
                role: "moderator".into(),
                content: content.to_owned(),
            }),
        );
        let mut stored = self
            .store
            .append_events(id, None, &[NewEvent::from(&event)])
            .await?;
        let stored = stored
            .pop()
            .ok_or_else(|| SteerError::NotFound(id.to_owned()))?;
        if let Some(job) = self.jobs().get(id) {
            job.notes.store(true, Ordering::Relaxed);
        }
        log_event(&stored);
        self.bus.publish(LiveEvent::from(&stored));
        Ok(stored)
    }

    /// The debate, unless it has ended.
    async fn steerable(&self, id: &str) -> Result<DebateRecord, SteerError> {
        let record = self
            .store
            .get_debate(id)
            .await?
            .ok_or_else(|| SteerError::NotFound(id.to_owned()))?;
        if record.status.is_final() {
            return Err(SteerError::AlreadyFinished {
                id: id.to_owned(),
                status: record.status.to_string(),
            });
        }
        Ok(record)
    }

    /// The refusal for a debate whose status changed under an action.
    async fn changed_meanwhile(&self, id: &str) -> SteerError {
        match self.store.get_debate(id).await {
            Ok(Some(now)) if now.status.is_final() => SteerError::AlreadyFinished {
                id: id.to_owned(),
                status: now.status.to_string(),
            },
            Ok(Some(now)) => SteerError::Conflict(format!(
                "debate {id} changed to {} meanwhile; try again",
                now.status
            )),
            Ok(None) => SteerError::NotFound(id.to_owned()),
            Err(e) => SteerError::Store(e),
        }
    }

    /// End a debate nobody has claimed yet. `None` when a claim won the race.
    async fn finish_unstarted(
        &self,
        id: &str,
        status: DebateStatus,
        reason: &str,
    ) -> Result<Option<DebateRecord>, StoreError> {
        let end = Event::new(None, None, end_body(status, reason));
        let done = self
            .store
            .finish_queued(id, &final_update(status, reason), &NewEvent::from(&end))
            .await?;
        Ok(done.map(|(record, stored)| {
            log_event(&stored);
            self.bus.publish(LiveEvent::from(&stored));
            crate::telemetry::metrics::debates_total(status.as_str()).increment(1);
            record
        }))
    }

    /// Claims debates whenever this instance has free slots: woken by a new debate or a
    /// finished one, else every `claim_poll`. Stops claiming at shutdown.
    async fn claim_loop(self: Arc<Self>) {
        // Leases this instance holds are from its previous life (killed, or stopped without
        // releasing): nobody runs those debates now, so take them back at once.
        match self
            .unless_stopping(self.store.expire_leases_of(&self.settings.instance_id))
            .await
        {
            None | Some(Ok(0)) => {}
            Some(Ok(n)) => {
                tracing::info!(target: "aragora::debate", debates = n, "resuming debates this instance was running before it restarted");
            }
            Some(Err(err)) => {
                tracing::warn!(target: "aragora::debate", error = %err, "could not look for debates left by a previous run; they resume when their lease expires");
            }
        }
        let mut failures = 0u32;
        // Running debates whose lease is gone are looked for once per poll period; a wake
        // between (a debate accepted here, a slot freed) claims queued debates only, which
        // costs the same however many debates run.
        let mut full_claim_at: Option<Instant> = None;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let free = self.settings.max_concurrent.saturating_sub(self.active());
            let mut claimed_all = false;
            if free > 0 {
                let full = full_claim_at.is_none_or(|at| at.elapsed() >= self.settings.claim_poll);
                let (instance, lease) = (&self.settings.instance_id, self.settings.lease);
                let claim = async {
                    if full {
                        self.store.claim_debates(instance, free as u32, lease).await
                    } else {
                        self.store.claim_queued(instance, free as u32, lease).await
                    }
                };
                match self.unless_stopping(claim).await {
                    None => return,
                    Some(Ok(claims)) => {
                        if full {
                            full_claim_at = Some(Instant::now());
                        }
                        failures = 0;
                        claimed_all = !claims.is_empty() && claims.len() == free;
                        for claim in claims {
                            self.launch(claim);
                        }
                    }
                    Some(Err(err)) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(target: "aragora::debate", error = %err, "claiming debates failed; retrying");
                        }
                    }
                }
            }
            match self.unless_stopping(self.store.count_queued()).await {
                None => return,
                Some(Ok(queued)) => self.note_queued(queued),
                Some(Err(_)) => {}
            }
            if claimed_all {
                // There may be more: look again at once.
                continue;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.claim_poll) => {}
            }
        }
    }

    /// `fut`, unless shutdown starts first: a hung database must not hold shutdown hostage.
    async fn unless_stopping<T>(&self, fut: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            _ = self.shutdown.cancelled() => None,
            v = fut => Some(v),
        }
    }

    /// Run a claimed debate on a tracked task.
    fn launch(self: &Arc<Self>, claim: ClaimedDebate) {
        let job = Job {
            cancel: CancellationToken::new(),
            lost: CancellationToken::new(),
            pause: CancellationToken::new(),
            paused_by: Arc::default(),
            generation: claim.lease.generation,
            claimed_at: Instant::now(),
            notes: Arc::new(AtomicBool::new(true)),
            ending: Arc::new(AtomicBool::new(false)),
        };
        if claim.cancel_requested {
            job.cancel.cancel();
        }
        if claim.pause_requested {
            job.pause.cancel();
        }
        let (cancel, lost) = (job.cancel.clone(), job.lost.clone());
        let (pause, paused_by) = (job.pause.clone(), job.paused_by.clone());
        let handles = RunHandles {
            cancel,
            pause,
            paused_by,
            usage: UsageTab::default(),
            notes: job.notes.clone(),
            ending: job.ending.clone(),
        };
        let usage = handles.usage.clone();
        self.jobs().insert(claim.record.id.clone(), job);
        self.active.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics::active_debates().set(self.active() as f64);
        let me = self.clone();
        self.tasks.spawn(async move {
            let id = claim.record.id.clone();
            let span = tracing::info_span!("debate", debate_id = %id, correlation_id = claim.record.correlation_id.as_deref().unwrap_or(""));
            if crate::telemetry::traces::enabled() {
                use crate::telemetry::traces;
                if let Some(stored) = claim.record.options.get("trace_context") {
                    traces::adopt_stored(&span, stored);
                }
                traces::attribute(&span, "aragora.debate.id", id.clone());
                traces::attribute(&span, "aragora.instance", me.settings.instance_id.clone());
                traces::attribute(&span, "aragora.debate.previous_status", claim.previous_status.as_str().to_owned());
            }
            let lease = claim.lease.clone();
            let run = tracing::Instrument::instrument(me.run_claimed(claim, handles), span.clone());
            let handed_back = tokio::select! {
                r = run => match r {
                    Ok(finished) => !finished,
                    Err(err) => {
                        span.in_scope(|| tracing::error!(target: "aragora::debate", error = %err, "debate store access failed; handing the debate back"));
                        true
                    }
                },
                _ = lost.cancelled() => {
                    span.in_scope(|| tracing::warn!(target: "aragora::debate", "lease lost to another instance; this instance stops running the debate"));
                    false
                }
                // Agent calls in flight at shutdown get the shutdown budget (less a margin to
                // release leases); past it they are made again by whoever resumes.
                _ = async {
                    me.shutdown.cancelled().await;
                    tokio::time::sleep(me.settings.shutdown_timeout.saturating_sub(RELEASE_MARGIN)).await;
                } => true,
            };
            if handed_back && !lost.is_cancelled() {
                let release = tokio::time::timeout(RELEASE_MARGIN / 2, me.store.release_lease(&id, &lease));
                match release.await.unwrap_or(Err(StoreError::Database(sqlx::Error::PoolTimedOut))) {
                    Ok(true) => span.in_scope(|| tracing::info!(target: "aragora::debate", "debate handed back: its lease is released and any instance resumes it")),
                    Ok(false) => {}
                    Err(err) => span.in_scope(|| tracing::warn!(target: "aragora::debate", error = %err, "could not release the lease; the debate resumes when it expires")),
                }
            }
            // Calls that finished without their step being recorded (the run stopped first)
            // were still paid for.
            let unrecorded = usage.take();
            if !unrecorded.is_empty() {
                let write = async {
                    for row in &unrecorded {
                        me.store.record_usage(row).await?;
                    }
                    Ok::<_, StoreError>(())
                };
                match tokio::time::timeout(RELEASE_MARGIN / 2, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => span.in_scope(|| tracing::warn!(target: "aragora::debate", error = %err, rows = unrecorded.len(), "could not record agent usage")),
                    Err(_) => span.in_scope(|| tracing::warn!(target: "aragora::debate", rows = unrecorded.len(), "recording agent usage timed out")),
                }
            }
            me.jobs().remove(&id);
            me.active.fetch_sub(1, Ordering::Relaxed);
            crate::telemetry::metrics::active_debates().set(me.active() as f64);
            me.wake.notify_one();
        });
    }

    /// Start or resume a claimed debate and run it to its end or its pause. `Ok(true)`: it
    /// ended or paused (status written, lease dropped); `Ok(false)`: handed back unfinished.
    async fn run_claimed(
        &self,
        claim: ClaimedDebate,
        handles: RunHandles,
    ) -> Result<bool, StoreError> {
        let RunHandles {
            cancel,
            pause,
            paused_by,
            usage,
            notes,
            ending,
        } = handles;
        let ClaimedDebate {
            record,
            lease,
            previous_status,
            previous_owner,
            ..
        } = claim;
        let id = record.id.clone();
        let stored = self.store.events_since(&id, 0, u32::MAX).await?;
        let mut log = Vec::with_capacity(stored.len());
        for e in &stored {
            match Event::from_stored(e) {
                Ok(event) => log.push(event),
                Err(err) => {
                    let reason = format!("its event log cannot be read by this version: {err}");
                    return self.fail(&record, &lease, &reason).await.map(|()| true);
                }
            }
        }
        let started = Instant::now();
        let spent = running_time(&stored);
        // A queued debate that has started before was paused and resumed by its owner.
        let resumed = match (previous_status, previous_owner.as_deref()) {
            (DebateStatus::Queued, _) if stored.iter().any(|e| e.kind == "debate_start") => {
                Some(ResumeReason::ResumedByUser)
            }
            (DebateStatus::Running, None) => Some(ResumeReason::Restart),
            (DebateStatus::Running, Some(owner)) if owner == self.settings.instance_id => {
                Some(ResumeReason::Crash)
            }
            (DebateStatus::Running, Some(_)) => Some(ResumeReason::LeaseExpired),
            _ => None,
        };
        if let Some(reason) = resumed {
            let from_seq = stored.last().map_or(0, |e| e.seq);
            tracing::info!(
                target: "aragora::debate",
                debate_id = %id, from_seq, reason = reason.as_str(),
                "debate_resumed debate_id={id} from seq {from_seq} ({})", reason.as_str()
            );
            crate::telemetry::metrics::debates_resumed_total(reason.as_str()).increment(1);
            let recorder = Recorder::new(self.store.clone(), self.bus.clone(), &id)
                .with_lease(lease.clone())
                .with_group(self.appends.clone());
            recorder
                .record(&[Event::new(
                    None,
                    None,
                    EventBody::DebateResumed(ev::Resumed {
                        from_seq,
                        instance: self.settings.instance_id.clone(),
                        reason,
                    }),
                )])
                .await
                // Logged as before (`lease lost: …`), whatever the store's failure was.
                .map_err(|e| StoreError::Fenced(e.to_string()))?;
        }
        let input = match self.build_input(&record, &usage) {
            Ok(input) => input,
            Err(reason) => {
                return self
                    .fail(&record, &lease, &reason.to_string())
                    .await
                    .map(|()| true);
            }
        };
        let replay = Replay::from_events(&log);
        if replay.steps() > 0 {
            tracing::info!(target: "aragora::debate", debate_id = %id, steps = replay.steps(), "replaying recorded steps; their agents are not called again");
        }
        let mut recorder = Recorder::new(self.store.clone(), self.bus.clone(), &id)
            .with_lease(lease.clone())
            .with_group(self.appends.clone())
            .with_domain(record.options.get("domain").and_then(Value::as_str))
            .with_usage(usage)
            .with_notes_flag(notes)
            .with_ending_flag(ending);
        // The log of a debate starting here is folded as it is written (from what was
        // stored before the claim), for the receipt. A resumed one had a writer before
        // this recorder: its receipt reads the log back.
        if resumed.is_none() && self.on_decided.get().is_some() {
            recorder = recorder.with_fold(&stored);
        }
        let recorder = Arc::new(recorder);
        let end = engine::run_durable(
            input,
            recorder.clone(),
            cancel,
            Resume {
                replay,
                spent,
                stop: self.shutdown.clone(),
                pause,
            },
        )
        .await;
        let outcome = match end {
            DurableEnd::Finished(outcome) => outcome,
            DurableEnd::HandedBack => return Ok(false),
            DurableEnd::Paused { rounds_used } => {
                let by = paused_by.lock().clone();
                let event = Event::new(
                    None,
                    None,
                    EventBody::DebatePaused(ev::Paused { by, rounds_used }),
                );
                let update = DebateUpdate {
                    status: Some(DebateStatus::Paused),
                    rounds_used: Some(rounds_used as i32),
                    ..DebateUpdate::default()
                };
                let (_, stored) = self
                    .store
                    .finish_debate(&id, Some(&lease), &update, &NewEvent::from(&event))
                    .await?;
                log_event(&stored);
                self.bus.publish(LiveEvent::from(&stored));
                tracing::info!(target: "aragora::debate", debate_id = %id, rounds_used, "debate_paused debate_id={id}: its slot and lease are released");
                return Ok(true);
            }
        };
        crate::telemetry::metrics::debates_total(outcome.status.as_str()).increment(1);
        if outcome.status == FinalStatus::Completed {
            crate::telemetry::metrics::consensus_reached_total().increment(1);
        }
        crate::telemetry::metrics::debate_duration_seconds()
            .record((spent + started.elapsed()).as_secs_f64());
        if matches!(
            outcome.status,
            FinalStatus::Completed | FinalStatus::NoConsensus
        ) && let Some(hook) = self.on_decided.get()
        {
            hook(id.clone(), recorder.take_decided());
        }
        tracing::info!(
            target: "aragora::debate",
            debate_id = %id,
            status = outcome.status.as_str(),
            rounds_used = outcome.rounds_used,
            duration_ms = (spent + started.elapsed()).as_millis() as u64,
            "debate_end status={}", outcome.status.as_str()
        );
        Ok(true)
    }

    /// End a claimed debate `failed` before the engine ran.
    async fn fail(
        &self,
        record: &DebateRecord,
        lease: &Lease,
        reason: &str,
    ) -> Result<(), StoreError> {
        tracing::error!(target: "aragora::debate", debate_id = %record.id, reason, "debate cannot run");
        let end = Event::new(None, None, end_body(DebateStatus::Failed, reason));
        let (_, stored) = self
            .store
            .finish_debate(
                &record.id,
                Some(lease),
                &final_update(DebateStatus::Failed, reason),
                &NewEvent::from(&end),
            )
            .await?;
        log_event(&stored);
        self.bus.publish(LiveEvent::from(&stored));
        crate::telemetry::metrics::debates_total("failed").increment(1);
        Ok(())
    }

    /// Renews this instance's leases every third of their length, in one statement, and
    /// looks for cancels requested elsewhere every second. A debate whose lease was taken
    /// by another instance is stopped here without writing anything more.
    async fn lease_keeper(self: Arc<Self>) {
        let mut renew = tokio::time::interval(self.settings.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cancels = tokio::time::interval(CANCEL_POLL);
        cancels.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let me = &self.settings.instance_id;
        loop {
            tokio::select! {
                // Leases are kept until the running debates have handed back or ended: the
                // task ends with the tracker's other tasks.
                _ = self.shutdown.cancelled(), if self.active() == 0 => return,
                _ = renew.tick() => {
                    if self.active() == 0 {
                        continue;
                    }
                    let asked = Instant::now();
                    let renewal = tokio::time::timeout(
                        self.settings.lease / 3,
                        self.store.renew_leases(me, self.settings.lease),
                    );
                    match renewal.await.unwrap_or_else(|_| {
                        Err(StoreError::Database(sqlx::Error::PoolTimedOut))
                    }) {
                        Ok(held) => {
                            let held: HashMap<String, Control> =
                                held.into_iter().map(|c| (c.debate_id.clone(), c)).collect();
                            // A debate claimed while the renewal ran is judged next time.
                            for (id, job) in self.jobs().iter().filter(|(_, j)| j.claimed_at < asked) {
                                match held.get(id) {
                                    Some(c) if c.generation == job.generation => job.apply(c),
                                    // Its end was written (or is being written) here: the
                                    // end's answer says whether the lease still held.
                                    None if job.ending.load(Ordering::Relaxed) => {}
                                    // Finished between the claim and now, or taken over.
                                    _ => job.lost.cancel(),
                                }
                            }
                        }
                        Err(err) => {
                            tracing::warn!(target: "aragora::debate", error = %err, "lease renewal failed; debates move to other instances if this lasts past the lease");
                        }
                    }
                }
                _ = cancels.tick() => {
                    if self.active() == 0 {
                        continue;
                    }
                    if let Ok(Ok(asked)) =
                        tokio::time::timeout(CANCEL_POLL, self.store.control_requests(me)).await
                    {
                        let jobs = self.jobs();
                        for c in asked {
                            if let Some(job) = jobs.get(&c.debate_id).filter(|j| j.generation == c.generation) {
                                job.apply(&c);
                            }
                        }
                    }
                }
            }
        }
    }

    /// An agent of `record` whose every successful call leaves a usage row on `usage`.
    fn metered(
        &self,
        record: &DebateRecord,
        agent: RegistryAgent,
        usage: &UsageTab,
    ) -> Arc<dyn DebateAgent> {
        Arc::new(MeteredAgent {
            inner: agent,
            tab: usage.clone(),
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
    fn build_input(
        &self,
        record: &DebateRecord,
        usage: &UsageTab,
    ) -> Result<DebateInput, InputError> {
        let mut seats = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in record.agents.iter().enumerate() {
            let agent = self.agents.resolve(name)?;
            let n = seen.entry(name.as_str()).or_default();
            *n += 1;
            let seat = if *n == 1 {
                name.clone()
            } else {
                format!("{name}#{n}")
            };
            seats.push(Seat {
                name: seat,
                agent: self.metered(record, RegistryAgent(agent), usage),
                stance: STANCES[i % STANCES.len()].to_owned(),
            });
        }
        let opt = &record.options;
        let judge = match opt.get("judge").and_then(Value::as_str) {
            Some(j) => Some(self.metered(record, RegistryAgent(self.agents.resolve(j)?), usage)),
            None => None,
        };
        Ok(DebateInput {
            task: record.task.clone(),
            seats,
            judge,
            settings: DebateSettings {
                rounds: record.rounds as u32,
                min_rounds: opt.get("min_rounds").and_then(Value::as_u64).unwrap_or(1) as u32,
                mode: record.consensus.parse()?,
                threshold: opt
                    .get("consensus_threshold")
                    .and_then(Value::as_f64)
                    .unwrap_or(self.settings.threshold),
                timeout: self.settings.debate_timeout,
                max_cost_usd: opt.get("max_cost_usd").and_then(Value::as_f64),
            },
        })
    }
}

/// Why a stored debate cannot be turned into engine input (its text is the debate's error).
#[derive(Debug, thiserror::Error)]
enum InputError {
    #[error(transparent)]
    Agent(#[from] UnknownAgent),
    #[error(transparent)]
    Consensus(#[from] UnknownConsensusMode),
}

struct Plan {
    max_cost_usd: Option<f64>,
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

/// What a debate's run shares between its agents, the recorder and the task that launched it.
struct RunHandles {
    cancel: CancellationToken,
    pause: CancellationToken,
    paused_by: Arc<parking_lot::Mutex<Option<String>>>,
    usage: UsageTab,
    notes: Arc<AtomicBool>,
    ending: Arc<AtomicBool>,
}

/// Usage rows of a debate's agent calls whose step is not recorded yet. The recorder writes
/// them with the next batch of events (the step's own, in the same statement); rows still
/// here when the run stops are written on their own.
#[derive(Clone, Default)]
pub struct UsageTab(Arc<parking_lot::Mutex<Vec<crate::store::NewUsage>>>);

impl UsageTab {
    fn push(&self, row: crate::store::NewUsage) {
        self.0.lock().push(row);
    }

    fn take(&self) -> Vec<crate::store::NewUsage> {
        std::mem::take(&mut *self.0.lock())
    }

    /// Return rows whose write failed, to be written later.
    fn put_back(&self, rows: Vec<crate::store::NewUsage>) {
        self.0.lock().extend(rows);
    }
}

/// An agent that notes usage (principal, debate, agent, provider, model, tokens, cost) after
/// each successful call, on the debate's [`UsageTab`].
struct MeteredAgent {
    inner: RegistryAgent,
    tab: UsageTab,
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
        self.tab.push(row);
        Ok(reply)
    }
}

/// The `debate_end` of a debate that ends without the engine (cancelled while queued, or
/// unable to start).
fn end_body(status: DebateStatus, reason: &str) -> EventBody {
    EventBody::DebateEnd(ev::End {
        status: status.as_str().to_owned(),
        rounds_used: 0,
        consensus_reached: false,
        winner: None,
        error: Some(reason.to_owned()),
        duration_ms: 0,
        usage: None,
    })
}

fn final_update(status: DebateStatus, reason: &str) -> DebateUpdate {
    DebateUpdate {
        status: Some(status),
        error: Some(reason.to_owned()),
        finished_at: Some(Utc::now()),
        ..DebateUpdate::default()
    }
}

fn log_event(stored: &StoredEvent) {
    // Strings recorded as they are (a format string or `%` would go through `fmt`).
    let message = stored.kind.as_str();
    tracing::info!(
        target: "aragora::debate",
        debate_id = stored.debate_id.as_str(),
        seq = stored.seq,
        round = stored.round,
        agent = stored.agent.as_deref(),
        message
    );
}

/// The time a debate has spent running, from its log: each run lasts from its
/// `debate_start` (or `debate_resumed`) to the last event before the next seam. Time spent
/// waiting to be resumed does not count against the debate timeout.
pub fn running_time(events: &[StoredEvent]) -> Duration {
    let mut spent = chrono::Duration::zero();
    let mut segment: Option<chrono::DateTime<Utc>> = None;
    let mut last: Option<chrono::DateTime<Utc>> = None;
    for e in events {
        let seam = matches!(e.kind.as_str(), "debate_start" | "debate_resumed");
        if seam {
            if let (Some(from), Some(to)) = (segment, last) {
                spent += to - from;
            }
            segment = Some(e.timestamp);
        }
        last = Some(e.timestamp);
    }
    if let (Some(from), Some(to)) = (segment, last) {
        spent += to - from;
    }
    spent.to_std().unwrap_or_default()
}

/// Persists each batch of events (fenced by the debate's lease when it has one), then
/// publishes them live; logs them with the debate id. `finish` applies the ratings and then
/// writes the final status with the `debate_end` event in one transaction.
pub struct Recorder {
    store: DynStore,
    bus: Arc<dyn EventBus>,
    debate_id: String,
    lease: Option<Lease>,
    domain: Option<String>,
    /// Usage rows to write with the next batch.
    usage: Option<UsageTab>,
    /// Moderator messages may have been added since the last checkpoint read them: set
    /// at the start, by an `inject` on this instance, and when an append finds a seq it did
    /// not write (another instance's `inject`).
    notes: Arc<AtomicBool>,
    /// Set when [`EventSink::finish`] starts writing the end (see `Job::ending`).
    ending: Arc<AtomicBool>,
    /// The highest seq this recorder has written.
    last_seq: AtomicI64,
    /// Appends go through the instance's group commit when set, else straight to the store.
    group: Option<Arc<GroupCommit>>,
    /// One append of this debate at a time: the seats of a phase finish together, and their
    /// appends all update the debate's row, so in the database they would queue on its row
    /// lock, each holding a pool connection meanwhile. Queued here they hold none.
    turn: tokio::sync::Mutex<()>,
    /// Batches waiting for the turn: whoever takes it writes all of them as one append, in
    /// the order they came, and tells the others how it went.
    waiting: parking_lot::Mutex<Vec<Waiting>>,
    /// The log folded as it is written ([`Recorder::with_fold`]); dropped at the first gap
    /// (an event this recorder did not write).
    fold: parking_lot::Mutex<Option<FoldedLog>>,
    /// The record the end of the debate was stored with.
    finished: parking_lot::Mutex<Option<DebateRecord>>,
}

/// A batch handed to whoever holds the recorder's turn.
struct Waiting {
    batch: Vec<NewEvent>,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

impl Recorder {
    pub fn new(store: DynStore, bus: Arc<dyn EventBus>, debate_id: &str) -> Self {
        Recorder {
            store,
            bus,
            debate_id: debate_id.to_owned(),
            lease: None,
            domain: None,
            usage: None,
            notes: Arc::new(AtomicBool::new(true)),
            ending: Arc::new(AtomicBool::new(false)),
            last_seq: AtomicI64::new(0),
            group: None,
            turn: tokio::sync::Mutex::new(()),
            waiting: parking_lot::Mutex::new(Vec::new()),
            fold: parking_lot::Mutex::new(None),
            finished: parking_lot::Mutex::new(None),
        }
    }

    /// Fold the log as it is written, after `so_far` (the whole log before this recorder's
    /// first write, from seq 1).
    pub fn with_fold(mut self, so_far: &[StoredEvent]) -> Self {
        let mut log = FoldedLog::new();
        *self.fold.get_mut() = log.push(so_far).then_some(log);
        self
    }

    fn fold_in(&self, stored: &[StoredEvent]) {
        let mut fold = self.fold.lock();
        if let Some(log) = fold.as_mut()
            && !log.push(stored)
        {
            *fold = None;
        }
    }

    /// After the end was stored: the final record and the whole log folded, when this
    /// recorder wrote all of it.
    pub fn take_decided(&self) -> Option<(DebateRecord, FoldedLog)> {
        let record = self.finished.lock().take()?;
        let log = self.fold.lock().take()?;
        Some((record, log))
    }

    /// Append through `group` (with the other debates' steps) instead of one by one.
    pub fn with_group(mut self, group: Arc<GroupCommit>) -> Self {
        self.group = Some(group);
        self
    }

    /// Write the usage rows left on `tab` with each batch of events.
    pub fn with_usage(mut self, tab: UsageTab) -> Self {
        self.usage = Some(tab);
        self
    }

    /// Share the "the end is being written" flag with the manager's lease keeper.
    pub fn with_ending_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.ending = flag;
        self
    }

    /// Share the "moderator messages may be waiting" flag (set by the manager's `inject`).
    pub fn with_notes_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Relaxed);
        self.notes = flag;
        self
    }

    /// Note the seqs an append got: a gap before them means someone else (a moderator's
    /// `inject`, possibly on another instance) wrote to the log meanwhile.
    fn note_written(&self, stored: &[StoredEvent]) {
        let (Some(first), Some(last)) = (stored.first(), stored.last()) else {
            return;
        };
        let before = self.last_seq.fetch_max(last.seq, Ordering::Relaxed);
        if before == 0 || first.seq != before + 1 {
            self.notes.store(true, Ordering::Relaxed);
        }
    }

    /// Every write carries this lease (fencing).
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The rating domain the final ratings are also applied to.
    pub fn with_domain(mut self, domain: Option<&str>) -> Self {
        self.domain = domain.map(str::to_owned);
        self
    }

    /// Log `stored` and hand it to the bus whole (moved, not copied: nothing reads it after).
    fn publish(&self, stored: StoredEvent) {
        log_event(&stored);
        self.bus.publish(LiveEvent::from(stored));
    }

    /// Append `batch` (fenced by the lease), riding out a database outage or a storage fault
    /// for up to [`WRITE_RETRY_BUDGET`]. An attempt whose answer was lost may still have
    /// committed, so before trying again the log is read: a batch already there is not
    /// written twice.
    async fn append_durably(&self, step: Arc<StepWrite>) -> StoreResult<Vec<StoredEvent>> {
        let first_try = std::sync::atomic::AtomicBool::new(true);
        self.retrying("an event", || async {
            if !first_try.swap(false, Ordering::Relaxed)
                && let Some(stored) = self.already_written(&step.events).await?
            {
                return Ok(stored);
            }
            match &self.group {
                Some(group) => group.append(step.clone()).await,
                None => {
                    self.store
                        .append_step(
                            &self.debate_id,
                            self.lease.as_ref(),
                            &step.events,
                            &step.usage,
                        )
                        .await
                }
            }
        })
        .await
    }

    /// `batch` as a run of the stored log, if it is there.
    async fn already_written(&self, batch: &[NewEvent]) -> StoreResult<Option<Vec<StoredEvent>>> {
        let log = self
            .store
            .events_since(&self.debate_id, 0, u32::MAX)
            .await?;
        let same = |s: &StoredEvent, n: &NewEvent| {
            s.kind == n.kind && s.round == n.round && s.agent == n.agent && s.data == n.data
        };
        let n = batch.len();
        if n == 0 || log.len() < n {
            return Ok(None);
        }
        Ok((0..=log.len() - n)
            .rev()
            .find(|&at| log[at..at + n].iter().zip(batch).all(|(s, b)| same(s, b)))
            .map(|at| log[at..at + n].to_vec()))
    }

    /// Run `attempt` until it succeeds, fails for good, or the retry budget is spent.
    /// Only transient failures (database unreachable, storage fault) are retried.
    async fn retrying<T, F, Fut>(&self, what: &str, attempt: F) -> StoreResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let deadline = Instant::now() + WRITE_RETRY_BUDGET;
        let mut delay = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            match attempt().await {
                Ok(v) => {
                    crate::store::note_storage_ok();
                    if failures > 0 {
                        tracing::info!(target: "aragora::debate", debate_id = %self.debate_id, failures, "recording {what} succeeded after the store came back");
                    }
                    return Ok(v);
                }
                Err(e) if e.is_transient() && Instant::now() + delay < deadline => {
                    if let Some(fault) = e.storage_fault() {
                        crate::store::note_storage_fault(fault, &e.to_string());
                    }
                    if failures == 0 {
                        tracing::warn!(target: "aragora::debate", debate_id = %self.debate_id, error = %e, "recording {what} failed; retrying while the store is away");
                    }
                    failures += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How long a debate's write is retried through a database outage or a storage fault before
/// the debate is handed back (to be resumed once the store answers again).
const WRITE_RETRY_BUDGET: Duration = Duration::from_secs(20);

/// What the turn's holder reported for a waiting batch.
fn settle(
    written: Result<Result<(), StoreError>, tokio::sync::oneshot::error::RecvError>,
) -> Result<(), SinkError> {
    match written {
        Ok(result) => result.map_err(SinkError::from),
        // The holder was dropped mid-write (its debate is being stopped).
        Err(_) => Err(SinkError::from(StoreError::Database(
            sqlx::Error::PoolClosed,
        ))),
    }
}

impl Recorder {
    /// Write the waiting batches as one append (each batch's events stay together and in
    /// order), publish the events, and tell each batch's caller.
    async fn write_waiting(&self, group: Vec<Waiting>) {
        let mut events = Vec::with_capacity(group.iter().map(|w| w.batch.len()).sum());
        let mut callers = Vec::with_capacity(group.len());
        for w in group {
            events.extend(w.batch);
            callers.push(w.done);
        }
        let usage = self.usage.as_ref().map(UsageTab::take).unwrap_or_default();
        let step = Arc::new(StepWrite {
            debate_id: self.debate_id.clone(),
            lease: self.lease.clone(),
            events,
            usage,
        });
        match self.append_durably(step.clone()).await {
            Ok(stored) => {
                self.note_written(&stored);
                self.fold_in(&stored);
                // Published before the next append of this debate: watchers get its events
                // in seq order.
                for e in stored {
                    self.publish(e);
                }
                for caller in callers {
                    let _ = caller.send(Ok(()));
                }
            }
            Err(e) => {
                if let Some(tab) = &self.usage {
                    let step = Arc::try_unwrap(step).unwrap_or_else(|shared| (*shared).clone());
                    tab.put_back(step.usage);
                }
                let mut callers = callers.into_iter();
                let first = callers.next();
                for caller in callers {
                    let _ = caller.send(Err(e.replicate()));
                }
                if let Some(caller) = first {
                    let _ = caller.send(Err(e));
                }
            }
        }
    }
}

#[async_trait]
impl EventSink for Recorder {
    async fn record(&self, events: &[Event]) -> Result<(), SinkError> {
        if events.is_empty() {
            return Ok(());
        }
        let (done, mut outcome) = tokio::sync::oneshot::channel();
        self.waiting.lock().push(Waiting {
            batch: events.iter().map(NewEvent::from).collect(),
            done,
        });
        // Either a holder of the turn writes this batch with its own, or this call takes the
        // turn and writes every batch waiting by then.
        let turn = tokio::select! {
            biased;
            written = &mut outcome => return settle(written),
            turn = self.turn.lock() => turn,
        };
        let group = std::mem::take(&mut *self.waiting.lock());
        if !group.is_empty() {
            self.write_waiting(group).await;
        }
        drop(turn);
        settle(outcome.await)
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

    async fn checkpoint(&self, cost: bool) -> Result<Checkpoint, SinkError> {
        // The log is read only when a moderator message may have arrived since the last
        // read; otherwise the engine keeps the notes it has.
        let interventions = if self.notes.swap(false, Ordering::Relaxed) {
            let notes = match self
                .store
                .events_of_kinds(&self.debate_id, &["intervention"], 1000, 0)
                .await
            {
                Ok(notes) => notes,
                Err(e) => {
                    self.notes.store(true, Ordering::Relaxed);
                    return Err(SinkError::from(e));
                }
            };
            Some(
                notes
                    .iter()
                    .filter_map(|e| e.data.get("content").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect(),
            )
        } else {
            None
        };
        let cost_usd = if cost {
            self.store
                .debate_cost(&self.debate_id)
                .await
                .map_err(SinkError::from)?
        } else {
            0.0
        };
        Ok(Checkpoint {
            interventions,
            cost_usd,
        })
    }

    async fn finish(&self, end: &Event, outcome: &DebateOutcome) -> Result<(), SinkError> {
        // Ratings first: whoever sees the final status also sees the ratings it produced
        // (idempotent per debate, so a run that ends twice rates once).
        if !outcome.matches.is_empty()
            && let Err(err) = self
                .store
                .apply_match_results(&self.debate_id, self.domain.as_deref(), &outcome.matches)
                .await
        {
            tracing::error!(target: "aragora::debate", debate_id = %self.debate_id, error = %err, "rating update failed");
        }
        let mut result = outcome.result.clone();
        result["usage"] = serde_json::to_value(outcome.usage).unwrap_or_default();
        let update = DebateUpdate {
            status: Some(outcome.status.into()),
            rounds_used: Some(outcome.rounds_used as i32),
            result: Some(result),
            error: outcome.error.clone(),
            finished_at: Some(Utc::now()),
            ..DebateUpdate::default()
        };
        let end = NewEvent::from(end);
        self.ending.store(true, Ordering::Relaxed);
        let first_try = std::sync::atomic::AtomicBool::new(true);
        let stored = self
            .retrying("the end of the debate", || async {
                let retry = !first_try.swap(false, Ordering::Relaxed);
                match self
                    .store
                    .finish_debate(&self.debate_id, self.lease.as_ref(), &update, &end)
                    .await
                {
                    Ok((record, stored)) => Ok(Some((record, stored))),
                    // An earlier attempt committed before its answer was lost: the debate
                    // has ended (and its lease with it).
                    Err(StoreError::Fenced(_)) if retry => {
                        match self.store.get_debate(&self.debate_id).await? {
                            Some(d) if d.status.is_final() => Ok(None),
                            _ => Err(StoreError::Fenced(format!("debate {}", self.debate_id))),
                        }
                    }
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(SinkError::from)?;
        if let Some((record, stored)) = stored {
            self.fold_in(std::slice::from_ref(&stored));
            *self.finished.lock() = Some(record);
            self.publish(stored);
        }
        Ok(())
    }
}
