//! The Redis backend: one GCRA decision = one `EVALSHA` of an atomic Lua script (one round
//! trip; `redis::Script` loads the script again after NOSCRIPT, e.g. after a Redis restart).
//! Every instance sharing the Redis and the key prefix shares the limits. Time comes from the
//! Redis server (`TIME`), so instances with skewed clocks still agree.
//!
//! Rule: every call is bounded by a short timeout; an error or a timeout drops the cached
//! connection (the next call reconnects) and is returned to the caller, which decides in
//! memory instead.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;

use super::{Backend, Decision, Limiter, LimiterError, Quota, Rule};

/// GCRA over the theoretical arrival time (TAT) stored at KEYS[1], in microseconds.
/// ARGV: emission interval, burst tolerance (limit × interval), mode: 0 = decide,
/// 1 = read only, 2 = give one request back (a refused request that was counted).
/// Returns {allowed, remaining, reset_after_us, retry_after_us}. The key expires when the
/// bucket is full again, so idle clients cost no memory. Mirrors `super::gcra`.
pub const GCRA_SCRIPT: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local peek = ARGV[3] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[3] == '2' then
  local back = tat - interval
  if back <= now then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], back, 'PX', math.ceil((back - now) / 1000) + 1)
  end
  return {1, 0, 0, 0}
end
if tat < now then tat = now end
if peek then
  local remaining = math.floor((burst - (tat - now)) / interval)
  return {remaining > 0 and 1 or 0, remaining, tat - now, 0}
end
local new_tat = tat + interval
local allow_at = new_tat - burst
if allow_at > now then
  return {0, 0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((burst - (new_tat - now)) / interval), new_tat - now, 0}
";

pub struct RedisLimiter {
    client: redis::Client,
    /// Cached multiplexed connection; `None` after an error until the next call reconnects.
    conn: ArcSwapOption<MultiplexedConnection>,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
}

impl RedisLimiter {
    /// Parse the URL; nothing connects until the first decision.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> redis::RedisResult<Self> {
        Ok(RedisLimiter {
            client: redis::Client::open(url)?,
            conn: ArcSwapOption::empty(),
            script: redis::Script::new(GCRA_SCRIPT),
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The Redis key of one client's bucket under one rule.
    pub fn key(&self, rule: Rule, key: &str) -> String {
        format!("{}{}:{}", self.prefix, rule.name(), key)
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.conn.load_full() {
            return Ok((*conn).clone());
        }
        let conn = self.client.get_multiplexed_async_connection().await?;
        self.conn.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    /// Run `op` within the timeout; on failure forget the connection.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LimiterError> {
        let result = match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => LimiterError::Redis(err),
            Err(_) => LimiterError::Timeout(self.timeout.as_millis() as u64),
        };
        self.conn.store(None);
        Err(result)
    }

    /// PING within the timeout.
    pub async fn ping(&self) -> Result<(), LimiterError> {
        self.bounded(async {
            let mut conn = self.connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Give back one request of `key` (it was counted, then refused for bad input).
    pub async fn refund(&self, rule: Rule, key: &str, quota: Quota) -> Result<(), LimiterError> {
        self.run(rule, key, quota, "2").await.map(|_| ())
    }

    async fn run(
        &self,
        rule: Rule,
        key: &str,
        quota: Quota,
        mode: &'static str,
    ) -> Result<Decision, LimiterError> {
        let interval = quota.interval().as_micros() as u64;
        let burst = interval * u64::from(quota.limit);
        let redis_key = self.key(rule, key);
        let (allowed, remaining, reset_us, retry_us): (i64, i64, i64, i64) = self
            .bounded(async {
                let mut conn = self.connection().await?;
                self.script
                    .key(&redis_key)
                    .arg(interval)
                    .arg(burst)
                    .arg(mode)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let micros = |v: i64| Duration::from_micros(v.max(0) as u64);
        Ok(Decision {
            allowed: allowed == 1,
            limit: quota.limit,
            remaining: remaining.clamp(0, i64::from(quota.limit)) as u32,
            reset_after: micros(reset_us),
            retry_after: micros(retry_us),
        })
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    fn backend(&self) -> Backend {
        Backend::Redis
    }

    async fn check(&self, rule: Rule, key: &str, quota: Quota) -> Result<Decision, LimiterError> {
        self.run(rule, key, quota, "0").await
    }

    async fn peek(&self, rule: Rule, key: &str, quota: Quota) -> Result<Decision, LimiterError> {
        self.run(rule, key, quota, "1").await
    }
}
