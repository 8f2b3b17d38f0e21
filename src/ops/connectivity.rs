//! Reachability of everything the server talks to (`POST /api/debug/connectivity-check`):
//! for each provider endpoint, the database and Redis, step by step — DNS, TCP connect, TLS
//! handshake (for `https://`/`rediss://`), then an application round trip (HTTP request,
//! `SELECT 1`, `PING`) — each step with its time in ms and, when it fails, the error. A failed
//! step ends that target's check. Every step has its own timeout and all targets run at once,
//! so the whole check takes at most about four step timeouts.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpStream;

use crate::app::AppState;

/// One step of one target.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Step {
    /// `dns`, `tcp`, `tls`, `http`, `query` or `ping`.
    pub step: &'static str,
    /// `ok`, `failed` or `skipped`.
    pub status: &'static str,
    pub ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One dependency's result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TargetReport {
    /// `anthropic`, `openai`, …, `database` or `redis`.
    pub name: String,
    /// `provider`, `database` or `redis`.
    pub kind: &'static str,
    /// Where it is reached, without credentials.
    pub endpoint: String,
    /// Every step passed (true, with no steps, for a provider that is not configured).
    pub ok: bool,
    /// `ok`, `failed`, or `not_configured` (no key or address set: not checked).
    pub status: &'static str,
    pub total_ms: u64,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConnectivityReport {
    /// Every target reachable.
    pub ok: bool,
    pub step_timeout_ms: u64,
    pub total_ms: u64,
    pub targets: Vec<TargetReport>,
}

/// What to check, derived from the configuration.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    kind: &'static str,
    host: String,
    port: u16,
    tls: bool,
    /// Shown in the report (no userinfo).
    endpoint: String,
    app: AppCheck,
}

#[derive(Debug, Clone)]
enum AppCheck {
    Http(String),
    Database,
    Redis,
    None,
}

/// Run the whole check. `include_unconfigured` also checks providers without credentials.
pub async fn check(
    state: &AppState,
    step_timeout: Duration,
    include_unconfigured: bool,
) -> ConnectivityReport {
    let started = Instant::now();
    let mut targets = Vec::new();
    let mut unconfigured = Vec::new();
    // The catalogue's providers as the registry built them from the environment.
    for endpoint in state.debates.agents().endpoints() {
        if !endpoint.networked() {
            continue;
        }
        if !endpoint.configured && !include_unconfigured {
            unconfigured.push(TargetReport {
                name: endpoint.id.to_owned(),
                kind: "provider",
                endpoint: strip_userinfo(&endpoint.base_url),
                ok: true,
                status: "not_configured",
                total_ms: 0,
                steps: Vec::new(),
            });
            continue;
        }
        match target_from_url(endpoint.id, "provider", &endpoint.base_url, 443) {
            Ok(mut target) => {
                target.app = AppCheck::Http(strip_userinfo(&endpoint.base_url));
                targets.push(Ok(target));
            }
            Err(error) => targets.push(Err((endpoint.id.to_owned(), "provider", error))),
        }
    }
    let db_url = state.config.database.url.expose();
    if db_url.starts_with("sqlite:") {
        targets.push(Ok(Target {
            name: "database".into(),
            kind: "database",
            host: String::new(),
            port: 0,
            tls: false,
            endpoint: "sqlite (local file)".into(),
            app: AppCheck::Database,
        }));
    } else {
        match target_from_url("database", "database", db_url, 5432) {
            // Postgres negotiates TLS inside its own protocol (SSLRequest), not on connect.
            Ok(mut t) => {
                t.tls = false;
                t.app = AppCheck::Database;
                targets.push(Ok(t));
            }
            Err(e) => targets.push(Err(("database".into(), "database", e))),
        }
    }
    if let Some(url) = &state.config.redis.url {
        match target_from_url("redis", "redis", url.expose(), 6379) {
            Ok(mut t) => {
                t.tls = url.expose().starts_with("rediss:");
                t.app = AppCheck::Redis;
                targets.push(Ok(t));
            }
            Err(e) => targets.push(Err(("redis".into(), "redis", e))),
        }
    }

    let checks = targets.into_iter().map(|target| async move {
        match target {
            Ok(target) => check_target(state, target, step_timeout).await,
            Err((name, kind, error)) => TargetReport {
                name,
                kind,
                endpoint: String::new(),
                ok: false,
                status: "failed",
                total_ms: 0,
                steps: vec![Step {
                    step: "config",
                    status: "failed",
                    ms: 0,
                    detail: None,
                    error: Some(error.to_string()),
                }],
            },
        }
    });
    let mut targets = futures::future::join_all(checks).await;
    targets.extend(unconfigured);
    ConnectivityReport {
        ok: targets.iter().all(|t| t.ok),
        step_timeout_ms: step_timeout.as_millis() as u64,
        total_ms: started.elapsed().as_millis() as u64,
        targets,
    }
}

fn strip_userinfo(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => "(unparseable URL)".into(),
    }
}

/// A configured URL that names no reachable target.
#[derive(Debug, thiserror::Error)]
enum BadTarget {
    #[error("invalid URL: {0}")]
    Url(#[from] url::ParseError),
    #[error("the URL has no host")]
    NoHost,
}

fn target_from_url(
    name: &str,
    kind: &'static str,
    url: &str,
    default_port: u16,
) -> Result<Target, BadTarget> {
    let parsed = url::Url::parse(url)?;
    let host = parsed
        .host_str()
        .ok_or(BadTarget::NoHost)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tls = matches!(parsed.scheme(), "https" | "wss" | "rediss");
    let port = parsed
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { default_port });
    let endpoint = format!(
        "{}://{}:{}",
        parsed.scheme(),
        parsed.host_str().unwrap_or(""),
        port
    );
    Ok(Target {
        name: name.to_owned(),
        kind,
        host,
        port,
        tls,
        endpoint,
        app: AppCheck::None,
    })
}

async fn timed<T, E: std::fmt::Display>(
    step: &'static str,
    budget: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> (Step, Option<T>) {
    let started = Instant::now();
    let result = tokio::time::timeout(budget, fut).await;
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(Ok(value)) => (
            Step {
                step,
                status: "ok",
                ms,
                detail: None,
                error: None,
            },
            Some(value),
        ),
        Ok(Err(err)) => (failed(step, ms, err.to_string()), None),
        Err(_) => (
            failed(
                step,
                ms,
                format!("timed out after {} ms", budget.as_millis()),
            ),
            None,
        ),
    }
}

fn failed(step: &'static str, ms: u64, error: String) -> Step {
    Step {
        step,
        status: "failed",
        ms,
        detail: None,
        error: Some(error),
    }
}

fn skipped(step: &'static str, why: &str) -> Step {
    Step {
        step,
        status: "skipped",
        ms: 0,
        detail: Some(why.to_owned()),
        error: None,
    }
}

async fn check_target(state: &AppState, target: Target, budget: Duration) -> TargetReport {
    let started = Instant::now();
    let mut steps = Vec::new();
    let ok = run_steps(state, &target, budget, &mut steps).await;
    TargetReport {
        name: target.name,
        kind: target.kind,
        endpoint: target.endpoint,
        ok,
        status: if ok { "ok" } else { "failed" },
        total_ms: started.elapsed().as_millis() as u64,
        steps,
    }
}

async fn run_steps(
    state: &AppState,
    target: &Target,
    budget: Duration,
    steps: &mut Vec<Step>,
) -> bool {
    if !target.host.is_empty() {
        // DNS
        let host_port = (target.host.clone(), target.port);
        let (mut step, addrs) = timed("dns", budget, async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port).await?.collect();
            if addrs.is_empty() {
                return Err(std::io::Error::other("no addresses"));
            }
            Ok(addrs)
        })
        .await;
        let Some(addrs) = addrs else {
            steps.push(step);
            return false;
        };
        step.detail = Some(
            addrs
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
        steps.push(step);

        // TCP
        let (mut step, stream) = timed("tcp", budget, TcpStream::connect(addrs.as_slice())).await;
        let Some(stream) = stream else {
            steps.push(step);
            return false;
        };
        step.detail = stream.peer_addr().ok().map(|a| a.to_string());
        steps.push(step);

        // TLS
        if target.tls {
            let host = target.host.clone();
            let (mut step, version) = timed("tls", budget, async move {
                let server_name =
                    rustls::pki_types::ServerName::try_from(host).map_err(|e| e.to_string())?;
                let config = tls_config().as_ref().map_err(Clone::clone)?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = connector
                    .connect(server_name, stream)
                    .await
                    .map_err(|e| e.to_string())?;
                let version = tls
                    .get_ref()
                    .1
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                Ok::<String, String>(version)
            })
            .await;
            let passed = version.is_some();
            step.detail = version;
            steps.push(step);
            if !passed {
                return false;
            }
        } else {
            drop(stream);
            steps.push(skipped("tls", "plain-text endpoint"));
        }
    }

    // Application round trip.
    match &target.app {
        AppCheck::Http(url) => {
            crate::agents::http::install_crypto_provider();
            let client = match reqwest::Client::builder().timeout(budget).build() {
                Ok(client) => client,
                Err(err) => {
                    steps.push(failed("http", 0, err.to_string()));
                    return false;
                }
            };
            let (mut step, status) = timed("http", budget, async {
                client.get(url).send().await.map(|r| r.status())
            })
            .await;
            // Any HTTP answer (even 401/404) proves the endpoint is reachable.
            let passed = status.is_some();
            step.detail = status.map(|s| format!("HTTP {}", s.as_u16()));
            steps.push(step);
            passed
        }
        AppCheck::Database => {
            let (step, done) = timed("query", budget, state.store.ping()).await;
            steps.push(step);
            done.is_some()
        }
        AppCheck::Redis => match &state.redis {
            Some(redis) => {
                let (step, done) = timed("ping", budget, redis.ping()).await;
                steps.push(step);
                done.is_some()
            }
            None => true,
        },
        AppCheck::None => true,
    }
}

/// Client TLS settings: ring provider, the system's root certificates.
fn tls_config() -> &'static Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let loaded = rustls_native_certs::load_native_certs();
        for cert in loaded.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err("no root certificates found on this system".into());
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_come_from_urls_without_credentials() {
        let t = target_from_url(
            "database",
            "database",
            "postgres://u:pw@db.internal/aragora",
            5432,
        )
        .unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("db.internal", 5432, false)
        );
        assert_eq!(t.endpoint, "postgres://db.internal:5432");
        let t = target_from_url("anthropic", "provider", "https://api.anthropic.com", 443).unwrap();
        assert_eq!((t.port, t.tls), (443, true));
        let t = target_from_url("redis", "redis", "rediss://:secret@[::1]:6380/0", 6379).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 6380, true));
        assert!(!t.endpoint.contains("secret"));
        assert_eq!(strip_userinfo("http://a:b@h:1/x"), "http://h:1/x");
        assert!(target_from_url("x", "provider", "not a url", 1).is_err());
    }
}
