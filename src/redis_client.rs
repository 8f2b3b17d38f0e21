//! The one Redis owner (optional). Redis holds nothing durable: rate-limit state, live fan-out
//! and circuit-breaker news only, so losing it degrades the service instead of breaking it.
//!
//! Rule: every command of the process — the rate limiter, the event bus's publisher, the
//! breaker sync, health and `/metrics` — goes through one [`redis::aio::ConnectionManager`]
//! (one multiplexed connection that the manager replaces when it breaks). Only the event
//! bus's subscriber has a connection of its own, since a subscribed connection runs no other
//! command. Nothing connects at start, so a Redis outage at start does not stop the server:
//! the first command makes the manager. No call can hang on a dead Redis: each connection
//! attempt is bounded by [`CONNECT_TIMEOUT`], each reply by [`RESPONSE_TIMEOUT`], and callers
//! add their own shorter budgets (the limiter's `rate_limit_redis_timeout`, the health check's).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

/// One attempt to (re)connect, handshake included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// One reply on an established connection.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Linux: a connection whose sent data stays unacknowledged this long (a peer gone without a
/// word) is closed by the kernel, so the manager replaces it instead of timing out forever.
#[cfg(target_os = "linux")]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// A cloneable handle on the process's Redis connection.
#[derive(Clone)]
pub struct RedisHandle(Arc<Inner>);

struct Inner {
    client: redis::Client,
    manager: OnceCell<ConnectionManager>,
}

impl RedisHandle {
    /// Parse the URL; no connection is made until first use.
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        Ok(RedisHandle(Arc::new(Inner {
            client: redis::Client::open(url)?,
            manager: OnceCell::new(),
        })))
    }

    /// The client, for a connection of one's own (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.0.client
    }

    /// The shared connection (a clone is a reference count). Made by the first call; a call
    /// that finds Redis down gets the error and the next one tries again. Once made, the
    /// manager reconnects by itself: a command that meets a broken connection fails and starts
    /// one reconnection attempt, which the following commands wait for.
    pub async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        self.0
            .manager
            .get_or_try_init(|| {
                ConnectionManager::new_with_config(self.0.client.clone(), manager_config())
            })
            .await
            .cloned()
    }

    /// PING.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }
}

/// One attempt per reconnection, no backoff of its own: in redis 0.32 the manager's backoff
/// starts at one second and grows to a minute, during which every command would wait for it.
/// The callers already pace their retries (the limiter probes a failed Redis once a second).
fn manager_config() -> ConnectionManagerConfig {
    let tcp = redis::io::tcp::TcpSettings::default();
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(TCP_USER_TIMEOUT);
    ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
        .set_tcp_settings(tcp)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn redis_url() -> String {
        std::env::var("ARAGORA_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
    }

    #[tokio::test]
    async fn a_redis_that_accepts_but_never_answers_fails_each_call_instead_of_hanging() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mute = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let redis = RedisHandle::new(&format!("redis://{addr}/0")).unwrap();
        for _ in 0..2 {
            let started = Instant::now();
            assert!(redis.ping().await.is_err());
            let took = started.elapsed();
            assert!(
                took >= CONNECT_TIMEOUT && took < CONNECT_TIMEOUT + Duration::from_millis(500),
                "{took:?}"
            );
        }
        mute.abort();
    }

    #[tokio::test]
    async fn a_broken_connection_is_replaced_by_itself() {
        let redis = RedisHandle::new(&redis_url()).unwrap();
        let mut conn = redis
            .connection()
            .await
            .unwrap_or_else(|e| panic!("Redis at {} is required: {e}", redis_url()));
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .unwrap();
        // Another client closes the shared connection under it.
        let mut other = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut other)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        // The call that meets the closed connection may fail; the next ones use a new one.
        let _ = redis.ping().await;
        let mut answered = false;
        for _ in 0..20 {
            if redis.ping().await.is_ok() {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(answered, "no answer after the connection was killed");
        let mut conn = redis.connection().await.unwrap();
        let new_id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_ne!(new_id, id);
    }
}
