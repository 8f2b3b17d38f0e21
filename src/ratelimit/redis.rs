//! The Redis backend: one GCRA decision = one `EVALSHA` of an atomic Lua script (one round
//! trip; `redis::Script` loads the script again after NOSCRIPT, e.g. after a Redis restart).
//! Every instance sharing the Redis and the key prefix shares the limits. Time comes from the
//! Redis server (`TIME`), so instances with skewed clocks still agree.
//!
//! Rule: every call is bounded by a short timeout; an error or a timeout is returned to the
//! caller, which decides in memory instead. The connection is the process's shared one
//! ([`RedisHandle`]), which reconnects by itself.

use std::time::Duration;

use async_trait::async_trait;

use super::{Backend, Decision, Limiter, LimiterError, Quota, Rule};
use crate::redis_client::RedisHandle;

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
    redis: RedisHandle,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
}

impl RedisLimiter {
    /// Limits under `prefix` in `redis`, each call bounded by `timeout`.
    pub fn new(redis: RedisHandle, prefix: &str, timeout: Duration) -> Self {
        RedisLimiter {
            redis,
            script: redis::Script::new(GCRA_SCRIPT),
            prefix: prefix.to_owned(),
            timeout,
        }
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

    /// Run `op` within the timeout.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LimiterError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(LimiterError::Redis(err)),
            Err(_) => Err(LimiterError::Timeout(self.timeout.as_millis() as u64)),
        }
    }

    /// PING within the timeout.
    pub async fn ping(&self) -> Result<(), LimiterError> {
        self.bounded(self.redis.ping()).await
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
                let mut conn = self.redis.connection().await?;
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
