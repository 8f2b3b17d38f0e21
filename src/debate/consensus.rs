//! Votes and consensus. A vote is parsed from an agent's structured output; an unparseable
//! vote is recorded as such and never counted. The tally is confidence-weighted.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::json::find_object;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsensusMode {
    /// Leader's confidence-weighted share > 0.5.
    Majority,
    /// Leader's share ≥ the threshold (default mode).
    Threshold,
    /// Every voter chose the same answer.
    Unanimous,
    /// A judge agent rules and synthesises.
    Judge,
    /// No vote; the final answer is a synthesis.
    None,
}

impl ConsensusMode {
    pub const ALL: [&'static str; 5] = ["majority", "threshold", "unanimous", "judge", "none"];

    pub fn as_str(self) -> &'static str {
        match self {
            ConsensusMode::Majority => "majority",
            ConsensusMode::Threshold => "threshold",
            ConsensusMode::Unanimous => "unanimous",
            ConsensusMode::Judge => "judge",
            ConsensusMode::None => "none",
        }
    }

    pub fn votes(self) -> bool {
        !matches!(self, ConsensusMode::None)
    }
}

impl fmt::Display for ConsensusMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A consensus mode this version does not know (the name given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown consensus mode `{0}`; expected one of {expected}", expected = ConsensusMode::ALL.join(", "))]
pub struct UnknownConsensusMode(pub String);

impl FromStr for ConsensusMode {
    type Err = UnknownConsensusMode;
    fn from_str(s: &str) -> Result<Self, UnknownConsensusMode> {
        match s {
            "majority" => Ok(ConsensusMode::Majority),
            "threshold" => Ok(ConsensusMode::Threshold),
            "unanimous" => Ok(ConsensusMode::Unanimous),
            "judge" => Ok(ConsensusMode::Judge),
            "none" => Ok(ConsensusMode::None),
            other => Err(UnknownConsensusMode(other.to_owned())),
        }
    }
}

/// One agent's vote as recorded: parsed, or the reason it could not be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub voter: String,
    /// The seat voted for; `None` when the output could not be parsed.
    pub choice: Option<String>,
    pub confidence: f64,
    pub reasoning: String,
    pub parsed: bool,
    /// Why the vote was rejected (unparseable, unknown candidate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Parse a vote `{"vote": seat, "confidence": 0..1, "reasoning": …}` out of model output.
/// The seat must be one of `candidates` (matched case-insensitively). A missing confidence
/// counts as 1.0; out-of-range values are clamped.
pub fn parse_vote(voter: &str, output: &str, candidates: &[String]) -> Vote {
    let rejected = |error: String| Vote {
        voter: voter.to_owned(),
        choice: None,
        confidence: 0.0,
        reasoning: String::new(),
        parsed: false,
        error: Some(error),
    };
    let Some(obj) = find_object(output, "vote") else {
        return rejected("no JSON object with a `vote` field in the output".into());
    };
    let Some(raw_choice) = obj.get("vote").and_then(|v| v.as_str()) else {
        return rejected("`vote` is not a string".into());
    };
    let wanted = raw_choice.trim();
    let Some(choice) = candidates.iter().find(|c| c.eq_ignore_ascii_case(wanted)) else {
        return rejected(format!("voted for `{wanted}`, which is not a candidate"));
    };
    let confidence = obj
        .get("confidence")
        .and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .map_or(1.0, |c| {
            if c.is_finite() {
                c.clamp(0.0, 1.0)
            } else {
                0.0
            }
        });
    Vote {
        voter: voter.to_owned(),
        choice: Some(choice.clone()),
        confidence,
        reasoning: obj
            .get("reasoning")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        parsed: true,
        error: None,
    }
}

/// The confidence-weighted count of one vote phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tally {
    /// Weight received per seat.
    pub weights: BTreeMap<String, f64>,
    /// The seat with the most weight; `None` with no valid votes or a tie at the top.
    pub leader: Option<String>,
    /// Leader's share of all counted weight (0 without a leader).
    pub share: f64,
    pub valid_votes: usize,
    pub invalid_votes: usize,
}

pub fn tally(votes: &[Vote]) -> Tally {
    let mut weights: BTreeMap<String, f64> = BTreeMap::new();
    let mut valid = 0;
    for vote in votes {
        if let Some(choice) = &vote.choice {
            *weights.entry(choice.clone()).or_default() += vote.confidence;
            valid += 1;
        }
    }
    let total: f64 = weights.values().sum();
    let mut ranked: Vec<(&String, f64)> = weights.iter().map(|(k, v)| (k, *v)).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let leader = match ranked.as_slice() {
        [] => None,
        [(top, w), rest @ ..] => {
            let tied = rest.first().is_some_and(|(_, w2)| (w - w2).abs() < 1e-9);
            (!tied && *w > 0.0).then(|| (*top).clone())
        }
    };
    let share = match &leader {
        Some(l) if total > 0.0 => weights[l] / total,
        _ => 0.0,
    };
    Tally {
        weights,
        leader,
        share: (share * 1000.0).round() / 1000.0,
        valid_votes: valid,
        invalid_votes: votes.len() - valid,
    }
}

/// Whether the tally is a consensus under `mode`.
/// Decided on the exact share, not the rounded `Tally::share` (which is for display): a
/// share of 0.5998 must not pass a 0.6 threshold, nor 0.5002 fail a majority.
pub fn reached(mode: ConsensusMode, tally: &Tally, threshold: f64) -> bool {
    let Some(leader) = &tally.leader else {
        return false;
    };
    let total: f64 = tally.weights.values().sum();
    let share = match tally.weights.get(leader) {
        Some(w) if total > 0.0 => w / total,
        _ => return false,
    };
    match mode {
        ConsensusMode::Majority => share > 0.5,
        ConsensusMode::Threshold => share + 1e-9 >= threshold,
        ConsensusMode::Unanimous => {
            tally.invalid_votes == 0 && tally.weights.len() == 1 && tally.valid_votes >= 2
        }
        ConsensusMode::Judge | ConsensusMode::None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seats() -> Vec<String> {
        vec!["claude".into(), "gpt-4".into(), "gemini".into()]
    }

    fn vote(voter: &str, choice: &str, confidence: f64) -> Vote {
        parse_vote(
            voter,
            &format!(r#"{{"vote":"{choice}","confidence":{confidence},"reasoning":"r"}}"#),
            &seats(),
        )
    }

    #[test]
    fn parses_wrapped_votes_and_rejects_bad_ones() {
        let v = parse_vote(
            "a",
            "My pick:\n```json\n{\"vote\": \"GPT-4\", \"confidence\": 0.8, \"reasoning\": \"clear\"}\n```",
            &seats(),
        );
        assert!(v.parsed);
        assert_eq!(v.choice.as_deref(), Some("gpt-4"));
        assert_eq!(v.confidence, 0.8);
        assert_eq!(v.reasoning, "clear");

        let v = parse_vote("a", "I think gemini is best", &seats());
        assert!(!v.parsed && v.choice.is_none());
        assert!(v.error.unwrap().contains("no JSON"));

        let v = parse_vote("a", r#"{"vote":"llama"}"#, &seats());
        assert!(!v.parsed);
        assert!(v.error.unwrap().contains("llama"));

        let v = parse_vote("a", r#"{"vote":"claude","confidence":7}"#, &seats());
        assert_eq!(v.confidence, 1.0);
        let v = parse_vote("a", r#"{"vote":"claude"}"#, &seats());
        assert_eq!(v.confidence, 1.0);
    }

    #[test]
    fn weighted_tally_and_modes() {
        let votes = vec![
            vote("a", "claude", 0.9),
            vote("b", "claude", 0.6),
            vote("c", "gemini", 1.0),
        ];
        let t = tally(&votes);
        assert_eq!(t.leader.as_deref(), Some("claude"));
        assert_eq!(t.share, 0.6);
        assert!(reached(ConsensusMode::Majority, &t, 0.6));
        assert!(reached(ConsensusMode::Threshold, &t, 0.6));
        assert!(!reached(ConsensusMode::Threshold, &t, 0.7));
        assert!(!reached(ConsensusMode::Unanimous, &t, 0.6));

        let all = vec![vote("a", "claude", 0.5), vote("b", "claude", 0.9)];
        assert!(reached(ConsensusMode::Unanimous, &tally(&all), 0.6));
    }

    #[test]
    fn ties_and_invalid_votes_do_not_make_consensus() {
        let tie = vec![vote("a", "claude", 1.0), vote("b", "gemini", 1.0)];
        let t = tally(&tie);
        assert_eq!(t.leader, None);
        assert!(!reached(ConsensusMode::Majority, &t, 0.5));

        let mut with_bad = vec![vote("a", "claude", 1.0), vote("b", "claude", 1.0)];
        with_bad.push(parse_vote("c", "no idea", &seats()));
        let t = tally(&with_bad);
        assert_eq!((t.valid_votes, t.invalid_votes), (2, 1));
        assert!(reached(ConsensusMode::Threshold, &t, 0.6));
        assert!(
            !reached(ConsensusMode::Unanimous, &t, 0.6),
            "an unparseable vote breaks unanimity"
        );
    }
}
