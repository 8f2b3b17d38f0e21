//! Circuit breakers shared by the instances of a fleet through Redis.
//!
//! Rule: each instance keeps its own breakers and decides with them alone; Redis only carries
//! news. Every `period` an instance writes its breakers' latest open/closed transitions to
//! one key per agent (`<channel>:breaker:<agent>` = `state|unix_ms|instance`, expiring with
//! the open period) and reads the others' in one MGET. A newer transition from a peer is
//! applied locally: opened there → fail fast here until the same probe time; closed there →
//! closed here. When Redis is unreachable nothing changes but the news: every instance goes
//! on with its own breakers, and the first successful round after the outage catches up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio_util::sync::CancellationToken;

use crate::agents::AgentRegistry;
use crate::agents::resilience::BreakerState;
use crate::redis_client::RedisHandle;

pub struct BreakerSync {
    pub redis: RedisHandle,
    /// Key prefix shared by the fleet (the event bus channel).
    pub namespace: String,
    pub instance: String,
    pub registry: Arc<AgentRegistry>,
    pub period: Duration,
}

/// One shared transition.
#[derive(Debug, Clone, PartialEq)]
struct Shared {
    state: BreakerState,
    at_ms: i64,
    instance: String,
}

impl Shared {
    fn encode(&self) -> String {
        format!("{}|{}|{}", self.state.as_str(), self.at_ms, self.instance)
    }

    fn decode(text: &str) -> Option<Shared> {
        let mut parts = text.splitn(3, '|');
        let state = match parts.next()? {
            "open" => BreakerState::Open,
            "closed" => BreakerState::Closed,
            _ => return None,
        };
        let at_ms = parts.next()?.parse().ok()?;
        let instance = parts.next()?.to_owned();
        Some(Shared {
            state,
            at_ms,
            instance,
        })
    }
}

impl BreakerSync {
    fn key(&self, agent: &str) -> String {
        format!("{}:breaker:{agent}", self.namespace)
    }

    pub async fn run(self, shutdown: CancellationToken) {
        // Per agent: the newest transition time this instance has published or applied.
        let mut known: HashMap<String, i64> = HashMap::new();
        let mut down = false;
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let round = tokio::time::timeout(
                self.period.max(Duration::from_millis(500)),
                self.round(&mut known),
            );
            match round.await {
                Ok(Ok(())) if down => {
                    tracing::info!(target: "aragora::agents", "circuit_breaker sharing through Redis restored");
                    down = false;
                }
                Ok(Err(err)) if !down => {
                    down = true;
                    tracing::warn!(target: "aragora::agents", error = %err, "circuit_breaker sharing through Redis failed; each instance keeps its own breakers meanwhile");
                }
                Err(_) if !down => {
                    down = true;
                    tracing::warn!(target: "aragora::agents", "circuit_breaker sharing through Redis timed out; each instance keeps its own breakers meanwhile");
                }
                _ => {}
            }
        }
    }

    /// One exchange: read the peers' news (one MGET), publish local transitions newer than
    /// what is there (one pipeline), then apply newer peer transitions locally.
    async fn round(&self, known: &mut HashMap<String, i64>) -> redis::RedisResult<()> {
        let breakers = self.registry.all_breakers();
        if breakers.is_empty() {
            return Ok(());
        }
        let mut conn = self.redis.connection().await?;
        let keys: Vec<String> = breakers.iter().map(|(n, _)| self.key(n)).collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let ttl_ms = (self.registry.breaker_config().open_for.as_millis() as u64)
            .saturating_mul(2)
            .max(60_000);
        let mut writes = redis::pipe();
        let mut wrote = Vec::new();
        for ((name, breaker), value) in breakers.iter().zip(values) {
            let remote = value.as_deref().and_then(Shared::decode);
            let (state, at) = breaker.last_transition();
            let local_ms = at.map(|t| t.timestamp_millis());
            match remote {
                // A peer's newer transition: apply it here.
                Some(news)
                    if news.instance != self.instance
                        && local_ms.is_none_or(|l| news.at_ms > l)
                        && known.get(name).is_none_or(|k| news.at_ms > *k) =>
                {
                    if let Some(at) = Utc.timestamp_millis_opt(news.at_ms).single() {
                        apply(breaker, news.state, at, &news.instance);
                    }
                    known.insert(name.clone(), news.at_ms);
                }
                // Local news newer than what the fleet knows: publish it.
                remote => {
                    let (Some(at_ms), BreakerState::Open | BreakerState::Closed) =
                        (local_ms, state)
                    else {
                        continue;
                    };
                    let stale = remote.as_ref().is_none_or(|r| r.at_ms < at_ms);
                    if stale && known.get(name).is_none_or(|k| *k < at_ms) {
                        let news = Shared {
                            state,
                            at_ms,
                            instance: self.instance.clone(),
                        };
                        writes
                            .cmd("SET")
                            .arg(self.key(name))
                            .arg(news.encode())
                            .arg("PX")
                            .arg(ttl_ms)
                            .ignore();
                        wrote.push((name.clone(), at_ms));
                    }
                }
            }
        }
        if !wrote.is_empty() {
            writes.query_async::<()>(&mut conn).await?;
            known.extend(wrote);
        }
        Ok(())
    }
}

fn apply(
    breaker: &crate::agents::resilience::CircuitBreaker,
    state: BreakerState,
    at: DateTime<Utc>,
    peer: &str,
) {
    match state {
        BreakerState::Open => breaker.open_from_peer(at, peer),
        BreakerState::Closed => breaker.close_from_peer(at, peer),
        BreakerState::HalfOpen => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_transitions_round_trip_and_reject_garbage() {
        let s = Shared {
            state: BreakerState::Open,
            at_ms: 1_700_000_000_123,
            instance: "host:8080".into(),
        };
        assert_eq!(Shared::decode(&s.encode()), Some(s));
        assert_eq!(Shared::decode("half_open|1|x"), None);
        assert_eq!(Shared::decode("open|soon|x"), None);
        assert_eq!(Shared::decode("open"), None);
    }
}
