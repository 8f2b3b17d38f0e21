//! Helpers shared by the benches. Each bench includes this module (`mod support;`) and uses
//! the part it needs, hence `dead_code` is allowed here.
#![allow(dead_code)]

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
