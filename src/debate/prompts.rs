//! Prompts. Every system prompt carries machine-readable header lines
//! (`Aragora-Phase`, `Aragora-Stance`, `Aragora-Seat`) and every user prompt a `Task:` line
//! and, where answers are judged, `Aragora-Candidates:`. Real models read the prose; the
//! demo agents read the headers.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::agents::CompletionRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Proposal,
    Revision,
    Critique,
    Vote,
    Synthesis,
    Judge,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Proposal => "proposal",
            Phase::Revision => "revision",
            Phase::Critique => "critique",
            Phase::Vote => "vote",
            Phase::Synthesis => "synthesis",
            Phase::Judge => "judge",
        }
    }
}

fn system(phase: Phase, seat: &str, stance: &str, instructions: &str) -> String {
    format!(
        "You are {seat}, one of several AI agents in a structured debate run by Aragora.\n\
         Your stance: {stance}. Argue from it honestly, concede good points, and be concise.\n\
         {instructions}\n\n\
         Aragora-Phase: {}\nAragora-Stance: {stance}\nAragora-Seat: {seat}",
        phase.as_str()
    )
}

fn answers_block(out: &mut String, answers: &BTreeMap<String, String>) {
    for (seat, answer) in answers {
        let _ = writeln!(out, "--- Answer of {seat} ---\n{answer}\n");
    }
}

fn candidates_line(answers: &BTreeMap<String, String>) -> String {
    format!(
        "Aragora-Candidates: {}",
        answers.keys().cloned().collect::<Vec<_>>().join(", ")
    )
}

pub fn proposal(task: &str, seat: &str, stance: &str) -> CompletionRequest {
    CompletionRequest::single(
        system(
            Phase::Proposal,
            seat,
            stance,
            "Give your best answer to the task: a clear recommendation and the main reasons.",
        ),
        format!("Task: {task}\n\nWrite your proposal."),
    )
}

pub fn revision(
    task: &str,
    seat: &str,
    stance: &str,
    own_answer: &str,
    critiques: &[(String, String)],
    others: &BTreeMap<String, String>,
) -> CompletionRequest {
    let mut user = format!("Task: {task}\n\nYour current answer:\n{own_answer}\n\n");
    if critiques.is_empty() {
        user.push_str("No critiques were addressed to you.\n\n");
    } else {
        user.push_str("Critiques addressed to you:\n");
        for (critic, text) in critiques {
            let _ = writeln!(user, "- from {critic}: {text}");
        }
        user.push('\n');
    }
    user.push_str("The other agents' current answers:\n");
    answers_block(&mut user, others);
    user.push_str(
        "Write your revised answer. Address the critiques that are right; keep what holds.",
    );
    CompletionRequest::single(
        system(
            Phase::Revision,
            seat,
            stance,
            "Revise your answer in light of the critiques.",
        ),
        user,
    )
}

pub fn critique(
    task: &str,
    seat: &str,
    stance: &str,
    others: &BTreeMap<String, String>,
) -> CompletionRequest {
    let mut user = format!("Task: {task}\n{}\n\n", candidates_line(others));
    answers_block(&mut user, others);
    user.push_str(
        "Critique each answer above. Reply with JSON only:\n\
         {\"critiques\": [{\"target\": \"<agent>\", \"severity\": 0.0-1.0, \"text\": \"<the critique>\"}]}",
    );
    CompletionRequest::single(
        system(
            Phase::Critique,
            seat,
            stance,
            "Find the weaknesses in the other answers.",
        ),
        user,
    )
}

pub fn vote(
    task: &str,
    seat: &str,
    stance: &str,
    answers: &BTreeMap<String, String>,
) -> CompletionRequest {
    let mut user = format!("Task: {task}\n{}\n\n", candidates_line(answers));
    answers_block(&mut user, answers);
    user.push_str(
        "Vote for the best answer, judging impartially. Reply with JSON only:\n\
         {\"vote\": \"<agent>\", \"confidence\": 0.0-1.0, \"reasoning\": \"<why>\"}",
    );
    CompletionRequest::single(
        system(
            Phase::Vote,
            seat,
            stance,
            "Vote for the answer that best solves the task.",
        ),
        user,
    )
}

pub fn judge(task: &str, judge: &str, answers: &BTreeMap<String, String>) -> CompletionRequest {
    let mut user = format!("Task: {task}\n{}\n\n", candidates_line(answers));
    answers_block(&mut user, answers);
    user.push_str(
        "Rule on the debate. Reply with JSON only:\n\
         {\"winner\": \"<agent>\", \"confidence\": 0.0-1.0, \"reasoning\": \"<why>\", \
         \"final_answer\": \"<the synthesised final answer>\"}",
    );
    CompletionRequest::single(
        system(
            Phase::Judge,
            judge,
            "impartial judge",
            "Pick the best answer and synthesise a final one.",
        ),
        user,
    )
}

pub fn synthesis(task: &str, seat: &str, answers: &BTreeMap<String, String>) -> CompletionRequest {
    let mut user = format!("Task: {task}\n{}\n\n", candidates_line(answers));
    answers_block(&mut user, answers);
    user.push_str("Synthesise one final answer that keeps the strongest points of each.");
    CompletionRequest::single(
        system(
            Phase::Synthesis,
            seat,
            "synthesiser",
            "Merge the answers into one final answer.",
        ),
        user,
    )
}

/// Adds the moderator's messages (oldest first) to the end of the request's user turn,
/// marked as the human moderator's so an agent cannot mistake them for another agent's.
pub fn with_moderator_notes(mut request: CompletionRequest, notes: &[String]) -> CompletionRequest {
    if notes.is_empty() {
        return request;
    }
    if let Some(last) = request.messages.last_mut() {
        let mut block = String::from(
            "\n\n--- Moderator's messages (from the human moderating this debate, not from an \
             agent; take them into account) ---\n",
        );
        for note in notes {
            let _ = writeln!(block, "- {note}");
        }
        last.content.push_str(&block);
    }
    request
}

/// Default stances given to seats in order.
pub const STANCES: &[&str] = &[
    "pragmatist",
    "skeptic",
    "advocate",
    "systems thinker",
    "risk analyst",
    "user advocate",
    "economist",
    "contrarian",
    "optimist",
    "minimalist",
];
