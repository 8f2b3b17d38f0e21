//! `aragora debate "<task>" --agents a,b[,c] [--rounds N]`: one debate in the terminal,
//! printed live (answers stream token by token), then the result. Needs no server and no
//! database: events go to the terminal only.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::agents::AgentRegistry;
use crate::cli::say;
use crate::config::Config;
use crate::debate::manager::RegistryAgent;
use crate::debate::prompts::STANCES;
use crate::debate::{
    ConsensusMode, DebateAgent, DebateInput, DebateSettings, Event, EventSink, Seat, SinkError, run,
};

pub struct Options {
    pub task: String,
    pub agents: Vec<String>,
    pub rounds: u32,
    pub min_rounds: u32,
    pub consensus: ConsensusMode,
}

/// Prints each event as it happens. Agents of a phase answer concurrently, so their token
/// deltas would interleave word by word; the terminal shows each message whole as soon as it
/// is complete instead (the WebSocket stream carries the deltas).
///
/// On a terminal (and unless NO_COLOR is set) headings and names are coloured, and while
/// the agents think a status line shows a spinner, the round and how long it has waited;
/// piped output gets the plain lines only.
struct Printer {
    tty: bool,
    colour: bool,
    /// (the round under way, when the last event was printed, the status line is shown)
    status: parking_lot::Mutex<(u32, std::time::Instant, bool)>,
}

impl Printer {
    fn new() -> Printer {
        use std::io::IsTerminal;
        let tty = std::io::stdout().is_terminal();
        Printer {
            tty,
            colour: tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            status: parking_lot::Mutex::new((0, std::time::Instant::now(), false)),
        }
    }

    fn out(&self, text: &str) {
        let mut status = self.status.lock();
        let mut stdout = std::io::stdout().lock();
        if status.2 {
            // Clear the status line before the event takes its place.
            let _ = stdout.write_all(b"\r\x1b[2K");
            status.2 = false;
        }
        status.1 = std::time::Instant::now();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    }

    fn paint(&self, kind: &str, text: String) -> String {
        if !self.colour || text.trim().is_empty() {
            return text;
        }
        let code = match kind {
            "round_start" | "debate_start" => "1",
            "agent_message" => "36",
            "consensus" | "debate_end" => "32",
            "agent_error" | "circuit_open" => "31",
            "intervention" | "debate_paused" | "debate_resumed" => "33",
            _ => return text,
        };
        let trimmed = text.trim_end_matches('\n');
        let newlines = &text[trimmed.len()..];
        format!("\x1b[{code}m{trimmed}\x1b[0m{newlines}")
    }

    /// While nothing has been printed for a moment, show what the debate waits for.
    async fn spin(self: Arc<Self>, done: CancellationToken) {
        const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
        let mut frame = 0;
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                _ = tokio::time::sleep(std::time::Duration::from_millis(120)) => {}
            }
            let mut status = self.status.lock();
            let waited = status.1.elapsed();
            if waited < std::time::Duration::from_millis(300) {
                continue;
            }
            frame = (frame + 1) % FRAMES.len();
            let line = format!(
                "\r\x1b[2K{} agents are thinking (round {}, {:.1} s)",
                FRAMES[frame],
                status.0.max(1),
                waited.as_secs_f64()
            );
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(line.as_bytes());
            let _ = stdout.flush();
            status.2 = true;
        }
        let mut status = self.status.lock();
        if status.2 {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(b"\r\x1b[2K");
            let _ = stdout.flush();
            status.2 = false;
        }
    }
}

#[async_trait]
impl EventSink for Printer {
    async fn record(&self, events: &[Event]) -> Result<(), SinkError> {
        for e in events {
            if let Some(round) = e.round.filter(|_| e.kind() == "round_start") {
                self.status.lock().0 = round;
            }
            let text = format_event(e.kind(), e.round, e.agent.as_deref(), &e.data());
            self.out(&self.paint(e.kind(), text));
        }
        Ok(())
    }

    fn token_delta(&self, _round: u32, _agent: &str, _delta: &str) {}
}

/// One event as a terminal line (or lines), shared by `aragora debate` and `aragora watch`.
pub fn format_event(kind: &str, round: Option<u32>, agent: Option<&str>, data: &Value) -> String {
    let agent = agent.unwrap_or("");
    let s = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    match kind {
        "debate_queued" => format!(
            "Queued: {} ({} rounds, {})\n",
            s("task"),
            data.get("rounds").cloned().unwrap_or_default(),
            data.get("agents")
                .and_then(Value::as_array)
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ),
        "debate_start" => format!("Debate: {}\n", s("task")),
        "round_start" => format!("\n=== Round {} ===\n", round.unwrap_or(0)),
        "agent_message" => format!("\n[{agent}] {}:\n{}\n", s("role"), s("content")),
        "critique" => {
            let target = data.get("target").and_then(Value::as_str).unwrap_or("all");
            format!("  {agent} critiques {target}: {}\n", s("text"))
        }
        "vote" => match data.get("choice").and_then(Value::as_str) {
            Some(choice) => format!(
                "  {agent} votes {choice} (confidence {:.2}): {}\n",
                data.get("confidence")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0),
                s("reasoning")
            ),
            None => format!("  {agent} cast an unparseable vote: {}\n", s("error")),
        },
        "convergence" => format!(
            "  convergence: {} (min similarity {})\n",
            s("status"),
            data.get("min").cloned().unwrap_or_default()
        ),
        "consensus" => format!(
            "  consensus: {} (winner {}, share {})\n",
            if data.get("reached") == Some(&Value::Bool(true)) {
                "reached"
            } else {
                "not reached"
            },
            data.get("winner").and_then(Value::as_str).unwrap_or("none"),
            data.get("share").cloned().unwrap_or(Value::Null)
        ),
        "agent_error" | "circuit_open" => {
            format!("  ! {agent} failed in {}: {}\n", s("phase"), s("error"))
        }
        "debate_resumed" => format!(
            "\n--- resumed by {} after seq {} ({}) ---\n",
            s("instance"),
            data.get("from_seq").cloned().unwrap_or_default(),
            s("reason")
        ),
        "debate_paused" => format!(
            "\n--- paused after round {} ---\n",
            data.get("rounds_used").cloned().unwrap_or_default()
        ),
        "intervention" => format!("\n[moderator] {}\n", s("content")),
        "debate_end" => format!("\nDebate ended: {}\n", s("status")),
        _ => String::new(),
    }
}

pub async fn run_cli(config: &Config, options: Options) -> ExitCode {
    let registry = match crate::app::load_agents(config) {
        Ok(r) => Arc::new(r),
        Err(err) => {
            eprintln!("aragora: {err}");
            return ExitCode::from(2);
        }
    };
    match build_seats(&registry, &options.agents) {
        Ok(seats) => {
            let rounds_requested = options.rounds;
            let input = DebateInput {
                task: options.task,
                judge: (options.consensus == ConsensusMode::Judge).then(|| seats[0].agent.clone()),
                seats,
                settings: DebateSettings {
                    rounds: options.rounds,
                    min_rounds: options.min_rounds.min(options.rounds),
                    mode: options.consensus,
                    threshold: config.debates.consensus_threshold,
                    timeout: config.debates.timeout,
                    // The terminal debate keeps no usage rows to price.
                    max_cost_usd: None,
                },
            };
            let cancel = CancellationToken::new();
            let ctrl_c = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    ctrl_c.cancel();
                }
            });
            let printer = Arc::new(Printer::new());
            let spinning = CancellationToken::new();
            let spinner = printer
                .tty
                .then(|| tokio::spawn(printer.clone().spin(spinning.clone())));
            let outcome = run(input, printer, cancel).await;
            spinning.cancel();
            if let Some(spinner) = spinner {
                let _ = spinner.await;
            }
            let r = &outcome.result;
            say(&format!("\nStatus: {}", outcome.status.as_str()));
            if let Some(err) = &outcome.error {
                say(&format!("Reason: {err}"));
            }
            say(&format!(
                "Rounds used: {} of {rounds_requested}",
                outcome.rounds_used
            ));
            if outcome.rounds_used < rounds_requested && outcome.error.is_none() {
                let why = if r["consensus_reached"] == true {
                    "consensus was reached"
                } else if r["convergence"]["status"] == "converged" {
                    "the answers converged (they stopped changing)"
                } else {
                    "the debate ended early"
                };
                say(&format!(
                    "Stopped after round {}: {why}",
                    outcome.rounds_used
                ));
            }
            say(&format!("Consensus reached: {}", r["consensus_reached"]));
            match (r["winner"].as_str(), r["consensus_reached"] == true) {
                (Some(w), true) => say(&format!("Winner: {w} (confidence {})", r["confidence"])),
                (Some(w), false) => say(&format!(
                    "Most votes: {w} (share {}), short of what the consensus rule needs; \
                     its answer is shown as the best available",
                    r["confidence"]
                )),
                (None, _) => {}
            }
            if let Some(answer) = r["final_answer"].as_str() {
                say(&format!("\nFinal answer:\n{answer}"));
            }
            if let Some(dissent) = r["dissent"].as_array().filter(|d| !d.is_empty()) {
                say("\nDissent:");
                for d in dissent {
                    say(&format!(
                        "  {} voted {}: {}",
                        d["agent"].as_str().unwrap_or(""),
                        d["voted_for"],
                        d["reasoning"].as_str().unwrap_or("")
                    ));
                }
            }
            say(&format!(
                "\nTokens: {} in, {} out{}",
                outcome.usage.input_tokens,
                outcome.usage.output_tokens,
                if outcome.usage.estimated {
                    " (some estimated)"
                } else {
                    ""
                }
            ));
            match outcome.status.as_str() {
                "completed" | "no_consensus" => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            }
        }
        Err(err) => {
            eprintln!("aragora: {err}");
            ExitCode::from(2)
        }
    }
}

fn build_seats(registry: &AgentRegistry, names: &[String]) -> Result<Vec<Seat>, String> {
    if !(2..=10).contains(&names.len()) {
        return Err(format!("--agents needs 2 to 10 names, got {}", names.len()));
    }
    let mut seats = Vec::new();
    let endpoints = registry.endpoints();
    for (i, name) in names.iter().enumerate() {
        let agent = registry.resolve(name).map_err(|e| e.to_string())?;
        // A seat whose provider has no key would only fail mid-debate: say so now.
        if !agent.available() {
            let key = endpoints
                .iter()
                .find(|e| e.id == agent.provider_id())
                .and_then(|e| e.key_env)
                .unwrap_or("its API key");
            eprintln!(
                "aragora: seat {name} ({}) cannot run: {key} is not set; it sits out",
                agent.provider_id()
            );
            continue;
        }
        let n = names[..=i].iter().filter(|x| *x == name).count();
        seats.push(Seat {
            name: if n == 1 {
                name.clone()
            } else {
                format!("{name}#{n}")
            },
            agent: Arc::new(RegistryAgent(agent)) as Arc<dyn DebateAgent>,
            stance: STANCES[i % STANCES.len()].to_owned(),
        });
    }
    if seats.len() < 2 {
        return Err(format!(
            "only {} of the {} seats can run; a debate needs at least two",
            seats.len(),
            names.len()
        ));
    }
    Ok(seats)
}
