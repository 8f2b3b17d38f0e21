//! One debate, start to finish. Rounds: answers (round 1 proposals, later rounds revisions
//! answering the critiques), critiques, votes; consensus and convergence are checked after
//! each round. Agents within a phase run concurrently. A failing agent is recorded and left
//! out of that phase; below two answering agents the debate fails. The whole debate is
//! bounded by its timeout and can be cancelled at any point; what happened so far is kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::consensus::{self, ConsensusMode, Tally, Vote};
use super::convergence::{self, ConvergenceReport, ConvergenceStatus};
use super::json::find_object;
use super::prompts::{self, Phase};
use super::{AgentReply, DebateAgent, EventSink};
use crate::agents::{AgentError, CompletionRequest, DeltaSink};
use crate::store::MatchResult;

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
}

impl FinalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FinalStatus::Completed => "completed",
            FinalStatus::NoConsensus => "no_consensus",
            FinalStatus::Timeout => "timeout",
            FinalStatus::Failed => "failed",
            FinalStatus::Cancelled => "cancelled",
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
    Storage(String),
}

struct Ctx<'a> {
    task: &'a str,
    seats: &'a [Seat],
    judge: Option<&'a Arc<dyn DebateAgent>>,
    settings: &'a DebateSettings,
    events: &'a dyn EventSink,
    cancel: &'a CancellationToken,
}

impl Ctx<'_> {
    async fn emit(
        &self,
        kind: &str,
        round: Option<u32>,
        agent: Option<&str>,
        data: Value,
    ) -> Result<(), Abort> {
        self.events
            .record(kind, round, agent, data)
            .await
            .map_err(Abort::Storage)
    }
}

/// Run a debate to its end. Never panics on agent or storage failures: they end up in the
/// outcome's status and error.
pub async fn run(
    input: DebateInput,
    events: Arc<dyn EventSink>,
    cancel: CancellationToken,
) -> DebateOutcome {
    let started = Instant::now();
    let mut state = State::default();
    let ctx = Ctx {
        task: &input.task,
        seats: &input.seats,
        judge: input.judge.as_ref(),
        settings: &input.settings,
        events: events.as_ref(),
        cancel: &cancel,
    };
    let start = json!({
        "task": input.task,
        "agents": input.seats.iter().map(|s| json!({
            "seat": s.name, "agent": s.agent.name(), "provider": s.agent.provider(),
            "model": s.agent.model(), "stance": s.stance,
        })).collect::<Vec<_>>(),
        "rounds": input.settings.rounds,
        "consensus": input.settings.mode.as_str(),
        "threshold": input.settings.threshold,
    });

    enum Stop {
        Done(Result<(), Abort>),
        TimedOut,
        Cancelled,
    }
    let stop = {
        let body = async {
            ctx.emit("debate_start", None, None, start).await?;
            run_rounds(&ctx, &mut state).await
        };
        // Biased, cancellation first: once the token is cancelled (or the time is up) the body
        // must not be polled again. Agents return early on cancellation, so an unbiased
        // select that happened to poll the body first would run the rest of the debate
        // (recording rounds and calling agents) within that single poll.
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Stop::Cancelled,
            _ = tokio::time::sleep(input.settings.timeout) => Stop::TimedOut,
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
    let end = json!({
        "status": status.as_str(),
        "rounds_used": state.rounds_used,
        "consensus_reached": state.consensus,
        "winner": result["winner"],
        "error": error,
        "duration_ms": started.elapsed().as_millis() as u64,
        "usage": state.usage,
    });
    // The end marker is best effort once storage has already failed.
    let _ = events.record("debate_end", None, None, end).await;
    DebateOutcome {
        status,
        rounds_used: state.rounds_used,
        result,
        error,
        usage: state.usage,
        matches,
    }
}

async fn run_rounds(ctx: &Ctx<'_>, state: &mut State) -> Result<(), Abort> {
    let settings = ctx.settings;
    for round in 1..=settings.rounds {
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        ctx.emit(
            "round_start",
            Some(round),
            None,
            json!({"round": round, "of": settings.rounds}),
        )
        .await?;
        let previous = state.answers.clone();
        let answered = answer_phase(ctx, state, round).await?;
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
            ctx.emit(
                "convergence",
                Some(round),
                None,
                serde_json::to_value(&report).unwrap_or_default(),
            )
            .await?;
            converged = report.status == ConvergenceStatus::Converged;
            state.convergence = Some(report);
        }

        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        critique_phase(ctx, state, round).await?;
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        if settings.mode.votes() {
            vote_phase(ctx, state, round).await?;
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
    match settings.mode {
        ConsensusMode::Judge => judge_phase(ctx, state).await?,
        ConsensusMode::None => synthesis_phase(ctx, state).await?,
        _ => {}
    }
    Ok(())
}

/// Call one seat, streaming token deltas for prose phases. Records agent_error /
/// circuit_open on failure.
async fn call_seat(
    ctx: &Ctx<'_>,
    agent: &Arc<dyn DebateAgent>,
    seat: &str,
    round: u32,
    phase: Phase,
    mut request: CompletionRequest,
) -> Result<Option<AgentReply>, Abort> {
    let stream = matches!(phase, Phase::Proposal | Phase::Revision | Phase::Synthesis);
    let outcome = if stream {
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
            let mut due: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    delta = rx.recv() => match delta {
                        Some(d) => {
                            buf.push_str(&d);
                            due.get_or_insert_with(|| tokio::time::Instant::now() + DELTA_WINDOW);
                            if buf.len() >= DELTA_MAX_BYTES {
                                ctx.events.token_delta(round, seat, &std::mem::take(&mut buf));
                                due = None;
                            }
                        }
                        None => break,
                    },
                    _ = async { tokio::time::sleep_until(due.expect("guarded")).await }, if due.is_some() => {
                        ctx.events.token_delta(round, seat, &std::mem::take(&mut buf));
                        due = None;
                    }
                }
            }
            if !buf.is_empty() {
                ctx.events.token_delta(round, seat, &buf);
            }
        };
        tokio::join!(call, forward).0
    } else {
        agent.call(&request, None, ctx.cancel).await
    };
    match outcome {
        Ok(reply) => Ok(Some(reply)),
        Err(AgentError::Cancelled) => Ok(None),
        Err(err) => {
            let kind = if matches!(err, AgentError::CircuitOpen(_)) {
                "circuit_open"
            } else {
                "agent_error"
            };
            tracing::warn!(
                target: "aragora::debate",
                agent = agent.name(), seat, round, phase = phase.as_str(), error = %err,
                "{kind}: {seat} failed in {} and is left out of that phase", phase.as_str()
            );
            ctx.emit(
                kind,
                Some(round),
                Some(seat),
                json!({
                    "phase": phase.as_str(), "kind": err.kind(), "error": err.to_string(),
                }),
            )
            .await?;
            Ok(None)
        }
    }
}

fn add_usage(state: &mut State, reply: &AgentReply) {
    let u = reply.completion.usage;
    state.usage.input_tokens += u.input_tokens;
    state.usage.output_tokens += u.output_tokens;
    state.usage.calls += 1;
    state.usage.estimated |= u.estimated;
}

fn message_data(role: &str, seat: &Seat, reply: &AgentReply) -> Value {
    json!({
        "role": role,
        "content": reply.completion.text,
        "agent_name": seat.agent.name(),
        "provider": seat.agent.provider(),
        "model": reply.completion.model,
        "stance": seat.stance,
        "latency_ms": reply.latency.as_millis() as u64,
        "usage": reply.completion.usage,
    })
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
            (
                seat,
                phase,
                call_seat(ctx, &seat.agent, &seat.name, round, phase, request).await,
            )
        }
    });
    let mut answered = Vec::new();
    for (seat, phase, reply) in join_all(calls).await {
        let Some(reply) = reply? else { continue };
        add_usage(state, &reply);
        ctx.emit(
            "agent_message",
            Some(round),
            Some(&seat.name),
            message_data(phase.as_str(), seat, &reply),
        )
        .await?;
        state
            .answers
            .insert(seat.name.clone(), reply.completion.text);
        answered.push(seat.name.clone());
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

async fn critique_phase(ctx: &Ctx<'_>, state: &mut State, round: u32) -> Result<(), Abort> {
    let calls = ctx
        .seats
        .iter()
        .filter(|s| state.answers.contains_key(&s.name))
        .map(|seat| {
            let others: BTreeMap<_, _> = state
                .answers
                .iter()
                .filter(|(k, _)| **k != seat.name)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let request = prompts::critique(ctx.task, &seat.name, &seat.stance, &others);
            async move {
                (
                    seat,
                    others,
                    call_seat(
                        ctx,
                        &seat.agent,
                        &seat.name,
                        round,
                        Phase::Critique,
                        request,
                    )
                    .await,
                )
            }
        });
    let mut critiques_for: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (seat, others, reply) in join_all(calls).await {
        let Some(reply) = reply? else { continue };
        add_usage(state, &reply);
        let text = &reply.completion.text;
        let parsed = find_object(text, "critiques")
            .and_then(|o| o.get("critiques").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        let mut any = false;
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
            let body = item
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let severity = item
                .get("severity")
                .and_then(Value::as_f64)
                .map(|s| s.clamp(0.0, 1.0));
            ctx.emit(
                "critique",
                Some(round),
                Some(&seat.name),
                json!({
                    "target": target, "severity": severity, "text": body, "parsed": true,
                }),
            )
            .await?;
            critiques_for
                .entry(target.clone())
                .or_default()
                .push((seat.name.clone(), body));
            any = true;
        }
        if !any {
            // Unstructured critique: kept verbatim and addressed to every other answer.
            ctx.emit(
                "critique",
                Some(round),
                Some(&seat.name),
                json!({
                    "target": null, "severity": null, "text": text, "parsed": false,
                }),
            )
            .await?;
            for target in others.keys() {
                critiques_for
                    .entry(target.clone())
                    .or_default()
                    .push((seat.name.clone(), text.clone()));
            }
        }
    }
    state.critiques_for = critiques_for;
    Ok(())
}

async fn vote_phase(ctx: &Ctx<'_>, state: &mut State, round: u32) -> Result<(), Abort> {
    let candidates: Vec<String> = state.answers.keys().cloned().collect();
    let calls = ctx
        .seats
        .iter()
        .filter(|s| state.answers.contains_key(&s.name))
        .map(|seat| {
            let request = prompts::vote(ctx.task, &seat.name, &seat.stance, &state.answers);
            async move {
                (
                    seat,
                    call_seat(ctx, &seat.agent, &seat.name, round, Phase::Vote, request).await,
                )
            }
        });
    let mut votes = Vec::new();
    for (seat, reply) in join_all(calls).await {
        let Some(reply) = reply? else { continue };
        add_usage(state, &reply);
        let vote = consensus::parse_vote(&seat.name, &reply.completion.text, &candidates);
        let mut data = serde_json::to_value(&vote).unwrap_or_default();
        if !vote.parsed {
            data["raw"] = json!(reply.completion.text);
        }
        ctx.emit("vote", Some(round), Some(&seat.name), data)
            .await?;
        votes.push(vote);
    }
    let tally = consensus::tally(&votes);
    let mode = ctx.settings.mode;
    let reached = consensus::reached(mode, &tally, ctx.settings.threshold);
    if mode != ConsensusMode::Judge {
        ctx.emit(
            "consensus",
            Some(round),
            None,
            json!({
                "reached": reached,
                "mode": mode.as_str(),
                "winner": tally.leader,
                "share": tally.share,
                "threshold": ctx.settings.threshold,
                "weights": tally.weights,
                "valid_votes": tally.valid_votes,
                "invalid_votes": tally.invalid_votes,
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

async fn judge_phase(ctx: &Ctx<'_>, state: &mut State) -> Result<(), Abort> {
    let Some(judge) = ctx.judge else {
        return Err(Abort::Failed(
            "consensus mode `judge` needs a judge agent".into(),
        ));
    };
    let round = state.rounds_used;
    let request = prompts::judge(ctx.task, judge.name(), &state.answers);
    let Some(reply) = call_seat(ctx, judge, judge.name(), round, Phase::Judge, request).await?
    else {
        return Ok(());
    };
    add_usage(state, &reply);
    let candidates: Vec<&String> = state.answers.keys().collect();
    let parsed = find_object(&reply.completion.text, "winner").and_then(|o| {
        let winner = o.get("winner")?.as_str()?.trim().to_owned();
        let winner = candidates
            .iter()
            .find(|c| c.eq_ignore_ascii_case(&winner))?
            .to_string();
        Some(Ruling {
            final_answer: o
                .get("final_answer")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| state.answers[&winner].clone()),
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
    let data = match &parsed {
        Some(r) => {
            json!({"reached": true, "mode": "judge", "judge": judge.name(), "winner": r.winner,
                          "confidence": r.confidence, "reasoning": r.reasoning, "final_answer": r.final_answer})
        }
        None => json!({"reached": false, "mode": "judge", "judge": judge.name(),
                       "error": "the judge's ruling could not be parsed", "raw": reply.completion.text}),
    };
    ctx.emit("consensus", Some(round), Some(judge.name()), data)
        .await?;
    state.consensus = parsed.is_some();
    state.ruling = parsed;
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
    if let Some(reply) = call_seat(ctx, &agent, &name, round, Phase::Synthesis, request).await? {
        add_usage(state, &reply);
        let seat = Seat {
            name: name.clone(),
            agent: agent.clone(),
            stance: "synthesiser".into(),
        };
        ctx.emit(
            "agent_message",
            Some(round),
            Some(&name),
            message_data("synthesis", &seat, &reply),
        )
        .await?;
        state.synthesis = Some(reply.completion.text);
        // With no vote, a completed synthesis is the debate's agreed outcome.
        state.consensus = true;
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
