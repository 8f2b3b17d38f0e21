//! The storage contract, written once against `DynStore` and run against both backends, so
//! SQLite and Postgres cannot drift apart.
//!
//! Postgres cases need the server at `ARAGORA_TEST_DATABASE_URL` and fail (never skip) when
//! it is unreachable; each runs in its own throwaway schema.

use std::collections::HashSet;
use std::time::Duration;

use aragora::store::{
    self, DebateQuery, DebateRecord, DebateUpdate, DynStore, NewDebate, NewEvent, PoolSettings,
    PostgresStore, StoreError,
};
use chrono::{TimeZone, Utc};
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

const POOL: PoolSettings = PoolSettings {
    size: 2,
    max_overflow: 3,
    acquire_timeout: Duration::from_secs(10),
};

fn pg_base_url() -> String {
    std::env::var("ARAGORA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A migrated store plus whatever must outlive it (temp dir) or be cleaned up (schema).
struct Harness {
    store: DynStore,
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<String>,
}

impl Harness {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // A missing parent directory must be created by connect.
        let url = format!("sqlite://{}", dir.path().join("data/aragora.db").display());
        let store = store::connect(&url, POOL).await.expect("sqlite connect");
        store.migrate().await.expect("sqlite migrate");
        Harness {
            store,
            url,
            _dir: Some(dir),
            pg_schema: None,
        }
    }

    async fn postgres() -> Self {
        let base = pg_base_url();
        let schema = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let mut admin = PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("Postgres at {base} unreachable: {e}"));
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut admin)
            .await
            .expect("create schema");
        admin.close().await.ok();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let store = store::connect(&url, POOL).await.expect("postgres connect");
        store.migrate().await.expect("postgres migrate");
        Harness {
            store,
            url,
            _dir: None,
            pg_schema: Some(schema),
        }
    }
}

impl Drop for Harness {
    /// Best-effort schema drop, also after a failed assertion. Runs on its own thread and
    /// runtime because Drop cannot await.
    fn drop(&mut self) {
        let Some(schema) = self.pg_schema.take() else {
            return;
        };
        let base = pg_base_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&base).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// Declares each case as `sqlite_<case>` and `postgres_<case>` (names spelled out because
/// macro_rules cannot concatenate identifiers).
macro_rules! suite {
    ($($case:ident => $sqlite:ident, $postgres:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $sqlite() {
            let h = Harness::sqlite().await;
            $case(&h.store).await;
            h.store.close().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $postgres() {
            let h = Harness::postgres().await;
            $case(&h.store).await;
            h.store.close().await;
        }
    )*};
}

suite! {
    migrate_is_idempotent => sqlite_migrate_is_idempotent, postgres_migrate_is_idempotent;
    create_get_round_trip => sqlite_create_get_round_trip, postgres_create_get_round_trip;
    duplicate_id_conflicts => sqlite_duplicate_id_conflicts, postgres_duplicate_id_conflicts;
    update_is_partial => sqlite_update_is_partial, postgres_update_is_partial;
    list_orders_and_filters => sqlite_list_orders_and_filters, postgres_list_orders_and_filters;
    list_offset_paging => sqlite_list_offset_paging, postgres_list_offset_paging;
    list_cursor_paging => sqlite_list_cursor_paging, postgres_list_cursor_paging;
    malformed_cursor_is_corrupt => sqlite_malformed_cursor_is_corrupt,
        postgres_malformed_cursor_is_corrupt;
    concurrent_appends_are_contiguous => sqlite_concurrent_appends_are_contiguous,
        postgres_concurrent_appends_are_contiguous;
    events_since_and_last_seq => sqlite_events_since_and_last_seq,
        postgres_events_since_and_last_seq;
    append_to_unknown_is_not_found => sqlite_append_to_unknown_is_not_found,
        postgres_append_to_unknown_is_not_found;
    unfinished_debates_oldest_first => sqlite_unfinished_debates_oldest_first,
        postgres_unfinished_debates_oldest_first;
    ping_and_pool_status => sqlite_ping_and_pool_status, postgres_ping_and_pool_status;
}

fn new_debate(id: &str, owner: Option<&str>) -> NewDebate {
    NewDebate {
        id: id.into(),
        task: format!("task of {id}"),
        agents: vec!["claude".into(), "gpt".into(), "gemini".into()],
        rounds: 3,
        consensus: "majority".into(),
        owner_id: owner.map(Into::into),
        correlation_id: Some(format!("corr-{id}")),
        options: json!({"threshold": 0.7, "judge": "claude", "metadata": {"k": [1, 2]}}),
    }
}

fn event(i: usize) -> NewEvent {
    NewEvent {
        kind: "agent_message".into(),
        round: Some(1),
        agent: Some(format!("agent-{}", i % 3)),
        data: json!({"i": i, "text": "hello"}),
    }
}

fn ids(records: &[DebateRecord]) -> Vec<String> {
    records.iter().map(|r| r.id.clone()).collect()
}

/// The order list_debates promises: newest first, id breaking ties.
fn newest_first(mut records: Vec<DebateRecord>) -> Vec<String> {
    records.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    ids(&records)
}

/// Creates debates with ids `<prefix>-00`, … a little apart so created_at differs.
async fn create_many(s: &DynStore, prefix: &str, n: usize) -> Vec<DebateRecord> {
    let mut out = Vec::new();
    for i in 0..n {
        let owner = if i % 2 == 0 { "alice" } else { "bob" };
        out.push(
            s.create_debate(&new_debate(&format!("{prefix}-{i:02}"), Some(owner)))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out
}

async fn migrate_is_idempotent(s: &DynStore) {
    s.migrate().await.expect("second migrate");
    s.migrate().await.expect("third migrate");
    s.create_debate(&new_debate("d1", None)).await.unwrap();
    s.migrate().await.expect("migrate with data");
    assert!(s.get_debate("d1").await.unwrap().is_some());
}

async fn create_get_round_trip(s: &DynStore) {
    let created = s
        .create_debate(&new_debate("d1", Some("alice")))
        .await
        .unwrap();
    assert_eq!(created.status, "queued");
    assert_eq!(created.rounds_used, 0);
    assert_eq!(created.result, None);
    assert_eq!(created.owner_id.as_deref(), Some("alice"));
    assert_eq!(s.get_debate("d1").await.unwrap(), Some(created.clone()));
    assert_eq!(s.get_debate("missing").await.unwrap(), None);

    // Nanosecond inputs come back truncated to microseconds on both backends.
    let started = Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap();
    let finished = Utc.timestamp_opt(1_700_000_100, 987_654_321).unwrap();
    let updated = s
        .update_debate(
            "d1",
            &DebateUpdate {
                status: Some("completed".into()),
                rounds_used: Some(2),
                result: Some(json!({"answer": "42", "votes": [1, 2, 3], "score": 0.5})),
                error: Some("none really".into()),
                started_at: Some(started),
                finished_at: Some(finished),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        updated.started_at,
        Some(Utc.timestamp_opt(1_700_000_000, 123_456_000).unwrap())
    );
    assert_eq!(
        updated.finished_at,
        Some(Utc.timestamp_opt(1_700_000_100, 987_654_000).unwrap())
    );
    assert_eq!(updated.created_at, created.created_at);
    assert_eq!(s.get_debate("d1").await.unwrap(), Some(updated));

    // Optional fields left empty round-trip as None.
    let bare = NewDebate {
        owner_id: None,
        correlation_id: None,
        options: json!({}),
        agents: vec![],
        ..new_debate("d2", None)
    };
    let created = s.create_debate(&bare).await.unwrap();
    assert_eq!(s.get_debate("d2").await.unwrap(), Some(created));
}

async fn duplicate_id_conflicts(s: &DynStore) {
    let first = s
        .create_debate(&new_debate("dup", Some("alice")))
        .await
        .unwrap();
    let err = s
        .create_debate(&new_debate("dup", Some("bob")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(s.get_debate("dup").await.unwrap(), Some(first));
}

async fn update_is_partial(s: &DynStore) {
    let created = s.create_debate(&new_debate("d1", None)).await.unwrap();
    let running = s
        .update_debate(
            "d1",
            &DebateUpdate {
                status: Some("running".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        running,
        DebateRecord {
            status: "running".into(),
            ..created.clone()
        }
    );
    let progressed = s
        .update_debate(
            "d1",
            &DebateUpdate {
                rounds_used: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        progressed,
        DebateRecord {
            rounds_used: 1,
            ..running
        }
    );
    let unchanged = s
        .update_debate("d1", &DebateUpdate::default())
        .await
        .unwrap();
    assert_eq!(unchanged, progressed);
    assert_eq!(s.get_debate("d1").await.unwrap(), Some(progressed));

    let err = s
        .update_debate(
            "missing",
            &DebateUpdate {
                status: Some("running".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn list_orders_and_filters(s: &DynStore) {
    let all = create_many(s, "d", 6).await;
    for id in ["d-01", "d-02"] {
        s.update_debate(
            id,
            &DebateUpdate {
                status: Some("running".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }

    let page = s.list_debates(&DebateQuery::default()).await.unwrap();
    assert_eq!(ids(&page.debates), newest_first(all.clone()));
    assert_eq!(
        ids(&page.debates),
        ["d-05", "d-04", "d-03", "d-02", "d-01", "d-00"]
    );
    assert_eq!(page.next_cursor, None, "limit 0 means 50, all fit");

    let running = s
        .list_debates(&DebateQuery {
            status: Some("running".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&running.debates), ["d-02", "d-01"]);
    assert!(running.debates.iter().all(|d| d.status == "running"));

    let alice = s
        .list_debates(&DebateQuery {
            owner_id: Some("alice".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&alice.debates), ["d-04", "d-02", "d-00"]);

    let alice_queued = s
        .list_debates(&DebateQuery {
            owner_id: Some("alice".into()),
            status: Some("queued".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&alice_queued.debates), ["d-04", "d-00"]);

    let nobody = s
        .list_debates(&DebateQuery {
            owner_id: Some("carol".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(nobody.debates.is_empty());
    assert_eq!(nobody.next_cursor, None);
}

async fn list_offset_paging(s: &DynStore) {
    let all = newest_first(create_many(s, "d", 5).await);
    let mut seen = Vec::new();
    for offset in [0, 2, 4] {
        let page = s
            .list_debates(&DebateQuery {
                limit: 2,
                offset: Some(offset),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.next_cursor.is_some(), offset < 4, "offset {offset}");
        seen.extend(ids(&page.debates));
    }
    assert_eq!(seen, all);

    let past_end = s
        .list_debates(&DebateQuery {
            limit: 2,
            offset: Some(10),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(past_end.debates.is_empty());

    // Over-large limits are clamped, not rejected.
    let big = s
        .list_debates(&DebateQuery {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&big.debates), all);
}

async fn list_cursor_paging(s: &DynStore) {
    let all = newest_first(create_many(s, "d", 8).await);
    // Another owner's debate must not appear in the owner-filtered pages below.
    s.create_debate(&new_debate("other", Some("carol")))
        .await
        .unwrap();
    let query = |cursor: Option<String>| DebateQuery {
        limit: 3,
        cursor,
        ..Default::default()
    };

    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = s.list_debates(&query(cursor.clone())).await.unwrap();
        pages += 1;
        seen.extend(ids(&page.debates));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 10, "cursor paging does not terminate");
    }
    // 9 rows in pages of 3: exactly 3 pages, the last without a cursor.
    assert_eq!(pages, 3);
    let expected = newest_first(
        s.list_debates(&DebateQuery::default())
            .await
            .unwrap()
            .debates,
    );
    assert_eq!(seen, expected);
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 9, "no duplicates");

    // Cursor combined with a filter.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .list_debates(&DebateQuery {
                owner_id: Some("alice".into()),
                limit: 2,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(ids(&page.debates));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let alice: Vec<_> = all
        .iter()
        .filter(|id| id[2..].parse::<u32>().unwrap().is_multiple_of(2))
        .cloned()
        .collect();
    assert_eq!(seen, alice);
}

async fn malformed_cursor_is_corrupt(s: &DynStore) {
    create_many(s, "d", 2).await;
    let hex = |t: &str| t.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for bad in [
        "zz".to_string(),
        "abc".to_string(),
        "not a cursor!".to_string(),
        hex("no-separator"),
        hex("yesterday|d-01"),
        hex("2024-01-01T00:00:00.000000Z|"),
    ] {
        let err = s
            .list_debates(&DebateQuery {
                cursor: Some(bad.clone()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("cursor")),
            "{bad:?}: {err:?}"
        );
    }
}

async fn concurrent_appends_are_contiguous(s: &DynStore) {
    s.create_debate(&new_debate("d1", None)).await.unwrap();
    s.create_debate(&new_debate("d2", None)).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                seqs.push(s.append_event("d1", &event(t * 100 + i)).await.unwrap().seq);
            }
            seqs
        }));
    }
    // A second debate's log is independent.
    s.append_event("d2", &event(0)).await.unwrap();
    let mut returned: Vec<i64> = Vec::new();
    for task in tasks {
        let seqs = task.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "per-task order");
        returned.extend(seqs);
    }
    returned.sort_unstable();
    assert_eq!(returned, (1..=200).collect::<Vec<i64>>());

    let stored: Vec<i64> = s
        .events_since("d1", 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(stored, (1..=200).collect::<Vec<i64>>());
    assert_eq!(s.last_seq("d1").await.unwrap(), 200);
    assert_eq!(s.last_seq("d2").await.unwrap(), 1);
}

async fn events_since_and_last_seq(s: &DynStore) {
    s.create_debate(&new_debate("d1", None)).await.unwrap();
    assert_eq!(s.last_seq("d1").await.unwrap(), 0);
    assert!(s.events_since("d1", 0, 10).await.unwrap().is_empty());

    let mut appended = Vec::new();
    for i in 0..10 {
        appended.push(s.append_event("d1", &event(i)).await.unwrap());
    }
    let bare = NewEvent {
        kind: "debate_started".into(),
        round: None,
        agent: None,
        data: json!(null),
    };
    appended.push(s.append_event("d1", &bare).await.unwrap());
    assert_eq!(appended[10].seq, 11);
    assert_eq!(s.last_seq("d1").await.unwrap(), 11);

    // Stored events equal what append returned, timestamps included.
    assert_eq!(s.events_since("d1", 0, 100).await.unwrap(), appended);
    let window = s.events_since("d1", 3, 4).await.unwrap();
    assert_eq!(window, appended[3..7].to_vec());
    assert_eq!(
        window.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert_eq!(window[0].data, json!({"i": 3, "text": "hello"}));
    assert!(s.events_since("d1", 11, 5).await.unwrap().is_empty());
    assert!(s.events_since("other", 0, 5).await.unwrap().is_empty());
    assert!(
        appended
            .windows(2)
            .all(|w| w[0].timestamp <= w[1].timestamp),
        "timestamps non-decreasing"
    );
}

async fn append_to_unknown_is_not_found(s: &DynStore) {
    let err = s.append_event("missing", &event(0)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(s.last_seq("missing").await.unwrap(), 0);
}

async fn unfinished_debates_oldest_first(s: &DynStore) {
    create_many(s, "d", 5).await;
    for (id, status) in [
        ("d-00", "completed"),
        ("d-01", "running"),
        ("d-03", "failed"),
    ] {
        s.update_debate(
            id,
            &DebateUpdate {
                status: Some(status.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let unfinished = s.unfinished_debates().await.unwrap();
    assert_eq!(ids(&unfinished), ["d-01", "d-02", "d-04"]);
    assert_eq!(unfinished[0].status, "running");
}

async fn ping_and_pool_status(s: &DynStore) {
    s.ping().await.unwrap();
    let status = s.pool_status();
    assert_eq!(status.max, POOL.size + POOL.max_overflow);
    assert!(status.size >= 1 && status.size <= status.max, "{status:?}");
    assert!(status.idle <= status.size, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_search_path_from_url_isolates_schema() {
    let h = Harness::postgres().await;
    let schema = h.pg_schema.clone().unwrap();
    h.store
        .create_debate(&new_debate("d1", None))
        .await
        .unwrap();
    let mut admin = PgConnection::connect(&pg_base_url()).await.unwrap();
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.debates"))
        .fetch_one(&mut admin)
        .await
        .expect("tables live in the test schema");
    assert_eq!(count, 1);
    let migrations: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}._sqlx_migrations"))
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(migrations >= 1);
    admin.close().await.ok();
    h.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_pools_append_contiguously() {
    let h = Harness::postgres().await;
    let other: DynStore = std::sync::Arc::new(
        PostgresStore::connect(&h.url, POOL)
            .await
            .expect("second pool"),
    );
    other.ping().await.unwrap();
    h.store
        .create_debate(&new_debate("shared", None))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = if t % 2 == 0 {
            h.store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                s.append_event("shared", &event(t * 100 + i)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seqs: Vec<i64> = other
        .events_since("shared", 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<i64>>());
    other.close().await;
    h.store.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_url_works() {
    let s = store::connect("sqlite::memory:", POOL).await.unwrap();
    s.migrate().await.unwrap();
    s.create_debate(&new_debate("d1", None)).await.unwrap();
    s.append_event("d1", &event(0)).await.unwrap();
    assert_eq!(s.last_seq("d1").await.unwrap(), 1);
    s.close().await;
}

#[tokio::test]
async fn sqlite_absolute_url_creates_nested_parent_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/aragora.db");
    // `sqlite://` + absolute path gives the `sqlite:///abs/...` form.
    let s = store::connect(&format!("sqlite://{}", path.display()), POOL)
        .await
        .unwrap();
    s.migrate().await.unwrap();
    assert!(path.exists());
    s.close().await;
}
