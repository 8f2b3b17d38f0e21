//! End-to-end tests of the debate engine with scripted fake agents and a capturing event
//! sink. Time is paused (`start_paused`), so agent delays and debate timeouts cost nothing
//! and elapsed virtual time shows whether a phase ran its agents concurrently.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::consensus::ConsensusMode;
use super::engine::{self, DebateInput, DebateOutcome, DebateSettings, FinalStatus, Seat};
use super::{AgentReply, DebateAgent, EventSink, SinkError};
use crate::agents::{AgentError, Completion, CompletionRequest, DeltaSink, Usage};
use crate::store::MatchResult;

// ---------------------------------------------------------------------------------------
// Scripted fake agent
// ---------------------------------------------------------------------------------------

/// One scripted reply: wait `delay`, stream `deltas` (when given a sink), then answer.
/// `{seat}` in the text is replaced by the seat the call is for.
#[derive(Debug, Clone)]
struct Step {
    delay: Duration,
    deltas: Vec<String>,
    reply: Result<String, AgentError>,
}

impl Step {
    fn text(text: impl Into<String>) -> Step {
        Step {
            delay: Duration::ZERO,
            deltas: Vec::new(),
            reply: Ok(text.into()),
        }
    }

    fn fail(err: AgentError) -> Step {
        Step {
            delay: Duration::ZERO,
            deltas: Vec::new(),
            reply: Err(err),
        }
    }

    fn after(mut self, delay: Duration) -> Step {
        self.delay = delay;
        self
    }
}

fn vote(choice: &str, confidence: f64) -> Step {
    Step::text(format!(
        r#"{{"vote": "{choice}", "confidence": {confidence}, "reasoning": "{{seat}} likes {choice}"}}"#
    ))
}

fn server_error() -> AgentError {
    AgentError::Server {
        status: 500,
        message: "boom".into(),
    }
}

/// What the fake saw of one call.
#[derive(Debug, Clone)]
struct Call {
    phase: String,
    seat: String,
    prompt: String,
    stream: bool,
    had_sink: bool,
    started: Instant,
    finished: Option<Instant>,
}

struct FakeAgent {
    name: String,
    /// phase → replies; the n-th call of a phase for a seat gets the n-th step (the last
    /// step repeats). A phase without steps gets a sensible default.
    script: Mutex<HashMap<String, Vec<Step>>>,
    calls: Mutex<Vec<Call>>,
    /// Send `[phase] …` deltas in every call that comes with a delta sink.
    stream_every_phase: bool,
    /// Sleep through cancellation (an agent that does not honour the token).
    ignore_cancel: bool,
}

impl FakeAgent {
    fn new(name: &str) -> FakeAgent {
        FakeAgent {
            name: name.to_owned(),
            script: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            stream_every_phase: false,
            ignore_cancel: false,
        }
    }

    fn on(self, phase: &str, step: Step) -> FakeAgent {
        self.script
            .lock()
            .entry(phase.to_owned())
            .or_default()
            .push(step);
        self
    }

    fn streaming(mut self) -> FakeAgent {
        self.stream_every_phase = true;
        self
    }

    fn stubborn(mut self) -> FakeAgent {
        self.ignore_cancel = true;
        self
    }

    fn build(self) -> Arc<FakeAgent> {
        Arc::new(self)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    fn calls_in(&self, phase: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.phase == phase)
            .collect()
    }
}

fn header<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map_or_else(|| panic!("no `{name}` line in {text:?}"), str::trim)
}

fn candidates(prompt: &str) -> Vec<String> {
    prompt
        .lines()
        .find_map(|l| l.strip_prefix("Aragora-Candidates:"))
        .map(|l| l.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default()
}

fn default_reply(phase: &str, seat: &str, prompt: &str, nth: usize) -> String {
    let cands = candidates(prompt);
    match phase {
        "proposal" => format!("{seat} proposes an initial plan"),
        "revision" => format!("{seat} revision number {nth} changes course entirely"),
        "critique" => {
            let items: Vec<Value> = cands
                .iter()
                .map(|c| json!({"target": c, "severity": 0.5, "text": format!("{seat} on {c}: needs evidence")}))
                .collect();
            json!({ "critiques": items }).to_string()
        }
        "vote" => json!({"vote": cands[0], "confidence": 1.0, "reasoning": "default"}).to_string(),
        "judge" => json!({"winner": cands[0], "confidence": 0.9, "reasoning": "default",
                          "final_answer": "judged"})
        .to_string(),
        "synthesis" => format!("synthesis by {seat}"),
        other => panic!("unexpected phase {other}"),
    }
}

#[async_trait]
impl DebateAgent for FakeAgent {
    fn name(&self) -> &str {
        &self.name
    }
    fn provider(&self) -> &str {
        "fake"
    }
    fn model(&self) -> &str {
        "fake-1"
    }

    async fn call(
        &self,
        request: &CompletionRequest,
        deltas: Option<&DeltaSink>,
        cancel: &CancellationToken,
    ) -> Result<AgentReply, AgentError> {
        let phase = header(&request.system, "Aragora-Phase:").to_owned();
        let seat = header(&request.system, "Aragora-Seat:").to_owned();
        let prompt = request.messages.last().unwrap().content.clone();
        let (index, nth) = {
            let mut calls = self.calls.lock();
            let nth = calls
                .iter()
                .filter(|c| c.phase == phase && c.seat == seat)
                .count();
            calls.push(Call {
                phase: phase.clone(),
                seat: seat.clone(),
                prompt: prompt.clone(),
                stream: request.stream,
                had_sink: deltas.is_some(),
                started: Instant::now(),
                finished: None,
            });
            (calls.len() - 1, nth)
        };
        let step = self
            .script
            .lock()
            .get(&phase)
            .and_then(|steps| steps.get(nth).or(steps.last()).cloned())
            .unwrap_or_else(|| Step::text(default_reply(&phase, &seat, &prompt, nth + 1)));

        if !step.delay.is_zero() {
            if self.ignore_cancel {
                tokio::time::sleep(step.delay).await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(step.delay) => {}
                    _ = cancel.cancelled() => return Err(AgentError::Cancelled),
                }
            }
        }
        if let Some(sink) = deltas {
            let mut chunks = step.deltas.clone();
            if self.stream_every_phase {
                chunks.push(format!("[{phase}] {seat} chunk 1"));
                chunks.push(format!("[{phase}] {seat} chunk 2"));
            }
            for chunk in chunks {
                sink.send(&chunk);
                tokio::task::yield_now().await;
            }
        }
        self.calls.lock()[index].finished = Some(Instant::now());
        let text = step.reply?.replace("{seat}", &seat);
        Ok(AgentReply {
            completion: Completion {
                text,
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 5,
                    estimated: false,
                },
                model: "fake-1".into(),
                finish_reason: Some("stop".into()),
            },
            latency: step.delay,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Capturing event sink
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Event {
    seq: usize,
    kind: String,
    round: Option<u32>,
    agent: Option<String>,
    data: Value,
}

#[derive(Debug, Clone)]
struct Delta {
    seq: usize,
    round: u32,
    agent: String,
    text: String,
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    deltas: Mutex<Vec<Delta>>,
    seq: AtomicUsize,
    attempts: AtomicUsize,
    /// Fail every `record` once this many events are stored.
    fail_after: Option<usize>,
}

impl Recorder {
    fn failing_after(n: usize) -> Recorder {
        Recorder {
            fail_after: Some(n),
            ..Recorder::default()
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    fn kinds(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.kind).collect()
    }

    fn of_kind(&self, kind: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }

    fn last(&self, kind: &str) -> Event {
        self.of_kind(kind)
            .pop()
            .unwrap_or_else(|| panic!("no {kind} event in {:?}", self.kinds()))
    }

    fn deltas(&self) -> Vec<Delta> {
        self.deltas.lock().clone()
    }
}

#[async_trait]
impl EventSink for Recorder {
    async fn record(&self, batch: &[super::Event]) -> Result<(), SinkError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let mut events = self.events.lock();
        if self.fail_after.is_some_and(|n| events.len() >= n) {
            return Err(SinkError::Store(crate::store::StoreError::Database(
                sqlx::Error::Io(std::io::Error::other("disk full")),
            )));
        }
        for e in batch {
            events.push(Event {
                seq: self.seq.fetch_add(1, Ordering::SeqCst),
                kind: e.kind().to_owned(),
                round: e.round,
                agent: e.agent.clone(),
                data: e.data(),
            });
        }
        Ok(())
    }

    fn token_delta(&self, round: u32, agent: &str, delta: &str) {
        self.deltas.lock().push(Delta {
            seq: self.seq.fetch_add(1, Ordering::SeqCst),
            round,
            agent: agent.to_owned(),
            text: delta.to_owned(),
        });
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const TASK: &str = "Monolith or microservices?";

fn settings(mode: ConsensusMode, rounds: u32) -> DebateSettings {
    DebateSettings {
        rounds,
        min_rounds: 1,
        mode,
        threshold: 0.6,
        timeout: Duration::from_secs(600),
        max_cost_usd: None,
    }
}

fn seats(agents: &[&Arc<FakeAgent>]) -> Vec<Seat> {
    agents
        .iter()
        .enumerate()
        .map(|(i, a)| Seat {
            name: a.name.clone(),
            agent: Arc::clone(*a) as Arc<dyn DebateAgent>,
            stance: super::prompts::STANCES[i].to_owned(),
        })
        .collect()
}

fn input(
    agents: &[&Arc<FakeAgent>],
    judge: Option<&Arc<FakeAgent>>,
    settings: DebateSettings,
) -> DebateInput {
    DebateInput {
        task: TASK.into(),
        seats: seats(agents),
        judge: judge.map(|j| Arc::clone(j) as Arc<dyn DebateAgent>),
        settings,
    }
}

async fn run_with(input: DebateInput, recorder: Recorder) -> (DebateOutcome, Arc<Recorder>) {
    let rec = Arc::new(recorder);
    let out = engine::run(input, rec.clone(), CancellationToken::new()).await;
    (out, rec)
}

async fn run(
    agents: &[&Arc<FakeAgent>],
    judge: Option<&Arc<FakeAgent>>,
    settings: DebateSettings,
) -> (DebateOutcome, Arc<Recorder>) {
    run_with(input(agents, judge, settings), Recorder::default()).await
}

/// Three agents whose votes are scripted: `(choice, confidence)` per agent.
fn voters(votes: [(&str, f64); 3]) -> [Arc<FakeAgent>; 3] {
    let names = ["alice", "bob", "carol"];
    std::array::from_fn(|i| {
        FakeAgent::new(names[i])
            .on("vote", vote(votes[i].0, votes[i].1))
            .build()
    })
}

fn sorted_matches(matches: &[MatchResult]) -> Vec<(String, String, f64)> {
    let mut out: Vec<_> = matches
        .iter()
        .map(|m| {
            // Normalise so `a` is the alphabetically smaller agent.
            if m.a <= m.b {
                (m.a.clone(), m.b.clone(), m.score_a)
            } else {
                (m.b.clone(), m.a.clone(), 1.0 - m.score_a)
            }
        })
        .collect();
    out.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)).then(x.2.total_cmp(&y.2)));
    out
}

fn m(a: &str, b: &str, score_a: f64) -> (String, String, f64) {
    (a.to_owned(), b.to_owned(), score_a)
}

// ---------------------------------------------------------------------------------------
// 1. A full debate
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn full_threshold_debate_records_every_step_in_order() {
    let second = Duration::from_secs(1);
    let agents = ["alice", "bob", "carol"].map(|n| {
        FakeAgent::new(n).on(
            "proposal",
            Step::text(format!("{n} says: monolith")).after(second),
        )
    });
    // alice 0.9 + bob 0.6 for alice, carol 1.0 for herself: alice's share is 1.5 / 2.5 = 0.6.
    let [alice, bob, carol] = agents;
    let alice = alice.on("vote", vote("alice", 0.9)).build();
    let bob = bob.on("vote", vote("ALICE", 0.6)).build();
    let carol = carol.on("vote", vote("carol", 1.0)).build();

    let started = Instant::now();
    let (out, rec) = run(
        &[&alice, &bob, &carol],
        None,
        settings(ConsensusMode::Threshold, 3),
    )
    .await;
    let elapsed = started.elapsed();

    // Three agents each taking 1 s finish the proposal phase in 1 s: they ran concurrently.
    assert!(
        elapsed >= second && elapsed < second * 2,
        "the debate took {elapsed:?}"
    );
    let proposals: Vec<Call> = [&alice, &bob, &carol]
        .iter()
        .map(|a| a.calls_in("proposal").remove(0))
        .collect();
    let first_finish = proposals.iter().map(|c| c.finished.unwrap()).min().unwrap();
    assert!(
        proposals.iter().all(|c| c.started < first_finish),
        "every proposal call started before the first one finished"
    );

    let mut expected = vec!["debate_start", "round_start"];
    expected.extend(["agent_message"; 3]);
    expected.extend(["critique"; 6]);
    expected.extend(["vote"; 3]);
    expected.extend(["consensus", "debate_end"]);
    assert_eq!(rec.kinds(), expected);

    let start = rec.last("debate_start");
    assert_eq!(start.data["task"], TASK);
    assert_eq!(start.data["agents"].as_array().unwrap().len(), 3);
    assert_eq!(start.data["consensus"], "threshold");
    assert_eq!(rec.last("round_start").round, Some(1));

    let messages = rec.of_kind("agent_message");
    for (msg, name) in messages.iter().zip(["alice", "bob", "carol"]) {
        assert_eq!(msg.round, Some(1));
        assert_eq!(msg.agent.as_deref(), Some(name));
        assert_eq!(msg.data["role"], "proposal");
        assert_eq!(msg.data["content"], format!("{name} says: monolith"));
        assert_eq!(msg.data["agent_name"], name);
        assert_eq!(msg.data["latency_ms"], 1000);
    }

    let critiques = rec.of_kind("critique");
    for c in &critiques {
        assert_eq!(c.data["parsed"], true);
        assert_ne!(
            c.agent.as_deref(),
            c.data["target"].as_str(),
            "no self-critique"
        );
    }
    let alice_targets: Vec<&str> = critiques
        .iter()
        .filter(|c| c.agent.as_deref() == Some("alice"))
        .map(|c| c.data["target"].as_str().unwrap())
        .collect();
    assert_eq!(alice_targets, ["bob", "carol"]);

    let consensus = rec.last("consensus");
    assert_eq!(consensus.round, Some(1));
    assert_eq!(consensus.data["reached"], true);
    assert_eq!(consensus.data["winner"], "alice");
    assert_eq!(consensus.data["share"], 0.6);
    assert_eq!(consensus.data["valid_votes"], 3);

    let end = rec.last("debate_end");
    assert_eq!(end.data["status"], "completed");
    assert_eq!(end.data["winner"], "alice");
    assert_eq!(end.data["rounds_used"], 1);

    assert_eq!(out.status, FinalStatus::Completed);
    assert_eq!(out.error, None);
    assert_eq!(out.rounds_used, 1);
    let r = &out.result;
    assert_eq!(r["winner"], "alice");
    assert_eq!(r["confidence"], 0.6);
    assert_eq!(r["consensus_reached"], true);
    assert_eq!(r["final_answer"], "alice says: monolith");
    let votes = r["votes"].as_array().unwrap();
    assert_eq!(votes.len(), 3);
    assert_eq!(votes[1]["voter"], "bob");
    assert_eq!(
        votes[1]["choice"], "alice",
        "case-insensitive candidate match"
    );
    assert_eq!(votes[1]["confidence"], 0.6);
    let dissent = r["dissent"].as_array().unwrap();
    assert_eq!(dissent.len(), 1);
    assert_eq!(dissent[0]["agent"], "carol");
    assert_eq!(dissent[0]["voted_for"], "carol");
    assert_eq!(r["baseline"]["winner"], "alice");
    assert_eq!(r["baseline"]["share"], 0.6);

    // 3 proposals + 3 critiques + 3 votes.
    assert_eq!(out.usage.calls, 9);
    assert_eq!(out.usage.input_tokens, 90);
    assert_eq!(out.usage.output_tokens, 45);
    assert!(!out.usage.estimated);
}

#[tokio::test(start_paused = true)]
async fn baseline_is_the_first_round_vote() {
    // Round 1 everyone votes carol; after critiques, round 2 everyone votes alice.
    let agents = ["alice", "bob", "carol"].map(|n| {
        FakeAgent::new(n)
            .on("vote", vote("carol", 1.0))
            .on("vote", vote("alice", 1.0))
            .build()
    });
    let [a, b, c] = &agents;
    let mut s = settings(ConsensusMode::Unanimous, 2);
    s.min_rounds = 2;
    let (out, rec) = run(&[a, b, c], None, s).await;

    assert_eq!(out.status, FinalStatus::Completed);
    assert_eq!(out.rounds_used, 2);
    assert_eq!(out.result["winner"], "alice");
    assert_eq!(out.result["baseline"]["winner"], "carol");
    assert_eq!(out.result["baseline"]["share"], 1.0);
    let baseline_votes = out.result["baseline"]["votes"].as_array().unwrap();
    assert!(baseline_votes.iter().all(|v| v["choice"] == "carol"));
    let consensus: Vec<(Option<u32>, Value)> = rec
        .of_kind("consensus")
        .into_iter()
        .map(|e| (e.round, e.data["winner"].clone()))
        .collect();
    assert_eq!(
        consensus,
        [(Some(1), json!("carol")), (Some(2), json!("alice"))]
    );
}

// ---------------------------------------------------------------------------------------
// 2. Consensus modes
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn majority_needs_more_than_half() {
    let [a, b, c] = &voters([("alice", 1.0), ("alice", 1.0), ("bob", 1.0)]);
    let (out, rec) = run(&[a, b, c], None, settings(ConsensusMode::Majority, 1)).await;
    assert_eq!(out.status, FinalStatus::Completed);
    assert_eq!(out.result["winner"], "alice");
    assert_eq!(rec.last("consensus").data["mode"], "majority");

    // alice 1.0 of 2.0 in total: exactly half is not a majority.
    let [a, b, c] = &voters([("alice", 1.0), ("bob", 0.6), ("carol", 0.4)]);
    let (out, rec) = run(&[a, b, c], None, settings(ConsensusMode::Majority, 1)).await;
    assert_eq!(rec.last("consensus").data["share"], 0.5);
    assert_eq!(rec.last("consensus").data["reached"], false);
    assert_eq!(out.status, FinalStatus::NoConsensus);
    assert_eq!(out.result["consensus_reached"], false);
    assert_eq!(
        out.result["winner"], "alice",
        "the leader is still reported"
    );
}

#[tokio::test(start_paused = true)]
async fn majority_counts_a_share_just_above_half() {
    // alice 1.0 + 0.0009 of 2.0009 ≈ 0.50022: a majority, although it displays as 0.5.
    let [a, b, c] = &voters([("alice", 1.0), ("alice", 0.0009), ("bob", 1.0)]);
    let (out, _) = run(&[a, b, c], None, settings(ConsensusMode::Majority, 1)).await;
    assert_eq!(out.status, FinalStatus::Completed);
}

#[tokio::test(start_paused = true)]
async fn threshold_is_reached_at_the_threshold_and_not_just_below() {
    // 1.5 / 2.5 = 0.6 exactly.
    let [a, b, c] = &voters([("alice", 0.9), ("alice", 0.6), ("carol", 1.0)]);
    let (out, _) = run(&[a, b, c], None, settings(ConsensusMode::Threshold, 1)).await;
    assert_eq!(out.status, FinalStatus::Completed);

    // Same votes, threshold 0.7.
    let [a, b, c] = &voters([("alice", 0.9), ("alice", 0.6), ("carol", 1.0)]);
    let mut s = settings(ConsensusMode::Threshold, 1);
    s.threshold = 0.7;
    let (out, rec) = run(&[a, b, c], None, s).await;
    assert_eq!(out.status, FinalStatus::NoConsensus);
    assert_eq!(rec.last("consensus").data["threshold"], 0.7);

    // 1.499 / 2.499 ≈ 0.59984: below 0.6 even though the displayed share rounds to 0.6.
    let [a, b, c] = &voters([("alice", 1.0), ("alice", 0.499), ("carol", 1.0)]);
    let (out, rec) = run(&[a, b, c], None, settings(ConsensusMode::Threshold, 1)).await;
    assert_eq!(rec.last("consensus").data["reached"], false);
    assert_eq!(out.status, FinalStatus::NoConsensus);
}

#[tokio::test(start_paused = true)]
async fn unanimous_needs_every_vote() {
    let [a, b, c] = &voters([("bob", 0.5), ("bob", 0.9), ("bob", 0.2)]);
    let (out, _) = run(&[a, b, c], None, settings(ConsensusMode::Unanimous, 1)).await;
    assert_eq!(out.status, FinalStatus::Completed);
    assert_eq!(out.result["winner"], "bob");
    assert_eq!(out.result["dissent"], json!([]));

    let [a, b, c] = &voters([("bob", 1.0), ("bob", 1.0), ("alice", 0.1)]);
    let (out, rec) = run(&[a, b, c], None, settings(ConsensusMode::Unanimous, 1)).await;
    assert_eq!(rec.last("consensus").data["reached"], false);
    assert_eq!(out.status, FinalStatus::NoConsensus);
    assert_eq!(out.result["dissent"][0]["agent"], "carol");
}

#[tokio::test(start_paused = true)]
async fn judge_ruling_decides_the_winner_and_final_answer() {
    // The votes favour alice; the judge rules for bob.
    let [a, b, c] = &voters([("alice", 1.0), ("alice", 1.0), ("alice", 1.0)]);
    let judge = FakeAgent::new("judge")
        .on(
            "judge",
            Step::text(
                "Ruling:\n```json\n{\"winner\": \"Bob\", \"confidence\": 0.8, \"reasoning\": \"most complete\", \"final_answer\": \"merged answer\"}\n```",
            ),
        )
        .build();
    let (out, rec) = run(&[a, b, c], Some(&judge), settings(ConsensusMode::Judge, 1)).await;

    assert_eq!(out.status, FinalStatus::Completed);
    assert_eq!(out.result["winner"], "bob");
    assert_eq!(out.result["final_answer"], "merged answer");
    assert_eq!(out.result["confidence"], 0.8);
    assert_eq!(out.result["judge"]["reasoning"], "most complete");
    assert_eq!(out.result["mode"], "judge");
    // Votes are taken and recorded, but only the judge's ruling is a consensus event.
    assert_eq!(rec.of_kind("vote").len(), 3);
    let consensus = rec.of_kind("consensus");
    assert_eq!(consensus.len(), 1);
    assert_eq!(consensus[0].agent.as_deref(), Some("judge"));
    assert_eq!(consensus[0].data["reached"], true);
    assert_eq!(consensus[0].data["winner"], "bob");
    assert_eq!(judge.calls_in("judge").len(), 1);
    assert_eq!(judge.calls().len(), 1, "the judge only rules");
    assert_eq!(
        sorted_matches(&out.matches),
        [m("alice", "bob", 0.0), m("bob", "carol", 1.0)]
    );
}

#[tokio::test(start_paused = true)]
async fn unparseable_judge_ruling_is_no_consensus() {
    let [a, b, c] = &voters([("alice", 1.0), ("alice", 1.0), ("alice", 1.0)]);
    let judge = FakeAgent::new("judge")
        .on("judge", Step::text("They are all fine, honestly."))
        .build();
    let (out, rec) = run(&[a, b, c], Some(&judge), settings(ConsensusMode::Judge, 1)).await;
    assert_eq!(out.status, FinalStatus::NoConsensus);
    assert_eq!(out.result["consensus_reached"], false);
    let consensus = rec.last("consensus");
    assert_eq!(consensus.data["reached"], false);
    assert_eq!(consensus.data["raw"], "They are all fine, honestly.");

    // A ruling for someone who is not a candidate is not a ruling either.
    let [a, b, c] = &voters([("alice", 1.0), ("alice", 1.0), ("alice", 1.0)]);
    let judge = FakeAgent::new("judge")
        .on(
            "judge",
            Step::text(r#"{"winner": "mallory", "confidence": 1}"#),
        )
        .build();
    let (out, _) = run(&[a, b, c], Some(&judge), settings(ConsensusMode::Judge, 1)).await;
    assert_eq!(out.status, FinalStatus::NoConsensus);
}

#[tokio::test(start_paused = true)]
async fn judge_mode_without_a_judge_fails() {
    let [a, b, c] = &voters([("alice", 1.0), ("alice", 1.0), ("alice", 1.0)]);
    let (out, _) = run(&[a, b, c], None, settings(ConsensusMode::Judge, 1)).await;
    assert_eq!(out.status, FinalStatus::Failed);
    assert!(out.error.unwrap().contains("judge"));
}

#[tokio::test(start_paused = true)]
async fn none_mode_synthesises_without_voting() {
    let agents = ["alice", "bob", "carol"].map(|n| FakeAgent::new(n).build());
    let [a, b, c] = &agents;
    let (out, rec) = run(&[a, b, c], None, settings(ConsensusMode::None, 1)).await;

    assert_eq!(out.status, FinalStatus::Completed);
    assert!(rec.of_kind("vote").is_empty());
    assert!(rec.of_kind("consensus").is_empty());
    assert!(agents.iter().all(|a| a.calls_in("vote").is_empty()));
    let synthesis = rec.last("agent_message");
    assert_eq!(synthesis.data["role"], "synthesis");
    assert_eq!(
        synthesis.agent.as_deref(),
        Some("alice"),
        "the first seat synthesises"
    );
    assert_eq!(synthesis.data["content"], "synthesis by alice");
    assert_eq!(rec.kinds().last().unwrap(), "debate_end");
    assert_eq!(out.result["final_answer"], "synthesis by alice");
    assert_eq!(out.result["winner"], Value::Null);
    assert_eq!(out.result["consensus_reached"], true);
    assert!(out.matches.is_empty(), "no votes, no Elo");

    // With a judge given, the judge synthesises.
    let agents = ["alice", "bob"].map(|n| FakeAgent::new(n).build());
    let judge = FakeAgent::new("judge").build();
    let (out, rec) = run(
        &[&agents[0], &agents[1]],
        Some(&judge),
        settings(ConsensusMode::None, 1),
    )
    .await;
    assert_eq!(out.status, FinalStatus::Completed);
    assert_eq!(rec.last("agent_message").agent.as_deref(), Some("judge"));
    assert_eq!(out.result["final_answer"], "synthesis by judge");
    assert_eq!(judge.calls_in("synthesis").len(), 1);
}

// ---------------------------------------------------------------------------------------
// 3. Revisions and convergence
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn revisions_receive_the_critiques_addressed_to_them() {
    let alice = FakeAgent::new("alice")
        .on(
            "critique",
            Step::text(
                r#"{"critiques": [{"target": "bob", "severity": 0.9, "text": "bob ignores cost"},
                                  {"target": "carol", "severity": 2, "text": "carol is too slow"}]}"#,
            ),
        )
        .build();
    let bob = FakeAgent::new("bob")
        .on(
            "critique",
            Step::text(r#"{"critiques": [{"target": "Alice", "text": "alice is too vague"}]}"#),
        )
        .build();
    let carol = FakeAgent::new("carol")
        .on("critique", Step::text("I dislike everything here."))
        .build();
    let mut s = settings(ConsensusMode::Threshold, 2);
    s.min_rounds = 2;
    let (out, rec) = run(&[&alice, &bob, &carol], None, s).await;
    assert_eq!(out.rounds_used, 2);

    let critiques = rec
        .of_kind("critique")
        .into_iter()
        .filter(|c| c.round == Some(1))
        .collect::<Vec<_>>();
    assert_eq!(critiques.len(), 4);
    assert_eq!(critiques[1].data["severity"], 1.0, "severity is clamped");
    assert_eq!(critiques[2].data["target"], "alice");
    assert_eq!(critiques[3].data["parsed"], false);
    assert_eq!(critiques[3].data["target"], Value::Null);

    let revision = |a: &FakeAgent| a.calls_in("revision").remove(0).prompt;
    let alice_prompt = revision(&alice);
    assert!(alice_prompt.contains("Your current answer:\nalice proposes an initial plan"));
    assert!(
        alice_prompt.contains("- from bob: alice is too vague"),
        "{alice_prompt}"
    );
    assert!(alice_prompt.contains("- from carol: I dislike everything here."));
    assert!(!alice_prompt.contains("bob ignores cost"));
    assert!(!alice_prompt.contains("carol is too slow"));
    assert!(alice_prompt.contains("--- Answer of bob ---"));
    assert!(!alice_prompt.contains("--- Answer of alice ---"));

    let bob_prompt = revision(&bob);
    assert!(bob_prompt.contains("- from alice: bob ignores cost"));
    assert!(bob_prompt.contains("- from carol: I dislike everything here."));
    assert!(!bob_prompt.contains("alice is too vague"));
    let carol_prompt = revision(&carol);
    assert!(carol_prompt.contains("- from alice: carol is too slow"));
    assert!(!carol_prompt.contains("from carol"));

    // Round 2 answers are revisions, and convergence is measured from round 2 on.
    let round2: Vec<Event> = rec
        .of_kind("agent_message")
        .into_iter()
        .filter(|e| e.round == Some(2))
        .collect();
    assert_eq!(round2.len(), 3);
    assert!(round2.iter().all(|e| e.data["role"] == "revision"));
    let convergence = rec.of_kind("convergence");
    assert_eq!(convergence.len(), 1);
    assert_eq!(convergence[0].round, Some(2));
    let per_agent = convergence[0].data["per_agent"].as_object().unwrap();
    assert_eq!(
        per_agent.keys().collect::<Vec<_>>(),
        ["alice", "bob", "carol"]
    );
    assert!(
        per_agent
            .values()
            .all(|v| (0.0..0.85).contains(&v.as_f64().unwrap()))
    );
    assert_ne!(convergence[0].data["status"], "converged");
    // The convergence event follows the round's answers and precedes its critiques.
    let kinds = rec.kinds();
    let at = kinds.iter().position(|k| k == "convergence").unwrap();
    assert_eq!(kinds[at - 1], "agent_message");
    assert_eq!(kinds[at + 1], "critique");
}

fn steady(name: &str) -> Arc<FakeAgent> {
    let text = format!(
        "{name} recommends a modular monolith with clear module boundaries, one database and \
         extraction of services only where load or team structure demands it"
    );
    FakeAgent::new(name)
        .on("proposal", Step::text(text.clone()))
        .on("revision", Step::text(text))
        // Everyone votes for themselves: a three-way tie, never a consensus.
        .on("vote", vote(name, 1.0))
        .build()
}

#[tokio::test(start_paused = true)]
async fn identical_revisions_converge_and_end_the_debate_early() {
    let agents = ["alice", "bob", "carol"].map(steady);
    let [a, b, c] = &agents;
    let mut s = settings(ConsensusMode::Threshold, 4);
    s.min_rounds = 2;
    let (out, rec) = run(&[a, b, c], None, s).await;

    assert_eq!(out.rounds_used, 2, "converged in round 2 of 4");
    assert_eq!(out.status, FinalStatus::NoConsensus);
    let convergence = rec.last("convergence");
    assert_eq!(convergence.round, Some(2));
    assert_eq!(convergence.data["status"], "converged");
    assert_eq!(convergence.data["min"], 1.0);
    assert_eq!(out.result["convergence"]["status"], "converged");
    assert!(rec.of_kind("round_start").len() == 2);
    assert!(agents.iter().all(|a| a.calls_in("revision").len() == 1));

    // min_rounds 3: convergence in round 2 does not end it; round 3 converges again.
    let agents = ["alice", "bob", "carol"].map(steady);
    let [a, b, c] = &agents;
    let mut s = settings(ConsensusMode::Threshold, 4);
    s.min_rounds = 3;
    let (out, rec) = run(&[a, b, c], None, s).await;
    assert_eq!(out.rounds_used, 3);
    assert_eq!(rec.of_kind("convergence").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn min_rounds_holds_the_debate_open_after_an_early_consensus() {
    let agents =
        ["alice", "bob", "carol"].map(|n| FakeAgent::new(n).on("vote", vote("bob", 1.0)).build());
    let [a, b, c] = &agents;
    let mut s = settings(ConsensusMode::Unanimous, 3);
    s.min_rounds = 2;
    let (out, rec) = run(&[a, b, c], None, s).await;

    let consensus: Vec<(Option<u32>, bool)> = rec
        .of_kind("consensus")
        .into_iter()
        .map(|e| (e.round, e.data["reached"].as_bool().unwrap()))
        .collect();
    assert_eq!(consensus, [(Some(1), true), (Some(2), true)]);
    assert_eq!(out.rounds_used, 2);
    assert_eq!(out.status, FinalStatus::Completed);

    // Without min_rounds the same debate ends after round 1.
    let agents =
        ["alice", "bob", "carol"].map(|n| FakeAgent::new(n).on("vote", vote("bob", 1.0)).build());
    let [a, b, c] = &agents;
    let (out, _) = run(&[a, b, c], None, settings(ConsensusMode::Unanimous, 3)).await;
    assert_eq!(out.rounds_used, 1);
}

#[tokio::test(start_paused = true)]
async fn no_consensus_runs_every_round() {
    let [a, b, c] = &voters([("alice", 1.0), ("bob", 1.0), ("carol", 1.0)]);
    let (out, rec) = run(&[a, b, c], None, settings(ConsensusMode::Majority, 3)).await;
    assert_eq!(out.rounds_used, 3);
    assert_eq!(out.status, FinalStatus::NoConsensus);
    assert_eq!(rec.of_kind("round_start").len(), 3);
    assert_eq!(rec.of_kind("convergence").len(), 2);
    assert_eq!(
        out.result["winner"],
        Value::Null,
        "a three-way tie has no leader"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Vote parsing
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn votes_are_parsed_tolerantly_and_bad_ones_are_recorded_but_not_counted() {
    let alice = FakeAgent::new("alice")
        .on(
            "vote",
            Step::text(
                "After weighing everything, my vote:\n```json\n{\"vote\": \"Bob\", \"confidence\": 0.7, \"reasoning\": \"clearest\"}\n```\nThanks!",
            ),
        )
        .build();
    let bob = FakeAgent::new("bob")
        .on("vote", Step::text("I think carol is best, honestly."))
        .build();
    let carol = FakeAgent::new("carol")
        .on("vote", Step::text(r#"{"vote": "dave", "confidence": 1.0}"#))
        .build();
    let (out, rec) = run(
        &[&alice, &bob, &carol],
        None,
        settings(ConsensusMode::Majority, 1),
    )
    .await;

    let votes = rec.of_kind("vote");
    assert_eq!(votes.len(), 3, "every vote is recorded");
    assert_eq!(votes[0].agent.as_deref(), Some("alice"));
    assert_eq!(votes[0].data["parsed"], true);
    assert_eq!(votes[0].data["choice"], "bob");
    assert_eq!(votes[0].data["confidence"], 0.7);
    assert_eq!(votes[0].data["reasoning"], "clearest");
    assert!(votes[0].data.get("raw").is_none());

    assert_eq!(votes[1].data["parsed"], false);
    assert_eq!(votes[1].data["choice"], Value::Null);
    assert_eq!(votes[1].data["raw"], "I think carol is best, honestly.");
    assert!(votes[1].data["error"].as_str().unwrap().contains("no JSON"));

    assert_eq!(votes[2].data["parsed"], false);
    assert!(votes[2].data["error"].as_str().unwrap().contains("dave"));
    assert_eq!(
        votes[2].data["raw"],
        r#"{"vote": "dave", "confidence": 1.0}"#
    );

    let consensus = rec.last("consensus");
    assert_eq!(consensus.data["weights"], json!({"bob": 0.7}));
    assert_eq!(consensus.data["valid_votes"], 1);
    assert_eq!(consensus.data["invalid_votes"], 2);
    assert_eq!(out.result["winner"], "bob");
    assert_eq!(out.result["votes"].as_array().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_vote_for_an_agent_that_never_answered_is_rejected() {
    // carol fails her proposal, so she is not a candidate.
    let alice = FakeAgent::new("alice")
        .on("vote", vote("carol", 1.0))
        .build();
    let bob = FakeAgent::new("bob").on("vote", vote("bob", 1.0)).build();
    let carol = FakeAgent::new("carol")
        .on("proposal", Step::fail(server_error()))
        .build();
    let (_, rec) = run(
        &[&alice, &bob, &carol],
        None,
        settings(ConsensusMode::Majority, 1),
    )
    .await;
    let votes = rec.of_kind("vote");
    assert_eq!(votes.len(), 2);
    assert_eq!(votes[0].data["parsed"], false);
    assert!(
        votes[0].data["error"]
            .as_str()
            .unwrap()
            .contains("not a candidate")
    );
    assert_eq!(rec.last("consensus").data["weights"], json!({"bob": 1.0}));
}

// ---------------------------------------------------------------------------------------
// 5. Failures
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_agent_failing_its_proposal_is_left_out_and_the_debate_goes_on() {
    let alice = FakeAgent::new("alice").on("vote", vote("bob", 1.0)).build();
    let bob = FakeAgent::new("bob").on("vote", vote("bob", 1.0)).build();
    let carol = FakeAgent::new("carol")
        .on("proposal", Step::fail(server_error()))
        .build();
    let (out, rec) = run(
        &[&alice, &bob, &carol],
        None,
        settings(ConsensusMode::Unanimous, 2),
    )
    .await;

    let error = rec.last("agent_error");
    assert_eq!(error.round, Some(1));
    assert_eq!(error.agent.as_deref(), Some("carol"));
    assert_eq!(error.data["phase"], "proposal");
    assert_eq!(error.data["kind"], "server_error");
    assert!(error.data["error"].as_str().unwrap().contains("boom"));

    assert_eq!(out.status, FinalStatus::Completed);
    assert_eq!(out.result["winner"], "bob");
    assert_eq!(rec.of_kind("agent_message").len(), 2);
    assert_eq!(carol.calls().len(), 1, "carol is left out of the rest");
    // Each of the two remaining agents critiques only the other one.
    let critiques = rec.of_kind("critique");
    assert_eq!(critiques.len(), 2);
    assert!(
        critiques
            .iter()
            .all(|c| c.data["target"] != "carol" && c.agent.as_deref() != Some("carol"))
    );
    assert!(!alice.calls_in("vote")[0].prompt.contains("carol"));
    assert_eq!(out.usage.calls, 6);
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_is_its_own_event() {
    let alice = FakeAgent::new("alice").build();
    let bob = FakeAgent::new("bob").build();
    let carol = FakeAgent::new("carol")
        .on(
            "proposal",
            Step::fail(AgentError::CircuitOpen(Duration::from_secs(30))),
        )
        .build();
    let (out, rec) = run(
        &[&alice, &bob, &carol],
        None,
        settings(ConsensusMode::Majority, 1),
    )
    .await;
    assert!(rec.of_kind("agent_error").is_empty());
    let event = rec.last("circuit_open");
    assert_eq!(event.agent.as_deref(), Some("carol"));
    assert_eq!(event.round, Some(1));
    assert_eq!(event.data["phase"], "proposal");
    assert_eq!(event.data["kind"], "circuit_open");
    assert_ne!(out.status, FinalStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn failures_in_critique_and_vote_are_recorded_with_their_phase() {
    let alice = FakeAgent::new("alice")
        .on(
            "critique",
            Step::fail(AgentError::Timeout(Duration::from_secs(60))),
        )
        .on("vote", vote("bob", 1.0))
        .build();
    let bob = FakeAgent::new("bob").on("vote", vote("bob", 1.0)).build();
    let carol = FakeAgent::new("carol")
        .on(
            "vote",
            Step::fail(AgentError::RateLimited { retry_after: None }),
        )
        .build();
    let (out, rec) = run(
        &[&alice, &bob, &carol],
        None,
        settings(ConsensusMode::Unanimous, 1),
    )
    .await;
    let errors: Vec<(String, String, String)> = rec
        .of_kind("agent_error")
        .into_iter()
        .map(|e| {
            (
                e.agent.unwrap(),
                e.data["phase"].as_str().unwrap().to_owned(),
                e.data["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            ("alice".into(), "critique".into(), "timeout".into()),
            ("carol".into(), "vote".into(), "rate_limited".into()),
        ]
    );
    assert_eq!(rec.of_kind("vote").len(), 2);
    // Two votes, both for bob: unanimous among the voters.
    assert_eq!(out.status, FinalStatus::Completed);
}

#[tokio::test(start_paused = true)]
async fn two_of_three_agents_failing_fails_the_debate() {
    let alice = FakeAgent::new("alice").build();
    let bob = FakeAgent::new("bob")
        .on(
            "proposal",
            Step::fail(AgentError::Auth {
                status: 401,
                message: "bad key".into(),
            }),
        )
        .build();
    let carol = FakeAgent::new("carol")
        .on("proposal", Step::fail(server_error()))
        .build();
    let (out, rec) = run(
        &[&alice, &bob, &carol],
        None,
        settings(ConsensusMode::Majority, 2),
    )
    .await;
    assert_eq!(out.status, FinalStatus::Failed);
    let error = out.error.unwrap();
    assert!(error.contains("round 1"), "{error}");
    assert!(error.contains("only 1 agent"), "{error}");
    assert!(out.matches.is_empty());
    assert_eq!(rec.of_kind("agent_error").len(), 2);
    assert!(rec.of_kind("critique").is_empty());
    let end = rec.last("debate_end");
    assert_eq!(end.data["status"], "failed");
    assert_eq!(end.data["error"], error.as_str());
    assert_eq!(rec.kinds().last().unwrap(), "debate_end");

    // The same in a later round names that round.
    let alice = FakeAgent::new("alice").build();
    let bob = FakeAgent::new("bob")
        .on("revision", Step::fail(server_error()))
        .build();
    let carol = FakeAgent::new("carol")
        .on("revision", Step::fail(server_error()))
        .build();
    let mut s = settings(ConsensusMode::Majority, 2);
    s.min_rounds = 2;
    let (out, _) = run(&[&alice, &bob, &carol], None, s).await;
    assert_eq!(out.status, FinalStatus::Failed);
    assert!(out.error.unwrap().contains("round 2"));
    assert!(out.matches.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_debate_timeout_keeps_what_happened_so_far() {
    let ten = Duration::from_secs(10);
    let agents = ["alice", "bob", "carol"].map(|n| {
        FakeAgent::new(n)
            .on("critique", Step::text("slow critique").after(ten))
            .build()
    });
    let [a, b, c] = &agents;
    let mut s = settings(ConsensusMode::Majority, 2);
    s.timeout = Duration::from_secs(2);
    let started = Instant::now();
    let (out, rec) = run(&[a, b, c], None, s).await;

    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(out.status, FinalStatus::Timeout);
    assert!(out.error.as_deref().unwrap().contains("2 s"));
    assert_eq!(out.rounds_used, 1);
    let mut expected = vec!["debate_start", "round_start"];
    expected.extend(["agent_message"; 3]);
    expected.push("debate_end");
    assert_eq!(rec.kinds(), expected);
    let end = rec.last("debate_end");
    assert_eq!(end.data["status"], "timeout");
    assert_eq!(end.data["rounds_used"], 1);
    assert!(out.matches.is_empty());
    assert_eq!(out.usage.calls, 3, "the proposals' usage is kept");
}

#[tokio::test(start_paused = true)]
async fn the_timeout_does_not_wait_for_slow_agents() {
    let ten = Duration::from_secs(10);
    let agents = ["alice", "bob"].map(|n| {
        FakeAgent::new(n)
            .on("proposal", Step::text("late").after(ten))
            .stubborn()
            .build()
    });
    let mut s = settings(ConsensusMode::Majority, 1);
    s.timeout = Duration::from_secs(2);
    let started = Instant::now();
    let (out, rec) = run(&[&agents[0], &agents[1]], None, s).await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(out.status, FinalStatus::Timeout);
    assert_eq!(out.rounds_used, 0);
    assert_eq!(rec.kinds(), ["debate_start", "round_start", "debate_end"]);
}

#[tokio::test(start_paused = true)]
async fn cancellation_mid_round_ends_the_debate_promptly() {
    for stubborn in [false, true] {
        let ten = Duration::from_secs(10);
        let agents = ["alice", "bob", "carol"].map(|n| {
            let a = FakeAgent::new(n).on("vote", Step::text("{}").after(ten));
            let a = if stubborn { a.stubborn() } else { a };
            a.build()
        });
        let [a, b, c] = &agents;
        let rec = Arc::new(Recorder::default());
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let handle = tokio::spawn(engine::run(
            input(&[a, b, c], None, settings(ConsensusMode::Majority, 3)),
            rec.clone(),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!handle.is_finished());
        cancel.cancel();
        let out = handle.await.unwrap();

        assert!(
            started.elapsed() < Duration::from_secs(1),
            "cancelled after {:?} (stubborn agents: {stubborn})",
            started.elapsed()
        );
        assert_eq!(out.status, FinalStatus::Cancelled);
        assert_eq!(out.error.as_deref(), Some("cancelled"));
        assert!(out.matches.is_empty());
        assert_eq!(
            rec.of_kind("agent_message").len(),
            3,
            "round 1 answers are kept"
        );
        assert!(rec.of_kind("vote").is_empty());
        assert!(
            rec.of_kind("agent_error").is_empty(),
            "cancellation is not an agent error"
        );
        assert_eq!(rec.last("debate_end").data["status"], "cancelled");
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_before_the_start_records_nothing_but_the_end() {
    let agents = ["alice", "bob"].map(|n| FakeAgent::new(n).build());
    let rec = Arc::new(Recorder::default());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let out = engine::run(
        input(
            &[&agents[0], &agents[1]],
            None,
            settings(ConsensusMode::Majority, 1),
        ),
        rec.clone(),
        cancel,
    )
    .await;
    assert_eq!(out.status, FinalStatus::Cancelled);
    assert_eq!(rec.kinds().last().unwrap(), "debate_end");
    assert!(
        agents.iter().all(|a| a.calls().is_empty()),
        "no agent is called once the debate is cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_storage_failure_fails_the_debate() {
    let agents = ["alice", "bob", "carol"].map(|n| FakeAgent::new(n).build());
    let [a, b, c] = &agents;
    // debate_start, round_start and one agent_message are stored; then the disk is full.
    let (out, rec) = run_with(
        input(&[a, b, c], None, settings(ConsensusMode::Majority, 2)),
        Recorder::failing_after(3),
    )
    .await;
    assert_eq!(out.status, FinalStatus::Failed);
    let error = out.error.unwrap();
    assert!(error.contains("could not record"), "{error}");
    assert!(error.contains("disk full"), "{error}");
    assert!(out.matches.is_empty());
    assert_eq!(
        rec.kinds(),
        ["debate_start", "round_start", "agent_message"]
    );
    assert!(
        rec.attempts.load(Ordering::SeqCst) >= 5,
        "the end marker is still attempted"
    );
    assert!(
        agents.iter().all(|a| a.calls_in("critique").is_empty()),
        "no agent is called after storage failed"
    );

    // Failing on the very first event.
    let agents = ["alice", "bob"].map(|n| FakeAgent::new(n).build());
    let (out, _) = run_with(
        input(
            &[&agents[0], &agents[1]],
            None,
            settings(ConsensusMode::Majority, 1),
        ),
        Recorder::failing_after(0),
    )
    .await;
    assert_eq!(out.status, FinalStatus::Failed);
    assert!(out.error.unwrap().contains("could not record"));
    assert!(agents.iter().all(|a| a.calls().is_empty()));
}

// ---------------------------------------------------------------------------------------
// 6. Elo matches
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn matches_follow_received_vote_weight() {
    let [a, b, c] = &voters([("alice", 1.0), ("alice", 1.0), ("bob", 1.0)]);
    let (out, _) = run(&[a, b, c], None, settings(ConsensusMode::Majority, 1)).await;
    assert_eq!(
        sorted_matches(&out.matches),
        [
            m("alice", "bob", 1.0),
            m("alice", "carol", 1.0),
            m("bob", "carol", 1.0),
        ]
    );

    // Everyone votes for themselves with equal weight: three draws (even without consensus).
    let [a, b, c] = &voters([("alice", 1.0), ("bob", 1.0), ("carol", 1.0)]);
    let (out, _) = run(&[a, b, c], None, settings(ConsensusMode::Majority, 1)).await;
    assert_eq!(out.status, FinalStatus::NoConsensus);
    assert_eq!(
        sorted_matches(&out.matches),
        [
            m("alice", "bob", 0.5),
            m("alice", "carol", 0.5),
            m("bob", "carol", 0.5),
        ]
    );

    // No valid votes: nothing to rate.
    let agents = ["alice", "bob"].map(|n| FakeAgent::new(n).on("vote", Step::text("pass")).build());
    let (out, _) = run(
        &[&agents[0], &agents[1]],
        None,
        settings(ConsensusMode::Majority, 1),
    )
    .await;
    assert!(out.matches.is_empty());
}

#[tokio::test(start_paused = true)]
async fn seats_of_the_same_agent_are_not_paired() {
    let demo = FakeAgent::new("demo")
        .on("vote", vote("demo#2", 1.0))
        .build();
    let other = FakeAgent::new("other")
        .on("vote", vote("demo#2", 1.0))
        .build();
    let seats = vec![
        Seat {
            name: "demo".into(),
            agent: demo.clone(),
            stance: "pragmatist".into(),
        },
        Seat {
            name: "demo#2".into(),
            agent: demo.clone(),
            stance: "skeptic".into(),
        },
        Seat {
            name: "other".into(),
            agent: other.clone(),
            stance: "advocate".into(),
        },
    ];
    let (out, rec) = run_with(
        DebateInput {
            task: TASK.into(),
            seats,
            judge: None,
            settings: settings(ConsensusMode::Majority, 1),
        },
        Recorder::default(),
    )
    .await;
    assert_eq!(out.status, FinalStatus::Completed);
    assert_eq!(out.result["winner"], "demo#2");
    // demo#2 (3 votes) beats other; demo (0) and other (0) draw; demo vs demo#2 is no match.
    assert_eq!(
        sorted_matches(&out.matches),
        [m("demo", "other", 0.5), m("demo", "other", 1.0)]
    );
    assert!(out.matches.iter().all(|m| m.a != m.b));
    // The one agent was called once per seat, each with its own seat name.
    let seats_called: Vec<String> = demo
        .calls_in("proposal")
        .into_iter()
        .map(|c| c.seat)
        .collect();
    assert_eq!(seats_called.len(), 2);
    assert!(
        seats_called.contains(&"demo".to_owned()) && seats_called.contains(&"demo#2".to_owned())
    );
    let messages: Vec<Option<String>> = rec
        .of_kind("agent_message")
        .into_iter()
        .map(|e| e.agent)
        .collect();
    assert_eq!(
        messages,
        [
            Some("demo".into()),
            Some("demo#2".into()),
            Some("other".into())
        ]
    );
}

// ---------------------------------------------------------------------------------------
// 7. Token deltas
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn token_deltas_stream_for_answers_only() {
    let agents = ["alice", "bob"].map(|n| FakeAgent::new(n).streaming().build());
    let mut s = settings(ConsensusMode::Majority, 2);
    s.min_rounds = 2;
    let (out, rec) = run(&[&agents[0], &agents[1]], None, s).await;
    assert_eq!(out.rounds_used, 2);

    // Chunks that arrive together are coalesced into one delta per answer; the text is
    // complete and in order, and nothing streams for critiques or votes.
    let deltas = rec.deltas();
    let mut seen: Vec<(u32, String, String)> = deltas
        .iter()
        .map(|d| (d.round, d.agent.clone(), d.text.clone()))
        .collect();
    seen.sort();
    let mut expected = Vec::new();
    for (round, phase) in [(1, "proposal"), (2, "revision")] {
        for agent in ["alice", "bob"] {
            expected.push((
                round,
                agent.to_owned(),
                format!("[{phase}] {agent} chunk 1[{phase}] {agent} chunk 2"),
            ));
        }
    }
    expected.sort();
    assert_eq!(seen, expected, "no deltas for critiques or votes");

    // Deltas are live: they arrive before the round's stored answers.
    let first_message = rec.of_kind("agent_message")[0].seq;
    let first_delta = deltas.iter().map(|d| d.seq).min().unwrap();
    assert!(first_delta < first_message);

    for agent in &agents {
        for call in agent.calls() {
            let prose = matches!(call.phase.as_str(), "proposal" | "revision");
            assert_eq!(call.stream, prose, "{} stream flag", call.phase);
            assert_eq!(call.had_sink, prose, "{} delta sink", call.phase);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn synthesis_streams_and_the_judge_does_not() {
    let agents = ["alice", "bob"].map(|n| FakeAgent::new(n).streaming().build());
    let (_, rec) = run(
        &[&agents[0], &agents[1]],
        None,
        settings(ConsensusMode::None, 1),
    )
    .await;
    assert!(
        rec.deltas()
            .iter()
            .any(|d| d.text.starts_with("[synthesis] alice chunk 1"))
    );

    let agents = ["alice", "bob"].map(|n| FakeAgent::new(n).streaming().build());
    let judge = FakeAgent::new("judge").streaming().build();
    let (out, rec) = run(
        &[&agents[0], &agents[1]],
        Some(&judge),
        settings(ConsensusMode::Judge, 1),
    )
    .await;
    assert_eq!(out.status, FinalStatus::Completed);
    assert!(rec.deltas().iter().all(|d| !d.text.starts_with("[judge]")));
    assert!(!judge.calls()[0].had_sink);
}

#[tokio::test(start_paused = true)]
async fn convergence_measures_only_the_seats_that_answered_this_round() {
    // alice and bob rewrite their answers completely; carol's revision fails. Her round-1
    // answer stays in the debate, but comparing it with itself is no evidence of
    // convergence.
    let alice = FakeAgent::new("alice").build();
    let bob = FakeAgent::new("bob").build();
    let carol = FakeAgent::new("carol")
        .on("revision", Step::fail(server_error()))
        .build();
    let mut s = settings(ConsensusMode::Majority, 2);
    s.min_rounds = 2;
    let (out, rec) = run(&[&alice, &bob, &carol], None, s).await;
    assert_eq!(out.rounds_used, 2);
    assert_eq!(rec.last("agent_error").data["phase"], "revision");
    let convergence = rec.last("convergence");
    let per_agent = convergence.data["per_agent"].as_object().unwrap();
    assert_eq!(per_agent.keys().collect::<Vec<_>>(), ["alice", "bob"]);
    // carol's stale answer is still a candidate.
    assert!(
        alice.calls_in("vote")[1]
            .prompt
            .contains("--- Answer of carol ---")
    );
}

/// The reply of a hand-written test agent: `text`, no usage, no latency.
fn plain_reply(text: String, model: &str) -> AgentReply {
    AgentReply {
        completion: Completion {
            text,
            usage: Usage::default(),
            model: model.into(),
            finish_reason: None,
        },
        latency: Duration::ZERO,
    }
}

#[tokio::test]
async fn deltas_are_coalesced_within_the_window_and_flushed_after_it() {
    // A provider that streams three words at once, pauses past the window, then two more.
    struct Paced;
    #[async_trait]
    impl DebateAgent for Paced {
        fn name(&self) -> &str {
            "paced"
        }
        fn provider(&self) -> &str {
            "test"
        }
        fn model(&self) -> &str {
            "paced"
        }
        async fn call(
            &self,
            request: &CompletionRequest,
            deltas: Option<&DeltaSink>,
            _cancel: &CancellationToken,
        ) -> Result<AgentReply, AgentError> {
            let text = if request.system.contains("Aragora-Phase: vote") {
                r#"{"vote": "paced", "confidence": 1}"#.to_owned()
            } else if let Some(sink) = deltas {
                for w in ["a ", "b ", "c "] {
                    sink.send(w);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                for w in ["d ", "e"] {
                    sink.send(w);
                }
                "a b c d e".to_owned()
            } else {
                "{}".to_owned()
            };
            Ok(plain_reply(text, "paced"))
        }
    }
    let paced: Arc<dyn DebateAgent> = Arc::new(Paced);
    let seats = vec![
        Seat {
            name: "paced".into(),
            agent: paced.clone(),
            stance: "a".into(),
        },
        Seat {
            name: "paced#2".into(),
            agent: paced,
            stance: "b".into(),
        },
    ];
    let rec = Arc::new(Recorder::default());
    let input = DebateInput {
        task: "t".into(),
        seats,
        judge: None,
        settings: settings(ConsensusMode::Majority, 1),
    };
    engine::run(input, rec.clone(), CancellationToken::new()).await;
    let mine: Vec<String> = rec
        .deltas()
        .iter()
        .filter(|d| d.agent == "paced")
        .map(|d| d.text.clone())
        .collect();
    assert_eq!(mine, vec!["a b c ".to_owned(), "d e".to_owned()]);
}

#[tokio::test]
async fn a_waiting_seat_is_not_polled_while_another_streams() {
    /// A future that counts its polls.
    struct Counted<F> {
        inner: std::pin::Pin<Box<F>>,
        polls: Arc<AtomicUsize>,
    }
    impl<F: std::future::Future> std::future::Future for Counted<F> {
        type Output = F::Output;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            self.inner.as_mut().poll(cx)
        }
    }
    /// `chatty` streams its proposal a word at a time, yielding after each, then lets
    /// `quiet` answer; `quiet` counts how often its waiting proposal call is polled.
    struct Pair {
        name: &'static str,
        release: Arc<tokio::sync::Notify>,
        polls: Arc<AtomicUsize>,
    }
    const WORDS: usize = 200;
    #[async_trait]
    impl DebateAgent for Pair {
        fn name(&self) -> &str {
            self.name
        }
        fn provider(&self) -> &str {
            "test"
        }
        fn model(&self) -> &str {
            self.name
        }
        async fn call(
            &self,
            request: &CompletionRequest,
            deltas: Option<&DeltaSink>,
            _cancel: &CancellationToken,
        ) -> Result<AgentReply, AgentError> {
            let text = if request.system.contains("Aragora-Phase: vote") {
                r#"{"vote": "chatty", "confidence": 1}"#.to_owned()
            } else if let Some(sink) = deltas {
                if self.name == "chatty" {
                    for _ in 0..WORDS {
                        sink.send("word ");
                        tokio::task::yield_now().await;
                    }
                    self.release.notify_one();
                } else {
                    Counted {
                        inner: Box::pin(self.release.notified()),
                        polls: self.polls.clone(),
                    }
                    .await;
                }
                format!("{} answers", self.name)
            } else {
                "{}".to_owned()
            };
            Ok(plain_reply(text, self.name))
        }
    }
    let release = Arc::new(tokio::sync::Notify::new());
    let polls = Arc::new(AtomicUsize::new(0));
    let seat = |name: &'static str, stance: &str| Seat {
        name: name.into(),
        agent: Arc::new(Pair {
            name,
            release: release.clone(),
            polls: polls.clone(),
        }),
        stance: stance.into(),
    };
    let rec = Arc::new(Recorder::default());
    let input = DebateInput {
        task: "t".into(),
        seats: vec![seat("chatty", "a"), seat("quiet", "b")],
        judge: None,
        settings: settings(ConsensusMode::Majority, 1),
    };
    let out = engine::run(input, rec.clone(), CancellationToken::new()).await;
    assert_eq!(out.status, FinalStatus::Completed);
    let streamed = rec.deltas().iter().filter(|d| d.agent == "chatty").count();
    assert!(streamed > 0, "chatty streamed its answer");
    // Polled when the phase starts and when it is released: not once per streamed word.
    let n = polls.load(Ordering::SeqCst);
    assert!(
        n <= 4,
        "the waiting call was polled {n} times while the other seat streamed {WORDS} words"
    );
}
