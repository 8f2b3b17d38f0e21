//! What a receipt says, taken from a finished debate's record and event log, and the two
//! documents it is issued as: the native receipt (`GET /api/v2/receipts/{id}`) and the
//! Open Decision Receipt (ODR) in profiles 0.1 and 0.2, signed with Ed25519.
//!
//! ODR signing (profile §6): `odr_digest = hex(SHA-256(JCS(document without "signatures")))`.
//! A 0.1 signature signs the 32 digest bytes; a 0.2 signature signs
//! `JCS({"odr_digest", "odr_signature_input": "0.2", "protected": <entry without "signature">})`,
//! so the entry's issuer, role and signed_at are covered too.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::chain::{self, CHAIN_ALG};
use super::keys::Signer;
use crate::store::{DebateRecord, DebateStatus, StoredEvent};

/// The ODR profiles a receipt is exported in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OdrVersion {
    V01,
    V02,
}

impl OdrVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            OdrVersion::V01 => "0.1",
            OdrVersion::V02 => "0.2",
        }
    }

    pub fn parse(text: &str) -> Option<OdrVersion> {
        match text {
            "0.1" => Some(OdrVersion::V01),
            "0.2" => Some(OdrVersion::V02),
            _ => None,
        }
    }

    pub fn profile(self) -> String {
        format!(
            "https://aragora.ai/specs/open-decision-receipt/v{}",
            self.as_str()
        )
    }
}

/// One participant of the quorum: a seat (or the judge), its provider and model.
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    pub agent: String,
    pub provider: String,
    pub model: String,
}

/// An agent that failed during the debate (a 0.2 `reasoning.observations` entry).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub kind: &'static str,
    pub family: String,
    pub detail: String,
}

/// A debate's log as a receipt needs it.
pub struct LogSummary<'a> {
    pub chain_head: String,
    pub event_count: usize,
    /// The events a receipt states something of ([`is_stated`]), in seq order; may hold
    /// others.
    pub stated: &'a [StoredEvent],
}

impl<'a> LogSummary<'a> {
    /// The summary of a whole log read back.
    pub fn of(events: &'a [StoredEvent]) -> Self {
        LogSummary {
            chain_head: chain::chain_head_of_stored(events),
            event_count: events.len(),
            stated: events,
        }
    }
}

/// Whether a receipt states anything of events of `kind`: the seats of `debate_start`, the
/// last `consensus`, failures (`agent_error`, `circuit_open`) and critiques (the cruxes).
pub fn is_stated(kind: &str) -> bool {
    matches!(
        kind,
        "debate_start" | "consensus" | "agent_error" | "circuit_open" | "critique"
    )
}

/// A debate's log folded as the recorder writes it: the hash chain and the events a receipt
/// states. Kept by the instance running the debate, so its receipt is issued without
/// reading the log back; folding stops being possible (and the receipt reads the log) when
/// the log has a gap this instance did not write.
#[derive(Debug, Clone, Default)]
pub struct FoldedLog {
    chain: chain::ChainFold,
    stated: Vec<StoredEvent>,
}

impl FoldedLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds in the next events written. `false` when one is not the next seq.
    pub fn push(&mut self, events: &[StoredEvent]) -> bool {
        for e in events {
            if !self.chain.push(e) {
                return false;
            }
            if is_stated(&e.kind) {
                self.stated.push(e.clone());
            }
        }
        true
    }

    pub fn summary(&self) -> LogSummary<'_> {
        LogSummary {
            chain_head: self.chain.head(),
            event_count: self.chain.count(),
            stated: &self.stated,
        }
    }
}

/// Everything a receipt states, gathered once from the finished debate.
#[derive(Debug, Clone)]
pub struct Facts {
    pub receipt_id: String,
    pub debate_id: String,
    pub task: String,
    pub issued_at: String,
    /// `consensus` or `no_consensus`.
    pub verdict: &'static str,
    pub consensus_reached: bool,
    pub final_answer: Option<String>,
    pub confidence: f64,
    pub mode: String,
    pub rounds_used: i32,
    pub winner: Option<String>,
    pub participants: Vec<Participant>,
    pub supporting: Vec<String>,
    pub dissenting: Vec<String>,
    pub dissent_views: Vec<String>,
    /// (voter, what it voted for) of the final vote.
    pub votes: Vec<(String, Option<String>)>,
    pub reasoning: String,
    pub observations: Vec<Observation>,
    pub cruxes: Vec<Value>,
    pub chain_head: String,
    pub event_count: usize,
    /// The instance that ran the debate to its end.
    pub instance: Option<String>,
}

/// Longest text a receipt copies from a critique or a vote's reasoning.
const EXCERPT_CHARS: usize = 500;

fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

impl Facts {
    /// Gather the facts of a debate that ended `completed` or `no_consensus`. `judge_model`
    /// resolves the judge agent's (provider, model) when the debate had one.
    pub fn gather(
        record: &DebateRecord,
        events: &[StoredEvent],
        receipt_id: String,
        issued_at: String,
        judge_model: &dyn Fn(&str) -> Option<(String, String)>,
    ) -> Facts {
        Self::gather_from(
            record,
            &LogSummary::of(events),
            receipt_id,
            issued_at,
            judge_model,
        )
    }

    /// [`gather`](Self::gather) from a summary of the log: its chain head, its length and
    /// the events a receipt states something of (any others are passed over).
    pub fn gather_from(
        record: &DebateRecord,
        log: &LogSummary<'_>,
        receipt_id: String,
        issued_at: String,
        judge_model: &dyn Fn(&str) -> Option<(String, String)>,
    ) -> Facts {
        let events = log.stated;
        let result = record.result.clone().unwrap_or(Value::Null);
        let mode = result["mode"]
            .as_str()
            .unwrap_or(record.consensus.as_str())
            .to_owned();
        let consensus_reached = result["consensus_reached"].as_bool().unwrap_or(false);
        let winner = result["winner"].as_str().map(str::to_owned);
        let final_answer = result["final_answer"]
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let confidence = result["confidence"]
            .as_f64()
            .filter(|c| c.is_finite())
            .unwrap_or(0.0)
            .clamp(0.0, 1.0);

        let mut participants: Vec<Participant> = Vec::new();
        let mut last_consensus: Option<Value> = None;
        let mut observations = Vec::new();
        let mut critiques: Vec<(i32, Value)> = Vec::new();
        for e in events {
            match e.kind.as_str() {
                "debate_start" => {
                    for seat in e.data["agents"].as_array().into_iter().flatten() {
                        participants.push(Participant {
                            agent: seat["seat"].as_str().unwrap_or_default().to_owned(),
                            provider: seat["provider"]
                                .as_str()
                                .unwrap_or("undisclosed")
                                .to_owned(),
                            model: seat["model"].as_str().unwrap_or("undisclosed").to_owned(),
                        });
                    }
                }
                "consensus" => last_consensus = Some(e.data.clone()),
                "agent_error" | "circuit_open" => {
                    let kind = e.data["kind"].as_str().unwrap_or(e.kind.as_str());
                    let seat = e.agent.clone().unwrap_or_default();
                    observations.push((seat, kind.to_owned(), e.data.clone()));
                }
                "critique" => {
                    if let Some(severity) = e.data["severity"].as_f64() {
                        critiques.push((
                            e.round.unwrap_or(0),
                            json!({
                                "agent": e.agent,
                                "target": e.data["target"],
                                "severity": severity,
                                "text": excerpt(e.data["text"].as_str().unwrap_or_default()),
                            }),
                        ));
                    }
                }
                _ => {}
            }
        }
        participants.retain(|p| !p.agent.is_empty());
        let provider_of = |seat: &str| {
            participants
                .iter()
                .find(|p| p.agent == seat)
                .map_or_else(|| "undisclosed".into(), |p| p.provider.clone())
        };
        let observations: Vec<Observation> = observations
            .into_iter()
            .map(|(seat, kind, data)| Observation {
                kind: if kind.contains("timeout") {
                    "timeout"
                } else {
                    "failure"
                },
                family: provider_of(&seat),
                detail: excerpt(&format!(
                    "{seat} ({}): {}",
                    data["phase"].as_str().unwrap_or("call"),
                    data["error"].as_str().unwrap_or(&kind)
                )),
            })
            .collect();

        let judge = (mode == "judge")
            .then(|| record.options["judge"].as_str().map(str::to_owned))
            .flatten();
        if let Some(judge) = &judge
            && !participants.iter().any(|p| &p.agent == judge)
        {
            let (provider, model) =
                judge_model(judge).unwrap_or_else(|| ("undisclosed".into(), "undisclosed".into()));
            participants.push(Participant {
                agent: judge.clone(),
                provider,
                model,
            });
        }

        let votes: Vec<(String, Option<String>, String)> = result["votes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                Some((
                    v["voter"].as_str()?.to_owned(),
                    v["choice"].as_str().map(str::to_owned),
                    v["reasoning"].as_str().unwrap_or_default().to_owned(),
                ))
            })
            .collect();
        let known = |agent: &str| participants.iter().any(|p| p.agent == agent);
        let (supporting, dissenting, dissent_views) = if let Some(judge) = &judge {
            (vec![judge.clone()], Vec::new(), Vec::new())
        } else {
            let mut supporting = Vec::new();
            let mut dissenting = Vec::new();
            let mut views = Vec::new();
            for (voter, choice, reasoning) in &votes {
                if !known(voter) {
                    continue;
                }
                match (choice, &winner) {
                    (Some(c), Some(w)) if c == w => supporting.push(voter.clone()),
                    (Some(c), _) => {
                        dissenting.push(voter.clone());
                        views.push(excerpt(&format!("{voter} voted for {c}: {reasoning}")));
                    }
                    (None, _) => {}
                }
            }
            (supporting, dissenting, views)
        };

        let rounds_used = record.rounds_used;
        let reasoning = match (&judge, &last_consensus) {
            (Some(judge), _) => {
                let why = result["judge"]["reasoning"]
                    .as_str()
                    .unwrap_or_default()
                    .trim();
                if why.is_empty() {
                    format!(
                        "The judge {judge} ruled for {} after {rounds_used} round(s).",
                        winner.as_deref().unwrap_or("no proposal")
                    )
                } else {
                    format!("The judge {judge} ruled: {}", excerpt(why))
                }
            }
            _ if mode == "none" => format!(
                "No vote was taken (mode none): the agents' final answers were synthesised after \
                 {rounds_used} round(s)."
            ),
            (None, consensus) => {
                let share = consensus
                    .as_ref()
                    .and_then(|c| c["share"].as_f64())
                    .unwrap_or(confidence);
                let threshold = consensus.as_ref().and_then(|c| c["threshold"].as_f64());
                let threshold = threshold
                    .map(|t| format!(", threshold {t}"))
                    .unwrap_or_default();
                match &winner {
                    Some(w) => format!(
                        "{} of {} agents voted for {w} (weighted share {share:.2}{threshold}, mode \
                         {mode}) after {rounds_used} round(s) of proposals, critiques and revisions; \
                         consensus {}.",
                        supporting.len(),
                        votes.len(),
                        if consensus_reached {
                            "reached"
                        } else {
                            "not reached"
                        }
                    ),
                    None => format!(
                        "No proposal received a valid vote after {rounds_used} round(s) (mode \
                         {mode}); consensus not reached."
                    ),
                }
            }
        };

        // Cruxes: the sharpest critiques of the last round that had any.
        let crux_round = critiques.iter().map(|(r, _)| *r).max();
        let mut cruxes: Vec<Value> = critiques
            .into_iter()
            .filter(|(r, _)| Some(*r) == crux_round)
            .map(|(_, c)| c)
            .collect();
        cruxes.sort_by(|a, b| {
            b["severity"]
                .as_f64()
                .partial_cmp(&a["severity"].as_f64())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        cruxes.truncate(3);

        Facts {
            receipt_id,
            debate_id: record.id.clone(),
            task: record.task.clone(),
            issued_at,
            verdict: if record.status == DebateStatus::Completed {
                "consensus"
            } else {
                "no_consensus"
            },
            consensus_reached,
            final_answer,
            confidence,
            mode,
            rounds_used,
            winner,
            participants,
            supporting,
            dissenting,
            dissent_views,
            votes: votes.into_iter().map(|(v, c, _)| (v, c)).collect(),
            reasoning,
            observations,
            cruxes,
            chain_head: log.chain_head.clone(),
            event_count: log.event_count,
            instance: record.instance.clone(),
        }
    }

    fn families(&self) -> Vec<String> {
        self.participants
            .iter()
            .map(|p| p.provider.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// The native receipt: the record the API lists and returns.
    pub fn native(&self, key_id: Option<&str>, issuer: &str) -> Value {
        json!({
            "receipt_id": self.receipt_id,
            "debate_id": self.debate_id,
            "issued_at": self.issued_at,
            "issuer": issuer,
            "task": self.task,
            "verdict": self.verdict,
            "consensus_reached": self.consensus_reached,
            "final_answer": self.final_answer,
            "confidence": self.confidence,
            "mode": self.mode,
            "rounds_used": self.rounds_used,
            "winner": self.winner,
            "participating_agents": self.participants.iter().map(|p| json!({
                "agent": p.agent, "provider": p.provider, "model": p.model,
            })).collect::<Vec<_>>(),
            "supporting_agents": self.supporting,
            "dissenting_agents": self.dissenting,
            "dissent": self.dissent_views,
            "reasoning": self.reasoning,
            "transcript_digest": {
                "alg": CHAIN_ALG,
                "value": self.chain_head,
                "event_count": self.event_count,
            },
            "key_id": key_id,
            "signed": key_id.is_some(),
            "odr_versions": ["0.1", "0.2"],
        })
    }

    /// The unsigned ODR document of `version` (`signatures: []`).
    pub fn odr(&self, version: OdrVersion) -> Value {
        let v02 = version == OdrVersion::V02;
        let participants: Vec<Value> = self
            .participants
            .iter()
            .map(|p| json!({"agent": p.agent, "model_family": p.provider, "model_id": p.model}))
            .collect();
        let families = self.families();
        let mut quorum = json!({
            "status": "present",
            "method": self.mode,
            "reached": self.consensus_reached,
            "supporting_agents": self.supporting,
            "participants": participants,
            "independence": {
                "disclosed": true,
                "distinct_model_families": families.len(),
                "model_families": families,
            },
            "dissent": {
                "present": !self.dissenting.is_empty(),
                "dissenting_agents": self.dissenting,
                "views": self.dissent_views,
            },
        });
        if v02 && !self.votes.is_empty() {
            let by_agent: BTreeMap<&str, &Participant> = self
                .participants
                .iter()
                .map(|p| (p.agent.as_str(), p))
                .collect();
            let verdicts: Vec<Value> = self
                .votes
                .iter()
                .filter_map(|(voter, choice)| {
                    let p = by_agent.get(voter.as_str())?;
                    Some(json!({
                        "issuer": voter,
                        "verdict": choice.clone().unwrap_or_else(|| "invalid".into()),
                        "model_family": p.provider,
                        "model_id": p.model,
                    }))
                })
                .collect();
            quorum["verdicts"] = Value::Array(verdicts);
        }
        let mut reasoning = json!({"status": "present", "summary": self.reasoning});
        if v02 && !self.observations.is_empty() {
            reasoning["observations"] = self
                .observations
                .iter()
                .map(|o| json!({"kind": o.kind, "family": o.family, "detail": o.detail}))
                .collect();
        }
        let cruxes = if self.cruxes.is_empty() {
            json!({"status": "absent", "reason": "no critique in the debate carried a severity"})
        } else {
            json!({"status": "present", "items": self.cruxes})
        };
        json!({
            "odr_version": version.as_str(),
            "profile": version.profile(),
            "receipt_id": self.receipt_id,
            "issued_at": self.issued_at,
            "subject": {
                "identifier": self.debate_id,
                "summary": self.task,
                "digest": {"status": "present", "alg": CHAIN_ALG, "value": self.chain_head},
            },
            "claim": {
                "verdict": self.verdict,
                "statement": match &self.final_answer {
                    Some(answer) => json!(answer),
                    None => json!({"status": "absent", "reason": "the debate produced no final answer"}),
                },
            },
            "reasoning": reasoning,
            "quorum": quorum,
            "confidence": {
                "status": "present",
                "value": self.confidence,
                "scale": "unit_interval",
                "calibration": {
                    "status": "absent",
                    "reason": "the confidence is the winning weighted vote share (or the judge's \
                               own estimate); it is not calibrated against outcomes",
                },
            },
            "cruxes": cruxes,
            "attestation": {
                "disposition": "autonomous",
                "execution_identity": {
                    "id": self.instance.clone().unwrap_or_else(|| "aragora".into()),
                    "role": "debate_runner",
                },
            },
            "routing": {"status": "reserved"},
            "source": {
                "system": "aragora",
                "schema": "aragora.debate.receipt",
                "schema_version": "1",
                "receipt_id": self.receipt_id,
            },
            "signatures": [],
        })
    }
}

/// `odr_digest`: hex SHA-256 of the JCS bytes of the document without `signatures`.
pub fn odr_digest(doc: &Value) -> String {
    let body = match doc {
        Value::Object(_) => chain::canonical_without(doc, "signatures"),
        // Not an object: digested as the empty object, as before.
        _ => chain::canonical(&Value::Object(Map::new())),
    };
    chain::hex(&Sha256::digest(body))
}

/// The bytes a signature entry signs, by the document's version (no fallback between them).
pub fn signature_message(version: OdrVersion, digest_hex: &str, entry: &Value) -> Vec<u8> {
    match version {
        OdrVersion::V01 => (0..digest_hex.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(digest_hex.get(i..i + 2)?, 16).ok())
            .collect(),
        OdrVersion::V02 => {
            let mut protected = entry.as_object().cloned().unwrap_or_default();
            protected.remove("signature");
            chain::canonical(&json!({
                "odr_digest": digest_hex,
                "odr_signature_input": "0.2",
                "protected": Value::Object(protected),
            }))
        }
    }
}

/// Sign `doc` (its `signatures` replaced by one emitter signature).
pub fn sign(doc: &mut Value, version: OdrVersion, signer: &Signer, issuer: &str, signed_at: &str) {
    let digest = odr_digest(doc);
    let mut entry = match version {
        OdrVersion::V01 => json!({"alg": "Ed25519", "key_id": signer.key_id()}),
        OdrVersion::V02 => json!({
            "alg": "Ed25519",
            "key_id": signer.key_id(),
            "issuer": issuer,
            "role": "emitter",
            "signed_at": signed_at,
        }),
    };
    let signature = signer.sign(&signature_message(version, &digest, &entry));
    entry["signature"] =
        json!(base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()));
    doc["signatures"] = json!([entry]);
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::receipts::verify::{Status, verify};

    fn event(
        seq: i64,
        kind: &str,
        round: Option<i32>,
        agent: Option<&str>,
        data: Value,
    ) -> StoredEvent {
        StoredEvent {
            debate_id: "d1".into(),
            seq,
            kind: kind.into(),
            round,
            agent: agent.map(str::to_owned),
            data,
            timestamp: chrono::DateTime::parse_from_rfc3339("2026-12-03T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    fn debate() -> (DebateRecord, Vec<StoredEvent>) {
        let seats = json!([
            {"seat": "claude", "agent": "claude", "provider": "anthropic", "model": "claude-x", "stance": "neutral"},
            {"seat": "gpt", "agent": "gpt", "provider": "openai", "model": "gpt-x", "stance": "neutral"},
            {"seat": "demo", "agent": "demo", "provider": "demo", "model": "demo", "stance": "skeptic"},
        ]);
        let events = vec![
            event(
                1,
                "debate_start",
                None,
                None,
                json!({"task": "t", "agents": seats}),
            ),
            event(
                2,
                "critique",
                Some(1),
                Some("gpt"),
                json!({"target": "claude", "severity": 0.9, "text": "too vague"}),
            ),
            event(
                3,
                "critique",
                Some(1),
                Some("demo"),
                json!({"target": "gpt", "severity": 0.2, "text": "minor"}),
            ),
            event(
                4,
                "agent_error",
                Some(1),
                Some("demo"),
                json!({"phase": "vote", "kind": "timeout", "error": "no answer in 30 s"}),
            ),
            event(
                5,
                "consensus",
                Some(1),
                None,
                json!({"reached": true, "mode": "threshold", "share": 0.66, "threshold": 0.6}),
            ),
            event(6, "debate_end", None, None, json!({"status": "completed"})),
        ];
        let record = DebateRecord {
            id: "d1".into(),
            task: "Adopt Rust?".into(),
            status: DebateStatus::Completed,
            instance: Some("host:8080".into()),
            agents: vec!["claude".into(), "gpt".into(), "demo".into()],
            rounds: 1,
            rounds_used: 1,
            consensus: "threshold".into(),
            owner_id: None,
            correlation_id: None,
            options: json!({}),
            result: Some(json!({
                "final_answer": "Yes, with a pilot.", "consensus_reached": true, "confidence": 0.66,
                "winner": "claude", "mode": "threshold",
                "votes": [
                    {"voter": "claude", "choice": "claude", "reasoning": "mine", "confidence": 1.0, "parsed": true},
                    {"voter": "gpt", "choice": "claude", "reasoning": "good", "confidence": 1.0, "parsed": true},
                    {"voter": "demo", "choice": "gpt", "reasoning": "safer", "confidence": 1.0, "parsed": true},
                ],
            })),
            error: None,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            receipt_id: None,
        };
        (record, events)
    }

    fn facts() -> Facts {
        let (record, events) = debate();
        Facts::gather(
            &record,
            &events,
            "rcpt-1".into(),
            "2026-12-03T10:00:00.000Z".into(),
            &|_| None,
        )
    }

    /// The log folded in the pieces it was written in states what the whole log states:
    /// the same receipt, chain and count, keeping only the events a receipt states.
    #[test]
    fn a_log_folded_as_written_gives_the_receipt_of_the_whole_log() {
        let (record, events) = debate();
        let mut folded = FoldedLog::new();
        assert!(folded.push(&events[..2]));
        assert!(folded.push(&[]));
        assert!(folded.push(&events[2..]));
        let summary = folded.summary();
        assert_eq!(summary.chain_head, chain::chain_head_of_stored(&events));
        assert_eq!(summary.event_count, events.len());
        assert_eq!(summary.stated.len(), 5, "debate_end is not kept");
        let from_fold = Facts::gather_from(
            &record,
            &summary,
            "rcpt-1".into(),
            "2026-12-03T10:00:00.000Z".into(),
            &|_| None,
        );
        assert_eq!(
            from_fold.native(Some("k1"), "aragora"),
            facts().native(Some("k1"), "aragora")
        );
        for v in [OdrVersion::V01, OdrVersion::V02] {
            assert_eq!(from_fold.odr(v), facts().odr(v));
        }
    }

    /// A gap (an event written by someone else) or a log that does not start at seq 1
    /// cannot be folded: the receipt then reads the log.
    #[test]
    fn a_gap_in_the_log_stops_the_fold() {
        let (_, events) = debate();
        let mut folded = FoldedLog::new();
        assert!(!folded.push(&events[1..2]), "starts at seq 2");
        let mut folded = FoldedLog::new();
        assert!(folded.push(&events[..2]));
        assert!(!folded.push(&events[3..]), "seq 3 missing");
        let mut chain = chain::ChainFold::new();
        assert!(chain.push(&events[0]));
        assert!(!chain.push(&events[0]), "the same event twice");
        assert_eq!(chain.count(), 1);
    }

    #[test]
    fn facts_name_supporters_dissenters_cruxes_and_failures() {
        let f = facts();
        assert_eq!(f.verdict, "consensus");
        assert_eq!(f.supporting, ["claude", "gpt"]);
        assert_eq!(f.dissenting, ["demo"]);
        assert!(f.dissent_views[0].starts_with("demo voted for gpt: safer"));
        assert_eq!(f.participants.len(), 3);
        assert_eq!(f.cruxes.len(), 2);
        assert_eq!(f.cruxes[0]["severity"], 0.9, "sharpest first");
        assert_eq!(f.observations.len(), 1);
        assert_eq!(f.observations[0].kind, "timeout");
        assert_eq!(f.observations[0].family, "demo");
        assert_eq!(f.event_count, 6);
        assert!(
            f.reasoning.contains("2 of 3 agents voted for claude"),
            "{}",
            f.reasoning
        );
        let logged: Vec<Value> = debate().1.iter().map(chain::event_json).collect();
        assert_eq!(f.chain_head, chain::chain_head(&logged));
    }

    #[test]
    fn both_profiles_sign_and_verify_and_edits_fail() {
        let f = facts();
        let signer = Signer::generate();
        let other = Signer::generate();
        for version in [OdrVersion::V01, OdrVersion::V02] {
            let mut doc = f.odr(version);
            sign(
                &mut doc,
                version,
                &signer,
                "aragora.test",
                "2026-12-03T10:00:00.000Z",
            );
            let key = signer.verifying_key();
            let ok = verify(&doc, &|id| (id == signer.key_id()).then_some(key));
            assert!(ok.verified, "{version:?}: {ok:?}");
            assert_eq!(ok.key_id.as_deref(), Some(signer.key_id()));
            assert!(ok.checks.iter().all(|c| c.status != Status::Fail));

            // Not a trusted key.
            let untrusted = verify(&doc, &|_| None);
            assert!(!untrusted.verified);
            // The wrong key under the right name.
            let wrong = other.verifying_key();
            assert!(!verify(&doc, &|_| Some(wrong)).verified);

            let mut edited = doc.clone();
            edited["confidence"]["value"] = json!(0.99);
            let r = verify(&edited, &|_| Some(key));
            assert!(!r.verified);
            assert_eq!(
                r.checks
                    .iter()
                    .find(|c| c.name == "signature")
                    .unwrap()
                    .status,
                Status::Fail
            );

            let mut stranger = doc.clone();
            stranger["quorum"]["supporting_agents"] = json!(["claude", "eve"]);
            let r = verify(&stranger, &|_| Some(key));
            let q = r
                .checks
                .iter()
                .find(|c| c.name == "quorum_consistency")
                .unwrap();
            assert_eq!(q.status, Status::Fail);
            assert!(q.detail.contains("eve"));
        }
        // 0.2 commits the entry's metadata; 0.1 carries none of the 0.2-only members.
        let mut v02 = f.odr(OdrVersion::V02);
        sign(
            &mut v02,
            OdrVersion::V02,
            &signer,
            "aragora.test",
            "2026-12-03T10:00:00.000Z",
        );
        v02["signatures"][0]["signed_at"] = json!("2030-01-01T00:00:00Z");
        let key = signer.verifying_key();
        assert!(!verify(&v02, &|_| Some(key)).verified);
        let v01 = f.odr(OdrVersion::V01);
        assert!(v01["quorum"].get("verdicts").is_none());
        assert!(v01["reasoning"].get("observations").is_none());
        assert!(crate::receipts::verify::structure_errors(&v01).is_empty());
        let v02 = f.odr(OdrVersion::V02);
        assert_eq!(v02["quorum"]["verdicts"].as_array().unwrap().len(), 3);
        assert_eq!(v02["reasoning"]["observations"][0]["kind"], "timeout");
        assert!(crate::receipts::verify::structure_errors(&v02).is_empty());
    }

    #[test]
    fn the_digest_ignores_signatures_and_the_shape_check_names_what_is_wrong() {
        let f = facts();
        let mut doc = f.odr(OdrVersion::V02);
        let digest = odr_digest(&doc);
        sign(&mut doc, OdrVersion::V02, &Signer::generate(), "i", "t");
        assert_eq!(odr_digest(&doc), digest);
        let mut bad = doc.clone();
        bad.as_object_mut().unwrap().remove("claim");
        bad["extra"] = json!(1);
        bad["confidence"]["value"] = json!(1.5);
        let errors = crate::receipts::verify::structure_errors(&bad).join("; ");
        assert!(
            errors.contains("missing required member: claim"),
            "{errors}"
        );
        assert!(
            errors.contains("unknown top-level member: extra"),
            "{errors}"
        );
        assert!(errors.contains("confidence.value"), "{errors}");
        let mut v01_with_v02 = f.odr(OdrVersion::V02);
        v01_with_v02["odr_version"] = json!("0.1");
        v01_with_v02["profile"] = json!(OdrVersion::V01.profile());
        let errors = crate::receipts::verify::structure_errors(&v01_with_v02).join("; ");
        assert!(
            errors.contains("quorum.verdicts: not in profile 0.1"),
            "{errors}"
        );
    }

    #[test]
    fn a_judge_ruling_names_the_judge_as_supporter_and_participant() {
        let (mut record, events) = debate();
        record.options = json!({"judge": "claude-judge"});
        record.result = Some(
            json!({"final_answer": "Yes", "consensus_reached": true, "confidence": 0.8,
            "winner": "gpt", "mode": "judge", "votes": [], "judge": {"reasoning": "clearest plan"}}),
        );
        let f = Facts::gather(&record, &events, "r".into(), "t".into(), &|name| {
            (name == "claude-judge").then(|| ("anthropic".into(), "claude-opus".into()))
        });
        assert_eq!(f.supporting, ["claude-judge"]);
        assert!(
            f.participants
                .iter()
                .any(|p| p.agent == "claude-judge" && p.model == "claude-opus")
        );
        assert!(f.reasoning.contains("clearest plan"));
        assert!(crate::receipts::verify::structure_errors(&f.odr(OdrVersion::V02)).is_empty());
    }
}
