//! Application state and start-up: `Application::build` acquires the pid lock, opens and
//! migrates the store, and binds both listeners (port 0 in tests: the real addresses are
//! reported); `run` serves until the shutdown token fires, then drains within the
//! configured shutdown timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::lockfile::{LockError, PidLock};
use crate::redis_client::RedisHandle;
use crate::store::{self, DynStore, PoolSettings, StoreError};
use crate::ws::WsHub;

/// Counters the engine and agents publish for health and metrics.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    active_debates: AtomicUsize,
    breakers_open: AtomicUsize,
    breakers_half_open: AtomicUsize,
}

impl RuntimeStats {
    pub fn active_debates(&self) -> usize {
        self.active_debates.load(Ordering::Relaxed)
    }
    pub fn set_active_debates(&self, n: usize) {
        self.active_debates.store(n, Ordering::Relaxed);
    }
    /// (open, half_open) circuit breakers.
    pub fn breaker_counts(&self) -> (usize, usize) {
        (
            self.breakers_open.load(Ordering::Relaxed),
            self.breakers_half_open.load(Ordering::Relaxed),
        )
    }
    pub fn set_breaker_counts(&self, open: usize, half_open: usize) {
        self.breakers_open.store(open, Ordering::Relaxed);
        self.breakers_half_open.store(half_open, Ordering::Relaxed);
    }
}

/// Everything a handler can reach. Cheap to clone: all fields are shared.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: DynStore,
    pub redis: Option<RedisHandle>,
    pub ws: Arc<WsHub>,
    pub runtime: Arc<RuntimeStats>,
    pub metrics: Option<PrometheusHandle>,
    pub started_at: Instant,
    /// Cancelled when shutdown starts.
    pub shutdown: CancellationToken,
    /// Spawned tasks (WebSocket connections, debates) that shutdown waits for.
    pub tasks: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot open the database: {0}")]
    Store(#[source] StoreError),
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[source] StoreError),
    #[error("invalid redis URL: {0}")]
    Redis(String),
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

/// Open the configured store with the configured pool.
pub async fn open_store(config: &Config) -> Result<DynStore, StoreError> {
    let pool = PoolSettings {
        size: config.db_pool_size,
        max_overflow: config.db_max_overflow,
        acquire_timeout: Duration::from_secs(10),
    };
    store::connect(config.database_url.expose(), pool).await
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, BuildError> {
        let host = config.bind_host().to_owned();
        // The lock comes first so a second start says "already running", not "address in use".
        let lock = PidLock::acquire(&config.lock_dir, config.api_port)?;

        let store = open_store(&config).await.map_err(BuildError::Store)?;
        store.migrate().await.map_err(BuildError::Migrate)?;

        let redis = match &config.redis_url {
            Some(url) => {
                Some(RedisHandle::new(url.expose()).map_err(|e| BuildError::Redis(e.to_string()))?)
            }
            None => None,
        };

        let api_listener = bind(&host, config.api_port).await?;
        let ws_listener = bind(&host, config.ws_port).await?;
        let api_addr = api_listener
            .local_addr()
            .expect("bound socket has an address");
        let ws_addr = ws_listener
            .local_addr()
            .expect("bound socket has an address");

        let metrics = config
            .metrics_enabled
            .then(crate::telemetry::metrics::install);

        let state = AppState {
            config: Arc::new(config),
            store,
            redis,
            ws: Arc::new(WsHub::new()),
            runtime: Arc::new(RuntimeStats::default()),
            metrics,
            started_at: Instant::now(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
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
            tracing::warn!("auth is off: no ARAGORA_JWT_SECRET or ARAGORA_API_TOKEN configured");
        }
        let token = state.shutdown.clone();
        let api = axum::serve(
            api_listener,
            crate::http::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(token.clone().cancelled_owned());
        let ws = axum::serve(
            ws_listener,
            crate::ws::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(token.clone().cancelled_owned());

        // Draining (servers stopping, then tracked tasks such as WebSocket connections
        // sending their 1001 close) is bounded as a whole by the shutdown timeout.
        let drain = async {
            tokio::try_join!(api.into_future(), ws.into_future())?;
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
