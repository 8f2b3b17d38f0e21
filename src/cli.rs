//! The `aragora` command line: `serve`, `migrate`, `config`, `health`, `user create`.
//!
//! Exit codes: 0 success; 1 runtime failure (or `health`: degraded); 2 bad configuration or
//! usage (or `health`: unhealthy / unreachable, as the runbook's health_check.sh).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::{Application, open_store};
use crate::config::{Config, Flags};

#[derive(Debug, Parser)]
#[command(
    name = "aragora",
    version,
    about = "Structured debates between LLM agents, streamed live"
)]
pub struct Cli {
    /// TOML configuration file (same keys as config/aragora.toml); env and flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the REST API and the WebSocket server.
    Serve {
        /// Interface to bind (default 127.0.0.1).
        #[arg(long)]
        host: Option<String>,
        /// REST API port (default 8080).
        #[arg(long)]
        api_port: Option<u16>,
        /// WebSocket port (default 8766).
        #[arg(long)]
        ws_port: Option<u16>,
    },
    /// Run one debate in the terminal and print it live (no server or database needed).
    Debate {
        /// The question or task to debate.
        task: String,
        /// Comma-separated agent names (2-10), e.g. `demo,demo,demo` or `claude,gpt-4`.
        #[arg(long, value_delimiter = ',', default_value = "demo,demo,demo")]
        agents: Vec<String>,
        /// Rounds.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        rounds: u32,
        /// Earliest round at which consensus or convergence may end the debate.
        #[arg(long, default_value_t = 1)]
        min_rounds: u32,
        /// majority, threshold, unanimous, judge or none.
        #[arg(long, default_value = "threshold")]
        consensus: String,
    },
    /// Print a running debate live from a server; reconnects and resumes without gaps.
    Watch {
        /// The debate id.
        debate_id: String,
        /// WebSocket URL of the server (`ws://` or `wss://`). Default: this host's configured
        /// WebSocket port (ARAGORA_WS_PORT or `--config`), `ws://127.0.0.1:<port>/ws`.
        #[arg(long)]
        server: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Print the effective configuration (secrets redacted) and where each value comes from.
    Config,
    /// Manage accounts (e.g. bootstrap the first owner).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Decision receipts (offline; no server needed).
    Receipt {
        #[command(subcommand)]
        command: ReceiptCommand,
    },
    /// Query a server's health: exit 0 healthy, 1 degraded, 2 unhealthy or unreachable.
    Health {
        /// Health endpoint URL, or the server's base URL (`/api/health` is added). Default:
        /// this host's configured API port (ARAGORA_API_PORT or `--config`).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ReceiptCommand {
    /// Verify an Open Decision Receipt (from `/api/v2/receipts/{id}/export?format=odr`):
    /// its shape, canonical digest and Ed25519 signature and, with `--events`, that the
    /// debate's event log hashes to the transcript digest it binds. Exit 0 verified, 1 a
    /// check failed, 2 unreadable input, 3 well-formed but the signature was not checked
    /// (no `--pubkey`).
    Verify {
        /// The receipt (ODR JSON).
        file: std::path::PathBuf,
        /// The debate's events: the JSON of `GET /api/debates/{id}/events` (or of
        /// `/api/debates/{id}/export/json`), holding the whole log.
        #[arg(long)]
        events: Option<std::path::PathBuf>,
        /// The signer's public key (SPKI PEM, from `/.well-known/aragora-odr-signing-key`).
        #[arg(long)]
        pubkey: Option<std::path::PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user. The password is read from a prompt (asked twice) or, when stdin is not
    /// a terminal, from the first line of stdin; never from a flag. Exit 0 created, 1 the
    /// email exists (or the database failed), 2 bad input.
    Create {
        #[arg(long)]
        email: String,
        /// member, admin or owner.
        #[arg(long, default_value = "member")]
        role: String,
    },
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    crate::agents::http::install_crypto_provider();
    let flags = match &cli.command {
        Command::Serve {
            host,
            api_port,
            ws_port,
        } => Flags {
            host: host.clone(),
            api_port: *api_port,
            ws_port: *ws_port,
        },
        _ => Flags::default(),
    };
    if let Command::Health { url } = &cli.command {
        let url = match url {
            Some(u) => health_url(u),
            None => format!("http://127.0.0.1:{}/api/health", local_ports(&cli).0),
        };
        return health(&url);
    }
    if let Command::Receipt {
        command:
            ReceiptCommand::Verify {
                file,
                events,
                pubkey,
                json,
            },
    } = &cli.command
    {
        return crate::receipts::cli::verify(file, events.as_deref(), pubkey.as_deref(), *json);
    }
    if let Command::Watch { debate_id, server } = &cli.command {
        let server = server
            .clone()
            .unwrap_or_else(|| format!("ws://127.0.0.1:{}/ws", local_ports(&cli).1));
        if let Err(why) = crate::watch::check_server_url(&server) {
            eprintln!("aragora watch: {why}");
            return ExitCode::from(2);
        }
        let debate_id = debate_id.clone();
        return block_on(async move { crate::watch::run(&server, &debate_id).await });
    }
    let config = match Config::load(cli.config.as_deref(), &flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("aragora: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config => {
            say_raw(&config.render());
            ExitCode::SUCCESS
        }
        Command::Migrate => block_on(migrate(config)),
        Command::Debate {
            task,
            agents,
            rounds,
            min_rounds,
            consensus,
        } => {
            let consensus = match consensus.parse() {
                Ok(mode) => mode,
                Err(err) => {
                    eprintln!("aragora: --consensus: {err}");
                    return ExitCode::from(2);
                }
            };
            let options = crate::debate_cli::Options {
                task,
                agents: agents.into_iter().map(|a| a.trim().to_owned()).collect(),
                rounds,
                min_rounds,
                consensus,
            };
            block_on(async move { crate::debate_cli::run_cli(&config, options).await })
        }
        Command::Serve { .. } => {
            // Before any thread exists: may replace this process with itself started with
            // jemalloc's heap profiler on (ARAGORA_MEMORY_PROFILING=1).
            if let Err(err) =
                crate::telemetry::profiling::reexec_with_profiling(config.logging.memory_profiling)
            {
                eprintln!("aragora: memory profiling: {err}");
            }
            // Held for the whole run; dropping it flushes pending error reports.
            let _sentry = crate::telemetry::sentry::init(&config);
            block_on(serve(config))
        }
        Command::User {
            command: UserCommand::Create { email, role },
        } => create_user(config, &email, &role),
        Command::Health { .. } | Command::Watch { .. } | Command::Receipt { .. } => {
            unreachable!("handled above")
        }
    }
}

fn block_on(fut: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let code = rt.block_on(fut);
            // Buffered log lines are written before the process exits.
            crate::telemetry::logging::flush();
            code
        }
        Err(err) => {
            eprintln!("aragora: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    if let Err(err) = crate::telemetry::init_logging(&config.logging) {
        eprintln!("aragora: cannot set up logging: {err:#}");
        return ExitCode::from(2);
    }
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = %err, "start-up failed");
            eprintln!("aragora: {err}");
            return ExitCode::FAILURE;
        }
    };
    let state = app.state().clone();
    let signals = tokio::spawn(handle_signals(state));
    let result = app.run().await;
    signals.abort();
    // Spans still queued go to the collector (bounded: a dead collector costs at most this).
    let _ = tokio::task::spawn_blocking(|| {
        crate::telemetry::traces::shutdown(std::time::Duration::from_secs(3));
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            eprintln!("aragora: server failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM/SIGINT: graceful shutdown. SIGUSR1: reload the WebSocket side (close all with
/// 1012). SIGHUP: reload rate limits, whitelist and trusted proxies from the configuration.
async fn handle_signals(state: crate::app::AppState) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut usr1), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM received: shutting down gracefully");
                state.shutdown.cancel();
            }
            _ = int.recv() => {
                tracing::info!("SIGINT received: shutting down gracefully");
                state.shutdown.cancel();
            }
            _ = usr1.recv() => state.ws.reload(),
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading rate-limit settings");
                // Errors are logged and recorded by reload(); the old settings stay.
                let _ = crate::config::reload(&state.config, &state.ratelimit);
            }
        }
    }
}

async fn migrate(config: Config) -> ExitCode {
    let store = match open_store(&config.database).await {
        Ok(store) => store,
        Err(err) => {
            eprintln!("aragora: cannot open the database: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = store.migrate().await;
    store.close().await;
    match result {
        Ok(()) => {
            say(&format!(
                "migrations applied ({} database)",
                store.backend().as_str()
            ));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("aragora: migration failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// This host's (API, WebSocket) ports from the configuration (`--config`, ARAGORA_API_PORT,
/// ARAGORA_WS_PORT); the defaults when the configuration cannot be read (a health check must
/// not fail because, say, a production secret is not in the operator's shell).
fn local_ports(cli: &Cli) -> (u16, u16) {
    match Config::load(cli.config.as_deref(), &Flags::default()) {
        Ok(c) => (c.http.port, c.ws.port),
        Err(err) => {
            eprintln!("aragora: using the default ports; the configuration did not load: {err}");
            (8080, 8766)
        }
    }
}

/// A base URL (`http://host:port` or with a bare `/`) means its health endpoint.
fn health_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if matches!(u.path(), "" | "/") => {
            u.set_path("/api/health");
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Print a line; a closed stdout (`aragora health | head -1`) is not an error: the
/// command goes on (or ends) quietly instead of panicking on the broken pipe.
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// [`say`] without the newline.
pub(crate) fn say_raw(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn health(url: &str) -> ExitCode {
    block_on(async {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
        {
            Ok(c) => c,
            Err(err) => {
                eprintln!("CRITICAL: cannot build HTTP client: {err}");
                return ExitCode::from(2);
            }
        };
        let response = match client.get(url).send().await {
            Ok(r) => r,
            Err(err) => {
                say(&format!(
                    "CRITICAL: health endpoint unreachable at {url}: {err}"
                ));
                return ExitCode::from(2);
            }
        };
        let http_status = response.status();
        let body: serde_json::Value = match response.json().await {
            Ok(b) => b,
            Err(err) => {
                say(&format!(
                    "CRITICAL: health endpoint answered {http_status} without JSON: {err}"
                ));
                return ExitCode::from(2);
            }
        };
        say(&serde_json::to_string_pretty(&body).unwrap_or_default());
        match body.get("status").and_then(|s| s.as_str()) {
            Some("healthy") => {
                say("OK: all checks passed");
                ExitCode::SUCCESS
            }
            Some("degraded") => {
                say("WARNING: service degraded");
                ExitCode::from(1)
            }
            other => {
                say(&format!(
                    "CRITICAL: service {}",
                    other.unwrap_or("status unknown")
                ));
                ExitCode::from(2)
            }
        }
    })
}

/// `aragora user create`: see [`UserCommand::Create`].
fn create_user(config: Config, email: &str, role: &str) -> ExitCode {
    use std::io::IsTerminal;

    let email = email.trim().to_lowercase();
    if !crate::auth::accounts::valid_email(&email) {
        eprintln!("aragora: `--email` must be an address such as name@example.com");
        return ExitCode::from(2);
    }
    let Some(role) = crate::auth::Role::parse(role) else {
        eprintln!("aragora: `--role` must be member, admin or owner");
        return ExitCode::from(2);
    };
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ");
        let second = rpassword::prompt_password("Repeat password: ");
        match (first, second) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => {
                eprintln!("aragora: the passwords do not match");
                return ExitCode::from(2);
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("aragora: cannot read the password: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("aragora: cannot read the password from stdin: {e}");
            return ExitCode::from(2);
        }
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if let Err(why) = crate::auth::passwords::check_new(&password) {
        eprintln!("aragora: {why}");
        return ExitCode::from(2);
    }
    let hash = match crate::auth::passwords::hash(&password) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("aragora: {e}");
            return ExitCode::from(1);
        }
    };
    block_on(async move {
        let store = match open_store(&config.database).await {
            Ok(store) => store,
            Err(err) => {
                eprintln!("aragora: cannot open the database: {err}");
                return ExitCode::from(1);
            }
        };
        if let Err(err) = store.migrate().await {
            eprintln!("aragora: cannot apply database migrations: {err}");
            return ExitCode::from(1);
        }
        let new = crate::store::NewUser {
            id: uuid::Uuid::new_v4().to_string(),
            email: email.clone(),
            password_hash: hash,
            role: role.as_str().into(),
        };
        let code = match store.create_user(&new).await {
            Ok(user) => {
                say(&format!(
                    "created {} user {} (id {})",
                    role.as_str(),
                    user.email,
                    user.id
                ));
                ExitCode::SUCCESS
            }
            Err(crate::store::StoreError::Conflict(_)) => {
                eprintln!("aragora: a user with email {email} already exists");
                ExitCode::from(1)
            }
            Err(err) => {
                eprintln!("aragora: cannot create the user: {err}");
                ExitCode::from(1)
            }
        };
        store.close().await;
        code
    })
}
