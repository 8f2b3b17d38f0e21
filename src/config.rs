//! Typed configuration, layered: compiled-in defaults (`config/aragora.toml`) → an optional
//! TOML file (`--config`) → the environment → command-line flags.
//!
//! Rule: every value is validated before anything starts; a bad value is reported in one line
//! naming where it came from (variable or file key), the value, and what is allowed. Secrets
//! never appear in `Debug`, in `aragora config`, or in an error message.
//!
//! Reload (SIGHUP) is this module's too: [`reload`] reads and validates the layers again and
//! hands each subsystem that changes live its new settings, which the subsystem only applies.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

/// The compiled-in defaults; also the commented reference for operators.
pub const DEFAULTS_TOML: &str = include_str!("../config/aragora.toml");

/// One setting: its file key, the environment variables that set it (first one wins), and
/// whether its value is secret.
struct Setting {
    key: &'static str,
    env: &'static [&'static str],
    secret: bool,
}

const fn s(key: &'static str, env: &'static [&'static str]) -> Setting {
    Setting {
        key,
        env,
        secret: false,
    }
}

const fn secret(key: &'static str, env: &'static [&'static str]) -> Setting {
    Setting {
        key,
        env,
        secret: true,
    }
}

/// Every recognised setting. The file key is the env name lower-cased without `ARAGORA_`.
const SETTINGS: &[Setting] = &[
    s("env", &["ARAGORA_ENV"]),
    s("host", &["ARAGORA_HOST"]),
    s("api_port", &["ARAGORA_API_PORT"]),
    s("ws_port", &["ARAGORA_WS_PORT"]),
    s("data_dir", &["ARAGORA_DATA_DIR"]),
    // May embed a password: redacted on display.
    secret("database_url", &["ARAGORA_DATABASE_URL", "DATABASE_URL"]),
    s("supabase_url", &["SUPABASE_URL"]),
    secret("supabase_key", &["SUPABASE_KEY"]),
    s("db_pool_size", &["ARAGORA_DB_POOL_SIZE"]),
    s("db_max_overflow", &["ARAGORA_DB_MAX_OVERFLOW"]),
    s("db_intake_pool_size", &["ARAGORA_DB_INTAKE_POOL_SIZE"]),
    s("db_acquire_timeout_ms", &["ARAGORA_DB_ACQUIRE_TIMEOUT_MS"]),
    secret("redis_url", &["ARAGORA_REDIS_URL"]),
    s(
        "enable_redis_rate_limit",
        &["ARAGORA_ENABLE_REDIS_RATE_LIMIT"],
    ),
    s("rate_limit_rpm", &["ARAGORA_RATE_LIMIT_RPM"]),
    s("rate_limit_debate_rpm", &["ARAGORA_RATE_LIMIT_DEBATE_RPM"]),
    s("rate_limit_whitelist", &["ARAGORA_RATE_LIMIT_WHITELIST"]),
    s("rate_limit_disabled", &["ARAGORA_RATE_LIMIT_DISABLED"]),
    s("rate_limit_login_rpm", &["ARAGORA_RATE_LIMIT_LOGIN_RPM"]),
    s(
        "rate_limit_agent_test_rpm",
        &["ARAGORA_RATE_LIMIT_AGENT_TEST_RPM"],
    ),
    s("rate_limit_prefix", &["ARAGORA_RATE_LIMIT_PREFIX"]),
    s(
        "rate_limit_redis_timeout_ms",
        &["ARAGORA_RATE_LIMIT_REDIS_TIMEOUT_MS"],
    ),
    s("trusted_proxies", &["ARAGORA_TRUSTED_PROXIES"]),
    s("allowed_origins", &["ARAGORA_ALLOWED_ORIGINS"]),
    s("agent_timeout_seconds", &["ARAGORA_AGENT_TIMEOUT_SECONDS"]),
    s(
        "debate_timeout_seconds",
        &["ARAGORA_DEBATE_TIMEOUT_SECONDS"],
    ),
    s(
        "max_concurrent_debates",
        &["ARAGORA_MAX_CONCURRENT_DEBATES"],
    ),
    s("consensus_threshold", &["ARAGORA_CONSENSUS_THRESHOLD"]),
    s("ws_max_connections", &["ARAGORA_WS_MAX_CONNECTIONS"]),
    s("ws_max_per_ip", &["ARAGORA_WS_MAX_PER_IP"]),
    s("log_dir", &["ARAGORA_LOG_DIR"]),
    s("log_level", &["ARAGORA_LOG_LEVEL", "RUST_LOG"]),
    s("memory_profiling", &["ARAGORA_MEMORY_PROFILING"]),
    s(
        "metrics_enabled",
        &["METRICS_ENABLED", "ARAGORA_METRICS_ENABLED"],
    ),
    secret("sentry_dsn", &["SENTRY_DSN"]),
    secret("api_token", &["ARAGORA_API_TOKEN"]),
    secret("jwt_secret", &["ARAGORA_JWT_SECRET"]),
    s(
        "shutdown_timeout_seconds",
        &["ARAGORA_SHUTDOWN_TIMEOUT_SECONDS"],
    ),
    s("lock_dir", &["ARAGORA_LOCK_DIR"]),
    s(
        "request_timeout_seconds",
        &["ARAGORA_REQUEST_TIMEOUT_SECONDS"],
    ),
    s("max_body_bytes", &["ARAGORA_MAX_BODY_BYTES"]),
    s(
        "health_check_timeout_ms",
        &["ARAGORA_HEALTH_CHECK_TIMEOUT_MS"],
    ),
    s("health_cache_ms", &["ARAGORA_HEALTH_CACHE_MS"]),
    s("auth_cache_ms", &["ARAGORA_AUTH_CACHE_MS"]),
    s("instance_id", &["ARAGORA_INSTANCE_ID"]),
    s("agents_file", &["ARAGORA_AGENTS_FILE"]),
    s("default_agents", &["ARAGORA_DEFAULT_AGENTS"]),
    s("default_rounds", &["ARAGORA_DEFAULT_ROUNDS"]),
    s("debate_queue_size", &["ARAGORA_DEBATE_QUEUE_SIZE"]),
    s("debate_lease_seconds", &["ARAGORA_DEBATE_LEASE_SECONDS"]),
    s("debate_max_cost_usd", &["ARAGORA_DEBATE_MAX_COST_USD"]),
    s("debate_claim_poll_ms", &["ARAGORA_DEBATE_CLAIM_POLL_MS"]),
    s("agent_max_attempts", &["ARAGORA_AGENT_MAX_ATTEMPTS"]),
    s(
        "breaker_failure_threshold",
        &["ARAGORA_BREAKER_FAILURE_THRESHOLD"],
    ),
    s("breaker_open_seconds", &["ARAGORA_BREAKER_OPEN_SECONDS"]),
    s(
        "breaker_success_threshold",
        &["ARAGORA_BREAKER_SUCCESS_THRESHOLD"],
    ),
    s("ws_send_queue", &["ARAGORA_WS_SEND_QUEUE"]),
    s("ws_slow_consumer_ms", &["ARAGORA_WS_SLOW_CONSUMER_MS"]),
    s("event_bus_channel", &["ARAGORA_EVENT_BUS_CHANNEL"]),
    s("ws_socket_send_buffer", &["ARAGORA_WS_SOCKET_SEND_BUFFER"]),
    s(
        "access_token_ttl_seconds",
        &["ARAGORA_ACCESS_TOKEN_TTL_SECONDS"],
    ),
    s(
        "refresh_token_ttl_seconds",
        &["ARAGORA_REFRESH_TOKEN_TTL_SECONDS"],
    ),
    s("login_max_failures", &["ARAGORA_LOGIN_MAX_FAILURES"]),
    s("login_lockout_seconds", &["ARAGORA_LOGIN_LOCKOUT_SECONDS"]),
    s("login_ip_max_failures", &["ARAGORA_LOGIN_IP_MAX_FAILURES"]),
    s("registration_enabled", &["ARAGORA_REGISTRATION_ENABLED"]),
    s("local_operator", &["ARAGORA_LOCAL_OPERATOR"]),
    s("ws_anonymous_read", &["ARAGORA_WS_ANONYMOUS_READ"]),
    s("pricing_file", &["ARAGORA_PRICING_FILE"]),
    s("admin_console", &["ARAGORA_ADMIN_CONSOLE"]),
    s("admin_api_url", &["ARAGORA_ADMIN_API_URL"]),
    s("odr_signing_key_file", &["ARAGORA_ODR_SIGNING_KEY_FILE"]),
    s("odr_unsigned", &["ARAGORA_ODR_UNSIGNED"]),
    s("odr_issuer", &["ARAGORA_ODR_ISSUER"]),
];

/// The provider credentials and endpoints that are set, read from the environment only
/// (docs/configuration.md); which variables those are is the provider catalogue's business
/// ([`crate::agents::providers::env_vars`]). `Debug` shows names only: most are keys.
#[derive(Clone, Default)]
pub struct ProviderEnv(BTreeMap<&'static str, String>);

impl ProviderEnv {
    /// Every catalogue variable with a non-blank value in `env`.
    pub fn read(env: impl Fn(&str) -> Option<String>) -> ProviderEnv {
        ProviderEnv(
            crate::agents::providers::env_vars()
                .filter_map(|name| {
                    env(name)
                        .filter(|v| !v.trim().is_empty())
                        .map(|v| (name, v))
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    /// The provider credentials that are set (values of the API key variables).
    pub fn key_values(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(name, _)| crate::agents::providers::is_key_var(name))
            .map(|(_, value)| value.clone())
            .collect()
    }
}

impl fmt::Debug for ProviderEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// Where a value came from; names the thing an operator has to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, key: String },
    Env(String),
    Flag(String),
    Derived(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File { path, key } => write!(f, "{} key `{key}`", path.display()),
            Source::Env(name) => write!(f, "{name}"),
            Source::Flag(name) => write!(f, "{name}"),
            Source::Derived(why) => write!(f, "{why}"),
        }
    }
}

/// A configuration problem, printed as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("{origin}={value:?} is not valid: expected {expected}")]
    Invalid {
        origin: Source,
        value: String,
        expected: String,
    },
    /// A secret that fails a rule; its value is never shown.
    #[error("{origin} is not valid (value not shown): expected {expected}")]
    InvalidSecret { origin: Source, expected: String },
    /// A combination of settings that cannot work.
    #[error("{0}")]
    Conflict(String),
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

/// A secret string: usable by code, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

/// Command-line overrides (`aragora serve` flags); they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub host: Option<String>,
    pub api_port: Option<u16>,
    pub ws_port: Option<u16>,
}

/// The validated, effective configuration, in sections: each subsystem reads its own.
#[derive(Debug, Clone)]
pub struct Config {
    /// `development` or `production`; production insists on auth secrets.
    pub env: Environment,
    /// Identity of this server among several sharing one database: it names the holder of
    /// a debate's lease (and a restart under the same id resumes its debates at once).
    pub instance_id: String,
    /// Data directory for the embedded SQLite database.
    pub data_dir: PathBuf,
    /// Directory of the pid lock file.
    pub lock_dir: PathBuf,
    /// Longest a graceful shutdown may take.
    pub shutdown_timeout: Duration,
    /// The REST API listener.
    pub http: HttpConfig,
    /// The WebSocket listener.
    pub ws: WsConfig,
    /// The store.
    pub database: DatabaseConfig,
    /// Redis (event bus, shared rate limits).
    pub redis: RedisConfig,
    /// Per-client request limits.
    pub rate_limit: RateLimitConfig,
    /// Credentials, tokens and accounts.
    pub auth: AuthConfig,
    /// Agents, providers and prices.
    pub agents: AgentsConfig,
    /// Debate budgets and the queue.
    pub debates: DebatesConfig,
    /// The per-agent circuit breaker.
    pub breaker: BreakerConfig,
    /// Logs, metrics and error reporting.
    pub logging: LoggingConfig,
    /// Decision receipts.
    pub receipts: ReceiptsConfig,
    /// The `--config` file this was loaded from (SIGHUP re-reads it).
    pub config_file: Option<PathBuf>,
    /// The flags this was loaded with (a reload applies them again).
    flags: Flags,
    /// Where each value came from, for `aragora config`.
    sources: Sources,
}

/// The REST API listener and what it accepts.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Interface to bind; `None` means the safe default (127.0.0.1).
    pub host: Option<String>,
    /// REST API port (0 = any free port, for tests).
    pub port: u16,
    /// Longest one HTTP request may take.
    pub request_timeout: Duration,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// CORS allowlist (exact origins such as `https://admin.example.com`).
    pub allowed_origins: Vec<String>,
    /// Proxies whose X-Forwarded-For / X-Real-IP are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Serve the browser admin console at `/admin` (false: `/admin*` answers 404).
    pub admin_console: bool,
    /// Origin of the API the console talks to (e.g. `https://api.example.com`); `None`
    /// means the console's own origin. Also added to the console's CSP `connect-src`.
    pub admin_api_url: Option<String>,
    /// Budget of each health check.
    pub health_check_timeout: Duration,
    /// How long one round of dependency checks answers `/api/health` and `/ready` (one round
    /// runs at a time, however many calls arrive); zero checks on every call. At most 1 s.
    pub health_cache: Duration,
}

/// The WebSocket listener and its per-connection limits.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// WebSocket port (0 = any free port, for tests).
    pub port: u16,
    /// WebSocket connections open at once (all clients).
    pub max_connections: u32,
    /// WebSocket connections open at once from one client IP.
    pub max_per_ip: u32,
    /// Frames one WebSocket connection may have waiting to be written.
    pub send_queue: u32,
    /// How long a full send queue may stay full before the client is closed with 4008.
    pub slow_consumer: Duration,
    /// Kernel send buffer of each WebSocket connection on the WS port, bytes.
    pub socket_send_buffer: u32,
    /// With auth on, let WebSocket clients connect without credentials (read-only; they
    /// still see no debate they could not see over HTTP). Off: closed with 1008.
    pub anonymous_read: bool,
}

/// The store: where it is and how its pool is sized.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`, always set (derived from data_dir when not given).
    pub url: Secret,
    /// Supabase project URL: only used to explain that a Postgres URL is needed.
    pub supabase_url: Option<String>,
    /// Supabase API key: accepted and redacted, not used (the store speaks Postgres).
    pub supabase_key: Option<Secret>,
    /// Pool: min idle connections.
    pub pool_size: u32,
    /// Pool: extra connections above `pool_size` under load.
    pub max_overflow: u32,
    /// Postgres: connections reserved for accepting debates (0: they share the pool).
    pub intake_pool_size: u32,
    /// How long a request waits for a database connection (a new one included) before it
    /// fails; an unreachable database then answers 503 `database_unavailable`.
    pub acquire_timeout: Duration,
}

/// Redis, shared by the event bus and the rate limiter.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Redis for cross-instance fan-out and shared rate limits.
    pub url: Option<Secret>,
    /// Redis pub/sub channel of the cross-instance event bus.
    pub event_bus_channel: String,
}

/// Per-client request limits.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Keep rate-limit state in Redis (needs `redis.url`).
    pub redis: bool,
    /// Default per-client limit, requests/minute.
    pub rpm: u32,
    /// Debate creation per client per minute.
    pub debate_rpm: u32,
    /// Clients exempt from rate limits.
    pub whitelist: Vec<IpNet>,
    /// Turn rate limiting off entirely.
    pub disabled: bool,
    /// Login attempts per client IP per minute (POST /api/auth/login).
    pub login_rpm: u32,
    /// Agent test calls per client per minute (POST /api/debug/agent-test).
    pub agent_test_rpm: u32,
    /// Prefix of every rate-limit key in Redis (several deployments can share one Redis).
    pub prefix: String,
    /// Budget of one rate-limit decision in Redis; past it the decision is made in memory.
    pub redis_timeout: Duration,
}

/// Credentials, tokens and accounts.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Static bearer token for service clients (owner rights).
    pub api_token: Option<Secret>,
    /// HS256 signing key (≥ 32 bytes).
    pub jwt_secret: Option<Secret>,
    /// Lifetime of a JWT access token.
    pub access_token_ttl: Duration,
    /// Lifetime of an opaque refresh token.
    pub refresh_token_ttl: Duration,
    /// Failed logins in a row that lock an account.
    pub login_max_failures: u32,
    /// How long a locked account stays locked; also the window of the per-IP limit.
    pub login_lockout: Duration,
    /// Failed logins from one client IP within `login_lockout` before it gets 429.
    pub login_ip_max_failures: u32,
    /// Serve POST /api/auth/register (creates members). Off by default.
    pub registration_enabled: bool,
    /// Give owner rights to credential-less requests from a loopback peer that carry no
    /// proxy headers (runbook curls on the host). Never enable behind a local reverse proxy
    /// that is not listed in trusted_proxies.
    pub local_operator: bool,
    /// How long a resolved API key or JWT account is reused before the store is asked
    /// again: the longest a revocation or role change takes to reach this instance
    /// (revocations made here apply at once). Zero asks on every request. At most 1 s.
    pub cache: Duration,
}

/// The agents: which exist, how they are called, what they cost.
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    /// Operator's agents file; `None` uses the compiled-in config/agents.toml.
    pub file: Option<PathBuf>,
    /// Agents of a debate request that names none.
    pub default_agents: Vec<String>,
    /// Budget for one agent call.
    pub timeout: Duration,
    /// Attempts per agent call (1 = no retries).
    pub max_attempts: u32,
    /// Operator's pricing table; `None` uses the compiled-in config/pricing.toml.
    pub pricing_file: Option<PathBuf>,
    /// Provider keys and base URLs from the environment.
    pub providers: ProviderEnv,
}

/// Debates: budgets, concurrency and the fleet-wide queue.
#[derive(Debug, Clone)]
pub struct DebatesConfig {
    /// Budget for one whole debate.
    pub timeout: Duration,
    /// Debates running at once; more wait in a bounded queue.
    pub max_concurrent: u32,
    /// Share of weighted votes needed for consensus (0, 1].
    pub consensus_threshold: f64,
    /// Rounds of a debate request that names none.
    pub default_rounds: u32,
    /// Debates that may wait for a free slot (503 beyond), across the fleet.
    pub queue_size: u32,
    /// Lease of a running debate; renewed every third of it. An instance silent for longer
    /// loses its debates to the others.
    pub lease: Duration,
    /// How often an idle instance looks for debates to claim (new ones wake it at once).
    pub claim_poll: Duration,
    /// Cost cap (USD) of a debate whose request names none; `None`: no cap.
    pub max_cost_usd: Option<f64>,
}

/// The per-agent circuit breaker.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failures that open an agent's circuit breaker.
    pub failure_threshold: u32,
    /// Seconds an open breaker waits before a half-open probe.
    pub open: Duration,
    /// Successful probes that close a half-open breaker.
    pub success_threshold: u32,
}

/// Logs, metrics and error reporting.
#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// When set, logs are split into api/websocket/debate/agent files there.
    pub dir: Option<PathBuf>,
    /// tracing filter directives.
    pub level: String,
    /// Allocation profiling for memory dumps.
    pub memory_profiling: bool,
    /// Serve Prometheus metrics at /api/metrics.
    pub metrics_enabled: bool,
    /// Sentry DSN: when set, errors are reported there (secrets scrubbed).
    pub sentry_dsn: Option<Secret>,
}

/// Decision receipts: how they are signed.
#[derive(Debug, Clone)]
pub struct ReceiptsConfig {
    /// The Ed25519 signing key (PKCS#8 PEM). Unset in development: a key generated once
    /// under `data_dir`; unset in production: refused unless `unsigned`.
    pub signing_key_file: Option<PathBuf>,
    /// Issue receipts unsigned (production without a key file).
    pub unsigned: bool,
    /// The issuer named in every ODR 0.2 signature.
    pub issuer: String,
}

/// The raw layered values behind the typed fields; `Debug` shows only where each came from,
/// since the raw text includes secrets.
#[derive(Clone, Default)]
struct Sources(Layers);

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, (_, src))| (k, src.to_string())))
            .finish()
    }
}

/// Raw layered values: key → (text, where it came from).
type Layers = BTreeMap<&'static str, (String, Source)>;

impl Config {
    /// Every secret value this process was configured with (for scrubbing error reports).
    pub fn secret_values(&self) -> Vec<String> {
        let mut out = self.agents.providers.key_values();
        for secret in [
            &self.auth.api_token,
            &self.auth.jwt_secret,
            &self.logging.sentry_dsn,
        ]
        .into_iter()
        .flatten()
        {
            out.push(secret.expose().to_owned());
        }
        out
    }

    /// Load from the process environment.
    pub fn load(file: Option<&Path>, flags: &Flags) -> Result<Config, ConfigError> {
        Self::load_with(file, flags, |name| std::env::var(name).ok())
    }

    /// Load with an explicit environment lookup (tests pass a map).
    pub fn load_with(
        file: Option<&Path>,
        flags: &Flags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut layers = Layers::new();
        let defaults: toml::Table = DEFAULTS_TOML
            .parse()
            .expect("compiled-in config/aragora.toml is valid TOML");
        apply_table(&mut layers, &defaults, |_| Source::Default).map_err(|e| {
            ConfigError::File {
                path: "config/aragora.toml".into(),
                message: e.to_string(),
            }
        })?;

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                message: format!("cannot read it: {e}"),
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::File {
                        path: path.to_owned(),
                        message: format!("not valid TOML: {}", e.message()),
                    })?;
            apply_table(&mut layers, &table, |key| Source::File {
                path: path.to_owned(),
                key: key.to_owned(),
            })
            .map_err(|e| ConfigError::File {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        }

        for setting in SETTINGS {
            if let Some((name, value)) = setting
                .env
                .iter()
                .find_map(|name| env(name).map(|v| (*name, v)))
            {
                layers.insert(setting.key, (value, Source::Env(name.to_owned())));
            }
        }

        if let Some(host) = &flags.host {
            layers.insert("host", (host.clone(), Source::Flag("--host".into())));
        }
        if let Some(port) = flags.api_port {
            layers.insert(
                "api_port",
                (port.to_string(), Source::Flag("--api-port".into())),
            );
        }
        if let Some(port) = flags.ws_port {
            layers.insert(
                "ws_port",
                (port.to_string(), Source::Flag("--ws-port".into())),
            );
        }

        let mut config = Self::from_layers(layers)?;
        config.agents.providers = ProviderEnv::read(&env);
        config.config_file = file.map(Path::to_path_buf);
        config.flags = flags.clone();
        Ok(config)
    }

    /// The configuration read again the way this one was — defaults, the same `--config`
    /// file, the environment as it is now, the same flags — and validated.
    pub fn reread(&self) -> Result<Config, ConfigError> {
        Self::load(self.config_file.as_deref(), &self.flags)
    }

    fn from_layers(mut layers: Layers) -> Result<Config, ConfigError> {
        let p = Parser { layers: &layers };
        let env = match p.text("env").as_deref() {
            Some("development") | None => Environment::Development,
            Some("production") => Environment::Production,
            Some(_) => return Err(p.invalid("env", "`development` or `production`")),
        };
        let data_dir = PathBuf::from(p.text("data_dir").unwrap_or_else(|| "./data".into()));
        let supabase_url = p.text("supabase_url");
        let database_url = match p.text("database_url") {
            Some(url) => {
                if !(url.starts_with("postgres://")
                    || url.starts_with("postgresql://")
                    || url.starts_with("sqlite:"))
                {
                    return Err(p.invalid_secret(
                        "database_url",
                        "a URL starting with postgres://, postgresql:// or sqlite:",
                    ));
                }
                url
            }
            None => {
                if supabase_url.is_some() {
                    return Err(ConfigError::Conflict(
                        "SUPABASE_URL is set but no database URL is: Supabase is Postgres, so set \
                         ARAGORA_DATABASE_URL to the project's Postgres connection string \
                         (Supabase dashboard → Project Settings → Database → Connection string)"
                            .into(),
                    ));
                }
                let url = format!("sqlite://{}", data_dir.join("aragora.db").display());
                layers.insert(
                    "database_url",
                    (url.clone(), Source::Derived("derived from data_dir")),
                );
                url
            }
        };
        let p = Parser { layers: &layers };

        let redis_url = p.text("redis_url");
        if let Some(url) = &redis_url
            && !(url.starts_with("redis://") || url.starts_with("unix://"))
        {
            return Err(p.invalid_secret(
                "redis_url",
                "a URL of the form redis://host:port/db (or unix:///path/to/socket)",
            ));
        }
        let enable_redis_rate_limit = p.boolean("enable_redis_rate_limit")?;
        if enable_redis_rate_limit && redis_url.is_none() {
            return Err(ConfigError::Conflict(
                "ARAGORA_ENABLE_REDIS_RATE_LIMIT=1 needs ARAGORA_REDIS_URL (redis://host:port/db)"
                    .into(),
            ));
        }

        let jwt_secret = p.text("jwt_secret");
        if let Some(secret) = &jwt_secret
            && secret.len() < 32
        {
            return Err(p.invalid_secret("jwt_secret", "at least 32 bytes"));
        }
        if env == Environment::Production && jwt_secret.is_none() {
            return Err(ConfigError::Conflict(
                "ARAGORA_ENV=production needs ARAGORA_JWT_SECRET (at least 32 random bytes, e.g. \
                 `openssl rand -hex 32`)"
                    .into(),
            ));
        }
        if env == Environment::Production
            && p.text("odr_signing_key_file").is_none()
            && !p.boolean("odr_unsigned")?
        {
            return Err(ConfigError::Conflict(
                "ARAGORA_ENV=production needs ARAGORA_ODR_SIGNING_KEY_FILE (an Ed25519 PKCS#8 PEM, \
                 e.g. `openssl genpkey -algorithm ed25519 -out /etc/aragora/odr-signing-key.pem`) \
                 to sign decision receipts, or ARAGORA_ODR_UNSIGNED=1 to issue them unsigned"
                    .into(),
            ));
        }
        let api_token = p.text("api_token");
        if let Some(token) = &api_token
            && token.len() < 16
        {
            return Err(p.invalid_secret("api_token", "at least 16 characters"));
        }

        let log_level = p.text("log_level").unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(p.invalid(
                "log_level",
                "tracing filter directives such as `info` or `info,aragora=debug`",
            ));
        }

        let consensus_threshold = p.float("consensus_threshold")?;
        if !(consensus_threshold > 0.0 && consensus_threshold <= 1.0) {
            return Err(p.invalid(
                "consensus_threshold",
                "a number greater than 0 and at most 1",
            ));
        }

        let host = p.text("host");
        if let Some(h) = &host
            && h.parse::<IpAddr>().is_err()
            && h != "localhost"
        {
            return Err(p.invalid("host", "an IP address such as 127.0.0.1, 0.0.0.0 or ::"));
        }

        let api_port = p.port("api_port")?;
        let ws_port = p.port("ws_port")?;
        let database_url = Secret(database_url);
        let supabase_key = p.text("supabase_key").map(Secret);
        let db_pool_size = p.int("db_pool_size", 1, 1000)? as u32;
        let db_max_overflow = p.int("db_max_overflow", 0, 1000)? as u32;
        let db_intake_pool_size = p.int("db_intake_pool_size", 0, 100)? as u32;
        let db_acquire_timeout =
            Duration::from_millis(p.int("db_acquire_timeout_ms", 100, 600_000)?);
        let redis_url = redis_url.map(Secret);
        let rate_limit_rpm = p.int("rate_limit_rpm", 1, 1_000_000)? as u32;
        let rate_limit_debate_rpm = p.int("rate_limit_debate_rpm", 1, 1_000_000)? as u32;
        let rate_limit_whitelist = p.cidrs("rate_limit_whitelist")?;
        let rate_limit_disabled = p.boolean("rate_limit_disabled")?;
        let rate_limit_login_rpm = p.int("rate_limit_login_rpm", 1, 1_000_000)? as u32;
        let rate_limit_agent_test_rpm = p.int("rate_limit_agent_test_rpm", 1, 1_000_000)? as u32;
        let rate_limit_prefix = {
            let prefix = p.text("rate_limit_prefix").unwrap_or_default();
            if prefix.is_empty() || prefix.len() > 100 || prefix.chars().any(char::is_whitespace) {
                return Err(p.invalid(
                    "rate_limit_prefix",
                    "1 to 100 characters without spaces, such as aragora:rl:",
                ));
            }
            prefix
        };
        let rate_limit_redis_timeout =
            Duration::from_millis(p.int("rate_limit_redis_timeout_ms", 1, 10_000)?);
        let trusted_proxies = p.cidrs("trusted_proxies")?;
        let allowed_origins = p.origins("allowed_origins")?;
        let agent_timeout = Duration::from_secs(p.int("agent_timeout_seconds", 1, 3600)?);
        let debate_timeout = Duration::from_secs(p.int("debate_timeout_seconds", 1, 86_400)?);
        let max_concurrent_debates = p.int("max_concurrent_debates", 1, 10_000)? as u32;
        let ws_max_connections = p.int("ws_max_connections", 1, 1_000_000)? as u32;
        let ws_max_per_ip = p.int("ws_max_per_ip", 1, 1_000_000)? as u32;
        let log_dir = p.text("log_dir").map(PathBuf::from);
        let memory_profiling = p.boolean("memory_profiling")?;
        let metrics_enabled = p.boolean("metrics_enabled")?;
        let sentry_dsn = p.text("sentry_dsn").map(Secret);
        let api_token = api_token.map(Secret);
        let jwt_secret = jwt_secret.map(Secret);
        let shutdown_timeout = Duration::from_secs(p.int("shutdown_timeout_seconds", 1, 3600)?);
        let lock_dir = PathBuf::from(p.text("lock_dir").unwrap_or_else(|| "/tmp".into()));
        let request_timeout = Duration::from_secs(p.int("request_timeout_seconds", 1, 3600)?);
        let max_body_bytes = p.int("max_body_bytes", 1024, 1 << 30)? as usize;
        let health_check_timeout =
            Duration::from_millis(p.int("health_check_timeout_ms", 10, 60_000)?);
        let health_cache = Duration::from_millis(p.int("health_cache_ms", 0, 1000)?);
        let auth_cache = Duration::from_millis(p.int("auth_cache_ms", 0, 1000)?);
        let instance_id = p.text("instance_id").unwrap_or_else(|| {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into());
            format!(
                "{host}:{}",
                layers.get("api_port").map_or("8080", |(v, _)| v.as_str())
            )
        });
        let agents_file = p.text("agents_file").map(PathBuf::from);
        let default_agents = {
            let agents = p.list("default_agents");
            if !(2..=10).contains(&agents.len()) {
                return Err(p.invalid("default_agents", "2 to 10 comma-separated agent names"));
            }
            agents
        };
        let default_rounds = p.int("default_rounds", 1, 20)? as u32;
        let debate_queue_size = p.int("debate_queue_size", 1, 100_000)? as u32;
        let debate_lease = Duration::from_secs(p.int("debate_lease_seconds", 3, 3600)?);
        let debate_claim_poll = Duration::from_millis(p.int("debate_claim_poll_ms", 50, 60_000)?);
        let debate_max_cost_usd = match p.text("debate_max_cost_usd") {
            None => None,
            Some(_) => Some(
                p.float("debate_max_cost_usd")
                    .ok()
                    .filter(|c| *c > 0.0)
                    .ok_or_else(|| {
                        p.invalid("debate_max_cost_usd", "a positive number of US dollars")
                    })?,
            ),
        };
        let agent_max_attempts = p.int("agent_max_attempts", 1, 10)? as u32;
        let breaker_failure_threshold = p.int("breaker_failure_threshold", 1, 1000)? as u32;
        let breaker_open = Duration::from_secs(p.int("breaker_open_seconds", 1, 86_400)?);
        let breaker_success_threshold = p.int("breaker_success_threshold", 1, 100)? as u32;
        let ws_send_queue = p.int("ws_send_queue", 16, 1_000_000)? as u32;
        let ws_slow_consumer = Duration::from_millis(p.int("ws_slow_consumer_ms", 10, 600_000)?);
        let ws_socket_send_buffer = p.int("ws_socket_send_buffer", 4096, 64 << 20)? as u32;
        let event_bus_channel = p
            .text("event_bus_channel")
            .unwrap_or_else(|| "aragora:events".into());
        let access_token_ttl =
            Duration::from_secs(p.int("access_token_ttl_seconds", 30, 86_400)?);
        let refresh_token_ttl =
            Duration::from_secs(p.int("refresh_token_ttl_seconds", 60, 365 * 86_400)?);
        let login_max_failures = p.int("login_max_failures", 1, 1000)? as u32;
        let login_lockout = Duration::from_secs(p.int("login_lockout_seconds", 1, 86_400)?);
        let login_ip_max_failures = p.int("login_ip_max_failures", 1, 1_000_000)? as u32;
        let registration_enabled = p.boolean("registration_enabled")?;
        let local_operator = p.boolean("local_operator")?;
        let ws_anonymous_read = p.boolean("ws_anonymous_read")?;
        let pricing_file = p.text("pricing_file").map(PathBuf::from);
        let admin_console = p.boolean("admin_console")?;
        let admin_api_url = p.origin("admin_api_url")?;
        let odr_signing_key_file = p.text("odr_signing_key_file").map(PathBuf::from);
        let odr_unsigned = p.boolean("odr_unsigned")?;
        let odr_issuer = match p.text("odr_issuer") {
            Some(issuer) if issuer.trim().is_empty() || issuer.len() > 200 => {
                return Err(p.invalid(
                    "odr_issuer",
                    "1 to 200 characters, e.g. aragora.example.com",
                ));
            }
            Some(issuer) => issuer,
            None => "aragora".into(),
        };
        Ok(Config {
            env,
            instance_id,
            data_dir,
            lock_dir,
            shutdown_timeout,
            http: HttpConfig {
                host,
                port: api_port,
                request_timeout,
                max_body_bytes,
                allowed_origins,
                trusted_proxies,
                admin_console,
                admin_api_url,
                health_check_timeout,
                health_cache,
            },
            ws: WsConfig {
                port: ws_port,
                max_connections: ws_max_connections,
                max_per_ip: ws_max_per_ip,
                send_queue: ws_send_queue,
                slow_consumer: ws_slow_consumer,
                socket_send_buffer: ws_socket_send_buffer,
                anonymous_read: ws_anonymous_read,
            },
            database: DatabaseConfig {
                url: database_url,
                supabase_url,
                supabase_key,
                pool_size: db_pool_size,
                max_overflow: db_max_overflow,
                intake_pool_size: db_intake_pool_size,
                acquire_timeout: db_acquire_timeout,
            },
            redis: RedisConfig {
                url: redis_url,
                event_bus_channel,
            },
            rate_limit: RateLimitConfig {
                redis: enable_redis_rate_limit,
                rpm: rate_limit_rpm,
                debate_rpm: rate_limit_debate_rpm,
                whitelist: rate_limit_whitelist,
                disabled: rate_limit_disabled,
                login_rpm: rate_limit_login_rpm,
                agent_test_rpm: rate_limit_agent_test_rpm,
                prefix: rate_limit_prefix,
                redis_timeout: rate_limit_redis_timeout,
            },
            auth: AuthConfig {
                api_token,
                jwt_secret,
                access_token_ttl,
                refresh_token_ttl,
                login_max_failures,
                login_lockout,
                login_ip_max_failures,
                registration_enabled,
                local_operator,
                cache: auth_cache,
            },
            agents: AgentsConfig {
                file: agents_file,
                default_agents,
                timeout: agent_timeout,
                max_attempts: agent_max_attempts,
                pricing_file,
                providers: ProviderEnv::default(),
            },
            debates: DebatesConfig {
                timeout: debate_timeout,
                max_concurrent: max_concurrent_debates,
                consensus_threshold,
                default_rounds,
                queue_size: debate_queue_size,
                lease: debate_lease,
                claim_poll: debate_claim_poll,
                max_cost_usd: debate_max_cost_usd,
            },
            breaker: BreakerConfig {
                failure_threshold: breaker_failure_threshold,
                open: breaker_open,
                success_threshold: breaker_success_threshold,
            },
            logging: LoggingConfig {
                dir: log_dir,
                level: log_level,
                memory_profiling,
                metrics_enabled,
                sentry_dsn,
            },
            receipts: ReceiptsConfig {
                signing_key_file: odr_signing_key_file,
                unsigned: odr_unsigned,
                issuer: odr_issuer,
            },
            config_file: None,
            flags: Flags::default(),
            sources: Sources(layers),
        })
    }

    /// Auth is on when a JWT secret or API token is configured, and always in production.
    pub fn auth_enabled(&self) -> bool {
        self.auth.jwt_secret.is_some()
            || self.auth.api_token.is_some()
            || self.env == Environment::Production
    }

    /// The interface to bind: `host` when given, else loopback so an unconfigured server is
    /// never reachable from the network.
    pub fn bind_host(&self) -> &str {
        self.http.host.as_deref().unwrap_or("127.0.0.1")
    }

    /// The effective configuration as `key = value  # source` lines, secrets redacted.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for setting in SETTINGS {
            let (value, source) = match self.sources.0.get(setting.key) {
                Some((v, src)) if !v.is_empty() => (display_value(setting, v), src.to_string()),
                _ => ("(unset)".to_owned(), "default".to_owned()),
            };
            out.push_str(&format!("{} = {value}  # {source}\n", setting.key));
        }
        for (name, value) in &self.agents.providers.0 {
            let shown = if name.ends_with("_KEY") {
                "[redacted]"
            } else {
                value.as_str()
            };
            out.push_str(&format!(
                "# provider: {name} = \"{shown}\"  # environment\n"
            ));
        }
        out
    }
}

fn display_value(setting: &Setting, value: &str) -> String {
    if !setting.secret {
        return toml::Value::String(value.to_owned()).to_string();
    }
    // URLs stay useful for debugging with only the password hidden.
    match url::Url::parse(value) {
        Ok(mut url) if url.scheme() != "https" && url.has_host() => {
            if url.password().is_some() {
                let _ = url.set_password(Some("[redacted]"));
            }
            format!("\"{url}\"")
        }
        _ => "\"[redacted]\"".to_owned(),
    }
}

/// Why a TOML table cannot be merged into the layers.
#[derive(Debug, thiserror::Error)]
enum TableError {
    #[error("unknown key `{0}` (known keys: {known})", known = known_keys())]
    UnknownKey(String),
    #[error("key `{key}` has an unsupported value {value}")]
    Unsupported { key: String, value: toml::Value },
}

/// Every settings key, comma separated.
fn known_keys() -> String {
    let known: Vec<_> = SETTINGS.iter().map(|s| s.key).collect();
    known.join(", ")
}

/// Merge one TOML table into the layers; unknown keys are errors (a typo must not be silently
/// ignored).
fn apply_table(
    layers: &mut Layers,
    table: &toml::Table,
    source: impl Fn(&str) -> Source,
) -> Result<(), TableError> {
    for (key, value) in table {
        let Some(setting) = SETTINGS.iter().find(|s| s.key == key) else {
            return Err(TableError::UnknownKey(key.clone()));
        };
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => {
                return Err(TableError::Unsupported {
                    key: key.clone(),
                    value: other.clone(),
                });
            }
        };
        layers.insert(setting.key, (text, source(key)));
    }
    Ok(())
}

struct Parser<'a> {
    layers: &'a Layers,
}

impl Parser<'_> {
    /// The value, with empty text treated as unset.
    fn text(&self, key: &str) -> Option<String> {
        self.layers
            .get(key)
            .map(|(v, _)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn source(&self, key: &str) -> Source {
        self.layers
            .get(key)
            .map_or(Source::Default, |(_, s)| s.clone())
    }

    fn invalid(&self, key: &str, expected: &str) -> ConfigError {
        ConfigError::Invalid {
            origin: self.source(key),
            value: self
                .layers
                .get(key)
                .map(|(v, _)| v.clone())
                .unwrap_or_default(),
            expected: expected.to_owned(),
        }
    }

    fn invalid_secret(&self, key: &str, expected: &str) -> ConfigError {
        ConfigError::InvalidSecret {
            origin: self.source(key),
            expected: expected.to_owned(),
        }
    }

    fn int(&self, key: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
        let expected = format!("a whole number from {min} to {max}");
        let text = self.text(key).ok_or_else(|| self.invalid(key, &expected))?;
        match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.invalid(key, &expected)),
        }
    }

    fn port(&self, key: &str) -> Result<u16, ConfigError> {
        Ok(self.int(key, 0, 65535)? as u16)
    }

    fn float(&self, key: &str) -> Result<f64, ConfigError> {
        self.text(key)
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|f| f.is_finite())
            .ok_or_else(|| self.invalid(key, "a number"))
    }

    fn boolean(&self, key: &str) -> Result<bool, ConfigError> {
        match self.text(key).map(|t| t.to_ascii_lowercase()).as_deref() {
            None | Some("0" | "false" | "no" | "off") => Ok(false),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some(_) => Err(self.invalid(key, "1/0, true/false, yes/no or on/off")),
        }
    }

    fn list(&self, key: &str) -> Vec<String> {
        self.text(key)
            .map(|t| {
                t.split(',')
                    .map(|item| item.trim().to_owned())
                    .filter(|item| !item.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// CIDRs (IPv4 or IPv6); a bare address means that one host.
    fn cidrs(&self, key: &str) -> Result<Vec<IpNet>, ConfigError> {
        self.list(key)
            .into_iter()
            .map(|item| {
                parse_cidr(&item).ok_or_else(|| ConfigError::Invalid {
                    origin: self.source(key),
                    value: item.clone(),
                    expected: "comma-separated CIDRs such as 10.0.0.0/8 or fd00::/8".into(),
                })
            })
            .collect()
    }

    fn origins(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        self.list(key)
            .into_iter()
            .map(|item| {
                if is_origin(&item) {
                    Ok(item)
                } else {
                    Err(ConfigError::Invalid {
                        origin: self.source(key),
                        value: item.clone(),
                        expected: "comma-separated origins such as https://admin.example.com \
                                   (scheme, host and optional port; no path)"
                            .into(),
                    })
                }
            })
            .collect()
    }

    /// One origin (see [`is_origin`]); empty means unset.
    fn origin(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.text(key) {
            None => Ok(None),
            Some(item) if is_origin(&item) => Ok(Some(item)),
            Some(_) => Err(self.invalid(
                key,
                "an origin such as https://api.example.com (scheme, host and optional port; \
                 no path), or empty for the console's own origin",
            )),
        }
    }
}

/// An origin as browsers send it: `http(s)://host[:port]`, no path, query or trailing slash.
fn is_origin(item: &str) -> bool {
    url::Url::parse(item).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.has_host()
            && u.username().is_empty()
            && u.password().is_none()
            && u.path() == "/"
            && u.query().is_none()
            && u.fragment().is_none()
            && !item.ends_with('/')
    })
}

/// SIGHUP: read the configuration again ([`Config::reread`]) and hand each subsystem that
/// changes without a restart its new settings: the rate limiter its limits, whitelist and
/// trusted proxies. A configuration that does not load or validate changes nothing; the error
/// is logged. Either way the outcome is what the rate limiter reports as its last reload.
/// Returns what changed.
pub fn reload(
    current: &Config,
    limiter: &crate::ratelimit::RateLimiter,
) -> Result<Vec<String>, String> {
    let outcome = current
        .reread()
        .map(|new| {
            limiter.apply(crate::ratelimit::Settings::from_config(
                &new.rate_limit,
                &new.http.trusted_proxies,
            ))
        })
        .map_err(|err| err.to_string());
    if let Err(message) = &outcome {
        tracing::error!(
            target: "aragora::ratelimit",
            error = %message,
            "rate_limit reload failed; previous settings stay in force: {message}"
        );
    }
    limiter.record_reload(crate::ratelimit::ReloadReport {
        at: chrono::Utc::now(),
        result: if outcome.is_ok() { "ok" } else { "error" },
        error: outcome.as_ref().err().cloned(),
        changes: outcome.as_ref().cloned().unwrap_or_default(),
    });
    outcome
}

/// Parse `10.0.0.0/8`, `fd00::/8` or a bare address.
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with(None, &Flags::default(), |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = load(&[]).unwrap();
        assert_eq!(c.env, Environment::Development);
        assert_eq!((c.http.port, c.ws.port), (8080, 8766));
        assert_eq!(c.database.url.expose(), "sqlite://./data/aragora.db");
        assert_eq!((c.database.pool_size, c.database.max_overflow), (10, 10));
        assert_eq!((c.rate_limit.rpm, c.rate_limit.debate_rpm), (120, 10));
        assert_eq!(c.agents.timeout, Duration::from_secs(120));
        assert_eq!(c.debates.timeout, Duration::from_secs(900));
        assert_eq!(c.debates.max_concurrent, 10);
        assert_eq!(c.debates.consensus_threshold, 0.6);
        assert_eq!((c.ws.max_connections, c.ws.max_per_ip), (10000, 100));
        assert!(c.logging.metrics_enabled && !c.logging.memory_profiling && !c.rate_limit.disabled);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert!(!c.auth_enabled());
        assert_eq!(c.bind_host(), "127.0.0.1");
    }

    #[test]
    fn account_settings_default_safe_and_validate() {
        let c = load(&[]).unwrap();
        assert_eq!(c.auth.access_token_ttl, Duration::from_secs(900));
        assert_eq!(c.auth.refresh_token_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(
            (c.auth.login_max_failures, c.auth.login_ip_max_failures),
            (5, 20)
        );
        assert_eq!(c.auth.login_lockout, Duration::from_secs(900));
        assert!(!c.auth.registration_enabled && !c.auth.local_operator && !c.ws.anonymous_read);
        assert_eq!(c.agents.pricing_file, None);
        let c = load(&[
            ("ARAGORA_REGISTRATION_ENABLED", "yes"),
            ("ARAGORA_LOCAL_OPERATOR", "1"),
            ("ARAGORA_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ])
        .unwrap();
        assert!(c.auth.registration_enabled && c.auth.local_operator && c.auth_enabled());
        let err = load(&[("ARAGORA_ACCESS_TOKEN_TTL_SECONDS", "5")]).unwrap_err();
        assert!(
            err.to_string().contains("ARAGORA_ACCESS_TOKEN_TTL_SECONDS"),
            "{err}"
        );
        let err = load(&[("ARAGORA_JWT_SECRET", "too-short-secret")]).unwrap_err();
        assert!(!err.to_string().contains("too-short-secret"), "{err}");
    }

    #[test]
    fn env_overrides_and_aliases() {
        let c = load(&[
            ("ARAGORA_DB_POOL_SIZE", "20"),
            ("DATABASE_URL", "postgres://u:pw@db:5432/aragora"),
            ("METRICS_ENABLED", "false"),
            (
                "ARAGORA_RATE_LIMIT_WHITELIST",
                "10.0.0.0/8, 192.168.0.0/16,fd00::/8,1.2.3.4",
            ),
        ])
        .unwrap();
        assert_eq!(c.database.pool_size, 20);
        assert_eq!(c.database.url.expose(), "postgres://u:pw@db:5432/aragora");
        assert!(!c.logging.metrics_enabled);
        assert_eq!(c.rate_limit.whitelist.len(), 4);
        assert_eq!(c.rate_limit.whitelist[3].to_string(), "1.2.3.4/32");
    }

    #[test]
    fn bad_value_names_variable_value_and_what_is_allowed() {
        let err = load(&[("ARAGORA_DB_POOL_SIZE", "lots")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "ARAGORA_DB_POOL_SIZE=\"lots\" is not valid: expected a whole number from 1 to 1000"
        );
        let err = load(&[("ARAGORA_RATE_LIMIT_WHITELIST", "10.0.0.0/8,10.0.0.300/8")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ARAGORA_RATE_LIMIT_WHITELIST=\"10.0.0.300/8\""),
            "{err}"
        );
        let err = load(&[("ARAGORA_CONSENSUS_THRESHOLD", "1.5")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("greater than 0 and at most 1"), "{err}");
        let err = load(&[("ARAGORA_ENV", "staging")]).unwrap_err().to_string();
        assert!(err.starts_with("ARAGORA_ENV=\"staging\""), "{err}");
    }

    #[test]
    fn secrets_never_appear_in_errors_or_debug() {
        let err = load(&[("ARAGORA_JWT_SECRET", "short-secret-xyz")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("short-secret-xyz"), "{err}");
        assert!(err.contains("ARAGORA_JWT_SECRET"), "{err}");
        let c = load(&[
            (
                "ARAGORA_JWT_SECRET",
                "0123456789abcdef0123456789abcdef-topsecret",
            ),
            (
                "ARAGORA_DATABASE_URL",
                "postgres://app:hunter2@db:5432/aragora",
            ),
        ])
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("topsecret") && !debug.contains("hunter2"));
        let rendered = c.render();
        assert!(!rendered.contains("topsecret") && !rendered.contains("hunter2"));
        assert!(
            rendered.contains("postgres://app:%5Bredacted%5D@db:5432/aragora"),
            "{rendered}"
        );
        assert!(rendered.contains("jwt_secret = \"[redacted]\"  # ARAGORA_JWT_SECRET"));
    }

    #[test]
    fn production_requires_a_jwt_secret() {
        let err = load(&[("ARAGORA_ENV", "production")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ARAGORA_JWT_SECRET"), "{err}");
        let ok = load(&[
            ("ARAGORA_ENV", "production"),
            ("ARAGORA_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("ARAGORA_ODR_SIGNING_KEY_FILE", "/etc/aragora/odr.pem"),
        ])
        .unwrap();
        assert!(ok.auth_enabled());
    }

    #[test]
    fn production_signs_receipts_or_says_it_will_not() {
        let err = load(&[
            ("ARAGORA_ENV", "production"),
            ("ARAGORA_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("ARAGORA_ODR_SIGNING_KEY_FILE"), "{err}");
        assert!(err.contains("ARAGORA_ODR_UNSIGNED=1"), "{err}");
        let unsigned = load(&[
            ("ARAGORA_ENV", "production"),
            ("ARAGORA_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("ARAGORA_ODR_UNSIGNED", "1"),
        ])
        .unwrap();
        assert!(unsigned.receipts.unsigned);
        assert_eq!(unsigned.receipts.signing_key_file, None);
        let dev = load(&[]).unwrap();
        assert_eq!(dev.receipts.issuer, "aragora");
        assert!(!dev.receipts.unsigned);
        let long = "x".repeat(201);
        let err = load(&[("ARAGORA_ODR_ISSUER", long.as_str())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ARAGORA_ODR_ISSUER"), "{err}");
    }

    #[test]
    fn supabase_without_database_url_is_refused() {
        let err = load(&[
            ("SUPABASE_URL", "https://x.supabase.co"),
            ("SUPABASE_KEY", "k"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ARAGORA_DATABASE_URL") && err.contains("Postgres"),
            "{err}"
        );
        assert!(
            load(&[
                ("SUPABASE_URL", "https://x.supabase.co"),
                (
                    "ARAGORA_DATABASE_URL",
                    "postgres://db.x.supabase.co:5432/postgres"
                )
            ])
            .is_ok()
        );
    }

    #[test]
    fn file_layer_sits_between_defaults_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aragora.toml");
        std::fs::write(&path, "rate_limit_rpm = 300\nws_max_per_ip = 7\n").unwrap();
        let env: HashMap<&str, &str> = [("ARAGORA_WS_MAX_PER_IP", "9")].into();
        let c = Config::load_with(Some(&path), &Flags::default(), |k| {
            env.get(k).map(std::string::ToString::to_string)
        })
        .unwrap();
        assert_eq!(c.rate_limit.rpm, 300);
        assert_eq!(c.ws.max_per_ip, 9);
        let flags = Flags {
            api_port: Some(9999),
            ..Flags::default()
        };
        let c =
            Config::load_with(Some(&path), &flags, |_| Some("1".into()).filter(|_| false)).unwrap();
        assert_eq!(c.http.port, 9999);
        assert!(c.render().contains("api_port = \"9999\"  # --api-port"));

        std::fs::write(&path, "rate_limt_rpm = 300\n").unwrap();
        let err = Config::load_with(Some(&path), &Flags::default(), |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key `rate_limt_rpm`"), "{err}");
        std::fs::write(&path, "rate_limit_rpm = \"fast\"\n").unwrap();
        let err = Config::load_with(Some(&path), &Flags::default(), |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `rate_limit_rpm`=\"fast\""), "{err}");
    }

    #[test]
    fn origins_are_validated() {
        let c = load(&[(
            "ARAGORA_ALLOWED_ORIGINS",
            "https://admin.example.com,http://localhost:3000",
        )])
        .unwrap();
        assert_eq!(c.http.allowed_origins.len(), 2);
        let err = load(&[("ARAGORA_ALLOWED_ORIGINS", "https://admin.example.com/path")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ARAGORA_ALLOWED_ORIGINS"), "{err}");
    }

    #[test]
    fn admin_console_is_on_by_default_and_can_be_turned_off() {
        let c = load(&[]).unwrap();
        assert!(c.http.admin_console);
        assert_eq!(c.http.admin_api_url, None);
        let c = load(&[("ARAGORA_ADMIN_CONSOLE", "false")]).unwrap();
        assert!(!c.http.admin_console);
        let err = load(&[("ARAGORA_ADMIN_CONSOLE", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("ARAGORA_ADMIN_CONSOLE=\"maybe\""), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn admin_api_url_is_an_origin() {
        let c = load(&[("ARAGORA_ADMIN_API_URL", "https://api.example.com")]).unwrap();
        assert_eq!(
            c.http.admin_api_url.as_deref(),
            Some("https://api.example.com")
        );
        let c = load(&[("ARAGORA_ADMIN_API_URL", "http://localhost:8080")]).unwrap();
        assert_eq!(
            c.http.admin_api_url.as_deref(),
            Some("http://localhost:8080")
        );
        // Empty means the console's own origin.
        let c = load(&[("ARAGORA_ADMIN_API_URL", "")]).unwrap();
        assert_eq!(c.http.admin_api_url, None);
        for bad in [
            "https://api.example.com/api",
            "https://api.example.com/",
            "api.example.com",
            "ftp://api.example.com",
            "https://api.example.com?x=1",
        ] {
            let err = load(&[("ARAGORA_ADMIN_API_URL", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("ARAGORA_ADMIN_API_URL={bad:?} is not valid")),
                "{err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn db_acquire_timeout_defaults_to_ten_seconds() {
        assert_eq!(
            load(&[]).unwrap().database.acquire_timeout,
            Duration::from_secs(10)
        );
        let c = load(&[("ARAGORA_DB_ACQUIRE_TIMEOUT_MS", "1500")]).unwrap();
        assert_eq!(c.database.acquire_timeout, Duration::from_millis(1500));
        let err = load(&[("ARAGORA_DB_ACQUIRE_TIMEOUT_MS", "0")]).unwrap_err();
        assert!(
            err.to_string().contains("ARAGORA_DB_ACQUIRE_TIMEOUT_MS"),
            "{err}"
        );
    }

    #[test]
    fn reload_rereads_the_file_keeps_the_flags_and_hands_the_limiter_its_settings() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("aragora.toml");
        std::fs::write(&file, "rate_limit_rpm = 2\n").unwrap();
        let flags = Flags {
            api_port: Some(9999),
            ..Flags::default()
        };
        let config = Config::load(Some(&file), &flags).unwrap();
        let limiter = crate::ratelimit::RateLimiter::new(&config, None);
        assert_eq!(limiter.settings().default_rpm, 2);

        std::fs::write(
            &file,
            "rate_limit_rpm = 50\nrate_limit_whitelist = \"10.0.0.0/8\"\n",
        )
        .unwrap();
        let reread = config.reread().unwrap();
        assert_eq!((reread.rate_limit.rpm, reread.http.port), (50, 9999));
        let changes = reload(&config, &limiter).unwrap();
        assert!(
            changes.contains(&"rate_limit_rpm: 2 -> 50".to_owned()),
            "{changes:?}"
        );
        assert_eq!(limiter.settings().default_rpm, 50);
        assert_eq!(
            limiter.settings().whitelist,
            vec![parse_cidr("10.0.0.0/8").unwrap()]
        );
        let report = limiter.last_reload().unwrap();
        assert_eq!((report.result, report.changes), ("ok", changes));

        // A bad value changes nothing and is reported.
        std::fs::write(&file, "rate_limit_rpm = \"lots\"\n").unwrap();
        let err = reload(&config, &limiter).unwrap_err();
        assert!(
            err.contains("rate_limit_rpm") && err.contains("lots"),
            "{err}"
        );
        assert_eq!(limiter.settings().default_rpm, 50);
        let report = limiter.last_reload().unwrap();
        assert_eq!((report.result, report.error), ("error", Some(err)));
    }
}
