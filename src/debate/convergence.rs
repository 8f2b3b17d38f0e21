//! Convergence detection without network: TF-IDF cosine similarity of each agent's answer
//! against its previous round (Jaccard for very short texts). ≥ 0.85 converged, < 0.40
//! diverging, in between refining.

use std::collections::BTreeMap;

// Term tables are hashed many times per comparison and hold no attacker-chosen keys that
// could hurt more than one debate's own comparison: a fast hasher instead of SipHash.
use foldhash::{HashMap, HashMapExt, HashSet};

use serde::{Deserialize, Serialize};

pub const CONVERGED_AT: f64 = 0.85;
pub const DIVERGING_BELOW: f64 = 0.40;
/// Below this many tokens TF-IDF is noise; Jaccard is used instead.
const SHORT_TEXT_TOKENS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConvergenceStatus {
    Converged,
    Refining,
    Diverging,
}

impl ConvergenceStatus {
    pub fn of(similarity: f64) -> Self {
        if similarity >= CONVERGED_AT {
            ConvergenceStatus::Converged
        } else if similarity < DIVERGING_BELOW {
            ConvergenceStatus::Diverging
        } else {
            ConvergenceStatus::Refining
        }
    }
}

/// One round's report: per-seat similarity to its previous answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConvergenceReport {
    pub round: u32,
    pub status: ConvergenceStatus,
    pub per_agent: BTreeMap<String, f64>,
    pub min: f64,
    pub mean: f64,
}

/// The answer's words, lowercased, each followed by `\0` (which no word contains), in one
/// buffer: one allocation per answer instead of one per word.
fn lowered_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    for t in text.split(|c: char| !c.is_alphanumeric()) {
        if t.is_empty() {
            continue;
        }
        if t.is_ascii() {
            // The same as `to_lowercase` for ASCII, without its Unicode tables.
            out.extend(t.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        } else {
            out.push_str(&t.to_lowercase());
        }
        out.push('\0');
    }
    out
}

/// Every answer of both rounds as term ids into one table, and each term's IDF over them.
struct Corpus {
    docs: Vec<Vec<u32>>,
    idf: Vec<f64>,
}

impl Corpus {
    fn new<'a>(texts: impl Iterator<Item = &'a String>) -> Corpus {
        let lowered: Vec<String> = texts.map(|t| lowered_words(t)).collect();
        let mut ids: HashMap<&str, u32> = HashMap::new();
        // Per term: how many answers use it, and the last answer counted (so a term repeated
        // within one answer counts once).
        let mut df: Vec<u32> = Vec::new();
        let mut last_doc: Vec<usize> = Vec::new();
        let docs: Vec<Vec<u32>> = lowered
            .iter()
            .enumerate()
            .map(|(d, text)| {
                text.split_terminator('\0')
                    .map(|word| {
                        let next = ids.len() as u32;
                        let id = *ids.entry(word).or_insert(next);
                        if id == next {
                            df.push(0);
                            last_doc.push(usize::MAX);
                        }
                        let i = id as usize;
                        if last_doc[i] != d {
                            last_doc[i] = d;
                            df[i] += 1;
                        }
                        id
                    })
                    .collect()
            })
            .collect();
        let n = docs.len() as f64;
        // Smoothed IDF: never zero, so text shared by everyone still counts a little.
        let idf = df
            .iter()
            .map(|&f| ((1.0 + n) / (1.0 + f64::from(f))).ln() + 1.0)
            .collect();
        Corpus { docs, idf }
    }

    /// An answer's TF-IDF weights, by term id (ascending).
    fn vector(&self, doc: &[u32]) -> Vec<(u32, f64)> {
        let mut terms = doc.to_vec();
        terms.sort_unstable();
        let mut out: Vec<(u32, f64)> = Vec::with_capacity(terms.len());
        for t in terms {
            match out.last_mut() {
                Some((last, f)) if *last == t => *f += 1.0,
                _ => out.push((t, 1.0)),
            }
        }
        for (t, w) in &mut out {
            *w *= self.idf[*t as usize];
        }
        out
    }
}

fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    let sa: HashSet<u32> = a.iter().copied().collect();
    let sb: HashSet<u32> = b.iter().copied().collect();
    if sa.is_empty() && sb.is_empty() {
        return 1.0;
    }
    sa.intersection(&sb).count() as f64 / sa.union(&sb).count() as f64
}

fn cosine(a: &[(u32, f64)], b: &[(u32, f64)]) -> f64 {
    let (mut i, mut j, mut dot) = (0, 0, 0.0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                dot += a[i].1 * b[j].1;
                i += 1;
                j += 1;
            }
        }
    }
    let na = a.iter().map(|(_, x)| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|(_, x)| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na * nb)).clamp(0.0, 1.0)
    }
}

/// Similarity of `previous` → `current` for every seat present in both, with IDF taken over
/// all answers of both rounds (so words every agent uses weigh little).
pub fn compare(
    round: u32,
    previous: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> Option<ConvergenceReport> {
    let corpus = Corpus::new(previous.values().chain(current.values()));
    let per_agent = per_seat(previous, current, &corpus.docs, |ta, tb| {
        if ta.len().min(tb.len()) < SHORT_TEXT_TOKENS {
            jaccard(ta, tb)
        } else {
            cosine(&corpus.vector(ta), &corpus.vector(tb))
        }
    });
    report(round, per_agent)
}

/// `similarity` of each seat's previous answer to its current one, for every seat present
/// in both rounds; `docs` holds the answers as `previous` then `current`, in key order.
fn per_seat<D>(
    previous: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
    docs: &[D],
    similarity: impl Fn(&D, &D) -> f64,
) -> BTreeMap<String, f64> {
    let (before_docs, current_docs) = docs.split_at(previous.len());
    let before_of: HashMap<&str, &D> = previous
        .keys()
        .map(String::as_str)
        .zip(before_docs)
        .collect();
    let mut per_agent = BTreeMap::new();
    for (seat, tb) in current.keys().zip(current_docs) {
        if let Some(ta) = before_of.get(seat.as_str()) {
            per_agent.insert(seat.clone(), round3(similarity(ta, tb)));
        }
    }
    per_agent
}

/// The round's report from each seat's similarity; `None` when no seat answered twice.
fn report(round: u32, per_agent: BTreeMap<String, f64>) -> Option<ConvergenceReport> {
    if per_agent.is_empty() {
        return None;
    }
    let min = per_agent.values().copied().fold(f64::INFINITY, f64::min);
    let mean = per_agent.values().sum::<f64>() / per_agent.len() as f64;
    let status = if min >= CONVERGED_AT {
        ConvergenceStatus::Converged
    } else if mean < DIVERGING_BELOW {
        ConvergenceStatus::Diverging
    } else {
        ConvergenceStatus::Refining
    };
    Some(ConvergenceReport {
        round,
        status,
        per_agent,
        min,
        mean: round3(mean),
    })
}

/// Three decimals, and never `-0` in the JSON (a tiny negative rounds to 0, not -0).
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0 + 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_never_yields_negative_zero() {
        let z = round3(-0.0);
        assert!(z == 0.0 && z.is_sign_positive());
        assert!(round3(-0.0001).is_sign_positive(), "{}", round3(-0.0001));
        assert_eq!(serde_json::to_string(&round3(-0.0)).unwrap(), "0.0");
        assert_eq!(round3(0.12345), 0.123);
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn identical_answers_converge_and_unrelated_ones_diverge() {
        let text = "We should adopt a modular monolith first and split services only where scaling demands it";
        let prev = map(&[
            ("a", text),
            (
                "b",
                "Use microservices for every bounded context to scale teams independently",
            ),
        ]);
        let same = map(&[
            ("a", text),
            (
                "b",
                "Use microservices for every bounded context to scale teams independently",
            ),
        ]);
        let r = compare(2, &prev, &same).unwrap();
        assert_eq!(r.status, ConvergenceStatus::Converged);
        assert_eq!(r.min, 1.0);

        let changed = map(&[
            (
                "a",
                "Rewrite everything in assembly language tonight because caffeine demands sacrifice",
            ),
            (
                "b",
                "Bananas are yellow fruit grown in tropical climates around the equator region",
            ),
        ]);
        let r = compare(2, &prev, &changed).unwrap();
        assert_eq!(r.status, ConvergenceStatus::Diverging, "{r:?}");
    }

    #[test]
    fn small_edits_are_refining_or_converged() {
        let prev = map(&[(
            "a",
            "Adopt a modular monolith first, then extract services where load and team boundaries demand it, measuring latency before each split",
        )]);
        let cur = map(&[(
            "a",
            "Adopt a modular monolith first, then extract services where load and team boundaries demand it, measuring cost and latency before each split",
        )]);
        let r = compare(2, &prev, &cur).unwrap();
        assert!(r.min >= 0.85, "{r:?}");
        let cur = map(&[(
            "a",
            "Adopt a modular monolith first, then extract services where team boundaries demand it; keep one shared database and review the operational cost every quarter",
        )]);
        let r = compare(2, &prev, &cur).unwrap();
        assert!(r.min > 0.4 && r.min < 0.85, "{r:?}");
    }

    #[test]
    fn short_texts_use_jaccard() {
        let prev = map(&[("a", "yes use it")]);
        let cur = map(&[("a", "yes use it now")]);
        let r = compare(2, &prev, &cur).unwrap();
        assert_eq!(r.per_agent["a"], 0.75);
    }

    /// The first implementation, word for word: a table per answer keyed by the words
    /// themselves. The interned one must give the same report.
    fn reference(
        round: u32,
        previous: &BTreeMap<String, String>,
        current: &BTreeMap<String, String>,
    ) -> Option<ConvergenceReport> {
        fn tokens(text: &str) -> Vec<String> {
            text.split(|c: char| !c.is_alphanumeric())
                .filter(|t| !t.is_empty())
                .map(str::to_lowercase)
                .collect()
        }
        fn jaccard(a: &[String], b: &[String]) -> f64 {
            let sa: HashSet<&String> = a.iter().collect();
            let sb: HashSet<&String> = b.iter().collect();
            if sa.is_empty() && sb.is_empty() {
                return 1.0;
            }
            sa.intersection(&sb).count() as f64 / sa.union(&sb).count() as f64
        }
        let docs: Vec<Vec<String>> = previous
            .values()
            .chain(current.values())
            .map(|t| tokens(t))
            .collect();
        let n = docs.len() as f64;
        let mut df: HashMap<&str, f64> = HashMap::new();
        for doc in &docs {
            for term in doc.iter().map(String::as_str).collect::<HashSet<_>>() {
                *df.entry(term).or_default() += 1.0;
            }
        }
        let idf = |t: &str| ((1.0 + n) / (1.0 + df.get(t).copied().unwrap_or(0.0))).ln() + 1.0;
        let vector = |doc: &[String]| {
            let mut tf: HashMap<String, f64> = HashMap::new();
            for t in doc {
                *tf.entry(t.clone()).or_default() += 1.0;
            }
            tf.into_iter()
                .map(|(t, f)| {
                    let w = f * idf(&t);
                    (t, w)
                })
                .collect::<HashMap<String, f64>>()
        };
        let cosine = |a: &HashMap<String, f64>, b: &HashMap<String, f64>| {
            let dot: f64 = a.iter().filter_map(|(t, x)| b.get(t).map(|y| x * y)).sum();
            let na = a.values().map(|x| x * x).sum::<f64>().sqrt();
            let nb = b.values().map(|x| x * x).sum::<f64>().sqrt();
            if na == 0.0 || nb == 0.0 {
                0.0
            } else {
                (dot / (na * nb)).clamp(0.0, 1.0)
            }
        };
        let per_agent = per_seat(previous, current, &docs, |ta, tb| {
            if ta.len().min(tb.len()) < SHORT_TEXT_TOKENS {
                jaccard(ta, tb)
            } else {
                cosine(&vector(ta), &vector(tb))
            }
        });
        report(round, per_agent)
    }

    /// The demo agents' real answers of two rounds, plus texts that exercise the edges:
    /// non-ASCII words whose lowercase differs in length (İ, Σ), repeated words, punctuation
    /// runs, digits, short texts (Jaccard) and an empty answer.
    #[test]
    fn interned_terms_give_the_reports_of_the_word_tables() {
        use crate::agents::CompletionRequest;
        use crate::agents::demo::DemoProvider;
        let answer = |phase: &str, seat: &str, stance: &str, task: &str| {
            DemoProvider::respond(&CompletionRequest::single(
                format!("Aragora-Phase: {phase}\nAragora-Stance: {stance}\nAragora-Seat: {seat}\n"),
                format!("Task: {task}\n"),
            ))
        };
        let mut cases: Vec<(BTreeMap<String, String>, BTreeMap<String, String>)> = Vec::new();
        for task in [
            "Should we migrate our monolith to microservices?",
            "Tabs or spaces? Σίσυφος ΟΔΥΣΣΕΥΣ İstanbul straße — 42 times, 42!",
        ] {
            let seats = [("a", "pragmatist"), ("b", "skeptic"), ("c", "advocate")];
            let round = |phase: &str| {
                seats
                    .iter()
                    .map(|(seat, stance)| (seat.to_string(), answer(phase, seat, stance, task)))
                    .collect::<BTreeMap<_, _>>()
            };
            cases.push((round("proposal"), round("revision")));
        }
        cases.push((
            map(&[
                ("a", "İİİ ΣΣ σς ς... ÀÉÎ àéî word word WORD, word; 7 7 7 x"),
                ("b", "yes use it"),
                ("c", ""),
            ]),
            map(&[
                (
                    "a",
                    "iii σσ ΣΣ word Word wOrD x y z 7 àéî ÀÉÎ and more words here",
                ),
                ("b", "yes use it now"),
                ("c", "something at last"),
            ]),
        ));
        for (before, after) in &cases {
            let got = compare(3, before, after);
            let want = reference(3, before, after);
            assert_eq!(got, want, "{before:?} -> {after:?}");
            assert!(got.is_some());
        }
    }

    #[test]
    fn seats_missing_a_previous_answer_are_skipped() {
        let r = compare(2, &map(&[("a", "x")]), &map(&[("b", "y")]));
        assert!(r.is_none());
    }
}
