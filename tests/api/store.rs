//! The storage contract, written once against `DynStore` and run against both backends, so
//! SQLite and Postgres cannot drift apart.
//!
//! Postgres cases need the server at `ARAGORA_TEST_DATABASE_URL` and fail (never skip) when
//! it is unreachable; each runs in its own throwaway schema.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aragora::ratings::{INITIAL_RATING, K_FACTOR};
use aragora::store::{
    self, Control, DebateQuery, DebateRecord, DebateStatus, DebateUpdate, DynStore, GroupCommit,
    Lease, MatchResult, NewDebate, NewEvent, NewUsage, NewUser, PoolSettings, PostgresStore,
    Rating, RefreshTokenRecord, StepWrite, StoreError,
};
use chrono::{TimeZone, Utc};
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

const POOL: PoolSettings = PoolSettings {
    size: 2,
    max_overflow: 3,
    acquire_timeout: Duration::from_secs(10),
    intake: 1,
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
    receipts_are_stored_once_and_listed_by_owner => sqlite_receipts_are_stored_once_and_listed_by_owner,
        postgres_receipts_are_stored_once_and_listed_by_owner;
    migrate_is_idempotent => sqlite_migrate_is_idempotent, postgres_migrate_is_idempotent;
    create_get_round_trip => sqlite_create_get_round_trip, postgres_create_get_round_trip;
    duplicate_id_conflicts => sqlite_duplicate_id_conflicts, postgres_duplicate_id_conflicts;
    update_is_partial => sqlite_update_is_partial, postgres_update_is_partial;
    list_orders_and_filters => sqlite_list_orders_and_filters, postgres_list_orders_and_filters;
    list_offset_paging => sqlite_list_offset_paging, postgres_list_offset_paging;
    list_cursor_paging => sqlite_list_cursor_paging, postgres_list_cursor_paging;
    malformed_cursor_is_corrupt => sqlite_malformed_cursor_is_corrupt,
        postgres_malformed_cursor_is_corrupt;
    concurrent_writes_of_every_kind_all_land => sqlite_concurrent_writes_of_every_kind_all_land,
        postgres_concurrent_writes_of_every_kind_all_land;
    concurrent_appends_are_contiguous => sqlite_concurrent_appends_are_contiguous,
        postgres_concurrent_appends_are_contiguous;
    events_since_and_last_seq => sqlite_events_since_and_last_seq,
        postgres_events_since_and_last_seq;
    append_to_unknown_is_not_found => sqlite_append_to_unknown_is_not_found,
        postgres_append_to_unknown_is_not_found;
    unfinished_debates_oldest_first => sqlite_unfinished_debates_oldest_first,
        postgres_unfinished_debates_oldest_first;
    ping_and_pool_status => sqlite_ping_and_pool_status, postgres_ping_and_pool_status;
    first_win_moves_sixteen => sqlite_first_win_moves_sixteen,
        postgres_first_win_moves_sixteen;
    draws_are_counted => sqlite_draws_are_counted, postgres_draws_are_counted;
    domain_ratings_are_separate => sqlite_domain_ratings_are_separate,
        postgres_domain_ratings_are_separate;
    rating_is_idempotent_per_debate => sqlite_rating_is_idempotent_per_debate,
        postgres_rating_is_idempotent_per_debate;
    invalid_matches_write_nothing => sqlite_invalid_matches_write_nothing,
        postgres_invalid_matches_write_nothing;
    ratings_order_and_limit => sqlite_ratings_order_and_limit,
        postgres_ratings_order_and_limit;
    concurrent_debates_lose_no_update => sqlite_concurrent_debates_lose_no_update,
        postgres_concurrent_debates_lose_no_update;
    events_of_kinds_filters_orders_pages => sqlite_events_of_kinds_filters_orders_pages,
        postgres_events_of_kinds_filters_orders_pages;
    count_debates_by_status_groups => sqlite_count_debates_by_status_groups,
        postgres_count_debates_by_status_groups;
    users_round_trip_and_unique_email => sqlite_users_round_trip_and_unique_email,
        postgres_users_round_trip_and_unique_email;
    api_keys_replace_revoke_and_touch => sqlite_api_keys_replace_revoke_and_touch,
        postgres_api_keys_replace_revoke_and_touch;
    refresh_tokens_spend_once_and_revoke_by_family => sqlite_refresh_tokens_spend_once_and_revoke_by_family,
        postgres_refresh_tokens_spend_once_and_revoke_by_family;
    usage_sums_by_provider_and_period => sqlite_usage_sums_by_provider_and_period,
        postgres_usage_sums_by_provider_and_period;
    claims_take_queued_oldest_first_once => sqlite_claims_take_queued_oldest_first_once,
        postgres_claims_take_queued_oldest_first_once;
    a_stale_lease_is_fenced => sqlite_a_stale_lease_is_fenced, postgres_a_stale_lease_is_fenced;
    released_and_expired_leases_are_claimed_again =>
        sqlite_released_and_expired_leases_are_claimed_again,
        postgres_released_and_expired_leases_are_claimed_again;
    renewal_and_cancel_requests => sqlite_renewal_and_cancel_requests,
        postgres_renewal_and_cancel_requests;
    finish_writes_status_and_end_together => sqlite_finish_writes_status_and_end_together,
        postgres_finish_writes_status_and_end_together;
    pause_and_unpause => sqlite_pause_and_unpause, postgres_pause_and_unpause;
    debate_cost_sums_its_usage => sqlite_debate_cost_sums_its_usage,
        postgres_debate_cost_sums_its_usage;
    a_step_writes_its_usage_with_its_events_or_neither =>
        sqlite_a_step_writes_its_usage_with_its_events_or_neither,
        postgres_a_step_writes_its_usage_with_its_events_or_neither;
    a_debate_is_accepted_with_its_first_events_or_not_at_all =>
        sqlite_a_debate_is_accepted_with_its_first_events_or_not_at_all,
        postgres_a_debate_is_accepted_with_its_first_events_or_not_at_all;
    claiming_queued_debates_leaves_expired_leases_for_the_full_claim =>
        sqlite_claiming_queued_debates_leaves_expired_leases_for_the_full_claim,
        postgres_claiming_queued_debates_leaves_expired_leases_for_the_full_claim;
    grouped_steps_each_get_their_own_outcome =>
        sqlite_grouped_steps_each_get_their_own_outcome,
        postgres_grouped_steps_each_get_their_own_outcome;
    the_group_commit_keeps_every_debates_log_whole_and_in_order =>
        sqlite_the_group_commit_keeps_every_debates_log_whole_and_in_order,
        postgres_the_group_commit_keeps_every_debates_log_whole_and_in_order;
    groups_of_every_size_land_whole =>
        sqlite_groups_of_every_size_land_whole, postgres_groups_of_every_size_land_whole;
    concurrent_submissions_each_get_their_own_answer =>
        sqlite_concurrent_submissions_each_get_their_own_answer,
        postgres_concurrent_submissions_each_get_their_own_answer;
    receipts_stored_together_each_get_their_own_answer =>
        sqlite_receipts_stored_together_each_get_their_own_answer,
        postgres_receipts_stored_together_each_get_their_own_answer;
    concurrent_finishes_each_get_their_own_answer =>
        sqlite_concurrent_finishes_each_get_their_own_answer,
        postgres_concurrent_finishes_each_get_their_own_answer;
    concurrent_ratings_lose_no_game =>
        sqlite_concurrent_ratings_lose_no_game, postgres_concurrent_ratings_lose_no_game;
    callers_that_stop_waiting_cost_the_others_nothing =>
        sqlite_callers_that_stop_waiting_cost_the_others_nothing,
        postgres_callers_that_stop_waiting_cost_the_others_nothing;
}

fn ev(kind: &str) -> NewEvent {
    NewEvent {
        kind: kind.into(),
        round: None,
        agent: None,
        data: json!({}),
    }
}

const TTL: Duration = Duration::from_secs(30);

async fn claims_take_queued_oldest_first_once(s: &DynStore) {
    for id in ["q1", "q2", "q3"] {
        s.create_debate(&new_debate(id, None)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(s.count_queued().await.unwrap(), 3);
    let first = s.claim_debates("a", 2, TTL).await.unwrap();
    let ids: Vec<&str> = first.iter().map(|c| c.record.id.as_str()).collect();
    assert_eq!(ids, ["q1", "q2"]);
    for c in &first {
        assert_eq!(c.record.status, DebateStatus::Running);
        assert_eq!(c.record.instance.as_deref(), Some("a"));
        assert!(c.record.started_at.is_some());
        assert_eq!(c.previous_status, DebateStatus::Queued);
        assert_eq!(c.previous_owner, None);
        assert_eq!(c.lease.owner, "a");
        assert_eq!(c.lease.generation, 1);
    }
    let second = s.claim_debates("b", 5, TTL).await.unwrap();
    assert_eq!(second.len(), 1, "only q3 is left");
    assert_eq!(second[0].record.id, "q3");
    assert!(s.claim_debates("c", 5, TTL).await.unwrap().is_empty());
    assert_eq!(s.count_queued().await.unwrap(), 0);
    let active = s.active_debates().await.unwrap();
    assert_eq!(active.len(), 3);
    assert_eq!(active[2].instance.as_deref(), Some("b"));
    assert_eq!(active[0].total_rounds, 3);

    // Concurrent claimers never share a debate.
    for i in 0..40 {
        s.create_debate(&new_debate(&format!("r{i:02}"), None))
            .await
            .unwrap();
    }
    let mut handles = Vec::new();
    for who in ["x", "y", "z", "w"] {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s.claim_debates(who, 3, TTL).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|c| c.record.id));
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 40, "{all:?}");
    assert_eq!(unique.len(), 40);
}

async fn a_stale_lease_is_fenced(s: &DynStore) {
    s.create_debate(&new_debate("f1", None)).await.unwrap();
    let claim = s.claim_debates("a", 1, TTL).await.unwrap().remove(0);
    let lease = claim.lease.clone();
    let written = s
        .append_events("f1", Some(&lease), &[ev("debate_start"), ev("round_start")])
        .await
        .unwrap();
    assert_eq!(written.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);

    // Instance a goes silent; b takes the debate over once the lease has expired.
    assert_eq!(s.expire_leases_of("a").await.unwrap(), 1);
    let taken = s.claim_debates("b", 1, TTL).await.unwrap().remove(0);
    assert_eq!(taken.previous_status, DebateStatus::Running);
    assert_eq!(taken.previous_owner.as_deref(), Some("a"));
    assert_eq!(taken.lease.generation, lease.generation + 1);

    // a comes back: none of its writes land.
    let err = s
        .append_events("f1", Some(&lease), &[ev("agent_message")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err:?}");
    let end = s
        .finish_debate(
            "f1",
            Some(&lease),
            &DebateUpdate {
                status: Some(DebateStatus::Completed),
                ..DebateUpdate::default()
            },
            &ev("debate_end"),
        )
        .await
        .unwrap_err();
    assert!(matches!(end, StoreError::Fenced(_)), "{end:?}");
    assert!(!s.release_lease("f1", &lease).await.unwrap());
    assert_eq!(s.last_seq("f1").await.unwrap(), 2);
    assert_eq!(
        s.get_debate("f1").await.unwrap().unwrap().status,
        DebateStatus::Running
    );
    // b's writes continue the log.
    let next = s
        .append_events("f1", Some(&taken.lease), &[ev("debate_resumed")])
        .await
        .unwrap();
    assert_eq!(next[0].seq, 3);
    // An unknown debate is not found, not fenced.
    let missing = s
        .append_events("nope", Some(&taken.lease), &[ev("x")])
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing:?}");
}

async fn released_and_expired_leases_are_claimed_again(s: &DynStore) {
    s.create_debate(&new_debate("l1", None)).await.unwrap();
    let claim = s.claim_debates("a", 1, TTL).await.unwrap().remove(0);
    // Held and unexpired: nobody else gets it.
    assert!(s.claim_debates("b", 1, TTL).await.unwrap().is_empty());
    assert!(s.release_lease("l1", &claim.lease).await.unwrap());
    let again = s.claim_debates("b", 1, TTL).await.unwrap().remove(0);
    assert_eq!(again.previous_status, DebateStatus::Running);
    assert_eq!(again.previous_owner, None, "a released it");
    assert_eq!(again.record.instance.as_deref(), Some("b"));
    assert_eq!(again.record.started_at, claim.record.started_at);

    // A short lease runs out by itself.
    s.create_debate(&new_debate("l2", None)).await.unwrap();
    s.claim_debates("a", 1, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(s.claim_debates("b", 1, TTL).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let expired = s.claim_debates("b", 1, TTL).await.unwrap().remove(0);
    assert_eq!(expired.record.id, "l2");
    assert_eq!(expired.previous_owner.as_deref(), Some("a"));
}

fn control(id: &str, cancel: bool, pause: bool) -> Control {
    Control {
        debate_id: id.into(),
        generation: 1,
        cancel,
        pause,
    }
}

async fn renewal_and_cancel_requests(s: &DynStore) {
    for id in ["n1", "n2"] {
        s.create_debate(&new_debate(id, None)).await.unwrap();
    }
    s.claim_debates("a", 1, Duration::from_millis(300))
        .await
        .unwrap();
    s.claim_debates("b", 1, TTL).await.unwrap();
    let held = s.renew_leases("a", TTL).await.unwrap();
    assert_eq!(held, vec![control("n1", false, false)]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Renewed past the short lease: still a's.
    assert!(s.claim_debates("c", 5, TTL).await.unwrap().is_empty());

    assert!(s.control_requests("a").await.unwrap().is_empty());
    assert!(s.request_cancel("n1").await.unwrap());
    assert_eq!(
        s.control_requests("a").await.unwrap(),
        [control("n1", true, false)]
    );
    assert!(s.control_requests("b").await.unwrap().is_empty());
    assert_eq!(
        s.renew_leases("a", TTL).await.unwrap(),
        vec![control("n1", true, false)]
    );
    assert!(s.request_pause("n2").await.unwrap());
    assert_eq!(
        s.control_requests("b").await.unwrap(),
        [control("n2", false, true)]
    );
    // Not running: nothing to ask.
    s.create_debate(&new_debate("n3", None)).await.unwrap();
    assert!(!s.request_cancel("n3").await.unwrap());
    assert!(!s.request_pause("n3").await.unwrap());
    assert!(!s.request_cancel("missing").await.unwrap());
}

async fn pause_and_unpause(s: &DynStore) {
    s.create_debate(&new_debate("p1", None)).await.unwrap();
    let claim = s.claim_debates("a", 1, TTL).await.unwrap().remove(0);
    assert!(s.request_pause("p1").await.unwrap());
    // The runner stops at a boundary: status paused, lease and the request dropped.
    let (paused, event) = s
        .finish_debate(
            "p1",
            Some(&claim.lease),
            &DebateUpdate {
                status: Some(DebateStatus::Paused),
                ..DebateUpdate::default()
            },
            &ev("debate_paused"),
        )
        .await
        .unwrap();
    assert_eq!(paused.status, DebateStatus::Paused);
    assert_eq!(paused.finished_at, None);
    assert_eq!(event.kind, "debate_paused");
    assert!(
        s.claim_debates("b", 5, TTL).await.unwrap().is_empty(),
        "a paused debate is not claimed"
    );
    assert!(s.unpause("missing").await.unwrap().is_none());
    let queued = s.unpause("p1").await.unwrap().expect("was paused");
    assert_eq!(queued.status, DebateStatus::Queued);
    assert_eq!(queued.started_at, paused.started_at);
    assert!(s.unpause("p1").await.unwrap().is_none(), "no longer paused");
    let again = s.claim_debates("b", 5, TTL).await.unwrap().remove(0);
    assert_eq!(again.previous_status, DebateStatus::Queued);
    assert!(
        !again.pause_requested,
        "the old request was dropped with the pause"
    );
    assert_eq!(again.lease.generation, 2);
}

async fn debate_cost_sums_its_usage(s: &DynStore) {
    assert_eq!(s.debate_cost("c1").await.unwrap(), 0.0);
    for (debate, cost) in [("c1", 0.25), ("c1", 0.5), ("c2", 9.0)] {
        s.record_usage(&NewUsage {
            principal_id: "u".into(),
            debate_id: Some(debate.into()),
            agent: "gpt-4".into(),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            input_tokens: 10,
            output_tokens: 5,
            estimated: false,
            cost_usd: cost,
        })
        .await
        .unwrap();
    }
    assert!((s.debate_cost("c1").await.unwrap() - 0.75).abs() < 1e-9);
}

async fn a_step_writes_its_usage_with_its_events_or_neither(s: &DynStore) {
    s.create_debate(&new_debate("u1", None)).await.unwrap();
    let lease = s.claim_debates("a", 1, TTL).await.unwrap().remove(0).lease;
    let row = |agent: &str, cost: f64| NewUsage {
        principal_id: "p-step".into(),
        debate_id: Some("u1".into()),
        agent: agent.into(),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        input_tokens: 100,
        output_tokens: 40,
        estimated: agent == "b",
        cost_usd: cost,
    };
    let from = Utc::now() - chrono::Duration::minutes(1);
    let stored = s
        .append_step(
            "u1",
            Some(&lease),
            &[ev("agent_message"), ev("critique")],
            &[row("a", 0.25), row("b", 0.5)],
        )
        .await
        .unwrap();
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert!((s.debate_cost("u1").await.unwrap() - 0.75).abs() < 1e-9);
    let to = Utc::now() + chrono::Duration::minutes(1);
    let summary = s.usage_summary("p-step", from, to).await.unwrap();
    assert_eq!(summary.debates, 1, "{summary:?}");
    let line = &summary.lines[0];
    assert_eq!(
        (
            line.calls,
            line.input_tokens,
            line.output_tokens,
            line.estimated
        ),
        (2, 200, 80, true),
        "{summary:?}"
    );

    // Taken over: a fenced step writes neither its events nor its usage.
    s.expire_leases_of("a").await.unwrap();
    let taken = s.claim_debates("b", 1, TTL).await.unwrap().remove(0);
    let err = s
        .append_step("u1", Some(&lease), &[ev("vote")], &[row("a", 9.0)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err:?}");
    assert_eq!(s.last_seq("u1").await.unwrap(), 2);
    assert!((s.debate_cost("u1").await.unwrap() - 0.75).abs() < 1e-9);
    // The new holder's steps land, usage included; a step without usage is a plain append.
    s.append_step("u1", Some(&taken.lease), &[ev("vote")], &[row("b", 1.0)])
        .await
        .unwrap();
    s.append_step("u1", Some(&taken.lease), &[ev("consensus")], &[])
        .await
        .unwrap();
    assert_eq!(s.last_seq("u1").await.unwrap(), 4);
    assert!((s.debate_cost("u1").await.unwrap() - 1.75).abs() < 1e-9);
}

fn usage_row(debate: &str, cost: f64) -> NewUsage {
    NewUsage {
        principal_id: "p-group".into(),
        debate_id: Some(debate.into()),
        agent: "a".into(),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        input_tokens: 10,
        output_tokens: 4,
        estimated: false,
        cost_usd: cost,
    }
}

fn step(
    debate: &str,
    lease: Option<&Lease>,
    events: Vec<NewEvent>,
    usage: Vec<NewUsage>,
) -> StepWrite {
    StepWrite {
        debate_id: debate.into(),
        lease: lease.cloned(),
        events,
        usage,
    }
}

async fn a_debate_is_accepted_with_its_first_events_or_not_at_all(s: &DynStore) {
    let (record, stored) = s
        .create_debate_with(
            &new_debate("w1", Some("u1")),
            &[event(1), ev("debate_queued")],
        )
        .await
        .unwrap();
    assert_eq!(record.status, DebateStatus::Queued);
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    let log = s.events_since("w1", 0, 100).await.unwrap();
    assert_eq!(
        log.iter()
            .map(|e| (e.seq, e.kind.as_str()))
            .collect::<Vec<_>>(),
        [(1, "agent_message"), (2, "debate_queued")]
    );
    assert_eq!(log[0].data, event(1).data);
    assert_eq!(log[0].agent, event(1).agent);
    assert_eq!(s.last_seq("w1").await.unwrap(), 2);
    // The log continues after them.
    assert_eq!(s.append_event("w1", &ev("note")).await.unwrap().seq, 3);
    // A duplicate id is refused whole: no record replaced, no event added.
    let err = s
        .create_debate_with(&new_debate("w1", Some("u2")), &[ev("debate_queued")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        s.get_debate("w1")
            .await
            .unwrap()
            .unwrap()
            .owner_id
            .as_deref(),
        Some("u1")
    );
    assert_eq!(s.last_seq("w1").await.unwrap(), 3);
    assert_eq!(s.events_since("w1", 0, 100).await.unwrap().len(), 3);
    // Without events: a record with an empty log.
    s.create_debate_with(&new_debate("w2", None), &[])
        .await
        .unwrap();
    assert_eq!(s.last_seq("w2").await.unwrap(), 0);
    assert!(s.events_since("w2", 0, 100).await.unwrap().is_empty());
}

/// Many submissions at once (SQLite writes the ones that wait together): each is accepted
/// with its own first events, or refused as a conflict when its id is taken, before or
/// within the same burst; no debate is written twice or loses its events.
async fn concurrent_submissions_each_get_their_own_answer(s: &DynStore) {
    s.create_debate(&new_debate("cs-taken", Some("first")))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..120usize {
        let s = s.clone();
        // Every tenth asks for a taken id; ids 5 and 6 are each asked for twice.
        let id = match i {
            _ if i % 10 == 9 => "cs-taken".to_owned(),
            100 | 101 => "cs-5".to_owned(),
            102 | 103 => "cs-6".to_owned(),
            _ => format!("cs-{i}"),
        };
        tasks.push(tokio::spawn(async move {
            let events: Vec<NewEvent> = (0..=i % 3).map(|j| event(i * 10 + j)).collect();
            let r = s
                .create_debate_with(&new_debate(&id, Some(&format!("u{i}"))), &events)
                .await;
            (i, id, events, r)
        }));
    }
    let mut accepted: HashMap<String, (usize, Vec<NewEvent>)> = HashMap::new();
    for t in tasks {
        let (i, id, events, r) = t.await.unwrap();
        match r {
            Ok((record, stored)) => {
                assert_eq!(record.id, id);
                assert_eq!(record.owner_id.as_deref(), Some(format!("u{i}").as_str()));
                assert_eq!(
                    stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
                    (1..=events.len() as i64).collect::<Vec<_>>()
                );
                assert!(
                    accepted.insert(id.clone(), (i, events)).is_none(),
                    "{id} accepted twice"
                );
            }
            Err(StoreError::Conflict(_)) => {
                assert!(
                    matches!(id.as_str(), "cs-taken" | "cs-5" | "cs-6"),
                    "{id} refused as a conflict"
                );
            }
            Err(e) => panic!("{id}: {e:?}"),
        }
    }
    // 120 asks: 12 for the taken id, 4 more for cs-5 and cs-6, 104 distinct new ids, each
    // accepted once; the taken one never.
    assert_eq!(accepted.len(), 104);
    assert!(!accepted.contains_key("cs-taken"));
    assert_eq!(
        s.get_debate("cs-taken")
            .await
            .unwrap()
            .unwrap()
            .owner_id
            .as_deref(),
        Some("first")
    );
    for (id, (i, events)) in &accepted {
        let record = s.get_debate(id).await.unwrap().unwrap();
        assert_eq!(record.owner_id, Some(format!("u{i}")), "{id}");
        assert_eq!(record.status, DebateStatus::Queued);
        let log = s.events_since(id, 0, 100).await.unwrap();
        assert_eq!(
            log.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
            events.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
            "{id}: its own events"
        );
        assert_eq!(s.last_seq(id).await.unwrap(), events.len() as i64);
    }
}

/// Many debates ending at once (written together on SQLite): each end gets its own answer.
/// Held debates end with their status, result and last event after their own log; a stale
/// lease is fenced, an unknown debate is not found, and a debate ended twice at once ends
/// once (the other is fenced, its lease gone with the first).
async fn concurrent_finishes_each_get_their_own_answer(s: &DynStore) {
    let n = 90usize;
    for i in 0..n {
        s.create_debate_with(&new_debate(&format!("cf-{i:02}"), None), &[event(i)])
            .await
            .unwrap();
    }
    let claims = s.claim_debates("a", n as u32, TTL).await.unwrap();
    assert_eq!(claims.len(), n);
    let mut tasks = Vec::new();
    for i in 0..n + 3 {
        let s = s.clone();
        let (id, lease) = match i {
            // cf-00 ended twice at once.
            _ if i == n => ("cf-00".to_owned(), Some(lease_of(&claims, "cf-00"))),
            _ if i == n + 1 => ("cf-missing".to_owned(), None),
            _ if i == n + 2 => ("cf-missing-2".to_owned(), Some(lease_of(&claims, "cf-01"))),
            _ => {
                let id = format!("cf-{i:02}");
                let mut lease = lease_of(&claims, &id);
                // Every seventh holds a stale generation.
                if i % 7 == 6 {
                    lease.generation -= 1;
                }
                (id, Some(lease))
            }
        };
        tasks.push(tokio::spawn(async move {
            let update = DebateUpdate {
                status: Some(if i % 2 == 0 {
                    DebateStatus::Completed
                } else {
                    DebateStatus::NoConsensus
                }),
                rounds_used: Some((i % 4) as i32),
                result: Some(json!({"i": i})),
                error: (i % 5 == 0).then(|| format!("note {i}")),
                finished_at: Some(Utc::now()),
                ..DebateUpdate::default()
            };
            let r = s
                .finish_debate(&id, lease.as_ref(), &update, &event(1000 + i))
                .await;
            (i, id, r)
        }));
    }
    let mut ended_twice = Vec::new();
    for t in tasks {
        let (i, id, r) = t.await.unwrap();
        match (i, r) {
            (i, r) if id == "cf-00" => ended_twice.push((i, r.is_ok())),
            (i, r) if i > n => assert!(matches!(r, Err(StoreError::NotFound(_))), "{id}: {r:?}"),
            (i, r) if i % 7 == 6 => assert!(matches!(r, Err(StoreError::Fenced(_))), "{id}: {r:?}"),
            (i, Ok((record, end))) => {
                assert_eq!(record.id, id);
                let want = if i % 2 == 0 {
                    DebateStatus::Completed
                } else {
                    DebateStatus::NoConsensus
                };
                assert_eq!(record.status, want, "{id}");
                assert_eq!(record.rounds_used, (i % 4) as i32, "{id}");
                assert_eq!(record.result, Some(json!({"i": i})), "{id}");
                assert_eq!(
                    record.error,
                    (i % 5 == 0).then(|| format!("note {i}")),
                    "{id}"
                );
                assert!(record.finished_at.is_some(), "{id}");
                assert_eq!(
                    (end.seq, end.data.clone()),
                    (2, event(1000 + i).data),
                    "{id}"
                );
                let log = s.events_since(&id, 0, 10).await.unwrap();
                assert_eq!(
                    log.iter()
                        .map(|e| (e.seq, e.data.clone()))
                        .collect::<Vec<_>>(),
                    [(1, event(i).data), (2, event(1000 + i).data)],
                    "{id}"
                );
            }
            (i, Err(e)) => panic!("cf-{i:02}: {e:?}"),
        }
    }
    assert_eq!(
        ended_twice.iter().filter(|(_, ok)| *ok).count(),
        1,
        "cf-00 ends once: {ended_twice:?}"
    );
    assert_eq!(s.last_seq("cf-00").await.unwrap(), 2);
    // The fenced ones are untouched: still running, their logs as they were.
    for i in (0..n).filter(|i| i % 7 == 6) {
        let id = format!("cf-{i:02}");
        assert_eq!(
            s.get_debate(&id).await.unwrap().unwrap().status,
            DebateStatus::Running
        );
        assert_eq!(s.last_seq(&id).await.unwrap(), 1);
    }
    // Every lease the ends dropped is gone; the fenced debates still hold theirs.
    let renewed = s.renew_leases("a", TTL).await.unwrap();
    assert_eq!(renewed.len(), (0..n).filter(|i| i % 7 == 6).count());
}

/// Callers that stop waiting mid-write (a dropped request, a debate cancelled while its end
/// is written) cost the others nothing: on SQLite one caller may be writing everyone's
/// group, and every caller still waiting gets its answer, and every end lands once.
async fn callers_that_stop_waiting_cost_the_others_nothing(s: &DynStore) {
    let n = 60usize;
    for i in 0..n {
        s.create_debate(&new_debate(&format!("sw-{i:02}"), None))
            .await
            .unwrap();
    }
    let claims = s.claim_debates("a", n as u32, TTL).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = s.clone();
        let id = format!("sw-{i:02}");
        let lease = lease_of(&claims, &id);
        tasks.push(tokio::spawn(async move {
            let update = DebateUpdate {
                status: Some(DebateStatus::Completed),
                finished_at: Some(Utc::now()),
                ..DebateUpdate::default()
            };
            s.finish_debate(&id, Some(&lease), &update, &ev("debate_end"))
                .await
        }));
    }
    // Every third caller stops waiting as soon as it has started.
    tokio::task::yield_now().await;
    for (i, t) in tasks.iter().enumerate() {
        if i % 3 == 0 {
            t.abort();
        }
    }
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(r) => {
                let (record, end) = r.unwrap_or_else(|e| panic!("sw-{i:02}: {e:?}"));
                assert_eq!(record.status, DebateStatus::Completed);
                assert_eq!(end.seq, 1);
            }
            Err(e) => assert!(e.is_cancelled() && i % 3 == 0, "sw-{i:02}: {e:?}"),
        }
    }
    // The store keeps working, and no end landed twice or half.
    s.create_debate(&new_debate("sw-after", None))
        .await
        .unwrap();
    for i in 0..n {
        let id = format!("sw-{i:02}");
        let seq = s.last_seq(&id).await.unwrap();
        let status = s.get_debate(&id).await.unwrap().unwrap().status;
        match seq {
            1 => assert_eq!(status, DebateStatus::Completed, "{id}"),
            0 => assert!(i % 3 == 0 && status == DebateStatus::Running, "{id}"),
            _ => panic!("{id}: last_seq {seq}"),
        }
    }
}

async fn claiming_queued_debates_leaves_expired_leases_for_the_full_claim(s: &DynStore) {
    // o1 runs on "a" and is then orphaned (a's leases expire); q1 and q2 are queued after.
    s.create_debate(&new_debate("o1", None)).await.unwrap();
    assert_eq!(
        s.claim_debates("a", 1, TTL).await.unwrap()[0].record.id,
        "o1"
    );
    for id in ["q1", "q2"] {
        tokio::time::sleep(Duration::from_millis(2)).await;
        s.create_debate(&new_debate(id, None)).await.unwrap();
    }
    s.expire_leases_of("a").await.unwrap();
    let queued = s.claim_queued("b", 10, TTL).await.unwrap();
    assert_eq!(
        ids_of(&queued),
        ["q1", "q2"],
        "only queued debates, oldest first"
    );
    for c in &queued {
        assert_eq!(c.previous_status, DebateStatus::Queued);
        assert_eq!(c.lease.owner, "b");
        assert_eq!(c.record.status, DebateStatus::Running);
    }
    assert!(s.claim_queued("c", 10, TTL).await.unwrap().is_empty());
    // The full claim still finds the orphan, as a resume by a new owner.
    let orphan = s.claim_debates("c", 10, TTL).await.unwrap();
    assert_eq!(ids_of(&orphan), ["o1"]);
    assert_eq!(orphan[0].previous_status, DebateStatus::Running);
    assert_eq!(orphan[0].previous_owner.as_deref(), Some("a"));
    assert_eq!(orphan[0].lease.generation, 2);
}

/// The lease `claims` took on debate `id`.
fn lease_of(claims: &[store::ClaimedDebate], id: &str) -> Lease {
    claims
        .iter()
        .find(|c| c.record.id == id)
        .unwrap_or_else(|| panic!("{id} was claimed"))
        .lease
        .clone()
}

fn ids_of(claims: &[store::ClaimedDebate]) -> Vec<&str> {
    claims.iter().map(|c| c.record.id.as_str()).collect()
}

async fn grouped_steps_each_get_their_own_outcome(s: &DynStore) {
    for id in ["g1", "g2", "g3", "g4"] {
        s.create_debate(&new_debate(id, None)).await.unwrap();
    }
    let claims = s.claim_debates("a", 4, TTL).await.unwrap();
    let lease = |id: &str| lease_of(&claims, id);
    // g1 has a log already; g3 is taken over by another instance.
    s.append_step("g1", Some(&lease("g1")), &[ev("debate_start")], &[])
        .await
        .unwrap();
    s.release_lease("g3", &lease("g3")).await.unwrap();
    let taken = s.claim_debates("b", 1, TTL).await.unwrap().remove(0);
    assert_eq!(taken.record.id, "g3");

    let g1 = step(
        "g1",
        Some(&lease("g1")),
        vec![
            event(1),
            NewEvent {
                round: Some(2),
                ..ev("critique")
            },
        ],
        vec![usage_row("g1", 0.25), usage_row("g1", 0.5)],
    );
    let g2 = step(
        "g2",
        Some(&lease("g2")),
        vec![event(2)],
        vec![usage_row("g2", 1.0)],
    );
    let g3 = step(
        "g3",
        Some(&lease("g3")),
        vec![ev("vote")],
        vec![usage_row("g3", 9.0)],
    );
    let missing = step("nope", Some(&lease("g1")), vec![ev("vote")], vec![]);
    let empty = step("g4", Some(&lease("g4")), vec![], vec![usage_row("g4", 3.0)]);
    let unfenced = step("g4", None, vec![ev("intervention")], vec![]);
    let results = s
        .append_steps(&[&g1, &g2, &g3, &missing, &empty])
        .await
        .expect("the group as a whole is written");
    assert_eq!(results.len(), 5);
    let seqs = |r: &Result<Vec<store::StoredEvent>, StoreError>| -> Vec<i64> {
        r.as_ref().unwrap().iter().map(|e| e.seq).collect()
    };
    assert_eq!(seqs(&results[0]), [2, 3], "numbered after g1's log");
    assert_eq!(seqs(&results[1]), [1]);
    assert!(
        matches!(results[2], Err(StoreError::Fenced(_))),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Err(StoreError::NotFound(_))),
        "{:?}",
        results[3]
    );
    assert!(seqs(&results[4]).is_empty());

    // What each step wrote is its own, and what the refused ones carried is nowhere.
    let g1_log = s.events_since("g1", 0, 100).await.unwrap();
    assert_eq!(
        g1_log
            .iter()
            .map(|e| (e.seq, e.kind.as_str(), e.round))
            .collect::<Vec<_>>(),
        [
            (1, "debate_start", None),
            (2, "agent_message", Some(1)),
            (3, "critique", Some(2))
        ]
    );
    assert_eq!(g1_log[1].data, event(1).data);
    assert_eq!(g1_log[1].agent, event(1).agent);
    assert_eq!(
        s.events_since("g2", 0, 100).await.unwrap()[0].data,
        event(2).data
    );
    assert_eq!(s.last_seq("g3").await.unwrap(), 0);
    assert_eq!(s.last_seq("g4").await.unwrap(), 0);
    assert!((s.debate_cost("g1").await.unwrap() - 0.75).abs() < 1e-9);
    assert!((s.debate_cost("g2").await.unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(s.debate_cost("g3").await.unwrap(), 0.0);
    assert_eq!(
        s.debate_cost("g4").await.unwrap(),
        0.0,
        "an empty step writes no usage"
    );

    // The next group continues each log; an unfenced step (a moderator's note) lands too.
    let g1 = step("g1", Some(&lease("g1")), vec![ev("vote")], vec![]);
    let g3 = step(
        "g3",
        Some(&taken.lease),
        vec![ev("vote"), ev("vote")],
        vec![],
    );
    let results = s.append_steps(&[&g3, &unfenced, &g1]).await.unwrap();
    assert_eq!(seqs(&results[0]), [1, 2]);
    assert_eq!(seqs(&results[1]), [1]);
    assert_eq!(seqs(&results[2]), [4]);
    for (id, last) in [("g1", 4), ("g2", 1), ("g3", 2), ("g4", 1)] {
        let log = s.events_since(id, 0, 100).await.unwrap();
        assert_eq!(
            log.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>(),
            "{id}"
        );
        assert_eq!(s.last_seq(id).await.unwrap(), last, "{id}");
    }
    // Renewal still sees (and extends) exactly the leases "a" holds after grouped writes.
    let mut held: Vec<String> = s
        .renew_leases("a", TTL)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.debate_id)
        .collect();
    held.sort();
    assert_eq!(held, ["g1", "g2", "g4"]);
}

async fn the_group_commit_keeps_every_debates_log_whole_and_in_order(s: &DynStore) {
    const DEBATES: usize = 12;
    const STEPS: usize = 15;
    for d in 0..DEBATES {
        s.create_debate(&new_debate(&format!("gc{d}"), None))
            .await
            .unwrap();
    }
    let claims = s.claim_debates("a", DEBATES as u32, TTL).await.unwrap();
    assert_eq!(claims.len(), DEBATES);
    let group = std::sync::Arc::new(GroupCommit::new(s.clone(), 2));
    let mut tasks = Vec::new();
    for claim in claims {
        let group = group.clone();
        // One writer per debate appends its steps in order, as a debate's recorder does.
        tasks.push(tokio::spawn(async move {
            let id = claim.record.id.clone();
            for i in 0..STEPS {
                let events = (0..=i % 3).map(|j| event(i * 10 + j)).collect();
                let stored = group
                    .append(std::sync::Arc::new(step(
                        &id,
                        Some(&claim.lease),
                        events,
                        vec![usage_row(&id, 0.5)],
                    )))
                    .await
                    .unwrap();
                assert_eq!(stored.len(), i % 3 + 1);
            }
            id
        }));
    }
    // Two steps of one debate in the queue at once still both land, one after the other.
    s.create_debate(&new_debate("gc-twice", None))
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        group.append(std::sync::Arc::new(step(
            "gc-twice",
            None,
            vec![event(1), event(2)],
            vec![]
        ))),
        group.append(std::sync::Arc::new(step(
            "gc-twice",
            None,
            vec![event(3)],
            vec![]
        ))),
    );
    let mut twice: Vec<i64> = a
        .unwrap()
        .iter()
        .chain(&b.unwrap())
        .map(|e| e.seq)
        .collect();
    twice.sort_unstable();
    assert_eq!(twice, [1, 2, 3]);
    // A step whose lease is gone is refused without costing the others anything.
    let fenced = group
        .append(std::sync::Arc::new(step(
            "gc0",
            Some(&Lease {
                owner: "a".into(),
                generation: 99,
            }),
            vec![ev("vote")],
            vec![usage_row("gc0", 100.0)],
        )))
        .await
        .unwrap_err();
    assert!(matches!(fenced, StoreError::Fenced(_)), "{fenced:?}");
    for task in tasks {
        let id = task.await.unwrap();
        let log = s.events_since(&id, 0, 1000).await.unwrap();
        let expected: Vec<serde_json::Value> = (0..STEPS)
            .flat_map(|i| (0..=i % 3).map(move |j| event(i * 10 + j).data))
            .collect();
        assert_eq!(
            log.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=expected.len() as i64).collect::<Vec<_>>(),
            "{id}: every seq once, no gap"
        );
        assert_eq!(
            log.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
            expected,
            "{id}: in order"
        );
        assert!(
            (s.debate_cost(&id).await.unwrap() - 0.5 * STEPS as f64).abs() < 1e-9,
            "{id}"
        );
    }
}

/// Groups of 1 to 7 steps, and one larger than a statement's rows (SQLite writes a group in
/// statements of up to 1,024 rows, padded to a power of two): every event and usage row
/// lands once, numbered in order, and nothing else is written.
async fn groups_of_every_size_land_whole(s: &DynStore) {
    for d in 0..7 {
        s.create_debate(&new_debate(&format!("sz{d}"), None))
            .await
            .unwrap();
    }
    let claims = s.claim_debates("a", 7, TTL).await.unwrap();
    let lease = |id: &str| lease_of(&claims, id);
    // Events and usage rows each debate should hold, in order.
    let mut logs: Vec<Vec<serde_json::Value>> = vec![Vec::new(); 7];
    let mut costs = [0.0f64; 7];
    let mut next = 0;
    for size in 1..=7 {
        let steps: Vec<StepWrite> = (0..size)
            .map(|d| {
                let id = format!("sz{d}");
                // 1 to 3 events and 0 to 2 usage rows, varying with the group and the debate.
                let events: Vec<NewEvent> = (0..=(size + d) % 3)
                    .map(|_| {
                        next += 1;
                        event(next)
                    })
                    .collect();
                logs[d].extend(events.iter().map(|e| e.data.clone()));
                let usage: Vec<NewUsage> = (0..(size * d) % 3)
                    .map(|u| usage_row(&id, 0.125 * (u + 1) as f64))
                    .collect();
                costs[d] += usage.iter().map(|u| u.cost_usd).sum::<f64>();
                step(&id, Some(&lease(&id)), events, usage)
            })
            .collect();
        let refs: Vec<&StepWrite> = steps.iter().collect();
        let results = s.append_steps(&refs).await.unwrap();
        for (d, r) in results.iter().enumerate() {
            let stored = r.as_ref().unwrap();
            let end = logs[d].len() as i64;
            assert_eq!(
                stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
                (end - stored.len() as i64 + 1..=end).collect::<Vec<_>>(),
                "group of {size}, debate sz{d}"
            );
        }
    }
    // One step of 1,100 events and 1,030 usage rows beside two small ones.
    let big: Vec<NewEvent> = (0..1_100).map(|i| event(10_000 + i)).collect();
    logs[0].extend(big.iter().map(|e| e.data.clone()));
    let big_usage: Vec<NewUsage> = (0..1_030).map(|_| usage_row("sz0", 0.001)).collect();
    costs[0] += 1_030.0 * 0.001;
    logs[1].push(event(20_000).data);
    logs[2].extend([event(20_001).data, event(20_002).data]);
    let steps = [
        step("sz1", Some(&lease("sz1")), vec![event(20_000)], vec![]),
        step("sz0", Some(&lease("sz0")), big, big_usage),
        step(
            "sz2",
            Some(&lease("sz2")),
            vec![event(20_001), event(20_002)],
            vec![],
        ),
    ];
    let results = s
        .append_steps(&steps.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(results[1].as_ref().unwrap().len(), 1_100);
    for d in 0..7 {
        let id = format!("sz{d}");
        let log = s.events_since(&id, 0, 5_000).await.unwrap();
        assert_eq!(
            log.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=logs[d].len() as i64).collect::<Vec<_>>(),
            "{id}: every seq once, no gap"
        );
        assert_eq!(
            log.into_iter().map(|e| e.data).collect::<Vec<_>>(),
            logs[d],
            "{id}: its own events, in order"
        );
        assert_eq!(s.last_seq(&id).await.unwrap(), logs[d].len() as i64);
        assert!(
            (s.debate_cost(&id).await.unwrap() - costs[d]).abs() < 1e-9,
            "{id}: cost {} against {}",
            s.debate_cost(&id).await.unwrap(),
            costs[d]
        );
    }
}

async fn finish_writes_status_and_end_together(s: &DynStore) {
    s.create_debate(&new_debate("e1", None)).await.unwrap();
    let claim = s.claim_debates("a", 1, TTL).await.unwrap().remove(0);
    let (record, end) = s
        .finish_debate(
            "e1",
            Some(&claim.lease),
            &DebateUpdate {
                status: Some(DebateStatus::NoConsensus),
                rounds_used: Some(2),
                finished_at: Some(Utc::now()),
                ..DebateUpdate::default()
            },
            &ev("debate_end"),
        )
        .await
        .unwrap();
    assert_eq!(record.status, DebateStatus::NoConsensus);
    assert_eq!(end.seq, 1);
    assert_eq!(end.kind, "debate_end");
    // The lease is gone with the finish: nothing to renew, nothing to claim.
    assert!(s.renew_leases("a", TTL).await.unwrap().is_empty());
    assert!(s.claim_debates("b", 5, TTL).await.unwrap().is_empty());
    assert!(s.active_debates().await.unwrap().is_empty());

    // A queued debate ends without a claim, unless a claim wins the race.
    s.create_debate(&new_debate("e2", None)).await.unwrap();
    let update = DebateUpdate {
        status: Some(DebateStatus::Cancelled),
        error: Some("cancelled before it started".into()),
        ..DebateUpdate::default()
    };
    let (cancelled, end) = s
        .finish_queued("e2", &update, &ev("debate_end"))
        .await
        .unwrap()
        .expect("still queued");
    assert_eq!(cancelled.status, DebateStatus::Cancelled);
    assert_eq!(end.seq, 1);
    s.create_debate(&new_debate("e3", None)).await.unwrap();
    s.claim_debates("a", 1, TTL).await.unwrap();
    assert!(
        s.finish_queued("e3", &update, &ev("debate_end"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.last_seq("e3").await.unwrap(), 0);
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
                status: Some("completed".parse().unwrap()),
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
                status: Some("running".parse().unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        running,
        DebateRecord {
            status: "running".parse().unwrap(),
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
                status: Some("running".parse().unwrap()),
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
                status: Some("running".parse().unwrap()),
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
            status: Some("running".parse().unwrap()),
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
            status: Some("queued".parse().unwrap()),
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

/// Debate writes (events) and account writes (users, API keys, refresh tokens, login state,
/// usage) at the same time: on SQLite both kinds queue on the one writer connection, so none
/// fails with "database is locked" and nothing is lost.
async fn concurrent_writes_of_every_kind_all_land(s: &DynStore) {
    s.create_debate(&new_debate("d1", None)).await.unwrap();
    let mut debate_writers = Vec::new();
    for t in 0..6 {
        let s = s.clone();
        debate_writers.push(tokio::spawn(async move {
            for i in 0..20 {
                s.append_event("d1", &event(t * 100 + i)).await.unwrap();
            }
        }));
    }
    let mut account_writers = Vec::new();
    for u in 0..6 {
        let s = s.clone();
        account_writers.push(tokio::spawn(async move {
            let user_id = format!("u{u}");
            s.create_user(&NewUser {
                id: user_id.clone(),
                email: format!("writer{u}@example.com"),
                password_hash: "hash".into(),
                role: "member".into(),
            })
            .await
            .unwrap();
            for k in 0..3 {
                let key = s
                    .replace_api_key(
                        &user_id,
                        &format!("k{u}-{k}"),
                        &format!("h{u}-{k}"),
                        "ara_x",
                    )
                    .await
                    .unwrap();
                s.touch_api_key(&key.id, Utc::now()).await.unwrap();
            }
            let token = RefreshTokenRecord {
                token_hash: format!("rt{u}"),
                user_id: user_id.clone(),
                family_id: format!("fam{u}"),
                expires_at: Utc::now() + chrono::Duration::hours(1),
                used: false,
                revoked: false,
            };
            s.insert_refresh_token(&token).await.unwrap();
            assert!(s.use_refresh_token(&token.token_hash).await.unwrap());
            s.set_login_state(&user_id, 2, None).await.unwrap();
            s.set_login_attempts(&format!("email{u}"), 1, None)
                .await
                .unwrap();
            for _ in 0..5 {
                s.record_usage(&NewUsage {
                    principal_id: user_id.clone(),
                    debate_id: Some("d1".into()),
                    agent: "demo".into(),
                    provider: "demo".into(),
                    model: "demo".into(),
                    input_tokens: 10,
                    output_tokens: 1,
                    estimated: false,
                    cost_usd: 0.0,
                })
                .await
                .unwrap();
            }
        }));
    }
    for task in debate_writers.into_iter().chain(account_writers) {
        task.await.unwrap();
    }

    let seqs: Vec<i64> = s
        .events_since("d1", 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=120).collect::<Vec<i64>>());
    let from = Utc::now() - chrono::Duration::hours(1);
    let to = Utc::now() + chrono::Duration::hours(1);
    for u in 0..6 {
        let user_id = format!("u{u}");
        let user = s.user_by_id(&user_id).await.unwrap().expect("user stored");
        assert_eq!(user.failed_logins, 2);
        let key = s
            .active_api_key(&user_id)
            .await
            .unwrap()
            .expect("active key");
        assert_eq!(
            key.id,
            format!("k{u}-2"),
            "the last replacement is the active key"
        );
        assert!(key.last_used_at.is_some());
        let token = s.refresh_token(&format!("rt{u}")).await.unwrap().unwrap();
        assert!(token.used);
        assert_eq!(s.login_attempts(&format!("email{u}")).await.unwrap().0, 1);
        let usage = s.usage_summary(&user_id, from, to).await.unwrap();
        assert_eq!(usage.lines.len(), 1);
        assert_eq!((usage.lines[0].calls, usage.lines[0].input_tokens), (5, 50));
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
                status: Some(status.parse().unwrap()),
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

fn game(a: &str, b: &str, score_a: f64) -> MatchResult {
    MatchResult {
        a: a.into(),
        b: b.into(),
        score_a,
    }
}

/// (agent, rating, games, wins, losses, draws) of a leaderboard, for compact assertions.
fn board(ratings: &[Rating]) -> Vec<(String, f64, i64, i64, i64, i64)> {
    ratings
        .iter()
        .map(|r| {
            (
                r.agent.clone(),
                r.rating,
                r.games,
                r.wins,
                r.losses,
                r.draws,
            )
        })
        .collect()
}

fn row(
    agent: &str,
    rating: f64,
    games: i64,
    w: i64,
    l: i64,
    d: i64,
) -> (String, f64, i64, i64, i64, i64) {
    (agent.into(), rating, games, w, l, d)
}

/// Many debates rated at once (together, on SQLite): each is rated exactly once, every game
/// is counted for both its agents under every scope, and no rating point is lost or made
/// (Elo is zero-sum, so each scope's ratings still sum to 1,500 per agent).
async fn concurrent_ratings_lose_no_game(s: &DynStore) {
    let agents = ["ra", "rb", "rc", "rd"];
    let n = 80usize;
    let mut tasks = Vec::new();
    for i in 0..n + 10 {
        let s = s.clone();
        // The last ten ask again for debates 0..10.
        let debate = i % n;
        tasks.push(tokio::spawn(async move {
            let a = agents[debate % 4];
            let b = agents[(debate + 1) % 4];
            let c = agents[(debate + 2) % 4];
            let matches = [
                game(a, b, [1.0, 0.5, 0.0][debate % 3]),
                game(b, c, [0.0, 1.0, 0.5][debate % 3]),
            ];
            let domain = debate.is_multiple_of(2).then_some("law");
            let fresh = s
                .apply_match_results(&format!("cr-{debate:02}"), domain, &matches)
                .await
                .unwrap();
            (debate, fresh)
        }));
    }
    let mut rated: HashMap<usize, usize> = HashMap::new();
    for t in tasks {
        let (debate, fresh) = t.await.unwrap();
        if fresh {
            *rated.entry(debate).or_default() += 1;
        }
    }
    assert_eq!(rated.len(), n, "every debate rated");
    assert!(rated.values().all(|&c| c == 1), "each once: {rated:?}");
    // Each debate: two games, one agent in both.
    let mut games: HashMap<(Option<&str>, &str), i64> = HashMap::new();
    for debate in 0..n {
        let players = [
            agents[debate % 4],
            agents[(debate + 1) % 4],
            agents[(debate + 1) % 4],
            agents[(debate + 2) % 4],
        ];
        for p in players {
            *games.entry((None, p)).or_default() += 1;
            if debate.is_multiple_of(2) {
                *games.entry((Some("law"), p)).or_default() += 1;
            }
        }
    }
    for scope in [None, Some("law")] {
        let board = s.ratings(scope, 0).await.unwrap();
        assert_eq!(board.len(), 4, "{scope:?}");
        for r in &board {
            assert_eq!(
                r.games,
                games[&(scope, r.agent.as_str())],
                "{scope:?} {}",
                r.agent
            );
            assert_eq!(r.wins + r.losses + r.draws, r.games);
        }
        let sum: f64 = board.iter().map(|r| r.rating).sum();
        assert!((sum - 4.0 * 1500.0).abs() < 1e-6, "{scope:?}: {sum}");
        let wins: i64 = board.iter().map(|r| r.wins).sum();
        let losses: i64 = board.iter().map(|r| r.losses).sum();
        assert_eq!(wins, losses, "{scope:?}");
    }
}

async fn first_win_moves_sixteen(s: &DynStore) {
    assert!(s.ratings(None, 0).await.unwrap().is_empty());
    let before = Utc::now() - chrono::Duration::seconds(1);
    assert!(
        s.apply_match_results("d1", None, &[game("alpha", "beta", 1.0)])
            .await
            .unwrap()
    );
    let overall = s.ratings(None, 0).await.unwrap();
    assert_eq!(
        board(&overall),
        [
            row("alpha", INITIAL_RATING + 16.0, 1, 1, 0, 0),
            row("beta", INITIAL_RATING - 16.0, 1, 0, 1, 0),
        ]
    );
    assert!(overall.iter().all(|r| r.domain.is_none()));
    assert!(overall.iter().all(|r| r.updated_at >= before));
    // The loser winning back: a second debate moves from the updated ratings.
    assert!(
        s.apply_match_results("d2", None, &[game("alpha", "beta", 0.0)])
            .await
            .unwrap()
    );
    let (a, b) = aragora::ratings::update(1516.0, 1484.0, 0.0, K_FACTOR);
    assert!(b - 1484.0 > 16.0, "an upset moves more than 16");
    assert_eq!(
        board(&s.ratings(None, 0).await.unwrap()),
        [row("beta", b, 2, 1, 1, 0), row("alpha", a, 2, 1, 1, 0)]
    );
}

async fn draws_are_counted(s: &DynStore) {
    // Newcomers drawing stay at 1500.
    s.apply_match_results("d1", None, &[game("alpha", "beta", 0.5)])
        .await
        .unwrap();
    assert_eq!(
        board(&s.ratings(None, 0).await.unwrap()),
        [
            row("alpha", 1500.0, 1, 0, 0, 1),
            row("beta", 1500.0, 1, 0, 0, 1),
        ]
    );
    // A draw against a weaker player costs rating; matches in one debate apply in order.
    s.apply_match_results(
        "d2",
        None,
        &[game("alpha", "gamma", 1.0), game("gamma", "beta", 0.5)],
    )
    .await
    .unwrap();
    let (alpha, gamma) = aragora::ratings::update(1500.0, 1500.0, 1.0, K_FACTOR);
    let (gamma, beta) = aragora::ratings::update(gamma, 1500.0, 0.5, K_FACTOR);
    assert!(
        beta < 1500.0 && gamma > 1484.0,
        "the stronger side of a draw loses points"
    );
    assert_eq!(
        board(&s.ratings(None, 0).await.unwrap()),
        [
            row("alpha", alpha, 2, 1, 0, 1),
            row("beta", beta, 2, 0, 0, 2),
            row("gamma", gamma, 2, 0, 1, 1),
        ]
    );
}

async fn domain_ratings_are_separate(s: &DynStore) {
    s.apply_match_results("d1", Some("math"), &[game("alpha", "beta", 1.0)])
        .await
        .unwrap();
    s.apply_match_results("d2", None, &[game("alpha", "beta", 0.0)])
        .await
        .unwrap();
    s.apply_match_results("d3", Some("law"), &[game("beta", "gamma", 0.5)])
        .await
        .unwrap();

    let math = s.ratings(Some("math"), 0).await.unwrap();
    assert_eq!(
        board(&math),
        [
            row("alpha", 1516.0, 1, 1, 0, 0),
            row("beta", 1484.0, 1, 0, 1, 0)
        ]
    );
    assert!(math.iter().all(|r| r.domain.as_deref() == Some("math")));

    let law = s.ratings(Some("law"), 0).await.unwrap();
    assert_eq!(
        board(&law),
        [
            row("beta", 1500.0, 1, 0, 0, 1),
            row("gamma", 1500.0, 1, 0, 0, 1)
        ]
    );

    // Overall saw all three debates, in order.
    let (alpha, beta) = aragora::ratings::update(1516.0, 1484.0, 0.0, K_FACTOR);
    let (beta, gamma) = aragora::ratings::update(beta, 1500.0, 0.5, K_FACTOR);
    let overall = s.ratings(None, 0).await.unwrap();
    assert_eq!(
        board(&overall),
        [
            row("beta", beta, 3, 1, 1, 1),
            row("gamma", gamma, 1, 0, 0, 1),
            row("alpha", alpha, 2, 1, 1, 0),
        ]
    );
    assert!(overall.iter().all(|r| r.domain.is_none()));
    // Some("") is the overall board, not a domain of its own.
    assert_eq!(s.ratings(Some(""), 0).await.unwrap(), overall);
    assert!(s.ratings(Some("poetry"), 0).await.unwrap().is_empty());
}

async fn rating_is_idempotent_per_debate(s: &DynStore) {
    let matches = [game("alpha", "beta", 1.0), game("beta", "gamma", 0.0)];
    assert!(
        s.apply_match_results("d1", Some("math"), &matches)
            .await
            .unwrap()
    );
    let overall = s.ratings(None, 0).await.unwrap();
    let math = s.ratings(Some("math"), 0).await.unwrap();
    // Replays — same or different matches, any domain — change nothing, timestamps included.
    assert!(
        !s.apply_match_results("d1", Some("math"), &matches)
            .await
            .unwrap()
    );
    assert!(
        !s.apply_match_results("d1", None, &[game("gamma", "delta", 1.0)])
            .await
            .unwrap()
    );
    assert!(!s.apply_match_results("d1", Some("law"), &[]).await.unwrap());
    assert_eq!(s.ratings(None, 0).await.unwrap(), overall);
    assert_eq!(s.ratings(Some("math"), 0).await.unwrap(), math);
    assert!(s.ratings(Some("law"), 0).await.unwrap().is_empty());

    // A debate with no matches is still marked rated.
    assert!(s.apply_match_results("d2", None, &[]).await.unwrap());
    assert!(
        !s.apply_match_results("d2", None, &[game("alpha", "beta", 1.0)])
            .await
            .unwrap()
    );
    assert_eq!(s.ratings(None, 0).await.unwrap(), overall);

    // Concurrent replays of one new debate: exactly one applies.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.apply_match_results("d3", None, &[game("delta", "alpha", 1.0)])
                .await
                .unwrap()
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += usize::from(t.await.unwrap());
    }
    assert_eq!(applied, 1);
    let delta = s.ratings(None, 0).await.unwrap();
    let delta = delta.iter().find(|r| r.agent == "delta").unwrap();
    assert_eq!((delta.games, delta.wins), (1, 1));
}

async fn invalid_matches_write_nothing(s: &DynStore) {
    for bad in [
        game("alpha", "alpha", 1.0),
        game("alpha", "beta", 1.5),
        game("alpha", "beta", -0.1),
        game("alpha", "beta", f64::NAN),
    ] {
        let err = s
            .apply_match_results("d1", None, &[game("alpha", "gamma", 1.0), bad.clone()])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Database(sqlx::Error::InvalidArgument(_))),
            "{bad:?}: {err:?}"
        );
    }
    assert!(s.ratings(None, 0).await.unwrap().is_empty());
    // The failed calls did not mark d1 rated.
    assert!(
        s.apply_match_results("d1", None, &[game("alpha", "gamma", 1.0)])
            .await
            .unwrap()
    );
}

async fn ratings_order_and_limit(s: &DynStore) {
    // Two equal pairs make ties at 1516 and 1484; mixed case checks byte order of names on
    // both backends ("Zed" < "alpha" < "zed").
    s.apply_match_results("d1", None, &[game("zed", "Zed", 1.0)])
        .await
        .unwrap();
    s.apply_match_results("d2", None, &[game("alpha", "mid", 1.0)])
        .await
        .unwrap();
    s.apply_match_results(
        "d3",
        None,
        &[game("top", "mid", 1.0), game("top", "Zed", 1.0)],
    )
    .await
    .unwrap();
    let all = s.ratings(None, 0).await.unwrap();
    let names: Vec<&str> = all.iter().map(|r| r.agent.as_str()).collect();
    assert_eq!(names, ["top", "alpha", "zed", "Zed", "mid"]);
    assert!(all.windows(2).all(|w| w[0].rating >= w[1].rating));
    assert_eq!(all[1].rating, all[2].rating, "a tie, broken by name");

    let top2 = s.ratings(None, 2).await.unwrap();
    assert_eq!(top2, all[..2].to_vec());
    assert_eq!(s.ratings(None, 1).await.unwrap(), all[..1].to_vec());

    // 0 means 50; anything above 500 is 500.
    let many: Vec<MatchResult> = (0..300)
        .map(|i| game(&format!("w{i:03}"), &format!("l{i:03}"), 1.0))
        .collect();
    s.apply_match_results("d4", Some("bulk"), &many)
        .await
        .unwrap();
    assert_eq!(s.ratings(Some("bulk"), 0).await.unwrap().len(), 50);
    let capped = s.ratings(Some("bulk"), 10_000).await.unwrap();
    assert_eq!(capped.len(), 500);
    assert_eq!(capped[0].agent, "w000");
    assert_eq!(capped[299].agent, "w299");
    assert_eq!(capped[300].agent, "l000");
    // 605 agents rated overall; the overall board is capped too.
    assert_eq!(s.ratings(None, 10_000).await.unwrap().len(), 500);
}

async fn concurrent_debates_lose_no_update(s: &DynStore) {
    let mut tasks = Vec::new();
    for i in 0..10 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.apply_match_results(&format!("d{i}"), Some("chess"), &[game("a", "b", 1.0)])
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap());
    }
    // Identical matches applied one after another give one deterministic result.
    let (mut a, mut b) = (INITIAL_RATING, INITIAL_RATING);
    for _ in 0..10 {
        (a, b) = aragora::ratings::update(a, b, 1.0, K_FACTOR);
    }
    let expected = [row("a", a, 10, 10, 0, 0), row("b", b, 10, 0, 10, 0)];
    assert_eq!(board(&s.ratings(None, 0).await.unwrap()), expected);
    assert_eq!(board(&s.ratings(Some("chess"), 0).await.unwrap()), expected);
}

async fn events_of_kinds_filters_orders_pages(s: &DynStore) {
    const KINDS: [&str; 5] = [
        "debate_started",
        "agent_message",
        "critique",
        "vote",
        "round_end",
    ];
    s.create_debate(&new_debate("d1", None)).await.unwrap();
    s.create_debate(&new_debate("d2", None)).await.unwrap();
    let mut appended = Vec::new();
    for i in 0..30 {
        let e = NewEvent {
            kind: KINDS[i % KINDS.len()].into(),
            ..event(i)
        };
        appended.push(s.append_event("d1", &e).await.unwrap());
        // Another debate's transcript interleaves and must not leak in.
        s.append_event("d2", &e).await.unwrap();
    }
    let transcript = ["agent_message", "critique", "vote"];
    let expected: Vec<_> = appended
        .iter()
        .filter(|e| transcript.contains(&e.kind.as_str()))
        .cloned()
        .collect();
    assert_eq!(expected.len(), 18);

    let got = s.events_of_kinds("d1", &transcript, 0, 0).await.unwrap();
    assert_eq!(got, expected);
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(got.iter().all(|e| e.debate_id == "d1"));

    // Paging walks the filtered sequence, not the raw log.
    let mut paged = Vec::new();
    for offset in (0..20).step_by(4) {
        let page = s
            .events_of_kinds("d1", &transcript, 4, offset)
            .await
            .unwrap();
        assert_eq!(
            page.len(),
            if offset < 16 { 4 } else { 2 },
            "offset {offset}"
        );
        paged.extend(page);
    }
    assert_eq!(paged, expected);
    assert!(
        s.events_of_kinds("d1", &transcript, 4, 18)
            .await
            .unwrap()
            .is_empty()
    );

    let votes = s.events_of_kinds("d1", &["vote"], 0, 0).await.unwrap();
    assert_eq!(
        votes.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [4, 9, 14, 19, 24, 29]
    );
    // Duplicated and unknown kinds are harmless; nothing matches an empty list.
    assert_eq!(
        s.events_of_kinds("d1", &["vote", "vote", "nope"], 0, 0)
            .await
            .unwrap(),
        votes
    );
    assert!(s.events_of_kinds("d1", &[], 0, 0).await.unwrap().is_empty());
    assert!(
        s.events_of_kinds("missing", &transcript, 0, 0)
            .await
            .unwrap()
            .is_empty()
    );
    // Kinds are bound, never spliced into SQL.
    assert!(
        s.events_of_kinds(
            "d1",
            &["vote') OR ('1'='1", "x'; DROP TABLE debate_events; --"],
            0,
            0
        )
        .await
        .unwrap()
        .is_empty()
    );
    assert_eq!(s.last_seq("d1").await.unwrap(), 30);

    // limit 0 means 100; larger limits return everything up to the cap.
    s.create_debate(&new_debate("d3", None)).await.unwrap();
    for i in 0..110 {
        s.append_event("d3", &event(i)).await.unwrap();
    }
    let first = s
        .events_of_kinds("d3", &["agent_message"], 0, 0)
        .await
        .unwrap();
    assert_eq!(first.len(), 100);
    assert_eq!(first.last().unwrap().seq, 100);
    let all = s
        .events_of_kinds("d3", &["agent_message"], 5000, 0)
        .await
        .unwrap();
    assert_eq!(all.len(), 110);
}

async fn count_debates_by_status_groups(s: &DynStore) {
    assert!(s.count_debates_by_status().await.unwrap().is_empty());
    create_many(s, "d", 6).await;
    for (id, status) in [
        ("d-00", "completed"),
        ("d-01", "running"),
        ("d-02", "completed"),
        ("d-03", "failed"),
    ] {
        s.update_debate(
            id,
            &DebateUpdate {
                status: Some(status.parse().unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let counts = s.count_debates_by_status().await.unwrap();
    assert_eq!(
        counts,
        [
            ("completed".to_string(), 2),
            ("failed".to_string(), 1),
            ("queued".to_string(), 2),
            ("running".to_string(), 1),
        ]
    );
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

/// A migration this binary does not know, as a newer binary would have recorded it.
const FOREIGN_MIGRATION: &str = "INSERT INTO _sqlx_migrations \
     (version, description, success, checksum, execution_time) \
     VALUES (99990101000000, 'from a newer binary', TRUE, X'00', 0)";

/// Migrations are additive, so a binary must still start (and migrate) against a schema a
/// newer binary has already moved ahead.
#[tokio::test]
async fn sqlite_migrate_tolerates_newer_schema() {
    let h = Harness::sqlite().await;
    let mut conn = sqlx::SqliteConnection::connect(&h.url).await.unwrap();
    sqlx::query(FOREIGN_MIGRATION)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    h.store
        .migrate()
        .await
        .expect("migrate against a newer schema");
    h.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_migrate_tolerates_newer_schema() {
    let h = Harness::postgres().await;
    let mut conn = PgConnection::connect(&h.url).await.unwrap();
    sqlx::query(&FOREIGN_MIGRATION.replace("X'00'", "'\\x00'::bytea"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    h.store
        .migrate()
        .await
        .expect("migrate against a newer schema");
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

fn user(id: &str, email: &str) -> NewUser {
    NewUser {
        id: id.into(),
        email: email.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        role: "member".into(),
    }
}

async fn users_round_trip_and_unique_email(s: &DynStore) {
    let created = s
        .create_user(&user("u1", "Mixed@Example.com"))
        .await
        .unwrap();
    assert_eq!(created.email, "mixed@example.com");
    let by_email = s.user_by_email("MIXED@example.com").await.unwrap().unwrap();
    assert_eq!(by_email, created);
    assert_eq!(s.user_by_id("u1").await.unwrap().unwrap(), created);
    assert!(s.user_by_id("nope").await.unwrap().is_none());
    assert!(matches!(
        s.create_user(&user("u2", "mixed@example.com")).await,
        Err(StoreError::Conflict(_))
    ));
    let until = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
    s.set_login_state("u1", 3, Some(until)).await.unwrap();
    let u = s.user_by_id("u1").await.unwrap().unwrap();
    assert_eq!((u.failed_logins, u.locked_until), (3, Some(until)));
    s.set_login_state("u1", 0, None).await.unwrap();
    let u = s.user_by_id("u1").await.unwrap().unwrap();
    assert_eq!((u.failed_logins, u.locked_until), (0, None));
}

async fn api_keys_replace_revoke_and_touch(s: &DynStore) {
    s.create_user(&user("k1", "k1@example.com")).await.unwrap();
    let first = s
        .replace_api_key("k1", "key-a", "hash-a", "ara_aaaaaaaa")
        .await
        .unwrap();
    assert_eq!(s.active_api_key("k1").await.unwrap().unwrap(), first);
    let second = s
        .replace_api_key("k1", "key-b", "hash-b", "ara_bbbbbbbb")
        .await
        .unwrap();
    // Only one active key: the first is revoked by the replacement.
    assert!(
        s.api_key_by_hash("hash-a")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    assert_eq!(s.active_api_key("k1").await.unwrap().unwrap().id, second.id);
    assert!(s.api_key_by_hash("missing").await.unwrap().is_none());

    let t0 = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    s.touch_api_key("key-b", t0).await.unwrap();
    s.touch_api_key("key-b", t0 + chrono::Duration::seconds(30))
        .await
        .unwrap();
    let k = s.api_key_by_hash("hash-b").await.unwrap().unwrap();
    assert_eq!(k.last_used_at, Some(t0), "at most one update a minute");
    s.touch_api_key("key-b", t0 + chrono::Duration::seconds(61))
        .await
        .unwrap();
    let k = s.api_key_by_hash("hash-b").await.unwrap().unwrap();
    assert_eq!(k.last_used_at, Some(t0 + chrono::Duration::seconds(61)));

    assert_eq!(s.revoke_api_keys("k1").await.unwrap(), 1);
    assert_eq!(s.revoke_api_keys("k1").await.unwrap(), 0);
    assert!(s.active_api_key("k1").await.unwrap().is_none());
    assert!(
        s.api_key_by_hash("hash-b")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
}

async fn refresh_tokens_spend_once_and_revoke_by_family(s: &DynStore) {
    s.create_user(&user("r1", "r1@example.com")).await.unwrap();
    let expires = Utc.with_ymd_and_hms(2031, 5, 6, 7, 8, 9).unwrap();
    for (hash, family) in [("t1", "fam"), ("t2", "fam"), ("t3", "other")] {
        s.insert_refresh_token(&RefreshTokenRecord {
            token_hash: hash.into(),
            user_id: "r1".into(),
            family_id: family.into(),
            expires_at: expires,
            used: false,
            revoked: false,
        })
        .await
        .unwrap();
    }
    let t1 = s.refresh_token("t1").await.unwrap().unwrap();
    assert_eq!(
        (t1.family_id.as_str(), t1.expires_at, t1.used, t1.revoked),
        ("fam", expires, false, false)
    );
    assert!(s.use_refresh_token("t1").await.unwrap());
    assert!(!s.use_refresh_token("t1").await.unwrap(), "spent once only");
    assert!(s.refresh_token("t1").await.unwrap().unwrap().used);
    assert_eq!(s.revoke_refresh_family("fam").await.unwrap(), 2);
    assert!(s.refresh_token("t2").await.unwrap().unwrap().revoked);
    assert!(
        !s.use_refresh_token("t2").await.unwrap(),
        "revoked tokens cannot be spent"
    );
    assert!(
        !s.refresh_token("t3").await.unwrap().unwrap().revoked,
        "other families untouched"
    );
    assert!(s.refresh_token("missing").await.unwrap().is_none());
}

async fn usage_sums_by_provider_and_period(s: &DynStore) {
    let row = |principal: &str,
               debate: &str,
               provider: &str,
               model: &str,
               i: i64,
               o: i64,
               est: bool,
               cost: f64| NewUsage {
        principal_id: principal.into(),
        debate_id: Some(debate.into()),
        agent: format!("{provider}-agent"),
        provider: provider.into(),
        model: model.into(),
        input_tokens: i,
        output_tokens: o,
        estimated: est,
        cost_usd: cost,
    };
    s.record_usage(&row("p1", "d1", "openai", "gpt-4o", 100, 10, false, 0.5))
        .await
        .unwrap();
    s.record_usage(&row("p1", "d1", "openai", "gpt-4o", 200, 20, true, 0.25))
        .await
        .unwrap();
    s.record_usage(&row("p1", "d2", "anthropic", "claude", 1, 2, false, 1.0))
        .await
        .unwrap();
    s.record_usage(&row("p2", "d3", "openai", "gpt-4o", 999, 999, false, 9.0))
        .await
        .unwrap();
    let from = Utc::now() - chrono::Duration::hours(1);
    let to = Utc::now() + chrono::Duration::hours(1);
    let sum = s.usage_summary("p1", from, to).await.unwrap();
    assert_eq!(sum.debates, 2);
    assert_eq!(sum.lines.len(), 2);
    let (a, o) = (&sum.lines[0], &sum.lines[1]);
    assert_eq!(
        (
            a.provider.as_str(),
            a.calls,
            a.input_tokens,
            a.output_tokens,
            a.estimated
        ),
        ("anthropic", 1, 1, 2, false)
    );
    assert_eq!(
        (
            o.provider.as_str(),
            o.model.as_str(),
            o.calls,
            o.input_tokens,
            o.output_tokens,
            o.estimated
        ),
        ("openai", "gpt-4o", 2, 300, 30, true)
    );
    assert!((o.cost_usd - 0.75).abs() < 1e-9);
    let empty = s
        .usage_summary("p1", from - chrono::Duration::days(2), from)
        .await
        .unwrap();
    assert_eq!((empty.debates, empty.lines.len()), (0, 0));
    assert_eq!(
        s.usage_summary("nobody", from, to).await.unwrap().debates,
        0
    );
}

fn receipt(id: &str, debate: &str, owner: Option<&str>, second: u32) -> store::NewReceipt {
    store::NewReceipt {
        receipt_id: id.into(),
        debate_id: debate.into(),
        owner_id: owner.map(str::to_owned),
        verdict: "consensus".into(),
        key_id: Some("ed25519-0123456789abcdef".into()),
        chain_head: "ab".repeat(32),
        event_count: 7,
        issued_at: Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, second).unwrap(),
        receipt: format!("{{\"receipt_id\":\"{id}\"}}"),
        odr_v01: "{\"odr_version\":\"0.1\"}".into(),
        odr_v02: "{\"odr_version\":\"0.2\"}".into(),
    }
}

/// Receipts stored as one group: each gets its own answer, a debate that has a receipt
/// keeps it (even against a second one in the same group), and every stored one is linked
/// from its debate. 300 of them cross SQLite's 256 rows a statement.
async fn receipts_stored_together_each_get_their_own_answer(s: &DynStore) {
    assert!(s.insert_receipts(&[]).await.unwrap().is_empty());
    let n = 300;
    for i in 0..n {
        let owner = (i % 2 == 0).then_some("alice");
        s.create_debate(&new_debate(&format!("g-{i:03}"), owner))
            .await
            .unwrap();
    }
    // g-000 has its receipt already.
    assert!(
        s.insert_receipt(&receipt("first", "g-000", Some("alice"), 0))
            .await
            .unwrap()
    );
    let mut group: Vec<store::NewReceipt> = (0..n)
        .map(|i| {
            let owner = (i % 2 == 0).then_some("alice");
            receipt(
                &format!("r-{i:03}"),
                &format!("g-{i:03}"),
                owner,
                (i % 60) as u32,
            )
        })
        .collect();
    // A second receipt for g-001 later in the same group.
    group.push(receipt("again", "g-001", None, 5));
    let stored = s.insert_receipts(&group).await.unwrap();
    assert_eq!(stored.len(), group.len());
    assert!(!stored[0], "g-000 keeps the receipt it had");
    assert!(
        stored[1..n].iter().all(|&s| s),
        "every other debate's is stored"
    );
    assert!(!stored[n], "g-001's second receipt is refused");
    assert_eq!(
        s.receipt_of_debate("g-000")
            .await
            .unwrap()
            .unwrap()
            .receipt_id,
        "first"
    );
    assert!(s.get_receipt("r-000").await.unwrap().is_none());
    assert!(s.get_receipt("again").await.unwrap().is_none());
    for i in [1, 2, 255, 256, 257, 299] {
        let id = format!("g-{i:03}");
        let r = s.receipt_of_debate(&id).await.unwrap().unwrap();
        assert_eq!(r.receipt_id, format!("r-{i:03}"));
        assert_eq!(r.debate_id, id);
        assert_eq!(r.owner_id.as_deref(), (i % 2 == 0).then_some("alice"));
        assert_eq!(r.receipt, format!("{{\"receipt_id\":\"r-{i:03}\"}}"));
        assert_eq!(
            r.issued_at,
            Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, (i % 60) as u32)
                .unwrap()
        );
        assert_eq!(
            s.get_debate(&id).await.unwrap().unwrap().receipt_id,
            Some(format!("r-{i:03}"))
        );
    }
    let (_, total) = s.list_receipts(None, 1, 0).await.unwrap();
    assert_eq!(total, n as i64);
    // Stored once: the same group again stores nothing.
    let again = s.insert_receipts(&group).await.unwrap();
    assert!(again.iter().all(|&s| !s));
}

async fn receipts_are_stored_once_and_listed_by_owner(s: &DynStore) {
    for (id, owner) in [
        ("d1", Some("alice")),
        ("d2", Some("bob")),
        ("d3", Some("alice")),
    ] {
        s.create_debate(&NewDebate {
            id: id.into(),
            task: "t".into(),
            agents: vec!["demo".into(), "demo".into()],
            rounds: 1,
            consensus: "majority".into(),
            owner_id: owner.map(str::to_owned),
            correlation_id: None,
            options: json!({}),
        })
        .await
        .unwrap();
        s.update_debate(
            id,
            &DebateUpdate {
                status: Some(DebateStatus::Completed),
                finished_at: Some(Utc::now()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(s.debates_awaiting_receipt(10).await.unwrap().len(), 3);
    assert!(
        s.insert_receipt(&receipt("r1", "d1", Some("alice"), 1))
            .await
            .unwrap()
    );
    // A second receipt for the same debate (another instance raced) writes nothing.
    assert!(
        !s.insert_receipt(&receipt("r1b", "d1", Some("alice"), 2))
            .await
            .unwrap()
    );
    assert!(s.get_receipt("r1b").await.unwrap().is_none());
    let stored = s.receipt_of_debate("d1").await.unwrap().unwrap();
    assert_eq!(stored.receipt_id, "r1");
    assert_eq!(stored.odr_v02, "{\"odr_version\":\"0.2\"}");
    assert_eq!(
        stored.issued_at,
        Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 1).unwrap()
    );
    assert_eq!(
        s.get_debate("d1")
            .await
            .unwrap()
            .unwrap()
            .receipt_id
            .as_deref(),
        Some("r1")
    );
    assert_eq!(s.debates_awaiting_receipt(10).await.unwrap(), ["d2", "d3"]);
    assert!(
        s.insert_receipt(&receipt("r2", "d2", Some("bob"), 3))
            .await
            .unwrap()
    );
    assert!(
        s.insert_receipt(&receipt("r3", "d3", Some("alice"), 4))
            .await
            .unwrap()
    );
    assert!(s.debates_awaiting_receipt(10).await.unwrap().is_empty());

    let (all, total) = s.list_receipts(None, 10, 0).await.unwrap();
    assert_eq!(total, 3);
    let ids: Vec<&str> = all.iter().map(|r| r.receipt_id.as_str()).collect();
    assert_eq!(ids, ["r3", "r2", "r1"], "newest first");
    let (alice, total) = s.list_receipts(Some("alice"), 1, 1).await.unwrap();
    assert_eq!(total, 2);
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0].receipt_id, "r1");

    s.register_signing_key("ed25519-aaaa", "PEM A")
        .await
        .unwrap();
    s.register_signing_key("ed25519-aaaa", "PEM changed")
        .await
        .unwrap();
    assert_eq!(
        s.signing_key("ed25519-aaaa").await.unwrap().as_deref(),
        Some("PEM A"),
        "first registration kept"
    );
    assert!(s.signing_key("ed25519-none").await.unwrap().is_none());
}
