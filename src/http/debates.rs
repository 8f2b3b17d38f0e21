//! Debates API (README.md, "HTTP API"): create (202, queued), list with status filter and cursor or
//! offset paging, read one, its messages and its durable event log, cancel.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::IntoParams;
use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;
use crate::auth::Principal;
use crate::debate::manager::{CreateError, DebateRequest, SteerError};
use crate::error::{ApiError, ErrorBody};
use crate::store::{DebateQuery, DebateRecord, DebateStatus, StoreError, StoredEvent};
use crate::telemetry::correlation;

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .member(routes!(create_debate, list_debates))
        .member(routes!(list_active_debates))
        .member(routes!(get_debate))
        .member(routes!(list_messages))
        .member(routes!(list_events))
        .member(routes!(cancel_debate))
        .member(routes!(export_debate))
        .member(routes!(pause_debate))
        .member(routes!(resume_debate))
        .member(routes!(intervention_pause))
        .member(routes!(intervention_resume))
        .member(routes!(inject_intervention))
}

type Time = chrono::DateTime<chrono::Utc>;

/// The debate record as the API shows it. Fields in alphabetical order, as the API has
/// always written them; every field is present (null when unset).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DebateView {
    pub agents: Vec<String>,
    pub consensus: String,
    #[schema(value_type = Option<f64>)]
    pub consensus_threshold: Option<Value>,
    pub correlation_id: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Time,
    #[schema(value_type = Option<String>)]
    pub domain: Option<Value>,
    /// From start to finish, in seconds.
    pub duration_seconds: Option<f64>,
    pub error: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Time>,
    pub id: String,
    /// The instance running it (or that ran it).
    pub instance: Option<String>,
    #[schema(value_type = Option<String>)]
    pub judge: Option<Value>,
    /// As given at creation.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub receipt_id: Option<String>,
    /// The outcome: final answer, consensus, votes, usage.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub rounds: i32,
    pub rounds_used: i32,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Time>,
    pub status: DebateStatus,
    pub task: String,
    /// The result's `usage`.
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Value>,
}

pub fn debate_json(d: &DebateRecord) -> DebateView {
    let duration = match (d.started_at, d.finished_at) {
        (Some(s), Some(f)) => Some(((f - s).num_milliseconds() as f64) / 1000.0),
        _ => None,
    };
    let option = |name: &str| d.options.get(name).cloned();
    DebateView {
        agents: d.agents.clone(),
        consensus: d.consensus.clone(),
        consensus_threshold: option("consensus_threshold"),
        correlation_id: d.correlation_id.clone(),
        created_at: d.created_at,
        domain: option("domain"),
        duration_seconds: duration,
        error: d.error.clone(),
        finished_at: d.finished_at,
        id: d.id.clone(),
        instance: d.instance.clone(),
        judge: option("judge"),
        metadata: option("metadata"),
        receipt_id: d.receipt_id.clone(),
        result: d.result.clone(),
        rounds: d.rounds,
        rounds_used: d.rounds_used,
        started_at: d.started_at,
        status: d.status,
        task: d.task.clone(),
        usage: d.result.as_ref().and_then(|r| r.get("usage")).cloned(),
    }
}

/// An event as the API and the WebSocket show it. Fields in alphabetical order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub agent: Option<String>,
    /// The event's payload (depends on `type`).
    #[schema(value_type = Object)]
    pub data: Value,
    pub debate_id: String,
    pub round: Option<i32>,
    pub seq: i64,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: Time,
    #[serde(rename = "type")]
    pub kind: String,
}

fn event_json(e: &StoredEvent) -> EventView {
    EventView {
        agent: e.agent.clone(),
        data: e.data.clone(),
        debate_id: e.debate_id.clone(),
        round: e.round,
        seq: e.seq,
        timestamp: e.timestamp,
        kind: e.kind.clone(),
    }
}

/// `GET /debates/{id}/messages`. Fields in alphabetical order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageList {
    pub debate_id: String,
    pub messages: Vec<MessageView>,
}

/// A proposal, revision, synthesis, critique or vote. Fields in alphabetical order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub agent: Option<String>,
    #[schema(value_type = Object)]
    pub data: Value,
    pub round: Option<i32>,
    pub seq: i64,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: Time,
    /// `proposal`, `revision`, `synthesis`, … (an agent message's role), `critique` or `vote`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// `GET /debates/active`. Fields in alphabetical order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActiveDebates {
    pub count: usize,
    pub debates: Vec<ActiveDebateView>,
    /// The instance that answered.
    pub instance: String,
}

/// A running debate. Fields in alphabetical order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActiveDebateView {
    pub debate_id: String,
    pub elapsed_seconds: Option<f64>,
    /// The instance holding its lease; null while it waits to be resumed.
    pub instance: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub lease_expires_at: Option<Time>,
    pub round: i32,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Time>,
    pub status: DebateStatus,
    pub task: String,
    pub total_rounds: i32,
}

/// `GET /debates/{id}/export/json`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DebateExport {
    pub debate: DebateView,
    pub events: Vec<EventView>,
}

/// A page of debates, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DebatePage {
    /// Debate records, as `GET /debates/{id}`.
    pub debates: Vec<DebateView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A page of a debate's event log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub debate_id: String,
    /// As the WebSocket sends them.
    pub events: Vec<EventView>,
    /// The debate's latest seq (0 before any event).
    pub last_seq: i64,
}

fn cursor_error(err: StoreError) -> ApiError {
    match err {
        StoreError::Corrupt(msg) if msg.contains("cursor") => {
            ApiError::BadRequest(format!("invalid `cursor`: {msg}"))
        }
        other => other.into(),
    }
}

/// A debate accepted (`POST /debates`). Fields in alphabetical order, as the API has always
/// written them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DebateCreated {
    #[schema(value_type = String, format = DateTime)]
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub debate_id: String,
    pub status: DebateStatus,
}

/// A steering step accepted (cancel, pause, resume): the debate and where it now stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DebateStep {
    pub debate_id: String,
    /// `cancelled` or `cancelling`; `paused` or `pausing`; after a resume, the debate's
    /// status (`queued`).
    #[schema(example = "pausing")]
    pub status: String,
}

/// An intervention appended to the debate's event log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Injected {
    pub debate_id: String,
    pub seq: i64,
    #[serde(rename = "type")]
    #[schema(example = "intervention")]
    pub kind: String,
}

/// Start a debate; it runs in the background.
#[utoipa::path(
    post,
    path = "/debates",
    tag = "debates",
    request_body = DebateRequest,
    responses(
        (status = 202, description = "accepted and queued", body = DebateCreated),
        (status = 400, description = "a control character (NUL…) in a text field, named in `field`", body = ErrorBody),
        (status = 422, description = "invalid field (named in `field`); unknown agents list the known ones", body = ErrorBody),
        (status = 503, description = "queue full; see Retry-After", body = ErrorBody),
    )
)]
pub async fn create_debate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Json(request): Json<DebateRequest>,
) -> Result<Response, ApiError> {
    let record = state
        .debates
        .create(request, principal.owner_id(), correlation::current())
        .await
        .map_err(|e| match e {
            CreateError::Invalid { field, message } => ApiError::Validation { field, message },
            CreateError::BadText { field, message } => ApiError::BadField { field, message },
            CreateError::QueueFull { retry_after, .. } => ApiError::Unavailable {
                message: e.to_string(),
                retry_after: Some(retry_after),
            },
            CreateError::ShuttingDown => ApiError::Unavailable {
                message: e.to_string(),
                retry_after: Some(5),
            },
            CreateError::Store(err) => err.into(),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DebateCreated {
            created_at: record.created_at,
            debate_id: record.id,
            status: record.status,
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListParams {
    /// queued, running, completed, no_consensus, timeout, failed or cancelled.
    status: Option<String>,
    /// 1–200 (default 50).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    offset: Option<u32>,
}

/// Debates, newest first.
#[utoipa::path(
    get,
    path = "/debates",
    tag = "debates",
    params(ListParams),
    responses(
        (status = 200, description = "a page of debates", body = DebatePage),
        (status = 400, description = "bad status, limit or cursor", body = ErrorBody),
    )
)]
pub async fn list_debates(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<ListParams>,
) -> Result<Json<DebatePage>, ApiError> {
    if let Some(status) = &params.status
        && let Err(why) = status.parse::<DebateStatus>()
    {
        return Err(ApiError::BadRequest(format!("invalid `status`: {why}")));
    }
    if let Some(limit) = params.limit
        && !(1..=200).contains(&limit)
    {
        return Err(ApiError::BadRequest(format!(
            "invalid `limit` {limit}; expected 1 to 200"
        )));
    }
    let page = state
        .store
        .list_debates(&DebateQuery {
            status: params.status,
            // Members see only their own debates; admins and owners see all.
            owner_id: (!principal.sees_all()).then(|| principal.id.clone()),
            limit: params.limit.unwrap_or(50),
            offset: params.offset,
            cursor: params.cursor,
        })
        .await
        .map_err(cursor_error)?;
    Ok(Json(DebatePage {
        debates: page.debates.iter().map(debate_json).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// The debate if the caller may see it. Someone else's debate is "not found", exactly like
/// an unknown id, so ids of other users' debates cannot be probed.
async fn load(state: &AppState, principal: &Principal, id: &str) -> Result<DebateRecord, ApiError> {
    state
        .store
        .get_debate(id)
        .await?
        .filter(|d| principal.can_see(d))
        .ok_or_else(|| ApiError::NotFound(format!("debate {id} not found")))
}

/// Running debates across every instance sharing the database: which instance runs each
/// (none while it waits to be resumed), its round and how long it has run. Members see
/// their own.
#[utoipa::path(
    get,
    path = "/debates/active",
    tag = "debates",
    responses((status = 200, description = "the running debates; `instance` at the top is the answering one", body = ActiveDebates))
)]
pub async fn list_active_debates(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<ActiveDebates>, ApiError> {
    let now = chrono::Utc::now();
    let debates: Vec<ActiveDebateView> = state
        .store
        .active_debates()
        .await?
        .into_iter()
        .filter(|d| principal.sees_all() || d.owner_id.as_deref() == Some(principal.id.as_str()))
        .map(|d| {
            let elapsed = d
                .started_at
                .map(|s| ((now - s).num_milliseconds().max(0) as f64) / 1000.0);
            ActiveDebateView {
                debate_id: d.id,
                elapsed_seconds: elapsed,
                instance: d.instance,
                lease_expires_at: d.lease_expires_at,
                round: d.round,
                started_at: d.started_at,
                status: DebateStatus::Running,
                task: d.task,
                total_rounds: d.total_rounds,
            }
        })
        .collect();
    Ok(Json(ActiveDebates {
        count: debates.len(),
        debates,
        instance: state.debates.instance_id().to_owned(),
    }))
}

/// One debate with its result.
#[utoipa::path(
    get,
    path = "/debates/{id}",
    tag = "debates",
    params(("id" = String, Path, description = "debate id")),
    responses((status = 200, description = "the debate record", body = DebateView), (status = 404, body = ErrorBody))
)]
pub async fn get_debate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<DebateView>, ApiError> {
    crate::telemetry::correlation::record_debate_id(id.as_str());
    Ok(Json(debate_json(&load(&state, &principal, &id).await?)))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PageParams {
    /// 1–1000 (default 100).
    limit: Option<u32>,
    offset: Option<u32>,
}

/// Proposals, revisions, syntheses, critiques and votes in order.
#[utoipa::path(
    get,
    path = "/debates/{id}/messages",
    tag = "debates",
    params(("id" = String, Path, description = "debate id"), PageParams),
    responses((status = 200, description = "the messages in order", body = MessageList), (status = 404, body = ErrorBody))
)]
pub async fn list_messages(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<Json<MessageList>, ApiError> {
    crate::telemetry::correlation::record_debate_id(id.as_str());
    load(&state, &principal, &id).await?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "invalid `limit` {limit}; expected 1 to 1000"
        )));
    }
    let events = state
        .store
        .events_of_kinds(
            &id,
            &["agent_message", "critique", "vote"],
            limit,
            params.offset.unwrap_or(0),
        )
        .await?;
    let messages: Vec<MessageView> = events
        .into_iter()
        .map(|e| {
            let kind = match e.kind.as_str() {
                "agent_message" => e
                    .data
                    .get("role")
                    .and_then(Value::as_str)
                    .unwrap_or("message")
                    .to_owned(),
                other => other.to_owned(),
            };
            MessageView {
                agent: e.agent,
                data: e.data,
                round: e.round,
                seq: e.seq,
                timestamp: e.timestamp,
                kind,
            }
        })
        .collect();
    Ok(Json(MessageList {
        debate_id: id,
        messages,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct EventParams {
    /// Return events with seq greater than this (default 0).
    since: Option<i64>,
    /// 1–1000 (default 500).
    limit: Option<u32>,
}

/// The durable event log: the same events, with the same seq, as the WebSocket streams.
#[utoipa::path(
    get,
    path = "/debates/{id}/events",
    tag = "debates",
    params(("id" = String, Path, description = "debate id"), EventParams),
    responses((status = 200, description = "events after `since`", body = EventPage), (status = 404, body = ErrorBody))
)]
pub async fn list_events(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(params): Query<EventParams>,
) -> Result<Json<EventPage>, ApiError> {
    crate::telemetry::correlation::record_debate_id(id.as_str());
    load(&state, &principal, &id).await?;
    let limit = params.limit.unwrap_or(500);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "invalid `limit` {limit}; expected 1 to 1000"
        )));
    }
    let since = params.since.unwrap_or(0);
    if since < 0 {
        return Err(ApiError::BadRequest(
            "invalid `since`; expected a seq ≥ 0".into(),
        ));
    }
    let events = state.store.events_since(&id, since, limit).await?;
    let last_seq = state.store.last_seq(&id).await?;
    Ok(Json(EventPage {
        debate_id: id,
        events: events.iter().map(event_json).collect(),
        last_seq,
    }))
}

/// Cancel a queued or running debate.
#[utoipa::path(
    post,
    path = "/debates/{id}/cancel",
    tag = "debates",
    params(("id" = String, Path, description = "debate id")),
    responses(
        (status = 202, description = "cancellation accepted: `cancelled`, or `cancelling` while a call finishes", body = DebateStep),
        (status = 404, body = ErrorBody),
        (status = 409, description = "already finished", body = ErrorBody),
    )
)]
pub async fn cancel_debate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    crate::telemetry::correlation::record_debate_id(id.as_str());
    load(&state, &principal, &id).await?;
    let record = state.debates.cancel(&id).await.map_err(steer_error)?;
    let status = if record.status == "cancelled" {
        "cancelled"
    } else {
        "cancelling"
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(DebateStep {
            debate_id: id,
            status: status.to_owned(),
        }),
    )
        .into_response())
}

fn steer_error(e: SteerError) -> ApiError {
    match e {
        SteerError::NotFound(_) => ApiError::NotFound(e.to_string()),
        SteerError::AlreadyFinished { ref status, .. } => ApiError::DebateEnded {
            status: status.clone(),
            message: e.to_string(),
        },
        SteerError::Conflict(message) => ApiError::Conflict(message),
        SteerError::Invalid { field, message } => ApiError::Validation { field, message },
        SteerError::BadText { field, message } => ApiError::BadField { field, message },
        SteerError::Store(err) => err.into(),
    }
}

/// Who steers: the user's id (`service` for the API token).
fn steered_by(principal: &Principal) -> Option<String> {
    Some(principal.id.clone())
}

async fn pause(state: AppState, principal: Principal, id: String) -> Result<Response, ApiError> {
    crate::telemetry::correlation::record_debate_id(id.as_str());
    load(&state, &principal, &id).await?;
    let record = state
        .debates
        .pause(&id, steered_by(&principal))
        .await
        .map_err(steer_error)?;
    let status = if record.status == DebateStatus::Paused {
        "paused"
    } else {
        "pausing"
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(DebateStep {
            debate_id: id,
            status: status.to_owned(),
        }),
    )
        .into_response())
}

async fn resume(state: AppState, principal: Principal, id: String) -> Result<Response, ApiError> {
    crate::telemetry::correlation::record_debate_id(id.as_str());
    load(&state, &principal, &id).await?;
    let record = state.debates.resume(&id).await.map_err(steer_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DebateStep {
            debate_id: id,
            status: record.status.to_string(),
        }),
    )
        .into_response())
}

/// Pause a debate at its next phase boundary (a running agent call finishes and is
/// recorded); it releases its slot and lease. Owner of the debate or admin.
#[utoipa::path(
    post,
    path = "/debates/{id}/pause",
    tag = "debates",
    params(("id" = String, Path, description = "debate id")),
    responses(
        (status = 202, description = "`paused` at once (it was queued) or `pausing` until the next phase boundary", body = DebateStep),
        (status = 404, body = ErrorBody),
        (status = 409, description = "already ended; `status` names how", body = ErrorBody),
    )
)]
pub async fn pause_debate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    pause(state, principal, id).await
}

/// The same as `POST /debates/{id}/pause` (the SDK's intervention path).
#[utoipa::path(
    post,
    path = "/debates/{id}/intervention/pause",
    tag = "debates",
    params(("id" = String, Path, description = "debate id")),
    responses(
        (status = 202, description = "as `POST /debates/{id}/pause`", body = DebateStep),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
pub async fn intervention_pause(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    pause(state, principal, id).await
}

/// Queue a paused debate again; it continues where it stopped (`debate_resumed`, reason
/// `resumed_by_user`).
#[utoipa::path(
    post,
    path = "/debates/{id}/resume",
    tag = "debates",
    params(("id" = String, Path, description = "debate id")),
    responses(
        (status = 202, description = "queued again", body = DebateStep),
        (status = 404, body = ErrorBody),
        (status = 409, description = "not paused, or already ended", body = ErrorBody),
    )
)]
pub async fn resume_debate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    resume(state, principal, id).await
}

/// The same as `POST /debates/{id}/resume` (the SDK's intervention path).
#[utoipa::path(
    post,
    path = "/debates/{id}/intervention/resume",
    tag = "debates",
    params(("id" = String, Path, description = "debate id")),
    responses(
        (status = 202, description = "as `POST /debates/{id}/resume`", body = DebateStep),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
pub async fn intervention_resume(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    resume(state, principal, id).await
}

/// `POST /debates/{id}/intervention/inject` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    /// The moderator's message (at most 4,000 characters).
    pub content: String,
    /// `moderator` (the default; the only role for now).
    pub role: Option<String>,
}

/// Add a moderator's message: a durable `intervention` event, and every agent's prompt from
/// the debate's next phase on includes it, marked as the moderator's. Running, queued and
/// paused debates take it.
#[utoipa::path(
    post,
    path = "/debates/{id}/intervention/inject",
    tag = "debates",
    params(("id" = String, Path, description = "debate id")),
    request_body = InjectRequest,
    responses(
        (status = 201, description = "the intervention's event", body = Injected),
        (status = 400, description = "a control character (NUL…) in `content`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "already ended", body = ErrorBody),
        (status = 422, description = "empty or too long `content`, or a `role` other than moderator", body = ErrorBody),
    )
)]
pub async fn inject_intervention(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Json(body): Json<InjectRequest>,
) -> Result<Response, ApiError> {
    crate::telemetry::correlation::record_debate_id(id.as_str());
    if let Some(role) = body.role.as_deref()
        && role != "moderator"
    {
        return Err(ApiError::Validation {
            field: "role".into(),
            message: format!("`role` must be `moderator`, got `{role}`"),
        });
    }
    load(&state, &principal, &id).await?;
    let stored = state
        .debates
        .inject(&id, steered_by(&principal), &body.content)
        .await
        .map_err(steer_error)?;
    Ok((
        StatusCode::CREATED,
        Json(Injected {
            debate_id: id,
            seq: stored.seq,
            kind: stored.kind,
        }),
    )
        .into_response())
}

/// A debate exported whole (the SDK's `debates.get_export`): `json` is the record with its
/// full event log; `md` is a readable transcript.
#[utoipa::path(
    get,
    path = "/debates/{id}/export/{format}",
    tag = "debates",
    params(
        ("id" = String, Path, description = "debate id"),
        ("format" = String, Path, description = "json or md"),
    ),
    responses(
        (status = 200, description = "the record with its event log (json) or text/markdown (md)", body = DebateExport),
        (status = 404, body = ErrorBody),
        (status = 422, description = "a format other than json or md", body = ErrorBody),
    )
)]
pub async fn export_debate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, format)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    crate::telemetry::correlation::record_debate_id(id.as_str());
    if !matches!(format.as_str(), "json" | "md") {
        return Err(ApiError::Validation {
            field: "format".into(),
            message: format!("export format `{format}` is not supported; use json or md"),
        });
    }
    let record = load(&state, &principal, &id).await?;
    let events = state.store.events_since(&id, 0, u32::MAX).await?;
    if format == "json" {
        return Ok(Json(DebateExport {
            debate: debate_json(&record),
            events: events.iter().map(event_json).collect(),
        })
        .into_response());
    }
    let mut md = format!(
        "# {}\n\nDebate `{}` — status **{}**\n",
        record.task, record.id, record.status
    );
    for e in &events {
        let line = crate::debate_cli::format_event(
            &e.kind,
            e.round.and_then(|r| u32::try_from(r).ok()),
            e.agent.as_deref(),
            &e.data,
        );
        if !line.trim().is_empty() {
            md.push_str(&line);
        }
    }
    if let Some(answer) = record
        .result
        .as_ref()
        .and_then(|r| r["final_answer"].as_str())
    {
        md.push_str(&format!("\n## Final answer\n\n{answer}\n"));
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/markdown; charset=utf-8",
        )],
        md,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same_bytes_as_a_json_object<T: Serialize>(body: &T) -> String {
        let text = serde_json::to_string(body).unwrap();
        assert_eq!(text, serde_json::to_value(body).unwrap().to_string());
        text
    }

    #[test]
    fn debate_and_event_views_write_their_keys_in_alphabetical_order() {
        let now = chrono::Utc::now();
        let record = DebateRecord {
            id: "d1".into(),
            task: "t".into(),
            status: DebateStatus::Completed,
            instance: Some("i1".into()),
            agents: vec!["a".into(), "b".into()],
            rounds: 3,
            rounds_used: 2,
            consensus: "majority".into(),
            owner_id: Some("u1".into()),
            correlation_id: None,
            options: json!({"judge": "a", "metadata": {"z": 1, "a": 2}}),
            result: Some(json!({"final_answer": "x", "usage": {"calls": 4}})),
            error: None,
            created_at: now,
            started_at: Some(now),
            finished_at: Some(now),
            receipt_id: None,
        };
        let view = debate_json(&record);
        let text = same_bytes_as_a_json_object(&view);
        assert!(text.contains("\"consensus_threshold\":null"));
        assert!(text.contains("\"domain\":null"));
        assert!(text.contains("\"usage\":{\"calls\":4}"));
        let event = StoredEvent {
            debate_id: "d1".into(),
            seq: 1,
            kind: "vote".into(),
            round: None,
            agent: Some("a".into()),
            data: json!({"choice": "b"}),
            timestamp: now,
        };
        let export = DebateExport {
            debate: view,
            events: vec![event_json(&event)],
        };
        let text = same_bytes_as_a_json_object(&export);
        assert!(text.contains("\"type\":\"vote\""));
        same_bytes_as_a_json_object(&MessageList {
            debate_id: "d1".into(),
            messages: vec![MessageView {
                agent: None,
                data: json!({}),
                round: Some(1),
                seq: 2,
                timestamp: now,
                kind: "critique".into(),
            }],
        });
        same_bytes_as_a_json_object(&ActiveDebates {
            count: 1,
            debates: vec![ActiveDebateView {
                debate_id: "d1".into(),
                elapsed_seconds: Some(1.5),
                instance: None,
                lease_expires_at: None,
                round: 1,
                started_at: Some(now),
                status: DebateStatus::Running,
                task: "t".into(),
                total_rounds: 3,
            }],
            instance: "i1".into(),
        });
    }
}
