//! The shared Redis connection (optional). Redis holds nothing durable: rate-limit state and
//! live fan-out only, so losing it degrades the service instead of breaking it.

use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

#[derive(Clone)]
pub struct RedisHandle {
    client: redis::Client,
    /// A cached multiplexed connection, dropped on error and re-made on next use.
    conn: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl RedisHandle {
    /// Parse the URL; no connection is made until first use, so a Redis outage at start does
    /// not stop the server.
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        Ok(RedisHandle {
            client: redis::Client::open(url)?,
            conn: Arc::new(Mutex::new(None)),
        })
    }

    pub async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self.client.get_multiplexed_async_connection().await?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// PING; on failure the cached connection is dropped so the next call reconnects.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let result = async {
            let mut conn = self.connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            *self.conn.lock().await = None;
        }
        result
    }
}
