//! Helpers shared by the benches. Each bench includes this module (`mod support;`) and uses
//! the part it needs, hence `dead_code` is allowed here.
#![allow(dead_code)]

/// Pool settings for a store a bench opens itself: `size` connections, no overflow, and no
/// separate intake connections (what is measured goes through the one pool).
pub fn store_pool(size: u32) -> aragora::store::PoolSettings {
    aragora::store::PoolSettings {
        size,
        max_overflow: 0,
        acquire_timeout: std::time::Duration::from_secs(30),
        intake: 0,
    }
}

/// The `p` quantile (0..=1) of `sorted`, nearest rank; zero when there is nothing.
pub fn pct<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A debate for a bench to write to: three demo seats, three rounds, majority.
pub fn bench_debate(id: &str, task: &str) -> aragora::store::NewDebate {
    aragora::store::NewDebate {
        id: id.to_owned(),
        task: task.to_owned(),
        agents: vec!["demo".into(), "demo#2".into(), "demo#3".into()],
        rounds: 3,
        consensus: "majority".into(),
        owner_id: None,
        correlation_id: None,
        options: serde_json::json!({}),
    }
}

/// A port that was free a moment ago (for servers the bench starts as processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Create the schema `bench_<uuid>` in the Postgres database at `base`. Returns the schema
/// and a URL whose connections use it (`options=-c search_path=…`).
pub async fn fresh_schema(base: &str) -> (String, String) {
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(base)
        .await
        .unwrap_or_else(|e| panic!("Postgres at {base} is required for this bench: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    (schema, url)
}

/// Drop a schema made by [`fresh_schema`] (best effort: a bench's numbers are printed
/// already).
pub async fn drop_schema(base: &str, schema: &str) {
    if let Ok(admin) = sqlx::PgPool::connect(base).await {
        let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}

/// CPU seconds (user + system, all threads) process `pid` has used so far, from
/// `/proc/<pid>/stat`; 0 if it cannot be read.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    /// USER_HZ: the unit of utime and stime, 100 on Linux.
    const CLOCK_TICKS_PER_SEC: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: `rest` starts at field 3 (state), so
    // field k is at index k - 3; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(14 - 3) + ticks(15 - 3)) as f64 / CLOCK_TICKS_PER_SEC
}
