//! Application state and start-up: `Application::build` acquires the pid lock, opens and
//! migrates the store, and binds both listeners (port 0 in tests: the real addresses are
//! reported); `run` serves until the shutdown token fires, then drains within the
//! configured shutdown timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agents::{AgentRegistry, BreakerConfig, RetryPolicy};
use crate::auth::{AccountSettings, Accounts, Authenticator, CredentialCache};
use crate::bus::{EventBus, LocalBus, RedisBus};
use crate::config::{Config, DatabaseConfig, ReceiptsConfig, WsConfig};
use crate::debate::manager::{DebateManager, ManagerSettings};
use crate::lockfile::{LockError, PidLock};
use crate::ratelimit::RateLimiter;
use crate::redis_client::RedisHandle;
use crate::store::{self, DynStore, PoolSettings, StoreError};
use crate::ws::{WsContext, WsHub, WsLimits};

pub use crate::state::{AppState, Shared};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot open the database: {0}")]
    Store(#[source] StoreError),
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[source] StoreError),
    #[error("invalid agent configuration: {0}")]
    Agents(#[from] crate::agents::registry::RegistryError),
    #[error("invalid pricing table: {0}")]
    Pricing(#[from] crate::pricing::PricingError),
    #[error("invalid redis URL: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("{0}")]
    Receipts(#[from] crate::receipts::keys::KeyError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

pub struct Application {
    state: AppState,
    api_listener: TcpListener,
    ws_listener: TcpListener,
    api_addr: SocketAddr,
    ws_addr: SocketAddr,
    _lock: PidLock,
}

/// Open the store of the `database` section with its pool.
pub async fn open_store(database: &DatabaseConfig) -> Result<DynStore, StoreError> {
    let pool = PoolSettings {
        size: database.pool_size,
        max_overflow: database.max_overflow,
        acquire_timeout: database.acquire_timeout,
        intake: database.intake_pool_size,
    };
    store::connect(database.url.expose(), pool).await
}

/// How often breaker transitions are exchanged with the other instances through Redis.
const BREAKER_SYNC_PERIOD: Duration = Duration::from_millis(500);

/// The key receipts are signed with: the section's key file; in development without one, a
/// key generated once under `data_dir`; none when `unsigned` (production insists on one of
/// the two, see `Config`).
fn receipt_signer(
    receipts: &ReceiptsConfig,
    data_dir: &std::path::Path,
) -> Result<Option<Arc<crate::receipts::Signer>>, BuildError> {
    use crate::receipts::Signer;
    let signer = match &receipts.signing_key_file {
        Some(path) => Signer::load(path)?,
        None if receipts.unsigned => {
            tracing::warn!(target: "aragora::receipts", "ARAGORA_ODR_UNSIGNED=1: decision receipts are issued unsigned");
            return Ok(None);
        }
        None => {
            let path = data_dir.join("odr-signing-key.pem");
            let (signer, created) = Signer::load_or_create(&path)?;
            if created {
                tracing::info!(
                    target: "aragora::receipts",
                    key_id = signer.key_id(), path = %path.display(),
                    "generated a receipt signing key (development); set ARAGORA_ODR_SIGNING_KEY_FILE in production"
                );
            }
            signer
        }
    };
    tracing::info!(target: "aragora::receipts", key_id = signer.key_id(), "decision receipts are signed with key {}", signer.key_id());
    Ok(Some(Arc::new(signer)))
}

/// The WebSocket hub's limits from the `ws` section.
fn ws_limits(ws: &WsConfig) -> WsLimits {
    WsLimits {
        max_connections: ws.max_connections as usize,
        max_per_ip: ws.max_per_ip as usize,
        max_message_bytes: crate::ws::MAX_MESSAGE_BYTES,
        send_queue: ws.send_queue as usize,
        slow_after: ws.slow_consumer,
    }
}

/// Live events buffered for the fan-out dispatcher.
const BUS_CAPACITY: usize = 16_384;

/// The agent registry for `config` (agents file, provider keys, resilience policy).
pub fn load_agents(
    config: &Config,
) -> Result<AgentRegistry, crate::agents::registry::RegistryError> {
    let breaker = BreakerConfig::from(&config.breaker);
    let retry = RetryPolicy {
        max_attempts: config.agents.max_attempts,
        ..RetryPolicy::default()
    };
    let providers = config.agents.providers.clone();
    AgentRegistry::load(
        config.agents.file.as_deref(),
        &move |name: &str| providers.get(name),
        breaker,
        retry,
        config.agents.timeout,
    )
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, BuildError> {
        let host = config.bind_host().to_owned();
        // The lock comes first so a second start says "already running", not "address in use".
        let lock = PidLock::acquire(&config.lock_dir, config.http.port)?;

        let agents = Arc::new(load_agents(&config)?);
        let signer = receipt_signer(&config.receipts, &config.data_dir)?;
        let store = open_store(&config.database)
            .await
            .map_err(BuildError::Store)?;
        store.migrate().await.map_err(BuildError::Migrate)?;
        let receipts = {
            let agents = agents.clone();
            crate::receipts::Receipts::start(
                store.clone(),
                signer,
                config.receipts.issuer.clone(),
                Box::new(move |name: &str| {
                    agents
                        .resolve(name)
                        .ok()
                        .map(|a| (a.provider_id().to_owned(), a.model().to_owned()))
                }),
            )
            .await
            .map_err(BuildError::Store)?
        };

        let redis = match &config.redis.url {
            Some(url) => Some(RedisHandle::new(url.expose()).map_err(BuildError::Redis)?),
            None => None,
        };

        let ratelimit = Arc::new(RateLimiter::new(&config, redis.clone()));

        let api_listener = bind(&host, config.http.port).await?;
        let ws_listener = bind_ws(&host, config.ws.port, config.ws.socket_send_buffer).await?;
        let api_addr = api_listener
            .local_addr()
            .expect("bound socket has an address");
        let ws_addr = ws_listener
            .local_addr()
            .expect("bound socket has an address");

        let metrics = config
            .logging
            .metrics_enabled
            .then(crate::telemetry::metrics::install);
        if metrics.is_some() {
            crate::telemetry::metrics::register_agents(
                agents.known_names().iter().map(String::as_str),
            );
        }

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        // Live events: in-process, or across instances through Redis when it is configured.
        let bus: Arc<dyn EventBus> = match &redis {
            Some(redis) => RedisBus::start(
                redis.clone(),
                config.redis.event_bus_channel.clone(),
                config.instance_id.clone(),
                BUS_CAPACITY,
                &tasks,
                shutdown.clone(),
            ),
            None => Arc::new(LocalBus::new(BUS_CAPACITY)),
        };
        let debates = DebateManager::new(
            store.clone(),
            agents,
            bus,
            ManagerSettings {
                max_concurrent: config.debates.max_concurrent as usize,
                queue_size: config.debates.queue_size as usize,
                default_agents: config.agents.default_agents.clone(),
                default_rounds: config.debates.default_rounds,
                threshold: config.debates.consensus_threshold,
                debate_timeout: config.debates.timeout,
                instance_id: config.instance_id.clone(),
                lease: config.debates.lease,
                claim_poll: config.debates.claim_poll,
                shutdown_timeout: config.shutdown_timeout,
                max_cost_usd: config.debates.max_cost_usd,
                pricing: Arc::new(crate::pricing::Pricing::load(
                    config.agents.pricing_file.as_deref(),
                )?),
            },
            shutdown.clone(),
            tasks.clone(),
        );
        {
            let receipts = receipts.clone();
            debates.on_decided(Arc::new(move |debate_id: String, carried| {
                receipts.enqueue_decided(debate_id, carried);
            }));
        }
        tasks.spawn(receipts.clone().run_worker(shutdown.clone()));
        let ws = Arc::new(WsHub::new(ws_limits(&config.ws), &shutdown));
        // One credential cache: the authenticator fills it, account changes (a key replaced
        // or revoked) drop an account's entries from it.
        let credentials = Arc::new(CredentialCache::new(config.auth.cache));
        let auth = Arc::new(Authenticator::new(
            &config,
            store.clone(),
            credentials.clone(),
        ));
        let accounts = Arc::new(Accounts::new(
            store.clone(),
            AccountSettings::from_config(&config),
            credentials,
        ));
        let ws_server = Arc::new(WsContext {
            hub: ws.clone(),
            store: store.clone(),
            auth: auth.clone(),
            anonymous_read: config.ws.anonymous_read,
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
        });
        let state = AppState::new(Shared {
            store,
            redis,
            ws,
            ws_server,
            debates,
            receipts,
            auth,
            accounts,
            health: Arc::new(crate::http::HealthProbe::new(config.http.health_cache)),
            metrics,
            ratelimit,
            started_at: Instant::now(),
            config: Arc::new(config),
            shutdown,
            tasks,
        });
        Ok(Application {
            state,
            api_listener,
            ws_listener,
            api_addr,
            ws_addr,
            _lock: lock,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Cancel this token to start a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serve until the shutdown token is cancelled, then drain: stop accepting, let in-flight
    /// requests finish, close WebSockets with 1001, wait for tracked tasks — all within
    /// the shutdown timeout.
    pub async fn run(self) -> std::io::Result<()> {
        let Application {
            state,
            api_listener,
            ws_listener,
            api_addr,
            ws_addr,
            _lock,
        } = self;
        tracing::info!(
            api = %api_addr,
            ws = %ws_addr,
            database = state.store.backend().as_str(),
            auth = if state.config.auth_enabled() { "on" } else { "off" },
            "aragora listening"
        );
        if !state.config.auth_enabled() {
            tracing::warn!(
                "auth is off: no ARAGORA_JWT_SECRET or ARAGORA_API_TOKEN configured; every caller \
                 has owner rights (bound to {} unless --host says otherwise)",
                state.config.bind_host()
            );
        } else if state.config.auth.local_operator {
            tracing::warn!(
                "local_operator is on: credential-less requests from loopback without proxy \
                 headers get owner rights"
            );
        }
        state.debates.start();
        state
            .tasks
            .spawn(state.receipts.clone().run_sweeper(state.shutdown.clone()));
        // With Redis, one instance's open breaker is seen by the others within a period.
        if let Some(redis) = &state.redis {
            state.tasks.spawn(
                crate::bus::breakers::BreakerSync {
                    redis: redis.clone(),
                    namespace: state.config.redis.event_bus_channel.clone(),
                    instance: state.config.instance_id.clone(),
                    registry: state.debates.agents().clone(),
                    period: BREAKER_SYNC_PERIOD,
                }
                .run(state.shutdown.clone()),
            );
        }
        state.tasks.spawn(
            state
                .ws
                .fanout
                .clone()
                .dispatch(state.debates.bus().clone(), state.shutdown.clone()),
        );
        state.ratelimit.start(&state.tasks, state.shutdown.clone());
        let token = state.shutdown.clone();
        // Both listeners are bound (in `build`): tell systemd (Type=notify) we are up.
        crate::telemetry::systemd::ready();
        state
            .tasks
            .spawn(crate::telemetry::systemd::watchdog(token.clone()));
        let api = crate::http::server::serve(
            api_listener,
            crate::http::router(state.clone()),
            token.clone(),
        );
        let ws = crate::http::server::serve(
            ws_listener,
            crate::ws::router(state.ws_server.clone()),
            token.clone(),
        );

        // Draining (servers stopping, then tracked tasks such as WebSocket connections
        // sending their 1001 close) is bounded as a whole by the shutdown timeout.
        let drain = async {
            tokio::try_join!(api, ws)?;
            state.tasks.close();
            state.tasks.wait().await;
            // A dead database must not hold the exit hostage.
            if tokio::time::timeout(Duration::from_secs(3), state.store.close())
                .await
                .is_err()
            {
                tracing::warn!("database pool did not close cleanly");
            }
            Ok::<(), std::io::Error>(())
        };
        let deadline = async {
            token.cancelled().await;
            tracing::info!("shutdown started");
            crate::telemetry::systemd::stopping();
            tokio::time::sleep(state.config.shutdown_timeout).await;
        };
        let result = tokio::select! {
            r = drain => r,
            _ = deadline => {
                tracing::warn!(
                    timeout_s = state.config.shutdown_timeout.as_secs(),
                    "shutdown timeout reached; exiting with work still in flight"
                );
                Ok(())
            }
        };
        tracing::info!("shutdown complete");
        result
    }
}

async fn bind(host: &str, port: u16) -> Result<TcpListener, BuildError> {
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    TcpListener::bind(&addr)
        .await
        .map_err(|source| BuildError::Bind { addr, source })
}

/// The WebSocket listener. Accepted sockets inherit its send buffer size: a fixed, modest
/// kernel buffer per connection bounds the memory a client that stops reading can pin, and
/// makes the send queue (and the 4008 close) the place where back-pressure shows.
async fn bind_ws(host: &str, port: u16, send_buffer: u32) -> Result<TcpListener, BuildError> {
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let bind_err = |source| BuildError::Bind {
        addr: addr.clone(),
        source,
    };
    let resolved = tokio::net::lookup_host(&addr)
        .await
        .map_err(bind_err)?
        .next()
        .ok_or_else(|| {
            bind_err(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "no address",
            ))
        })?;
    let socket = if resolved.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(bind_err)?;
    socket.set_reuseaddr(true).map_err(bind_err)?;
    socket.set_send_buffer_size(send_buffer).map_err(bind_err)?;
    socket.bind(resolved).map_err(bind_err)?;
    socket.listen(1024).map_err(bind_err)
}
