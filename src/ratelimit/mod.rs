//! Rate limiting (docs/rate-limiting.md): a GCRA decision per request, per rule and per client key.
//!
//! Rules: `default` over `/api/*` (health and metrics exempt), `debate_create`
//! (POST /api/debates), `login` (POST /api/auth/login, always per IP) and `agent_test`
//! (POST /api/debug/agent-test); `/api/v1/*` is the same. A request counts against its one
//! most specific rule. The key is the authenticated [`Principal`] when there is one, else the
//! client IP (IPv6 by /64); X-Forwarded-For and X-Real-IP are believed only from
//! `trusted_proxies`. The per-request step (headers, 429) is HTTP middleware:
//! `http::middleware::ratelimit`; this module is the limiter itself.
//!
//! Backends: Redis (shared by every instance) when `enable_redis_rate_limit`, else memory.
//! Rule of this module: a limiter failure never fails a request. A Redis error or timeout
//! makes the decision in memory, marks Redis down (health `degraded`, `aragora_redis_up` 0)
//! and Redis is tried again after a short backoff, so the limiter returns to it by itself.
//! Limits and whitelist are swapped atomically when the configuration is reloaded (SIGHUP,
//! [`crate::config::reload`] hands them over to [`RateLimiter::apply`]).

pub mod memory;
pub mod redis;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use axum::http::{HeaderMap, Method};
use chrono::{DateTime, Utc};
use ipnet::{IpNet, Ipv6Net};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::memory::MemoryLimiter;
pub use self::redis::RedisLimiter;
use crate::auth::Principal;
use crate::config::{Config, RateLimitConfig};
use crate::redis_client::RedisHandle;

/// Every limit is per minute.
pub const PERIOD: Duration = Duration::from_secs(60);
/// Wait between attempts to get back to a failed Redis.
const REDIS_RETRY: Duration = Duration::from_secs(1);
/// Distinct limited keys remembered for the admin view.
const MAX_TRACKED_HITS: usize = 10_000;
/// How long a limited key stays in the admin view after its last hit.
pub const HITS_WINDOW: Duration = Duration::from_secs(3600);

/// A request let through the limiter, to be settled once its answer is known.
#[derive(Debug, Clone)]
pub struct Admission {
    pub decision: Decision,
    /// Already counted (Redis): a refusal gives it back.
    counted: bool,
}

/// A rate-limit rule. Its name labels the metric and the Redis keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Default,
    DebateCreate,
    Login,
    AgentTest,
}

impl Rule {
    pub const ALL: [Rule; 4] = [
        Rule::Default,
        Rule::DebateCreate,
        Rule::Login,
        Rule::AgentTest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::Default => "default",
            Rule::DebateCreate => "debate_create",
            Rule::Login => "login",
            Rule::AgentTest => "agent_test",
        }
    }

    /// What the rule covers, for /api/rate-limits/config.
    pub fn applies_to(self) -> &'static str {
        match self {
            Rule::Default => "every /api route except health and metrics, per client",
            Rule::DebateCreate => "POST /api/debates, per client",
            Rule::Login => "POST /api/auth/login, per client IP",
            Rule::AgentTest => "POST /api/debug/agent-test, per client",
        }
    }
}

/// `limit` requests per `period`, with bursts up to `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub period: Duration,
}

impl Quota {
    pub fn per_minute(limit: u32) -> Quota {
        Quota {
            limit: limit.max(1),
            period: PERIOD,
        }
    }

    /// Time one request "costs" (emission interval), at least 1 µs.
    pub fn interval(&self) -> Duration {
        (self.period / self.limit.max(1)).max(Duration::from_micros(1))
    }
}

/// One decision and what the client is told about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    /// Requests left right now after this one.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset_after: Duration,
    /// Denied: until the next request would be allowed.
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Memory,
    Redis,
}

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("redis error: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis gave no answer within {0} ms")]
    Timeout(u64),
}

/// A rate-limit backend.
#[async_trait]
pub trait Limiter: Send + Sync {
    fn backend(&self) -> Backend;
    /// Count one request and decide.
    async fn check(&self, rule: Rule, key: &str, quota: Quota) -> Result<Decision, LimiterError>;
    /// The bucket's state without counting anything.
    async fn peek(&self, rule: Rule, key: &str, quota: Quota) -> Result<Decision, LimiterError>;
}

/// One GCRA step over a stored theoretical arrival time (microseconds): the reference for
/// the Redis script's math. Returns the TAT to store (`None`: unchanged) and the decision.
pub fn gcra(tat: Option<u64>, now: u64, quota: Quota) -> (Option<u64>, Decision) {
    let interval = quota.interval().as_micros() as u64;
    let burst = interval * u64::from(quota.limit);
    let tat = tat.unwrap_or(0).max(now);
    let new_tat = tat + interval;
    if new_tat - burst.min(new_tat) > now {
        let retry = new_tat - burst - now;
        return (
            None,
            Decision {
                allowed: false,
                limit: quota.limit,
                remaining: 0,
                reset_after: Duration::from_micros(tat - now),
                retry_after: Duration::from_micros(retry),
            },
        );
    }
    let remaining = (burst - (new_tat - now)) / interval;
    (
        Some(new_tat),
        Decision {
            allowed: true,
            limit: quota.limit,
            remaining: remaining as u32,
            reset_after: Duration::from_micros(new_tat - now),
            retry_after: Duration::ZERO,
        },
    )
}

/// The rule a request counts against; `None`: not limited.
pub fn rule_for(method: &Method, path: &str) -> Option<Rule> {
    let rest = ["/api/v1", "/api"].iter().find_map(|prefix| {
        path.strip_prefix(prefix)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    })?;
    if method == Method::OPTIONS {
        return None;
    }
    let rest = rest.trim_end_matches('/');
    match rest {
        "/health" | "/health/live" | "/health/ready" | "/metrics" => None,
        "/debates" if method == Method::POST => Some(Rule::DebateCreate),
        "/auth/login" if method == Method::POST => Some(Rule::Login),
        "/debug/agent-test" if method == Method::POST => Some(Rule::AgentTest),
        _ => Some(Rule::Default),
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most X-Forwarded-For entry that is not itself a trusted proxy (or X-Real-IP).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| item.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    if let Some(ip) = forwarded.iter().rev().find(|ip| !is_trusted(ip)) {
        return *ip;
    }
    if let Some(first) = forwarded.first() {
        return *first;
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map_or(peer, |ip| ip.to_canonical())
}

/// The bucket key: `user:<principal>` when the caller is authenticated (except for login,
/// which is per IP by definition), so users behind one NAT do not share a bucket; else
/// `ip:<address>`, IPv6 by /64, the block one host usually gets.
pub fn client_key(rule: Rule, principal: Option<&Principal>, ip: IpAddr) -> String {
    if let Some(p) = principal
        && p.authenticated()
        && rule != Rule::Login
    {
        return format!("user:{}", p.id);
    }
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => format!(
            "ip:{}",
            Ipv6Net::new(v6, 64).expect("64 is a valid prefix").trunc()
        ),
    }
}

/// A key as it may appear in logs and the admin view: IPv4 to /24, IPv6 to /48,
/// principals masked like secrets.
pub fn mask_key(key: &str) -> String {
    if let Some(ip) = key.strip_prefix("ip:") {
        if let Ok(IpAddr::V4(v4)) = ip.parse::<IpAddr>() {
            let [a, b, c, _] = v4.octets();
            return format!("ip:{a}.{b}.{c}.x");
        }
        if let Ok(net) = ip.parse::<Ipv6Net>()
            && let Ok(wide) = Ipv6Net::new(net.addr(), 48)
        {
            return format!("ip:{}", wide.trunc());
        }
        return "ip:***".to_owned();
    }
    match key.split_once(':') {
        Some((kind, rest)) => format!("{kind}:{}", crate::telemetry::logging::mask(rest)),
        None => crate::telemetry::logging::mask(key),
    }
}

/// The reloadable part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub disabled: bool,
    pub default_rpm: u32,
    pub debate_rpm: u32,
    pub login_rpm: u32,
    pub agent_test_rpm: u32,
    pub whitelist: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
}

impl Settings {
    /// The limits of the `rate_limit` section; client addresses are read through
    /// `trusted_proxies` (the `http` section's).
    pub fn from_config(section: &RateLimitConfig, trusted_proxies: &[IpNet]) -> Settings {
        Settings {
            disabled: section.disabled,
            default_rpm: section.rpm,
            debate_rpm: section.debate_rpm,
            login_rpm: section.login_rpm,
            agent_test_rpm: section.agent_test_rpm,
            whitelist: section.whitelist.clone(),
            trusted_proxies: trusted_proxies.to_vec(),
        }
    }

    pub fn quota(&self, rule: Rule) -> Quota {
        Quota::per_minute(match rule {
            Rule::Default => self.default_rpm,
            Rule::DebateCreate => self.debate_rpm,
            Rule::Login => self.login_rpm,
            Rule::AgentTest => self.agent_test_rpm,
        })
    }

    pub fn is_whitelisted(&self, ip: IpAddr) -> bool {
        self.whitelist.iter().any(|net| net.contains(&ip))
    }

    /// Human lines describing what changed from `old`, for the reload log.
    fn changes_from(&self, old: &Settings) -> Vec<String> {
        let mut out = Vec::new();
        let mut diff = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {a} -> {b}"));
            }
        };
        diff(
            "rate_limit_disabled",
            old.disabled.to_string(),
            self.disabled.to_string(),
        );
        diff(
            "rate_limit_rpm",
            old.default_rpm.to_string(),
            self.default_rpm.to_string(),
        );
        diff(
            "rate_limit_debate_rpm",
            old.debate_rpm.to_string(),
            self.debate_rpm.to_string(),
        );
        diff(
            "rate_limit_login_rpm",
            old.login_rpm.to_string(),
            self.login_rpm.to_string(),
        );
        diff(
            "rate_limit_agent_test_rpm",
            old.agent_test_rpm.to_string(),
            self.agent_test_rpm.to_string(),
        );
        let nets = |n: &[IpNet]| {
            n.iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        diff(
            "rate_limit_whitelist",
            nets(&old.whitelist),
            nets(&self.whitelist),
        );
        diff(
            "trusted_proxies",
            nets(&old.trusted_proxies),
            nets(&self.trusted_proxies),
        );
        out
    }
}

/// Outcome of the last configuration reload (SIGHUP).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReloadReport {
    #[schema(value_type = String, format = DateTime)]
    pub at: DateTime<Utc>,
    /// `ok` or `error` (the previous settings stay in force).
    #[schema(example = "ok")]
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Settings that changed, `name: old -> new`.
    pub changes: Vec<String>,
}

/// A limited key in the admin view (masked).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HitSummary {
    pub rule: Rule,
    pub key: String,
    pub hits: u64,
    #[schema(value_type = String, format = DateTime)]
    pub first_hit: DateTime<Utc>,
    #[schema(value_type = String, format = DateTime)]
    pub last_hit: DateTime<Utc>,
}

/// Who a request is, as the limiter sees it; inserted into every limited request.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub ip: IpAddr,
    pub key: String,
    pub whitelisted: bool,
}

/// The service-wide limiter: current settings, the backends and the Redis state.
pub struct RateLimiter {
    settings: ArcSwap<Settings>,
    memory: MemoryLimiter,
    redis: Option<RedisLimiter>,
    redis_ok: AtomicBool,
    /// Milliseconds since `epoch` before which a failed Redis is not tried again.
    redis_retry_at: AtomicU64,
    epoch: Instant,
    last_reload: Mutex<Option<ReloadReport>>,
    hits: Mutex<HashMap<(Rule, String), HitSummary>>,
}

impl RateLimiter {
    /// The limiter of `config`, deciding in `redis` when `rate_limit.redis` (and in
    /// memory while Redis fails), else in memory.
    pub fn new(config: &Config, redis: Option<RedisHandle>) -> RateLimiter {
        let redis = redis.filter(|_| config.rate_limit.redis).map(|redis| {
            RedisLimiter::new(
                redis,
                &config.rate_limit.prefix,
                config.rate_limit.redis_timeout,
            )
        });
        // Each rule's hit counter is published at zero by telemetry::metrics::install.
        RateLimiter {
            settings: ArcSwap::from_pointee(Settings::from_config(
                &config.rate_limit,
                &config.http.trusted_proxies,
            )),
            memory: MemoryLimiter::new(),
            redis,
            redis_ok: AtomicBool::new(true),
            redis_retry_at: AtomicU64::new(0),
            epoch: Instant::now(),
            last_reload: Mutex::new(None),
            hits: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// The backend configured (`redis` even while falling back to memory).
    pub fn configured_backend(&self) -> Backend {
        if self.redis.is_some() {
            Backend::Redis
        } else {
            Backend::Memory
        }
    }

    /// The backend decisions go to right now.
    pub fn active_backend(&self) -> Backend {
        if self.redis.is_some() && self.redis_ok.load(Ordering::Acquire) {
            Backend::Redis
        } else {
            Backend::Memory
        }
    }

    pub fn redis_limiter(&self) -> Option<&RedisLimiter> {
        self.redis.as_ref()
    }

    /// Redis is configured for limits and currently failing.
    pub fn redis_failing(&self) -> bool {
        self.redis.is_some() && !self.redis_ok.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// While Redis is down, let one decision per backoff try it again.
    fn claim_redis_retry(&self) -> bool {
        let now = self.now_ms();
        let due = self.redis_retry_at.load(Ordering::Acquire);
        now >= due
            && self
                .redis_retry_at
                .compare_exchange(
                    due,
                    now + REDIS_RETRY.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn redis_succeeded(&self) {
        // Only on the transition: this runs on every decision.
        if !self.redis_ok.swap(true, Ordering::AcqRel) {
            crate::telemetry::metrics::redis_up().set(1.0);
            tracing::info!(
                target: "aragora::ratelimit",
                "rate_limit backend: redis answers again; limits are shared through redis again"
            );
        }
    }

    fn redis_failed(&self, err: &LimiterError) {
        self.redis_retry_at.store(
            self.now_ms() + REDIS_RETRY.as_millis() as u64,
            Ordering::Release,
        );
        if self.redis_ok.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                target: "aragora::ratelimit",
                error = %err,
                "rate_limit backend: redis failed ({err}); deciding in memory until it answers"
            );
        }
        crate::telemetry::metrics::redis_up().set(0.0);
    }

    /// Ask Redis now (health check, maintenance): true when it answers.
    pub async fn probe_redis(&self) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        match redis.ping().await {
            Ok(()) => {
                self.redis_succeeded();
                true
            }
            Err(err) => {
                self.redis_failed(&err);
                false
            }
        }
    }

    /// Count one request of `key` under `rule`. Never fails.
    pub async fn decide(&self, rule: Rule, key: &str) -> (Decision, Backend) {
        let quota = self.settings.load().quota(rule);
        if let Some(redis) = &self.redis
            && (self.redis_ok.load(Ordering::Acquire) || self.claim_redis_retry())
        {
            match redis.check(rule, key, quota).await {
                Ok(decision) => {
                    self.redis_succeeded();
                    return (decision, Backend::Redis);
                }
                Err(err) => self.redis_failed(&err),
            }
        }
        (self.memory.check_now(rule, key, quota), Backend::Memory)
    }

    /// Admit a request to be settled once its answer is known ([`RateLimiter::settle`]):
    /// with Redis the request is counted now (one round trip, exact under concurrency) and
    /// given back if it is refused; in memory the bucket is looked at now and charged only
    /// for requests that are not refused (concurrent requests can overshoot by the ones in
    /// flight).
    pub async fn admit(&self, rule: Rule, key: &str) -> Admission {
        let quota = self.settings.load().quota(rule);
        if let Some(redis) = &self.redis
            && (self.redis_ok.load(Ordering::Acquire) || self.claim_redis_retry())
        {
            match redis.check(rule, key, quota).await {
                Ok(decision) => {
                    self.redis_succeeded();
                    return Admission {
                        decision,
                        counted: true,
                    };
                }
                Err(err) => self.redis_failed(&err),
            }
        }
        Admission {
            decision: self
                .memory
                .peek(rule, key, quota)
                .await
                .expect("memory never fails"),
            counted: false,
        }
    }

    /// Settle an admitted request: a refused one costs nothing, any other one is counted.
    /// Returns the decision for the response headers.
    pub async fn settle(
        &self,
        rule: Rule,
        key: &str,
        admission: Admission,
        refused: bool,
    ) -> Decision {
        let quota = self.settings.load().quota(rule);
        match (admission.counted, refused) {
            (true, true) => {
                if let Some(redis) = &self.redis
                    && let Err(err) = redis.refund(rule, key, quota).await
                {
                    self.redis_failed(&err);
                }
                admission.decision
            }
            (false, false) => self.memory.check_now(rule, key, quota),
            _ => admission.decision,
        }
    }

    /// The bucket of `key` under `rule`, without counting.
    pub async fn peek(&self, rule: Rule, key: &str) -> Decision {
        let quota = self.settings.load().quota(rule);
        if let Some(redis) = &self.redis
            && self.redis_ok.load(Ordering::Acquire)
        {
            match redis.peek(rule, key, quota).await {
                Ok(decision) => return decision,
                Err(err) => self.redis_failed(&err),
            }
        }
        self.memory
            .peek(rule, key, quota)
            .await
            .expect("memory never fails")
    }

    /// Remember a 429 for the admin view, count it and log it (masked key).
    pub fn record_hit(&self, rule: Rule, key: &str, decision: &Decision) {
        let masked = mask_key(key);
        crate::telemetry::metrics::rate_limit_hits_total(rule).increment(1);
        tracing::info!(
            target: "aragora::ratelimit",
            rule = rule.name(),
            key = %masked,
            limit = decision.limit,
            retry_after_ms = decision.retry_after.as_millis() as u64,
            "rate_limit exceeded rule={} key={masked} limit={}/min",
            rule.name(),
            decision.limit
        );
        let now = Utc::now();
        let mut hits = self.hits.lock();
        if hits.len() >= MAX_TRACKED_HITS && !hits.contains_key(&(rule, masked.clone())) {
            prune(&mut hits, now);
            if hits.len() >= MAX_TRACKED_HITS
                && let Some(oldest) = hits
                    .iter()
                    .min_by_key(|(_, h)| h.last_hit)
                    .map(|(k, _)| k.clone())
            {
                hits.remove(&oldest);
            }
        }
        hits.entry((rule, masked.clone()))
            .and_modify(|h| {
                h.hits += 1;
                h.last_hit = now;
            })
            .or_insert(HitSummary {
                rule,
                key: masked,
                hits: 1,
                first_hit: now,
                last_hit: now,
            });
    }

    /// The most-limited keys of the last hour, most hits first.
    pub fn top_hits(&self, limit: usize) -> Vec<HitSummary> {
        let mut hits = self.hits.lock();
        prune(&mut hits, Utc::now());
        let mut list: Vec<HitSummary> = hits.values().cloned().collect();
        list.sort_by(|a, b| b.hits.cmp(&a.hits).then(b.last_hit.cmp(&a.last_hit)));
        list.truncate(limit);
        list
    }

    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.last_reload.lock().clone()
    }

    /// Remember the outcome of a configuration reload, for the admin view.
    pub fn record_reload(&self, report: ReloadReport) {
        *self.last_reload.lock() = Some(report);
    }

    /// Swap in new limits, whitelist and trusted proxies (the backend — Redis, prefix,
    /// timeout — stays until a restart); returns what changed.
    pub fn apply(&self, new: Settings) -> Vec<String> {
        let old = self.settings.swap(Arc::new(new.clone()));
        let changes = new.changes_from(&old);
        tracing::info!(
            target: "aragora::ratelimit",
            changes = changes.len(),
            "rate_limit settings reloaded: {}",
            if changes.is_empty() { "no changes".to_owned() } else { changes.join("; ") }
        );
        changes
    }

    /// Background upkeep until shutdown: retry a failed Redis every second (so health and
    /// `aragora_redis_up` recover without traffic) and drop idle buckets every minute.
    pub fn start(self: &Arc<Self>, tasks: &TaskTracker, shutdown: CancellationToken) {
        let me = self.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(REDIS_RETRY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                n += 1;
                if me.redis_failing() && me.claim_redis_retry() {
                    me.probe_redis().await;
                }
                if n.is_multiple_of(60) {
                    me.memory.cleanup();
                    prune(&mut me.hits.lock(), Utc::now());
                }
            }
        });
    }
}

fn prune(hits: &mut HashMap<(Rule, String), HitSummary>, now: DateTime<Utc>) {
    let window = chrono::Duration::from_std(HITS_WINDOW).expect("small duration");
    hits.retain(|_, h| now - h.last_hit < window);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000_000;

    #[test]
    fn gcra_allows_a_burst_of_limit_then_one_per_interval() {
        let q = Quota::per_minute(3);
        let mut tat = None;
        let now = 1_000 * MIN;
        for expected_remaining in [2, 1, 0] {
            let (new, d) = gcra(tat, now, q);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
            tat = new.or(tat);
        }
        let (new, d) = gcra(tat, now, q);
        assert!(!d.allowed && new.is_none());
        assert_eq!(d.retry_after, Duration::from_secs(20));
        assert_eq!(d.reset_after, Duration::from_secs(60));
        // 20 s later exactly one more request fits.
        let later = now + MIN / 3;
        let (new, d) = gcra(tat, later, q);
        assert!(d.allowed && d.remaining == 0);
        let (_, d) = gcra(new, later, q);
        assert!(!d.allowed);
        // A minute idle refills the whole bucket.
        let (_, d) = gcra(tat, now + 2 * MIN, q);
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn gcra_never_lets_more_than_limit_through_a_burst() {
        for limit in [1, 7, 120, 999_999, 1_000_000] {
            let q = Quota::per_minute(limit);
            let mut tat = None;
            let mut allowed = 0;
            for _ in 0..(limit.min(2_000) + 5) {
                let (new, d) = gcra(tat, MIN, q);
                if d.allowed {
                    allowed += 1;
                    tat = new;
                }
            }
            assert_eq!(allowed, limit.min(2_000 + 5), "limit {limit}");
        }
    }

    #[test]
    fn memory_backend_agrees_with_the_reference() {
        let m = MemoryLimiter::new();
        let q = Quota::per_minute(5);
        let got: Vec<(bool, u32)> = (0..7)
            .map(|_| m.check_now(Rule::Default, "ip:1.2.3.4", q))
            .map(|d| (d.allowed, d.remaining))
            .collect();
        assert_eq!(
            got,
            vec![
                (true, 4),
                (true, 3),
                (true, 2),
                (true, 1),
                (true, 0),
                (false, 0),
                (false, 0)
            ]
        );
        let denied = m.check_now(Rule::Default, "ip:1.2.3.4", q);
        assert!(
            denied.retry_after > Duration::from_secs(11)
                && denied.retry_after <= Duration::from_secs(12)
        );
        // Other keys and other rules have their own buckets.
        assert!(m.check_now(Rule::Default, "ip:1.2.3.5", q).allowed);
        assert!(m.check_now(Rule::Login, "ip:1.2.3.4", q).allowed);
    }

    #[tokio::test]
    async fn memory_peek_counts_nothing() {
        let m = MemoryLimiter::new();
        let q = Quota::per_minute(10);
        m.check_now(Rule::Default, "k", q);
        m.check_now(Rule::Default, "k", q);
        for _ in 0..3 {
            let d = m.peek(Rule::Default, "k", q).await.unwrap();
            assert_eq!(d.remaining, 8);
        }
        assert_eq!(
            m.peek(Rule::Default, "other", q).await.unwrap().remaining,
            10
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                axum::http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_headers_are_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let spoof = headers(&[("x-forwarded-for", "1.1.1.1"), ("x-real-ip", "2.2.2.2")]);
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(peer, &spoof, &trusted), peer);
        assert_eq!(client_ip(peer, &spoof, &[]), peer);

        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        // Right-most untrusted hop wins: the client can prepend anything it likes.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.9.9.9")]);
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-real-ip", "198.51.100.8")]);
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "198.51.100.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        // IPv4-mapped IPv6 peers are matched as IPv4.
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            client_ip(mapped, &h, &trusted),
            "198.51.100.8".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn keys_prefer_the_principal_except_for_login() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let p = Principal {
            id: "u-42".into(),
            email: None,
            role: Some(crate::auth::Role::Member),
            kind: crate::auth::PrincipalKind::User,
        };
        assert_eq!(client_key(Rule::Default, Some(&p), ip), "user:u-42");
        assert_eq!(client_key(Rule::Login, Some(&p), ip), "ip:192.0.2.1");
        assert_eq!(client_key(Rule::Default, None, ip), "ip:192.0.2.1");
        // Anonymous callers (the local owner included) are keyed by address.
        for anonymous in [Principal::anonymous(), Principal::local_owner()] {
            assert_eq!(
                client_key(Rule::Default, Some(&anonymous), ip),
                "ip:192.0.2.1"
            );
        }
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(client_key(Rule::Default, None, v6), "ip:2001:db8:1:2::/64");
    }

    #[test]
    fn masked_keys_hide_the_host() {
        assert_eq!(mask_key("ip:192.0.2.77"), "ip:192.0.2.x");
        assert_eq!(mask_key("ip:2001:db8:1:2::/64"), "ip:2001:db8:1::/48");
        assert_eq!(mask_key("user:ara_0123456789abcdef"), "user:ara_…***");
        assert!(!mask_key("user:alice@example.com").contains("example"));
    }

    #[test]
    fn rules_by_route() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(rule_for(&get, "/api/health"), None);
        assert_eq!(rule_for(&get, "/api/v1/health/ready"), None);
        assert_eq!(rule_for(&get, "/api/metrics"), None);
        assert_eq!(rule_for(&get, "/ws"), None);
        assert_eq!(rule_for(&get, "/apiary"), None);
        assert_eq!(rule_for(&Method::OPTIONS, "/api/debates"), None);
        assert_eq!(rule_for(&get, "/api/debates"), Some(Rule::Default));
        assert_eq!(rule_for(&post, "/api/debates"), Some(Rule::DebateCreate));
        assert_eq!(rule_for(&post, "/api/v1/debates"), Some(Rule::DebateCreate));
        assert_eq!(rule_for(&post, "/api/auth/login"), Some(Rule::Login));
        assert_eq!(
            rule_for(&post, "/api/v1/debug/agent-test"),
            Some(Rule::AgentTest)
        );
        assert_eq!(rule_for(&get, "/api/v1x"), Some(Rule::Default));
        assert_eq!(rule_for(&get, "/api/nope"), Some(Rule::Default));
    }
}
