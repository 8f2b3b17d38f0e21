//! One debate, start to finish. Rounds: answers (round 1 proposals, later rounds revisions
//! answering the critiques), critiques, votes; consensus and convergence are checked after
//! each round. Agents within a phase run concurrently. A failing agent is recorded and left
//! out of that phase; below two answering agents the debate fails. The whole debate is
//! bounded by its timeout and can be cancelled at any point; what happened so far is kept.
//!
//! Rule (durability): every agent call is a *step* keyed by (round, phase, seat) whose outcome
//! is recorded as one atomic batch of events the moment the call ends, and the debate's state
//! is only ever changed by applying those events. Resuming a debate therefore runs the same
//! code over its stored log ([`Replay`]): a step already recorded is applied from the log
//! instead of calling the agent, and the derived events (round_start, convergence, consensus)
//! already recorded are not written again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::consensus::{self, ConsensusMode, Tally, Vote};
use super::convergence::{self, ConvergenceReport, ConvergenceStatus};
use super::events::{self as ev, Event, EventBody};
use super::json::find_object;
use super::prompts::{self, Phase};
use super::{AgentReply, DebateAgent, EventSink, SinkError};
use crate::agents::{AgentError, CompletionRequest, DeltaSink};
use crate::store::MatchResult;
use tracing::Instrument as _;

/// One participant: a unique seat name (the agent name, `#2`… appended when an agent sits
/// more than once), the agent, and the stance it argues from.
#[derive(Clone)]
pub struct Seat {
    pub name: String,
    pub agent: Arc<dyn DebateAgent>,
    pub stance: String,
}

#[derive(Debug, Clone)]
pub struct DebateSettings {
    pub rounds: u32,
    /// Consensus or convergence can end the debate only from this round on.
    pub min_rounds: u32,
    pub mode: ConsensusMode,
    pub threshold: f64,
    pub timeout: Duration,
    /// Cost cap: once the debate's priced usage reaches it, the debate ends after the current
    /// phase with status `budget_exceeded`.
    pub max_cost_usd: Option<f64>,
}

pub struct DebateInput {
    pub task: String,
    pub seats: Vec<Seat>,
    /// Judge for `judge` mode (also the synthesiser for `none` when given).
    pub judge: Option<Arc<dyn DebateAgent>>,
    pub settings: DebateSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalStatus {
    Completed,
    NoConsensus,
    Timeout,
    Failed,
    Cancelled,
    BudgetExceeded,
}

impl FinalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FinalStatus::Completed => "completed",
            FinalStatus::NoConsensus => "no_consensus",
            FinalStatus::Timeout => "timeout",
            FinalStatus::Failed => "failed",
            FinalStatus::Cancelled => "cancelled",
            FinalStatus::BudgetExceeded => "budget_exceeded",
        }
    }
}

impl From<FinalStatus> for crate::store::DebateStatus {
    fn from(s: FinalStatus) -> Self {
        use crate::store::DebateStatus as S;
        match s {
            FinalStatus::Completed => S::Completed,
            FinalStatus::NoConsensus => S::NoConsensus,
            FinalStatus::Timeout => S::Timeout,
            FinalStatus::Failed => S::Failed,
            FinalStatus::Cancelled => S::Cancelled,
            FinalStatus::BudgetExceeded => S::BudgetExceeded,
        }
    }
}

/// Tokens used by the debate's agent calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub calls: u64,
    /// Some figures were estimated because a provider reported none.
    pub estimated: bool,
}

#[derive(Debug, Clone)]
pub struct DebateOutcome {
    pub status: FinalStatus,
    pub rounds_used: u32,
    /// The contract's result object.
    pub result: Value,
    pub error: Option<String>,
    pub usage: UsageTotals,
    /// Pairwise outcomes for Elo (by agent name; seats of the same agent are not paired).
    pub matches: Vec<MatchResult>,
}

/// Everything the debate has established so far; survives a timeout or cancellation.
#[derive(Default)]
struct State {
    answers: BTreeMap<String, String>,
    critiques_for: BTreeMap<String, Vec<(String, String)>>,
    votes: Vec<Vote>,
    tally: Option<Tally>,
    baseline: Option<(Tally, Vec<Vote>)>,
    convergence: Option<ConvergenceReport>,
    consensus: bool,
    ruling: Option<Ruling>,
    synthesis: Option<String>,
    rounds_used: u32,
    usage: UsageTotals,
}

#[derive(Debug, Clone, Serialize)]
struct Ruling {
    winner: String,
    confidence: f64,
    reasoning: String,
    final_answer: String,
}

/// Token deltas arriving within this window are sent as one `token_delta`.
const DELTA_WINDOW: Duration = Duration::from_millis(50);
/// A coalesced delta is sent early once it reaches this size.
const DELTA_MAX_BYTES: usize = 1024;

/// Why a run stopped early.
enum Abort {
    Failed(String),
    Storage(SinkError),
    /// Hand the debate back (shutdown): no new step starts; what finished is recorded.
    Suspended,
    /// Paused by its owner at a phase boundary.
    Paused,
    /// The priced usage (first) reached the cap (second).
    Budget(f64, f64),
}

/// A step: one agent call of a phase, by (round, phase, seat).
type StepKey = (u32, &'static str, String);

fn phase_key(phase: &str) -> Option<&'static str> {
    [
        Phase::Proposal,
        Phase::Revision,
        Phase::Critique,
        Phase::Vote,
        Phase::Synthesis,
        Phase::Judge,
    ]
    .into_iter()
    .map(Phase::as_str)
    .find(|p| *p == phase)
}

/// What a debate's stored log already holds: the outcome of every recorded step, and the
/// derived events (by kind and round) already written. Empty for a fresh debate.
#[derive(Default)]
pub struct Replay {
    steps: HashMap<StepKey, Vec<Event>>,
    marks: HashSet<(&'static str, Option<u32>)>,
}

impl Replay {
    /// Index a debate's log (in seq order). Events that are neither steps nor derived
    /// (debate_queued, debate_resumed, debate_end) are ignored.
    pub fn from_events(events: &[Event]) -> Replay {
        let mut replay = Replay::default();
        for e in events {
            let round = e.round.unwrap_or(0);
            let seat = e.agent.clone().unwrap_or_default();
            let step = match &e.body {
                EventBody::AgentMessage(m) => phase_key(&m.role),
                EventBody::Critique(_) => Some(Phase::Critique.as_str()),
                EventBody::Vote(_) => Some(Phase::Vote.as_str()),
                EventBody::AgentError(f) | EventBody::CircuitOpen(f) => phase_key(&f.phase),
                EventBody::Consensus(c) if c.mode == ConsensusMode::Judge.as_str() => {
                    Some(Phase::Judge.as_str())
                }
                EventBody::DebateStart(_)
                | EventBody::RoundStart(_)
                | EventBody::Convergence(_)
                | EventBody::Consensus(_) => {
                    replay.marks.insert((e.kind(), e.round));
                    None
                }
                _ => None,
            };
            if let Some(phase) = step {
                replay
                    .steps
                    .entry((round, phase, seat))
                    .or_default()
                    .push(e.clone());
            }
        }
        replay
    }

    /// Recorded steps (agent calls that will not be made again).
    pub fn steps(&self) -> usize {
        self.steps.len()
    }

    fn step(&self, round: u32, phase: Phase, seat: &str) -> Option<&Vec<Event>> {
        self.steps.get(&(round, phase.as_str(), seat.to_owned()))
    }
}

/// How a durable run continues a debate: its log so far, the running time already spent
/// (counted against the debate timeout), and the token that asks it to hand the debate back.
pub struct Resume {
    pub replay: Replay,
    pub spent: Duration,
    pub stop: CancellationToken,
    /// Asks the debate to pause at its next phase boundary.
    pub pause: CancellationToken,
}

/// How a durable run ended.
#[derive(Debug)]
pub enum DurableEnd {
    /// The debate ended; its final status is written.
    Finished(DebateOutcome),
    /// Handed back unfinished (shutdown, a lost lease, a failed write).
    HandedBack,
    /// Stopped at a phase boundary on request; `rounds_used` rounds were started.
    Paused { rounds_used: u32 },
}

/// What the engine learns at each phase boundary from outside the debate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    /// The moderator's messages so far, oldest first; `None` when none can have arrived
    /// since the last checkpoint (the engine keeps the ones it has).
    pub interventions: Option<Vec<String>>,
    /// The debate's priced usage so far (USD); asked only when it has a cost cap.
    pub cost_usd: f64,
}

struct Ctx<'a> {
    task: &'a str,
    seats: &'a [Seat],
    judge: Option<&'a Arc<dyn DebateAgent>>,
    settings: &'a DebateSettings,
    events: &'a dyn EventSink,
    cancel: &'a CancellationToken,
    replay: &'a Replay,
    /// Set: storage failures and the stop token suspend the debate instead of failing it.
    stop: Option<&'a CancellationToken>,
    pause: Option<&'a CancellationToken>,
    /// The moderator's messages, refreshed at each phase boundary; every prompt carries them.
    notes: parking_lot::Mutex<Arc<Vec<String>>>,
}

impl Ctx<'_> {
    async fn record(&self, batch: &[Event]) -> Result<(), Abort> {
        self.events.record(batch).await.map_err(|e| {
            if self.stop.is_some() {
                tracing::warn!(target: "aragora::debate", error = %e, "recording failed; handing the debate back");
                Abort::Suspended
            } else {
                Abort::Storage(e)
            }
        })
    }

    /// Record a derived event unless the log already holds it.
    async fn mark(&self, round: Option<u32>, body: EventBody) -> Result<(), Abort> {
        if self.replay.marks.contains(&(body.kind(), round)) {
            return Ok(());
        }
        self.record(&[Event::new(round, None, body)]).await
    }

    fn stopping(&self) -> bool {
        self.stop.is_some_and(CancellationToken::is_cancelled)
    }

    /// A phase boundary: pause if asked, pick up the moderator's messages, and stop the
    /// debate once its priced usage has reached its cap.
    async fn boundary(&self) -> Result<(), Abort> {
        if self.pause.is_some_and(CancellationToken::is_cancelled) {
            return Err(Abort::Paused);
        }
        let cap = self.settings.max_cost_usd;
        let checkpoint = match self.events.checkpoint(cap.is_some()).await {
            Ok(c) => c,
            Err(e) if self.stop.is_some() => {
                tracing::warn!(target: "aragora::debate", error = %e, "reading the checkpoint failed; handing the debate back");
                return Err(Abort::Suspended);
            }
            Err(e) => return Err(Abort::Storage(e)),
        };
        if let Some(interventions) = checkpoint.interventions {
            *self.notes.lock() = Arc::new(interventions);
        }
        if let Some(cap) = cap
            && checkpoint.cost_usd >= cap
        {
            return Err(Abort::Budget(checkpoint.cost_usd, cap));
        }
        Ok(())
    }

    /// One step: its recorded outcome when the log has it; else (unless the debate is being
    /// handed back) the agent is called and the outcome — `to_events` of the reply, or the
    /// failure — is recorded as one batch. `None`: the call was cancelled.
    async fn step(
        &self,
        agent: &Arc<dyn DebateAgent>,
        seat: &str,
        round: u32,
        phase: Phase,
        request: CompletionRequest,
        to_events: impl FnOnce(AgentReply) -> Vec<Event>,
    ) -> Result<Option<Vec<Event>>, Abort> {
        if let Some(events) = self.replay.step(round, phase, seat) {
            return Ok(Some(events.clone()));
        }
        if self.stopping() {
            return Err(Abort::Suspended);
        }
        let notes = self.notes.lock().clone();
        let request = prompts::with_moderator_notes(request, &notes);
        let batch = match call_seat(self, agent, seat, round, phase, request).await {
            Ok(reply) => to_events(reply),
            Err(AgentError::Cancelled) => return Ok(None),
            Err(err) => {
                let circuit = matches!(err, AgentError::CircuitOpen(_));
                let kind = if circuit {
                    "circuit_open"
                } else {
                    "agent_error"
                };
                tracing::warn!(
                    target: "aragora::debate",
                    agent = agent.name(), seat, round, phase = phase.as_str(), error = %err,
                    "{kind}: {seat} failed in {} and is left out of that phase", phase.as_str()
                );
                let failure = ev::AgentFailure {
                    phase: phase.as_str().to_owned(),
                    kind: err.kind().to_owned(),
                    error: err.to_string(),
                };
                let body = if circuit {
                    EventBody::CircuitOpen(failure)
                } else {
                    EventBody::AgentError(failure)
                };
                vec![Event::new(Some(round), Some(seat), body)]
            }
        };
        self.record(&batch).await?;
        Ok(Some(batch))
    }
}

/// Run a debate to its end. Never panics on agent or storage failures: they end up in the
/// outcome's status and error.
pub async fn run(
    input: DebateInput,
    events: Arc<dyn EventSink>,
    cancel: CancellationToken,
) -> DebateOutcome {
    match run_inner(input, events, cancel, None).await {
        DurableEnd::Finished(outcome) => outcome,
        // Without a stop or pause token nothing suspends or pauses a run.
        other => unreachable!("a run without a stop token ended as {other:?}"),
    }
}

/// Run a debate durably: continue it from `resume.replay` (its stored log); hand it back
/// (nothing more recorded) when `resume.stop` fires or the store refuses a write; stop at
/// the next phase boundary when `resume.pause` fires. Agent calls in flight when either
/// fires are let finish and recorded.
pub async fn run_durable(
    input: DebateInput,
    events: Arc<dyn EventSink>,
    cancel: CancellationToken,
    resume: Resume,
) -> DurableEnd {
    run_inner(input, events, cancel, Some(resume)).await
}

async fn run_inner(
    input: DebateInput,
    events: Arc<dyn EventSink>,
    cancel: CancellationToken,
    resume: Option<Resume>,
) -> DurableEnd {
    let started = Instant::now();
    let mut state = State::default();
    let empty = Replay::default();
    let (replay, spent, stop, pause) = match &resume {
        Some(r) => (&r.replay, r.spent, Some(&r.stop), Some(&r.pause)),
        None => (&empty, Duration::ZERO, None, None),
    };
    let ctx = Ctx {
        task: &input.task,
        seats: &input.seats,
        judge: input.judge.as_ref(),
        settings: &input.settings,
        events: events.as_ref(),
        cancel: &cancel,
        replay,
        stop,
        pause,
        notes: parking_lot::Mutex::new(Arc::new(Vec::new())),
    };
    let start = EventBody::DebateStart(ev::Start {
        task: input.task.clone(),
        agents: input
            .seats
            .iter()
            .map(|s| ev::SeatInfo {
                seat: s.name.clone(),
                agent: s.agent.name().to_owned(),
                provider: s.agent.provider().to_owned(),
                model: s.agent.model().to_owned(),
                stance: s.stance.clone(),
            })
            .collect(),
        rounds: input.settings.rounds,
        consensus: input.settings.mode.as_str().to_owned(),
        threshold: input.settings.threshold,
    });
    let budget = input.settings.timeout.saturating_sub(spent);

    enum Stop {
        Done(Result<(), Abort>),
        TimedOut,
        Cancelled,
    }
    let stop = {
        let body = async {
            ctx.mark(None, start).await?;
            run_rounds(&ctx, &mut state).await
        };
        // Biased, cancellation first: once the token is cancelled (or the time is up) the body
        // must not be polled again. Agents return early on cancellation, so an unbiased
        // select that happened to poll the body first would run the rest of the debate
        // (recording rounds and calling agents) within that single poll.
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Stop::Cancelled,
            _ = tokio::time::sleep(budget) => Stop::TimedOut,
            r = body => Stop::Done(r),
        }
    };
    let (status, error) = match stop {
        // Agent calls return early on cancellation, so a finished body may still mean
        // "cancelled".
        Stop::Cancelled => (FinalStatus::Cancelled, Some("cancelled".to_owned())),
        Stop::Done(_) if cancel.is_cancelled() => {
            (FinalStatus::Cancelled, Some("cancelled".to_owned()))
        }
        Stop::Done(Err(Abort::Suspended)) => return DurableEnd::HandedBack,
        Stop::Done(Err(Abort::Paused)) => {
            return DurableEnd::Paused {
                rounds_used: state.rounds_used,
            };
        }
        Stop::Done(Err(Abort::Budget(cost, cap))) => (
            FinalStatus::BudgetExceeded,
            Some(format!(
                "the debate's priced usage (${cost:.4}) reached its cost cap (${cap:.4}); the \
                 transcript and partial result are kept"
            )),
        ),
        Stop::TimedOut => (
            FinalStatus::Timeout,
            Some(format!(
                "the debate exceeded its {} s time limit; the partial transcript is kept",
                input.settings.timeout.as_secs()
            )),
        ),
        Stop::Done(Err(Abort::Failed(reason))) => (FinalStatus::Failed, Some(reason)),
        Stop::Done(Err(Abort::Storage(reason))) => (
            FinalStatus::Failed,
            Some(format!("could not record the debate: {reason}")),
        ),
        Stop::Done(Ok(())) if state.consensus => (FinalStatus::Completed, None),
        Stop::Done(Ok(())) => (FinalStatus::NoConsensus, None),
    };

    let result = result_json(&state, &input);
    let matches = if matches!(status, FinalStatus::Completed | FinalStatus::NoConsensus) {
        elo_matches(&state, &input.seats)
    } else {
        Vec::new()
    };
    let end = Event::new(
        None,
        None,
        EventBody::DebateEnd(ev::End {
            status: status.as_str().to_owned(),
            rounds_used: state.rounds_used,
            consensus_reached: state.consensus,
            winner: result["winner"].as_str().map(str::to_owned),
            error: error.clone(),
            duration_ms: (spent + started.elapsed()).as_millis() as u64,
            usage: serde_json::to_value(state.usage).ok(),
        }),
    );
    let outcome = DebateOutcome {
        status,
        rounds_used: state.rounds_used,
        result,
        error,
        usage: state.usage,
        matches,
    };
    match events.finish(&end, &outcome).await {
        Ok(()) => DurableEnd::Finished(outcome),
        // A durable run whose end could not be written is handed back: the next run replays
        // the whole log and ends it again.
        Err(e) if resume.is_some() => {
            tracing::warn!(target: "aragora::debate", error = %e, "recording the end failed; handing the debate back");
            DurableEnd::HandedBack
        }
        // The end marker is best effort once storage has already failed.
        Err(_) => DurableEnd::Finished(outcome),
    }
}

async fn run_rounds(ctx: &Ctx<'_>, state: &mut State) -> Result<(), Abort> {
    let settings = ctx.settings;
    for round in 1..=settings.rounds {
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        // A trace span per round, with a child per phase (agent calls nest under those).
        let round_span =
            tracing::info_span!("round", round, otel.name = %format_args!("round {round}"));
        ctx.boundary().await?;
        ctx.mark(
            Some(round),
            EventBody::RoundStart(ev::RoundStart {
                round,
                of: settings.rounds,
            }),
        )
        .await?;
        let previous = state.answers.clone();
        let answer = if round == 1 { "proposal" } else { "revision" };
        let answered = answer_phase(ctx, state, round)
            .instrument(phase_span(&round_span, answer, round))
            .await?;
        state.rounds_used = round;

        // Only seats that answered this round are measured: a seat whose revision failed
        // keeps its old answer, and comparing that with itself is no sign of convergence.
        let current: BTreeMap<String, String> = state
            .answers
            .iter()
            .filter(|(seat, _)| answered.contains(*seat))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut converged = false;
        if round > 1
            && let Some(report) = convergence::compare(round, &previous, &current)
        {
            ctx.mark(Some(round), EventBody::Convergence(report.clone()))
                .await?;
            converged = report.status == ConvergenceStatus::Converged;
            state.convergence = Some(report);
        }

        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        ctx.boundary().await?;
        critique_phase(ctx, state, round)
            .instrument(phase_span(&round_span, "critique", round))
            .await?;
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        if settings.mode.votes() {
            ctx.boundary().await?;
            vote_phase(ctx, state, round)
                .instrument(phase_span(&round_span, "vote", round))
                .await?;
        }
        let can_stop = round >= settings.min_rounds;
        if can_stop && state.consensus {
            break;
        }
        if can_stop && converged {
            tracing::info!(target: "aragora::debate", round, "answers converged; ending early");
            break;
        }
    }
    if ctx.cancel.is_cancelled() {
        return Ok(());
    }
    if matches!(settings.mode, ConsensusMode::Judge | ConsensusMode::None) {
        ctx.boundary().await?;
    }
    match settings.mode {
        ConsensusMode::Judge => {
            judge_phase(ctx, state)
                .instrument(tracing::info_span!(
                    "phase",
                    phase = "judge",
                    otel.name = "judge"
                ))
                .await?;
        }
        ConsensusMode::None => {
            synthesis_phase(ctx, state)
                .instrument(tracing::info_span!(
                    "phase",
                    phase = "synthesis",
                    otel.name = "synthesis"
                ))
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// The trace span of one phase of a round.
fn phase_span(round_span: &tracing::Span, phase: &'static str, round: u32) -> tracing::Span {
    tracing::info_span!(parent: round_span, "phase", phase, round, otel.name = %format_args!("{phase} round {round}"))
}

/// Call one seat, streaming token deltas for prose phases.
async fn call_seat(
    ctx: &Ctx<'_>,
    agent: &Arc<dyn DebateAgent>,
    seat: &str,
    round: u32,
    phase: Phase,
    mut request: CompletionRequest,
) -> Result<AgentReply, AgentError> {
    let stream = matches!(phase, Phase::Proposal | Phase::Revision | Phase::Synthesis);
    if !stream {
        return agent.call(&request, None, ctx.cancel).await;
    }
    request.stream = true;
    let (sink, mut rx) = DeltaSink::new(256);
    let call = async move {
        let r = agent.call(&request, Some(&sink), ctx.cancel).await;
        drop(sink);
        r
    };
    // Deltas are coalesced: what arrives within DELTA_WINDOW (or up to DELTA_MAX_BYTES)
    // goes out as one token_delta. Watchers see text at the same pace with a fraction of
    // the frames (providers stream one token at a time); the rest is flushed when the call
    // ends, before its agent_message is recorded.
    let forward = async {
        let mut buf = String::new();
        // One timer for the call, set when a window opens: a timer made per delta would be
        // registered with the runtime's timer wheel and removed again for every chunk.
        let window = tokio::time::sleep(DELTA_WINDOW);
        tokio::pin!(window);
        let mut open = false;
        loop {
            tokio::select! {
                delta = rx.recv() => match delta {
                    Some(d) => {
                        buf.push_str(&d);
                        if !open {
                            window.as_mut().reset(tokio::time::Instant::now() + DELTA_WINDOW);
                            open = true;
                        }
                        if buf.len() >= DELTA_MAX_BYTES {
                            ctx.events.token_delta(round, seat, &std::mem::take(&mut buf));
                            open = false;
                        }
                    }
                    None => break,
                },
                () = &mut window, if open => {
                    ctx.events.token_delta(round, seat, &std::mem::take(&mut buf));
                    open = false;
                }
            }
        }
        if !buf.is_empty() {
            ctx.events.token_delta(round, seat, &buf);
        }
    };
    tokio::join!(call, forward).0
}

fn add_usage(state: &mut State, usage: Option<&crate::agents::Usage>) {
    let Some(u) = usage else { return };
    state.usage.input_tokens += u.input_tokens;
    state.usage.output_tokens += u.output_tokens;
    state.usage.calls += 1;
    state.usage.estimated |= u.estimated;
}

fn message(role: Phase, seat: &Seat, reply: AgentReply, round: u32) -> Event {
    Event::new(
        Some(round),
        Some(&seat.name),
        EventBody::AgentMessage(ev::Message {
            role: role.as_str().to_owned(),
            content: reply.completion.text,
            agent_name: seat.agent.name().to_owned(),
            provider: seat.agent.provider().to_owned(),
            model: reply.completion.model,
            stance: seat.stance.clone(),
            latency_ms: reply.latency.as_millis() as u64,
            usage: reply.completion.usage,
        }),
    )
}

/// Run the calls of a phase concurrently; their outcomes in the order given. Each call is
/// polled only when it was woken: a streaming answer wakes the debate once per chunk, and
/// polling every seat's call (with its timeouts, breaker and cancellation checks) on each of
/// those wake-ups, as a small `join_all` does, multiplied the debate's CPU by its seats.
async fn in_order<F: Future>(calls: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    calls
        .into_iter()
        .collect::<FuturesOrdered<F>>()
        .collect()
        .await
}

/// Returns the seats that answered. A seat with an answer revises it; a seat without one
/// (round 1, or it failed before) proposes afresh.
async fn answer_phase(ctx: &Ctx<'_>, state: &mut State, round: u32) -> Result<Vec<String>, Abort> {
    let calls = ctx.seats.iter().map(|seat| {
        let (phase, request) = match state.answers.get(&seat.name) {
            None => (
                Phase::Proposal,
                prompts::proposal(ctx.task, &seat.name, &seat.stance),
            ),
            Some(own) => {
                let others: BTreeMap<_, _> = state
                    .answers
                    .iter()
                    .filter(|(k, _)| **k != seat.name)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let critiques = state
                    .critiques_for
                    .get(&seat.name)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                (
                    Phase::Revision,
                    prompts::revision(ctx.task, &seat.name, &seat.stance, own, critiques, &others),
                )
            }
        };
        async move {
            ctx.step(&seat.agent, &seat.name, round, phase, request, |reply| {
                vec![message(phase, seat, reply, round)]
            })
            .await
        }
    });
    let outcomes = in_order(calls).await;
    let mut answered = Vec::new();
    // Applied in seat order whatever order the calls ended in, live or replayed.
    for (seat, outcome) in ctx.seats.iter().zip(outcomes) {
        let Some(events) = outcome? else { continue };
        for e in events {
            if let EventBody::AgentMessage(m) = e.body {
                add_usage(state, Some(&m.usage));
                state.answers.insert(seat.name.clone(), m.content);
                answered.push(seat.name.clone());
            }
        }
    }
    if ctx.cancel.is_cancelled() {
        return Ok(answered);
    }
    if answered.len() < 2 {
        return Err(Abort::Failed(format!(
            "only {} agent(s) answered in round {round}; a debate needs at least two working agents",
            answered.len()
        )));
    }
    Ok(answered)
}

/// The critique events of one critique call: one per parsed critique of another seat, or
/// the whole text as one unstructured critique. The call's usage rides on the first.
fn critique_events(
    seat: &str,
    round: u32,
    others: &BTreeMap<String, String>,
    reply: AgentReply,
) -> Vec<Event> {
    let text = reply.completion.text;
    let parsed = find_object(&text, "critiques")
        .and_then(|o| o.get("critiques").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    let mut out = Vec::new();
    for item in parsed {
        let Some(target) = item.get("target").and_then(Value::as_str) else {
            continue;
        };
        let Some(target) = others
            .keys()
            .find(|k| k.eq_ignore_ascii_case(target.trim()))
        else {
            continue;
        };
        out.push(ev::Critique {
            target: Some(target.clone()),
            severity: item
                .get("severity")
                .and_then(Value::as_f64)
                .map(|s| s.clamp(0.0, 1.0)),
            text: item
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            parsed: true,
            usage: None,
        });
    }
    if out.is_empty() {
        // Unstructured critique: kept verbatim and addressed to every other answer.
        out.push(ev::Critique {
            target: None,
            severity: None,
            text,
            parsed: false,
            usage: None,
        });
    }
    out[0].usage = Some(reply.completion.usage);
    out.into_iter()
        .map(|c| Event::new(Some(round), Some(seat), EventBody::Critique(c)))
        .collect()
}

async fn critique_phase(ctx: &Ctx<'_>, state: &mut State, round: u32) -> Result<(), Abort> {
    let critics: Vec<&Seat> = ctx
        .seats
        .iter()
        .filter(|s| state.answers.contains_key(&s.name))
        .collect();
    let others_of = |seat: &Seat| -> BTreeMap<String, String> {
        state
            .answers
            .iter()
            .filter(|(k, _)| **k != seat.name)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let calls = critics.iter().map(|seat| {
        let others = others_of(seat);
        let request = prompts::critique(ctx.task, &seat.name, &seat.stance, &others);
        async move {
            ctx.step(
                &seat.agent,
                &seat.name,
                round,
                Phase::Critique,
                request,
                |reply| critique_events(&seat.name, round, &others, reply),
            )
            .await
        }
    });
    let outcomes = in_order(calls).await;
    let others: Vec<BTreeMap<String, String>> = critics.iter().map(|s| others_of(s)).collect();
    let mut critiques_for: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for ((seat, outcome), others) in critics.iter().zip(outcomes).zip(others) {
        let Some(events) = outcome? else { continue };
        for e in events {
            let EventBody::Critique(c) = e.body else {
                continue;
            };
            add_usage(state, c.usage.as_ref());
            match c.target {
                Some(target) => critiques_for
                    .entry(target)
                    .or_default()
                    .push((seat.name.clone(), c.text)),
                None => {
                    for target in others.keys() {
                        critiques_for
                            .entry(target.clone())
                            .or_default()
                            .push((seat.name.clone(), c.text.clone()));
                    }
                }
            }
        }
    }
    state.critiques_for = critiques_for;
    Ok(())
}

async fn vote_phase(ctx: &Ctx<'_>, state: &mut State, round: u32) -> Result<(), Abort> {
    let candidates: Vec<String> = state.answers.keys().cloned().collect();
    let voters: Vec<&Seat> = ctx
        .seats
        .iter()
        .filter(|s| state.answers.contains_key(&s.name))
        .collect();
    let calls = voters.iter().map(|seat| {
        let request = prompts::vote(ctx.task, &seat.name, &seat.stance, &state.answers);
        let candidates = &candidates;
        async move {
            ctx.step(
                &seat.agent,
                &seat.name,
                round,
                Phase::Vote,
                request,
                |reply| {
                    let vote =
                        consensus::parse_vote(&seat.name, &reply.completion.text, candidates);
                    let raw = (!vote.parsed).then(|| reply.completion.text.clone());
                    vec![Event::new(
                        Some(round),
                        Some(&seat.name),
                        EventBody::Vote(ev::VoteData {
                            vote,
                            raw,
                            usage: Some(reply.completion.usage),
                        }),
                    )]
                },
            )
            .await
        }
    });
    let outcomes = in_order(calls).await;
    let mut votes = Vec::new();
    for outcome in outcomes {
        let Some(events) = outcome? else { continue };
        for e in events {
            if let EventBody::Vote(v) = e.body {
                add_usage(state, v.usage.as_ref());
                votes.push(v.vote);
            }
        }
    }
    let tally = consensus::tally(&votes);
    let mode = ctx.settings.mode;
    let reached = consensus::reached(mode, &tally, ctx.settings.threshold);
    if mode != ConsensusMode::Judge {
        ctx.mark(
            Some(round),
            EventBody::Consensus(ev::Consensus {
                reached,
                mode: mode.as_str().to_owned(),
                winner: tally.leader.clone(),
                share: Some(tally.share),
                threshold: Some(ctx.settings.threshold),
                weights: Some(tally.weights.clone()),
                valid_votes: Some(tally.valid_votes),
                invalid_votes: Some(tally.invalid_votes),
                ..ev::Consensus::default()
            }),
        )
        .await?;
        state.consensus = reached;
    }
    if state.baseline.is_none() {
        state.baseline = Some((tally.clone(), votes.clone()));
    }
    state.votes = votes;
    state.tally = Some(tally);
    Ok(())
}

/// The judge's ruling out of its reply, or why it could not be read.
fn ruling_event(
    judge: &str,
    round: u32,
    answers: &BTreeMap<String, String>,
    reply: AgentReply,
) -> Event {
    let text = reply.completion.text;
    let parsed = find_object(&text, "winner").and_then(|o| {
        let winner = o.get("winner")?.as_str()?.trim().to_owned();
        let winner = answers
            .keys()
            .find(|c| c.eq_ignore_ascii_case(&winner))?
            .clone();
        Some(Ruling {
            final_answer: o
                .get("final_answer")
                .and_then(Value::as_str)
                .map_or_else(|| answers[&winner].clone(), str::to_owned),
            confidence: o
                .get("confidence")
                .and_then(Value::as_f64)
                .unwrap_or(1.0)
                .clamp(0.0, 1.0),
            reasoning: o
                .get("reasoning")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            winner,
        })
    });
    let base = ev::Consensus {
        mode: ConsensusMode::Judge.as_str().to_owned(),
        judge: Some(judge.to_owned()),
        usage: Some(reply.completion.usage),
        ..ev::Consensus::default()
    };
    let body = match parsed {
        Some(r) => ev::Consensus {
            reached: true,
            winner: Some(r.winner),
            confidence: Some(r.confidence),
            reasoning: Some(r.reasoning),
            final_answer: Some(r.final_answer),
            ..base
        },
        None => ev::Consensus {
            reached: false,
            error: Some("the judge's ruling could not be parsed".into()),
            raw: Some(text),
            ..base
        },
    };
    Event::new(Some(round), Some(judge), EventBody::Consensus(body))
}

async fn judge_phase(ctx: &Ctx<'_>, state: &mut State) -> Result<(), Abort> {
    let Some(judge) = ctx.judge else {
        return Err(Abort::Failed(
            "consensus mode `judge` needs a judge agent".into(),
        ));
    };
    let round = state.rounds_used;
    let request = prompts::judge(ctx.task, judge.name(), &state.answers);
    let answers = &state.answers;
    let Some(events) = ctx
        .step(judge, judge.name(), round, Phase::Judge, request, |reply| {
            vec![ruling_event(judge.name(), round, answers, reply)]
        })
        .await?
    else {
        return Ok(());
    };
    for e in events {
        if let EventBody::Consensus(c) = e.body {
            add_usage(state, c.usage.as_ref());
            state.consensus = c.reached;
            state.ruling = match (c.reached, c.winner) {
                (true, Some(winner)) => Some(Ruling {
                    winner,
                    confidence: c.confidence.unwrap_or(1.0),
                    reasoning: c.reasoning.unwrap_or_default(),
                    final_answer: c.final_answer.unwrap_or_default(),
                }),
                _ => None,
            };
        }
    }
    Ok(())
}

async fn synthesis_phase(ctx: &Ctx<'_>, state: &mut State) -> Result<(), Abort> {
    let round = state.rounds_used;
    let (agent, name) = match ctx.judge {
        Some(j) => (j.clone(), j.name().to_owned()),
        None => {
            let first = ctx
                .seats
                .iter()
                .find(|s| state.answers.contains_key(&s.name))
                .unwrap_or(&ctx.seats[0]);
            (first.agent.clone(), first.name.clone())
        }
    };
    let request = prompts::synthesis(ctx.task, &name, &state.answers);
    let seat = Seat {
        name: name.clone(),
        agent: agent.clone(),
        stance: "synthesiser".into(),
    };
    let Some(events) = ctx
        .step(&agent, &name, round, Phase::Synthesis, request, |reply| {
            vec![message(Phase::Synthesis, &seat, reply, round)]
        })
        .await?
    else {
        return Ok(());
    };
    for e in events {
        if let EventBody::AgentMessage(m) = e.body {
            add_usage(state, Some(&m.usage));
            state.synthesis = Some(m.content);
            // With no vote, a completed synthesis is the debate's agreed outcome.
            state.consensus = true;
        }
    }
    Ok(())
}

fn result_json(state: &State, input: &DebateInput) -> Value {
    let (winner, confidence, final_answer) = if let Some(r) = &state.ruling {
        (
            Some(r.winner.clone()),
            r.confidence,
            Some(r.final_answer.clone()),
        )
    } else if let Some(s) = &state.synthesis {
        (None, 1.0, Some(s.clone()))
    } else if let Some(t) = &state.tally {
        (
            t.leader.clone(),
            t.share,
            t.leader
                .as_ref()
                .and_then(|l| state.answers.get(l).cloned()),
        )
    } else {
        (None, 0.0, None)
    };
    let dissent: Vec<Value> = match &winner {
        Some(w) => state
            .votes
            .iter()
            .filter(|v| v.choice.as_ref() != Some(w))
            .map(|v| json!({"agent": v.voter, "voted_for": v.choice, "reasoning": v.reasoning, "parsed": v.parsed}))
            .collect(),
        None => Vec::new(),
    };
    json!({
        "final_answer": final_answer,
        "consensus_reached": state.consensus,
        "confidence": confidence,
        "winner": winner,
        "mode": input.settings.mode.as_str(),
        "votes": state.votes,
        "dissent": dissent,
        "convergence": state.convergence,
        "baseline": state.baseline.as_ref().map(|(t, votes)| json!({
            "description": "first-round vote only, before any critique had been answered",
            "winner": t.leader, "share": t.share, "votes": votes,
        })),
        "judge": state.ruling.as_ref().map(|r| json!({"reasoning": r.reasoning})),
    })
}

/// Pairwise outcomes from the final vote: for each pair of seats held by different agents,
/// more received vote weight wins, equal weight is a draw. In judge mode the winner beats
/// every other seat.
fn elo_matches(state: &State, seats: &[Seat]) -> Vec<MatchResult> {
    let agent_of = |seat: &str| {
        seats
            .iter()
            .find(|s| s.name == seat)
            .map(|s| s.agent.name().to_owned())
    };
    let mut out = Vec::new();
    if let Some(ruling) = &state.ruling {
        let Some(winner) = agent_of(&ruling.winner) else {
            return out;
        };
        for seat in state.answers.keys().filter(|s| **s != ruling.winner) {
            if let Some(other) = agent_of(seat).filter(|o| *o != winner) {
                out.push(MatchResult {
                    a: winner.clone(),
                    b: other,
                    score_a: 1.0,
                });
            }
        }
        return out;
    }
    let Some(tally) = &state.tally else {
        return out;
    };
    if tally.valid_votes == 0 {
        return out;
    }
    let seats_answered: Vec<&String> = state.answers.keys().collect();
    for (i, a) in seats_answered.iter().enumerate() {
        for b in &seats_answered[i + 1..] {
            let (Some(agent_a), Some(agent_b)) = (agent_of(a), agent_of(b)) else {
                continue;
            };
            if agent_a == agent_b {
                continue;
            }
            let wa = tally.weights.get(*a).copied().unwrap_or(0.0);
            let wb = tally.weights.get(*b).copied().unwrap_or(0.0);
            let score_a = if (wa - wb).abs() < 1e-9 {
                0.5
            } else if wa > wb {
                1.0
            } else {
                0.0
            };
            out.push(MatchResult {
                a: agent_a,
                b: agent_b,
                score_a,
            });
        }
    }
    out
}
