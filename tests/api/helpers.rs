//! spawn_app(): a real server on port 0 with its own data dir, lock dir and (optionally) its
//! own Postgres schema; plus a TCP proxy that tests cut to simulate a dead dependency.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aragora::app::{AppState, Application};
use aragora::config::{Config, Flags};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An HTTP client for tests (TLS backend installed first, as the binary does).
pub fn http() -> reqwest::Client {
    aragora::agents::http::install_crypto_provider();
    reqwest::Client::new()
}

pub fn postgres_url() -> String {
    std::env::var("ARAGORA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("ARAGORA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

pub struct TestApp {
    pub api: SocketAddr,
    pub ws: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<std::io::Result<()>>,
    /// Holds the data and lock dirs until the app is dropped.
    _dir: TempDir,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// Trigger graceful shutdown and wait for `run` to return.
    pub async fn stop(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("server stopped in time")
            .expect("server task did not panic")
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Start a server whose configuration is the defaults plus `env` (as if set in the
/// environment), listening on free ports, with data and lock files in a temp dir.
pub async fn spawn_app_with(env: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert(
        "ARAGORA_DATA_DIR".into(),
        dir.path().join("data").display().to_string(),
    );
    vars.insert("ARAGORA_LOCK_DIR".into(), dir.path().display().to_string());
    // Limits high enough that polling tests never meet them; ratelimit.rs sets its own.
    for var in [
        "ARAGORA_RATE_LIMIT_RPM",
        "ARAGORA_RATE_LIMIT_DEBATE_RPM",
        "ARAGORA_RATE_LIMIT_AGENT_TEST_RPM",
    ] {
        vars.insert(var.into(), "1000000".into());
    }
    for (k, v) in env {
        vars.insert((*k).into(), (*v).into());
    }
    let flags = Flags {
        host: None,
        api_port: Some(0),
        ws_port: Some(0),
    };
    let config = Config::load_with(None, &flags, |k| vars.get(k).cloned()).expect("valid config");
    let app = Application::build(config)
        .await
        .expect("application builds");
    let (api, ws) = (app.api_addr(), app.ws_addr());
    let state = app.state().clone();
    let shutdown = app.shutdown_token();
    let handle = tokio::spawn(app.run());
    TestApp {
        api,
        ws,
        client: http(),
        state,
        shutdown,
        handle,
        _dir: dir,
    }
}

/// A fresh schema in the test Postgres database; returns a database URL whose connections
/// use it. Fails (never skips) when Postgres is unreachable.
pub async fn fresh_postgres_schema() -> (String, String) {
    let admin = sqlx::PgPool::connect(&postgres_url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Postgres at {} is required for this test: {e}",
                postgres_url()
            )
        });
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("create schema");
    admin.close().await;
    (schema.clone(), with_search_path(&postgres_url(), &schema))
}

/// A server whose Postgres connections run through a `Proxy` the test can cut or
/// blackhole, in a fresh schema; `extra` adds settings.
pub async fn spawn_app_behind_db_proxy(extra: &[(&str, &str)]) -> (TestApp, Proxy) {
    let (schema, _) = fresh_postgres_schema().await;
    let upstream = postgres_url();
    let host_port = upstream
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the test database URL")
        .to_owned();
    let proxy = Proxy::start(&host_port).await;
    let url = with_search_path(
        &upstream.replace(&host_port, &proxy.addr.to_string()),
        &schema,
    );
    let mut env = vec![("ARAGORA_DATABASE_URL", url.as_str())];
    env.extend_from_slice(extra);
    (spawn_app_with(&env).await, proxy)
}

pub fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

/// A TCP proxy in front of a real server. `cut()` drops every proxied connection and stops
/// accepting, so the dependency looks dead; `blackhole()` drops them too but keeps accepting
/// new connections that then never get an answer (a hung server or a lossy network).
pub struct Proxy {
    pub addr: SocketAddr,
    stop: CancellationToken,
    connections: Arc<std::sync::Mutex<CancellationToken>>,
    hang: Arc<AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let connections = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let hang = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let (stop2, conns2, hang2) = (stop.clone(), connections.clone(), hang.clone());
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(c) => c,
                        Err(_) => return,
                    },
                };
                let conn_stop = conns2.lock().unwrap().clone();
                let upstream = upstream.clone();
                let hang = hang2.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    if hang {
                        conn_stop.cancelled().await;
                        drop(inbound);
                        return;
                    }
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = conn_stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            stop,
            connections,
            hang,
        }
    }

    fn drop_connections(&self) {
        let mut guard = self.connections.lock().unwrap();
        guard.cancel();
        *guard = CancellationToken::new();
    }

    pub fn cut(&self) {
        self.stop.cancel();
        self.drop_connections();
    }

    pub fn blackhole(&self) {
        self.hang.store(true, Ordering::SeqCst);
        self.drop_connections();
    }

    /// Undo `blackhole()`: the hung connections are dropped and new ones reach the server.
    pub fn restore(&self) {
        self.hang.store(false, Ordering::SeqCst);
        self.drop_connections();
    }
}

/// A port that was free a moment ago (for tests that start the real binary).
/// A debate as the tests put it straight into a store: queued, one round of `agents`,
/// majority, no owner and no options (change a field with `NewDebate { …, ..this }`).
pub fn queued_debate(id: &str, task: &str, agents: &[&str]) -> aragora::store::NewDebate {
    aragora::store::NewDebate {
        id: id.into(),
        task: task.into(),
        agents: agents.iter().map(|a| (*a).to_owned()).collect(),
        rounds: 1,
        consensus: "majority".into(),
        owner_id: None,
        correlation_id: None,
        options: serde_json::json!({}),
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
