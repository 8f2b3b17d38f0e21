//! The in-memory backend: one keyed `governor` GCRA limiter per rule, local to this process.
//! Used when Redis is not configured for rate limiting, and as the fallback while Redis fails.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;

use super::{Backend, Decision, Limiter, LimiterError, Quota, Rule};

type Keyed = governor::RateLimiter<
    String,
    DefaultKeyedStateStore<String>,
    DefaultClock,
    StateInformationMiddleware,
>;

struct Bucket {
    quota: Quota,
    limiter: Arc<Keyed>,
}

/// GCRA in process memory. Never fails.
#[derive(Default)]
pub struct MemoryLimiter {
    /// One limiter per rule, rebuilt when the rule's quota changes (SIGHUP).
    buckets: RwLock<HashMap<Rule, Bucket>>,
    /// When each key's bucket is full again: `governor` has no read-only query, and the
    /// status endpoint must not spend a request to look.
    full_at: DashMap<(Rule, String), Instant>,
}

impl MemoryLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn limiter(&self, rule: Rule, quota: Quota) -> Arc<Keyed> {
        if let Some(bucket) = self.buckets.read().get(&rule)
            && bucket.quota == quota
        {
            return bucket.limiter.clone();
        }
        let mut buckets = self.buckets.write();
        match buckets.get(&rule) {
            Some(bucket) if bucket.quota == quota => bucket.limiter.clone(),
            _ => {
                let limit = NonZeroU32::new(quota.limit.max(1)).expect("at least 1");
                let gov = governor::Quota::with_period(quota.interval())
                    .expect("interval is positive")
                    .allow_burst(limit);
                let limiter: Arc<Keyed> = Arc::new(
                    governor::RateLimiter::keyed(gov)
                        .with_middleware::<StateInformationMiddleware>(),
                );
                buckets.insert(
                    rule,
                    Bucket {
                        quota,
                        limiter: limiter.clone(),
                    },
                );
                self.full_at.retain(|(r, _), _| *r != rule);
                limiter
            }
        }
    }

    /// Forget keys whose buckets are full again (bounded memory under many clients).
    pub fn cleanup(&self) {
        for bucket in self.buckets.read().values() {
            bucket.limiter.retain_recent();
            bucket.limiter.shrink_to_fit();
        }
        let now = Instant::now();
        self.full_at.retain(|_, at| *at > now);
        self.full_at.shrink_to_fit();
    }

    /// Keys currently tracked (all rules).
    pub fn len(&self) -> usize {
        self.full_at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.full_at.is_empty()
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    fn backend(&self) -> Backend {
        Backend::Memory
    }

    async fn check(&self, rule: Rule, key: &str, quota: Quota) -> Result<Decision, LimiterError> {
        Ok(self.check_now(rule, key, quota))
    }

    async fn peek(&self, rule: Rule, key: &str, quota: Quota) -> Result<Decision, LimiterError> {
        // A changed quota (SIGHUP) starts every bucket of the rule afresh, as a check does.
        self.limiter(rule, quota);
        let reset_after = self
            .full_at
            .get(&(rule, key.to_owned()))
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        let interval = quota.interval().as_nanos();
        let used = reset_after.as_nanos().div_ceil(interval) as u32;
        let remaining = quota.limit.saturating_sub(used);
        // Full: the next request fits once one interval's worth of the bucket has drained.
        let retry_after = if remaining == 0 {
            reset_after
                .saturating_sub(quota.interval() * quota.limit.saturating_sub(1))
                .max(Duration::from_millis(1))
        } else {
            Duration::ZERO
        };
        Ok(Decision {
            allowed: remaining > 0,
            limit: quota.limit,
            remaining,
            reset_after,
            retry_after,
        })
    }
}

impl MemoryLimiter {
    /// The decision, synchronously (the trait method wraps this).
    pub fn check_now(&self, rule: Rule, key: &str, quota: Quota) -> Decision {
        let limiter = self.limiter(rule, quota);
        let key = key.to_owned();
        match limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(quota.limit);
                let reset_after = quota.interval() * (quota.limit - remaining);
                self.full_at
                    .insert((rule, key), Instant::now() + reset_after);
                Decision {
                    allowed: true,
                    limit: quota.limit,
                    remaining,
                    reset_after,
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(limiter.clock().now());
                Decision {
                    allowed: false,
                    limit: quota.limit,
                    remaining: 0,
                    reset_after: retry_after + quota.interval() * (quota.limit - 1),
                    retry_after,
                }
            }
        }
    }
}
