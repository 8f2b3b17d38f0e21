//! The state every handler and middleware reaches: the shared services of one server.
//! Built once by `app::Application::build`; a clone is one reference count, however many
//! services it holds (every layer of every request clones it).

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Accounts, Authenticator};
use crate::config::Config;
use crate::debate::manager::DebateManager;
use crate::ratelimit::RateLimiter;
use crate::redis_client::RedisHandle;
use crate::store::DynStore;
use crate::ws::{WsContext, WsHub};

/// Everything a handler can reach (fields through `Deref` to [`Shared`]).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The services of one server.
pub struct Shared {
    pub config: Arc<Config>,
    pub store: DynStore,
    pub redis: Option<RedisHandle>,
    pub ws: Arc<WsHub>,
    /// Debate queue, workers and the agent registry.
    pub debates: Arc<DebateManager>,
    pub metrics: Option<PrometheusHandle>,
    /// Decision receipts: issuing, signing key, verification.
    pub receipts: Arc<crate::receipts::Receipts>,
    /// The WebSocket server's own context (both listeners).
    pub ws_server: Arc<WsContext>,
    /// Rate limits: rules, backends, SIGHUP reload.
    pub ratelimit: Arc<RateLimiter>,
    /// Credentials to principals (the HTTP gate and the WebSocket handshake).
    pub auth: Arc<Authenticator>,
    /// Login, lockout, token rotation, registration, API keys.
    pub accounts: Arc<Accounts>,
    /// The dependency checks of `/api/health`, shared by calls within `health_cache_ms`.
    pub health: Arc<crate::http::HealthProbe>,
    pub started_at: Instant,
    /// Cancelled when shutdown starts.
    pub shutdown: CancellationToken,
    /// Spawned tasks (WebSocket connections, debates) that shutdown waits for.
    pub tasks: TaskTracker,
}
