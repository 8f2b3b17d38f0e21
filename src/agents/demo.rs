//! The demo provider: deterministic, offline, always available. It lets a whole debate run
//! on a fresh machine (no keys, no network) and gives tests and benchmarks a stable agent.
//!
//! It reads the prompt conventions of the debate engine:
//!
//! - system prompt lines `Aragora-Phase: <proposal|revision|critique|vote|synthesis|judge>`,
//!   `Aragora-Stance: <free text>` and `Aragora-Seat: <seat name>`;
//! - user prompt lines `Task: <task>` and, for critique/vote/judge,
//!   `Aragora-Candidates: <seat>, <seat>, …`.
//!
//! Outputs: prose for proposal/revision/synthesis; JSON for critique
//! (`{"critiques":[{"target","severity","text"}]}`), vote (`{"vote","confidence",
//! "reasoning"}`) and judge (`{"winner","confidence","reasoning","final_answer"}`). Seats
//! whose stance mentions "skeptic", or whose name ends in `#2`, wrap their JSON in a prose
//! sentence and a ```` ```json ```` fence to exercise tolerant parsing.
//!
//! Voting: all seats (the candidates plus the voter) are ranked by a hash of the task;
//! every seat votes for the top-ranked seat, except that seat itself, which votes for the
//! runner-up. With three seats that is a 2-of-3 majority (consensus at 0.6) with one
//! dissenting voter. The judge picks the same top-ranked seat.
//!
//! Revisions converge: every seat's revision adopts the same shared recommendation (a
//! function of the task only), so a seat's consecutive revisions are identical and the
//! seats' revisions differ only in a short stance caveat.
//!
//! Model string: `demo` answers at once; `demo:<ms>` sleeps that long first (cancellable).
//! Every text starts with `[demo]` (JSON: inside the `reasoning`/`text` fields) so users
//! can tell demo agents from real ones.

use std::time::Duration;

use serde_json::json;

use super::*;

/// The deterministic offline provider (id `demo`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoProvider;

/// Longest delay a `demo:<ms>` agent may take per call (one minute): a load-test agent, not
/// a way to hold a worker until the agent timeout.
pub const MAX_DELAY_MS: u64 = 60_000;

impl DemoProvider {
    pub fn new() -> Self {
        DemoProvider
    }

    /// Delay encoded in a demo model string: `demo` → 0, `demo:<ms>` → `<ms>` ms.
    /// `demo` (no delay) or `demo:<ms>` with 0 ≤ ms ≤ [`MAX_DELAY_MS`]; anything else is not
    /// a demo model.
    pub fn parse_model(model: &str) -> Option<Duration> {
        let model = model.trim();
        if model == "demo" {
            return Some(Duration::ZERO);
        }
        let ms = model.strip_prefix("demo:")?;
        if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        ms.parse::<u64>()
            .ok()
            .filter(|ms| *ms <= MAX_DELAY_MS)
            .map(Duration::from_millis)
    }

    /// The text the demo answers to a request (without any delay).
    pub fn respond(request: &CompletionRequest) -> String {
        let prompt = Prompt::parse(request);
        match prompt.phase.as_deref() {
            Some("proposal") => proposal(&prompt),
            Some("revision") => revision(&prompt),
            Some("synthesis") => synthesis(&prompt),
            Some("critique") => critique(&prompt),
            Some("vote") => vote(&prompt),
            Some("judge") => judge(&prompt),
            _ => proposal(&prompt),
        }
    }
}

#[async_trait]
impl Provider for DemoProvider {
    fn id(&self) -> &str {
        "demo"
    }

    fn available(&self) -> bool {
        true
    }

    async fn complete(
        &self,
        model: &str,
        request: &CompletionRequest,
        deltas: Option<&DeltaSink>,
    ) -> Result<Completion, AgentError> {
        let delay = DemoProvider::parse_model(model).ok_or_else(|| AgentError::BadRequest {
            status: 400,
            message: format!("unknown demo model `{model}` (use `demo` or `demo:<ms>`)"),
        })?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let text = DemoProvider::respond(request);
        if let (true, Some(sink)) = (request.stream, deltas) {
            // One delta per word, as a model streams tokens. The words are all there at
            // once, so the call yields only when the receiver has fallen behind: a turn of
            // the scheduler per word would poll the whole debate above this call again for
            // every word (about a sixth of a debate's CPU), for frames the forwarder
            // coalesces into one anyway. A receiver polled beside the call (as the debate's
            // forwarder is, in the same task) drains within a turn or two; one that takes no
            // more after a few turns loses deltas, as with any provider.
            for piece in text.split_inclusive(' ') {
                let mut turns = 0;
                while sink.is_full() && turns < 4 {
                    tokio::task::yield_now().await;
                    turns += 1;
                }
                sink.send(piece);
            }
        }
        let mut input = request.system.clone();
        for message in &request.messages {
            input.push('\n');
            input.push_str(&message.content);
        }
        Ok(Completion {
            usage: Usage::estimate(&input, &text),
            text,
            model: model.trim().to_owned(),
            finish_reason: Some("stop".into()),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Prompt parsing
// ---------------------------------------------------------------------------------------

struct Prompt {
    phase: Option<String>,
    stance: String,
    seat: String,
    task: String,
    candidates: Vec<String>,
}

/// The value of the first line `key: value` in `text` (key compared case-insensitively).
fn header(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(key)
                .then(|| v.trim().to_owned())
        })
        .find(|v| !v.is_empty())
}

impl Prompt {
    fn parse(request: &CompletionRequest) -> Prompt {
        let user = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str());
        // Headers are looked up in the last user turn first, then anywhere.
        let everything: String = request
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let from_user = |key: &str| header(user, key).or_else(|| header(&everything, key));

        let task = from_user("Task").unwrap_or_else(|| {
            let first = user.lines().map(str::trim).find(|l| !l.is_empty());
            first.unwrap_or("the question").chars().take(200).collect()
        });
        let candidates = from_user("Aragora-Candidates")
            .map(|list| {
                let mut seen: Vec<String> = Vec::new();
                for seat in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !seen.iter().any(|s| s == seat) {
                        seen.push(seat.to_owned());
                    }
                }
                seen
            })
            .unwrap_or_default();
        Prompt {
            phase: header(&request.system, "Aragora-Phase").map(|p| p.to_ascii_lowercase()),
            stance: header(&request.system, "Aragora-Stance")
                .unwrap_or_else(|| "generalist".to_owned()),
            seat: header(&request.system, "Aragora-Seat").unwrap_or_else(|| "demo".to_owned()),
            task,
            candidates,
        }
    }

    fn profile(&self) -> &'static Profile {
        profile_for(&self.stance)
    }

    /// Whether this seat wraps JSON in prose and a fence.
    fn fenced(&self) -> bool {
        self.stance.to_ascii_lowercase().contains("skeptic") || self.seat.ends_with("#2")
    }

    /// Seats (candidates and this seat) in the task's deterministic preference order.
    fn ranking(&self) -> Vec<String> {
        let mut seats = self.candidates.clone();
        if !seats.contains(&self.seat) {
            seats.push(self.seat.clone());
        }
        seats.sort_by_key(|seat| (fnv(&[&self.task, seat]), seat.clone()));
        seats
    }

    /// The seat this seat votes for / judges best: the top-ranked candidate other than
    /// itself (itself only when it is the only candidate). Second: whether that is the
    /// overall favourite (false for the favourite's own dissenting vote).
    fn pick(&self) -> (String, bool) {
        let ranking = self.ranking();
        let eligible: Vec<&String> = ranking
            .iter()
            .filter(|s| self.candidates.contains(s) && **s != self.seat)
            .collect();
        match eligible.first() {
            Some(first) => ((*first).clone(), **first == ranking[0]),
            None => (self.seat.clone(), true),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Stances
// ---------------------------------------------------------------------------------------

struct Profile {
    /// How this stance looks at a problem.
    lens: &'static str,
    recommendation: &'static str,
    reason: &'static str,
    risk: &'static str,
    /// The caveat kept in a converged revision.
    caveat: &'static str,
    /// How its critiques open.
    critique_voice: &'static str,
}

const PRAGMATIST: Profile = Profile {
    lens: "I look for the option that delivers value soonest with the least disruption",
    recommendation: "start with the smallest change that solves the core problem, measure it for two weeks, and expand only what demonstrably works",
    reason: "Small steps keep the cost of being wrong low and produce real data instead of opinions",
    risk: "an incremental path can stall halfway if nobody owns the next step",
    caveat: "Keep the first step small enough to ship this month",
    critique_voice: "Practically speaking",
};

const SKEPTIC: Profile = Profile {
    lens: "I assume the optimistic estimates are wrong until evidence says otherwise",
    recommendation: "do not commit yet: run a time-boxed pilot with explicit success metrics and exit criteria, and decide only on its results",
    reason: "Most failures of this kind come from untested assumptions about cost, adoption and hidden dependencies",
    risk: "waiting for certainty can cost more than a reversible mistake",
    caveat: "Write the exit criteria down before the pilot starts",
    critique_voice: "As a skeptic",
};

const ADVOCATE: Profile = Profile {
    lens: "I argue for the boldest option that is still defensible",
    recommendation: "commit to the change now with a named owner and a clear deadline, because the upside clearly outweighs the risk",
    reason: "Half-hearted adoption gets the costs of change without its benefits, and momentum matters",
    risk: "moving fast can hide problems that a pilot would have surfaced",
    caveat: "Name one owner and give the pilot a real deadline",
    critique_voice: "Making the case for ambition",
};

const ANALYST: Profile = Profile {
    lens: "I compare the options against explicit criteria: cost, risk, reversibility and time to value",
    recommendation: "score the realistic options against those criteria, pick the best-scoring one, and revisit the scores after the first milestone",
    reason: "A written comparison makes the trade-offs visible and the decision reviewable",
    risk: "criteria and weights can be tuned, consciously or not, to favour a preferred answer",
    caveat: "Publish the scoring so the decision can be reviewed",
    critique_voice: "On the evidence",
};

const CONTRARIAN: Profile = Profile {
    lens: "I test the consensus by arguing the opposite of the obvious choice",
    recommendation: "before adopting the obvious answer, spend one short session making the strongest case for the alternative, then choose",
    reason: "Groups converge too early, and the unpopular option is sometimes right",
    risk: "arguing the other side can slow a decision that was already good",
    caveat: "Give the alternative one honest hearing before closing the question",
    critique_voice: "Playing devil's advocate",
};

fn profile_for(stance: &str) -> &'static Profile {
    let s = stance.to_ascii_lowercase();
    if s.contains("skeptic") || s.contains("sceptic") || s.contains("critic") {
        &SKEPTIC
    } else if s.contains("pragmat") {
        &PRAGMATIST
    } else if s.contains("advoca") || s.contains("optimis") || s.contains("champion") {
        &ADVOCATE
    } else if s.contains("analy") {
        &ANALYST
    } else if s.contains("contrar") || s.contains("devil") {
        &CONTRARIAN
    } else {
        const OTHERS: [&Profile; 5] = [&PRAGMATIST, &ANALYST, &CONTRARIAN, &SKEPTIC, &ADVOCATE];
        OTHERS[(fnv(&[stance]) % OTHERS.len() as u64) as usize]
    }
}

/// The recommendation every seat converges on in revision, synthesis and judgement.
fn shared_recommendation(task: &str) -> String {
    format!(
        "For \"{task}\", run a time-boxed pilot of the smallest viable version with one named \
         owner, agree on success metrics and exit criteria before it starts, and expand only \
         once the pilot meets them."
    )
}

// ---------------------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------------------

fn proposal(p: &Prompt) -> String {
    let profile = p.profile();
    format!(
        "[demo] {seat} ({stance}) on \"{task}\": {lens}. Recommendation: {rec}. {reason}. \
         The main risk of this approach is that {risk}, so progress should be reviewed \
         openly.",
        seat = p.seat,
        stance = p.stance,
        task = p.task,
        lens = profile.lens,
        rec = profile.recommendation,
        reason = profile.reason,
        risk = profile.risk,
    )
}

fn revision(p: &Prompt) -> String {
    format!(
        "[demo] {seat} ({stance}), revised answer: having weighed the other proposals and \
         critiques, I support the shared position. Recommendation: {shared} {caveat}.",
        seat = p.seat,
        stance = p.stance,
        shared = shared_recommendation(&p.task),
        caveat = p.profile().caveat,
    )
}

fn synthesis(p: &Prompt) -> String {
    format!(
        "[demo] Synthesis by {seat}: the debate converged. {shared} The pragmatic view keeps \
         the first step small, the skeptical view insists on exit criteria written down in \
         advance, and the advocating view asks for a real owner and deadline; the \
         recommendation above honours all three.",
        seat = p.seat,
        shared = shared_recommendation(&p.task),
    )
}

const ISSUES: [&str; 6] = [
    "does not say how success will be measured",
    "underestimates the cost of switching back if this fails",
    "leaves unclear who owns the decision and its follow-up",
    "has no rollback plan",
    "is vague about the timeline",
    "assumes adoption without explaining who has to change what",
];

fn critique(p: &Prompt) -> String {
    let profile = p.profile();
    let critiques: Vec<serde_json::Value> = p
        .candidates
        .iter()
        .filter(|target| **target != p.seat)
        .map(|target| {
            let h = fnv(&[&p.seat, target, &p.task]);
            let severity = round2(0.2 + (h % 61) as f64 / 100.0);
            let issue = ISSUES[((h >> 8) % ISSUES.len() as u64) as usize];
            json!({
                "target": target,
                "severity": severity,
                "text": format!(
                    "[demo] {}: {target}'s answer {issue}. {}.",
                    profile.critique_voice, profile.caveat
                ),
            })
        })
        .collect();
    render_json(p, "critique", json!({ "critiques": critiques }))
}

fn vote(p: &Prompt) -> String {
    let (choice, favourite) = p.pick();
    let h = fnv(&[&p.seat, &p.task, "vote"]);
    let (confidence, reasoning) = if favourite {
        (
            round2(0.7 + (h % 16) as f64 / 100.0),
            format!(
                "[demo] {} ({}) votes for {choice}: its answer is the most actionable and \
                 addresses the main risks of \"{}\".",
                p.seat, p.stance, p.task
            ),
        )
    } else {
        (
            round2(0.55 + (h % 6) as f64 / 100.0),
            format!(
                "[demo] {} ({}) votes for {choice}: among the other answers it makes the \
                 strongest case, though the choice is close.",
                p.seat, p.stance
            ),
        )
    };
    render_json(
        p,
        "vote",
        json!({ "vote": choice, "confidence": confidence, "reasoning": reasoning }),
    )
}

fn judge(p: &Prompt) -> String {
    // Judging is about the answers, so the judge's own seat is not excluded: the winner
    // is the top-ranked candidate, the same seat the majority votes for.
    let ranking = p.ranking();
    let winner = ranking
        .iter()
        .find(|s| p.candidates.contains(s))
        .cloned()
        .unwrap_or_else(|| p.seat.clone());
    render_json(
        p,
        "judgement",
        json!({
            "winner": winner,
            "confidence": 0.8,
            "reasoning": format!(
                "[demo] Judged by {} ({}): {winner}'s answer is the most concrete and the \
                 easiest to act on.",
                p.seat, p.stance
            ),
            "final_answer": format!("[demo] {}", shared_recommendation(&p.task)),
        }),
    )
}

fn render_json(p: &Prompt, what: &str, value: serde_json::Value) -> String {
    if p.fenced() {
        let pretty = serde_json::to_string_pretty(&value).unwrap_or_default();
        format!(
            "[demo] Here is my {what} as the {}:\n\n```json\n{pretty}\n```\n",
            p.stance
        )
    } else {
        value.to_string()
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// FNV-1a over the parts (separated) plus a finaliser: stable across runs, platforms and
/// Rust versions.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // murmur3's finaliser, so that inputs differing in one byte land far apart.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio::time::Instant;

    use super::*;

    const TASK: &str = "Should we migrate our monolith to microservices?";
    const SEATS: [(&str, &str); 3] = [
        ("demo", "pragmatist"),
        ("demo#2", "skeptic"),
        ("demo#3", "advocate"),
    ];

    fn request(
        phase: &str,
        seat: &str,
        stance: &str,
        candidates: Option<&str>,
    ) -> CompletionRequest {
        let system = format!(
            "You are a debater.\nAragora-Phase: {phase}\nAragora-Stance: {stance}\nAragora-Seat: {seat}\n"
        );
        let mut user = format!("Task: {TASK}\n");
        if let Some(c) = candidates {
            user.push_str(&format!("Aragora-Candidates: {c}\n"));
        }
        user.push_str("Answer now.");
        CompletionRequest::single(system, user)
    }

    async fn ask(req: &CompletionRequest) -> Completion {
        DemoProvider.complete("demo", req, None).await.unwrap()
    }

    /// The JSON inside a possibly prose-wrapped, fenced answer.
    fn extract_json(text: &str) -> serde_json::Value {
        let body = match text.find("```json") {
            Some(start) => {
                let rest = &text[start + 7..];
                &rest[..rest.find("```").expect("closing fence")]
            }
            None => text,
        };
        serde_json::from_str(body.trim()).expect("valid JSON")
    }

    #[tokio::test]
    async fn deterministic_for_identical_inputs() {
        for phase in [
            "proposal",
            "revision",
            "critique",
            "vote",
            "synthesis",
            "judge",
        ] {
            let req = request(phase, "demo#3", "advocate", Some("demo, demo#2, demo#3"));
            let a = ask(&req).await;
            let b = ask(&req).await;
            assert_eq!(a, b, "phase {phase}");
            assert!(a.usage.estimated);
            assert!(a.usage.input_tokens > 0 && a.usage.output_tokens > 0);
            assert_eq!(a.model, "demo");
        }
    }

    #[tokio::test]
    async fn proposals_differ_by_stance_and_mention_the_task() {
        let mut texts = Vec::new();
        for (seat, stance) in SEATS {
            let text = ask(&request("proposal", seat, stance, None)).await.text;
            assert!(text.starts_with("[demo]"), "{text}");
            assert!(text.contains(TASK));
            assert!(text.contains(stance));
            assert!(text.contains("Recommendation:"));
            texts.push(text);
        }
        assert_ne!(texts[0], texts[1]);
        assert_ne!(texts[1], texts[2]);
        assert_ne!(texts[0], texts[2]);
        // The recommendations themselves differ, not just the names.
        let rec = |t: &str| t.split("Recommendation:").nth(1).unwrap().to_owned();
        assert_ne!(rec(&texts[0]), rec(&texts[1]));
        assert_ne!(rec(&texts[1]), rec(&texts[2]));
    }

    #[tokio::test]
    async fn revisions_converge_on_a_shared_recommendation() {
        let mut recs = Vec::new();
        for (seat, stance) in SEATS {
            let req = request("revision", seat, stance, None);
            let first = ask(&req).await.text;
            let second = ask(&req).await.text;
            assert_eq!(first, second, "consecutive revisions are identical");
            assert!(first.starts_with("[demo]"));
            assert!(first.contains(&shared_recommendation(TASK)));
            let proposal = ask(&request("proposal", seat, stance, None)).await.text;
            assert_ne!(proposal, first);
            recs.push(first);
        }
        assert_ne!(recs[0], recs[1], "seats keep their own caveat");
    }

    #[tokio::test]
    async fn critiques_target_every_candidate_but_self() {
        for (seat, stance) in SEATS {
            let text = ask(&request(
                "critique",
                seat,
                stance,
                Some("demo, demo#2, demo#3"),
            ))
            .await
            .text;
            let v = extract_json(&text);
            let critiques = v["critiques"].as_array().unwrap();
            let targets: Vec<&str> = critiques
                .iter()
                .map(|c| c["target"].as_str().unwrap())
                .collect();
            let mut expected: Vec<&str> =
                SEATS.iter().map(|s| s.0).filter(|s| *s != seat).collect();
            expected.sort();
            let mut sorted = targets.clone();
            sorted.sort();
            assert_eq!(sorted, expected, "seat {seat}");
            for c in critiques {
                let severity = c["severity"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&severity));
                assert!(c["text"].as_str().unwrap().starts_with("[demo]"));
            }
        }
    }

    #[tokio::test]
    async fn skeptic_and_second_seat_wrap_json_in_a_fence() {
        let skeptic = ask(&request("vote", "demo#5", "skeptic", Some("demo, demo#5")))
            .await
            .text;
        assert!(skeptic.starts_with("[demo] Here is my vote"));
        assert!(skeptic.contains("```json\n"));
        extract_json(&skeptic);
        let plain = ask(&request("vote", "demo", "pragmatist", Some("demo, demo#5")))
            .await
            .text;
        assert!(plain.starts_with('{'));
        serde_json::from_str::<serde_json::Value>(&plain).unwrap();
        let second = ask(&request(
            "judge",
            "demo#2",
            "advocate",
            Some("demo, demo#3"),
        ))
        .await
        .text;
        assert!(second.contains("```json"));
    }

    #[tokio::test]
    async fn three_seat_vote_has_majority_and_one_dissenter() {
        let candidates = "demo, demo#2, demo#3";
        let mut tally: HashMap<String, u32> = HashMap::new();
        let mut voters_for: HashMap<String, String> = HashMap::new();
        for (seat, stance) in SEATS {
            let v = extract_json(
                &ask(&request("vote", seat, stance, Some(candidates)))
                    .await
                    .text,
            );
            let choice = v["vote"].as_str().unwrap().to_owned();
            assert_ne!(choice, seat, "never votes for itself");
            let confidence = v["confidence"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&confidence));
            assert!(v["reasoning"].as_str().unwrap().starts_with("[demo]"));
            *tally.entry(choice.clone()).or_default() += 1;
            voters_for.insert(seat.to_owned(), choice);
        }
        let (winner, votes) = tally.iter().max_by_key(|(_, n)| **n).unwrap();
        assert_eq!(*votes, 2, "{tally:?}");
        assert!(f64::from(*votes) / 3.0 >= 0.6);
        // The dissenter is the winner itself (it may not vote for itself).
        assert_ne!(&voters_for[winner], winner);

        // The same result when the engine lists only the other seats.
        let mut tally2: HashMap<String, u32> = HashMap::new();
        for (seat, stance) in SEATS {
            let others: Vec<&str> = SEATS.iter().map(|s| s.0).filter(|s| *s != seat).collect();
            let v = extract_json(
                &ask(&request("vote", seat, stance, Some(&others.join(", "))))
                    .await
                    .text,
            );
            *tally2
                .entry(v["vote"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        assert_eq!(tally, tally2);

        // Every judge, whichever seat it sits in, agrees with the majority.
        for (seat, stance) in SEATS {
            let j = extract_json(
                &ask(&request("judge", seat, stance, Some(candidates)))
                    .await
                    .text,
            );
            assert_eq!(j["winner"].as_str().unwrap(), winner, "judge {seat}");
            assert!(j["final_answer"].as_str().unwrap().starts_with("[demo]"));
            assert!(j["reasoning"].as_str().unwrap().starts_with("[demo]"));
            assert!((0.0..=1.0).contains(&j["confidence"].as_f64().unwrap()));
        }
    }

    #[test]
    fn every_task_gets_a_two_to_one_majority_and_winners_vary() {
        let mut winners = std::collections::HashSet::new();
        for i in 0..30 {
            let task = format!("Task number {i}: choose a queue");
            let mut tally: HashMap<String, u32> = HashMap::new();
            for (seat, stance) in SEATS {
                let req = CompletionRequest::single(
                    format!("Aragora-Phase: vote\nAragora-Stance: {stance}\nAragora-Seat: {seat}"),
                    format!("Task: {task}\nAragora-Candidates: demo, demo#2, demo#3"),
                );
                let v = extract_json(&DemoProvider::respond(&req));
                let choice = v["vote"].as_str().unwrap().to_owned();
                assert_ne!(choice, seat);
                *tally.entry(choice).or_default() += 1;
            }
            let mut counts: Vec<u32> = tally.values().copied().collect();
            counts.sort();
            assert_eq!(counts, vec![1, 2], "task {i}: {tally:?}");
            winners.insert(tally.into_iter().find(|(_, n)| *n == 2).unwrap().0);
        }
        assert_eq!(winners.len(), 3, "the favourite depends on the task");
    }

    #[tokio::test]
    async fn votes_for_itself_only_when_it_is_the_only_candidate() {
        let v = extract_json(
            &ask(&request("vote", "demo", "pragmatist", Some("demo")))
                .await
                .text,
        );
        assert_eq!(v["vote"], "demo");
    }

    #[tokio::test]
    async fn synthesis_is_prose_with_the_shared_recommendation() {
        let text = ask(&request("synthesis", "demo", "pragmatist", None))
            .await
            .text;
        assert!(text.starts_with("[demo] Synthesis"));
        assert!(text.contains(&shared_recommendation(TASK)));
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
    }

    #[tokio::test]
    async fn streams_word_deltas_that_add_up_to_the_text() {
        let mut req = request("proposal", "demo", "pragmatist", None);
        req.stream = true;
        let (sink, mut rx) = DeltaSink::new(1024);
        let completion = DemoProvider
            .complete("demo", &req, Some(&sink))
            .await
            .unwrap();
        drop(sink);
        let mut deltas = Vec::new();
        while let Some(d) = rx.recv().await {
            deltas.push(d);
        }
        assert!(deltas.len() > 5);
        assert!(deltas.iter().all(|d| d.split_whitespace().count() <= 1));
        assert_eq!(deltas.concat(), completion.text);
    }

    /// A receiver with room for a few deltas at a time, drained beside the call the way a
    /// debate forwards them: every word still arrives, in order, because the call yields
    /// whenever the receiver is full.
    #[tokio::test]
    async fn a_full_receiver_makes_the_stream_wait_not_drop() {
        let mut req = request("proposal", "demo", "pragmatist", None);
        req.stream = true;
        let (sink, mut rx) = DeltaSink::new(3);
        let call = async {
            let completion = DemoProvider
                .complete("demo", &req, Some(&sink))
                .await
                .unwrap();
            drop(sink);
            completion
        };
        let drain = async {
            let mut deltas = Vec::new();
            while let Some(d) = rx.recv().await {
                deltas.push(d);
            }
            deltas
        };
        let (completion, deltas) = tokio::join!(call, drain);
        assert!(deltas.len() > 3 * 5, "{} deltas", deltas.len());
        assert!(deltas.iter().all(|d| d.split_whitespace().count() <= 1));
        assert_eq!(deltas.concat(), completion.text);
    }

    #[tokio::test(start_paused = true)]
    async fn demo_ms_model_delays_the_answer() {
        let req = request("proposal", "demo", "pragmatist", None);
        let started = Instant::now();
        let c = DemoProvider
            .complete("demo:1500", &req, None)
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert_eq!(c.model, "demo:1500");
        let started = Instant::now();
        DemoProvider.complete("demo", &req, None).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(matches!(
            DemoProvider.complete("demo:soon", &req, None).await,
            Err(AgentError::BadRequest { .. })
        ));
    }

    #[test]
    fn parses_demo_model_strings() {
        assert_eq!(DemoProvider::parse_model("demo"), Some(Duration::ZERO));
        assert_eq!(
            DemoProvider::parse_model("demo:250"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(DemoProvider::parse_model("demo:"), None);
        assert_eq!(DemoProvider::parse_model("demo:-1"), None);
        assert_eq!(DemoProvider::parse_model("gpt-4o"), None);
    }

    #[tokio::test]
    async fn prompts_without_headers_still_get_a_demo_answer() {
        let req = CompletionRequest::single("Be helpful.", "What is the capital of France?");
        let text = ask(&req).await.text;
        assert!(text.starts_with("[demo] demo (generalist)"));
        assert!(text.contains("What is the capital of France?"));
        assert!(DemoProvider.available());
        assert_eq!(DemoProvider.id(), "demo");
    }
}
