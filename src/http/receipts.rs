//! Decision receipts (docs/receipts.md), at the paths the published SDK calls:
//! `/api/v2/receipts…`, `/.well-known/aragora-odr-signing-key` and
//! `/api/debates/{id}/receipt`. Export, verify and the signing key are public (a receipt is
//! meant to be checked by third parties); listing and reading follow debate visibility.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;
use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::receipts::document::OdrVersion;
use crate::receipts::{native_json, odr_text};
use crate::store::ReceiptRow;

/// `/v2/receipts…`, mounted under `/api` only (the SDK calls them there).
pub fn v2_router() -> ApiRouter {
    ApiRouter::new()
        .member(routes!(list_receipts))
        .public(routes!(verify_receipt))
        .public(routes!(signing_key))
        .member(routes!(get_receipt))
        .public(routes!(export_receipt))
}

/// `/debates/{id}/receipt`, under `/api` and `/api/v1` with the other debate routes.
pub fn debate_router() -> ApiRouter {
    ApiRouter::new().member(routes!(debate_receipt))
}

/// `/.well-known/aragora-odr-signing-key` (outside /api).
pub fn well_known() -> ApiRouter {
    ApiRouter::new().route(
        crate::auth::Access::Public,
        "/.well-known/aragora-odr-signing-key",
        axum::routing::get(well_known_key),
    )
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("receipt {id} not found"))
}

/// The stored bytes, served as they are (byte-identical on every export).
fn json_text(text: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response()
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListParams {
    /// 1–200 (default 20).
    limit: Option<u32>,
    /// Receipts to skip (default 0).
    offset: Option<u32>,
}

/// A page of receipts. Fields in alphabetical order, as the API has always written them.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReceiptPage {
    pub limit: u32,
    pub offset: u32,
    /// Native receipts (as `GET /v2/receipts/{id}`), newest first.
    #[schema(value_type = Vec<Object>)]
    pub receipts: Vec<Value>,
    /// Receipts the caller may see, across all pages.
    pub total: i64,
}

/// A public key receipts are signed with.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SigningKey {
    #[schema(example = "Ed25519")]
    pub algorithm: &'static str,
    pub key_id: String,
    /// SPKI PEM.
    pub public_key_pem: String,
}

/// Decision receipts, newest first. Members see the receipts of their own debates.
#[utoipa::path(
    get,
    path = "/v2/receipts",
    tag = "receipts",
    params(ListParams),
    responses(
        (status = 200, description = "a page of receipts", body = ReceiptPage),
        (status = 400, description = "`limit` outside 1–200", body = ErrorBody),
        (status = 401, body = ErrorBody),
    )
)]
pub async fn list_receipts(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<ListParams>,
) -> Result<Json<ReceiptPage>, ApiError> {
    let limit = params.limit.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "invalid `limit` {limit}; expected 1 to 200"
        )));
    }
    let offset = params.offset.unwrap_or(0);
    let owner = (!principal.sees_all()).then(|| principal.id.clone());
    let (rows, total) = state
        .store
        .list_receipts(owner.as_deref(), limit, offset)
        .await?;
    Ok(Json(ReceiptPage {
        limit,
        offset,
        receipts: rows.iter().map(native_json).collect(),
        total,
    }))
}

/// One receipt (the native form): verdict, participants, supporting and dissenting agents,
/// the transcript digest and the signing key id.
#[utoipa::path(
    get,
    path = "/v2/receipts/{id}",
    tag = "receipts",
    params(("id" = String, Path, description = "receipt id")),
    responses((status = 200, description = "the receipt"), (status = 404, body = ErrorBody))
)]
pub async fn get_receipt(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = state
        .store
        .get_receipt(&id)
        .await?
        .filter(|r| principal.can_see_owned_by(r.owner_id.as_deref()))
        .ok_or_else(|| not_found(&id))?;
    Ok(json_text(row.receipt))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ExportParams {
    /// `odr` (default), `json` (the native receipt) or `md`.
    format: Option<String>,
    /// ODR profile: `0.2` (default) or `0.1`.
    odr_version: Option<String>,
}

/// Export a receipt: the signed Open Decision Receipt (`format=odr`, profile 0.2 or 0.1),
/// the native JSON or Markdown. Public: anyone holding a receipt id can fetch and verify it.
/// The same export is byte-identical every time.
#[utoipa::path(
    get,
    path = "/v2/receipts/{id}/export",
    tag = "receipts",
    params(("id" = String, Path, description = "receipt id"), ExportParams),
    responses(
        (status = 200, description = "the ODR document (application/json), the native receipt, or text/markdown"),
        (status = 404, body = ErrorBody),
        (status = 422, description = "unknown `format` or `odr_version`, named in `field`", body = ErrorBody),
    )
)]
pub async fn export_receipt(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<ExportParams>,
) -> Result<Response, ApiError> {
    let format = params.format.as_deref().unwrap_or("odr");
    if !matches!(format, "odr" | "json" | "md") {
        return Err(ApiError::Validation {
            field: "format".into(),
            message: format!(
                "receipt export format `{format}` is not supported; use odr, json or md"
            ),
        });
    }
    let version = match params.odr_version.as_deref() {
        None => OdrVersion::V02,
        Some(v) => OdrVersion::parse(v).ok_or_else(|| ApiError::Validation {
            field: "odr_version".into(),
            message: format!("ODR version `{v}` is not supported; use 0.1 or 0.2"),
        })?,
    };
    let row = state
        .store
        .get_receipt(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    match format {
        "odr" => Ok(json_text(odr_text(&row, version).to_owned())),
        "json" => Ok(json_text(row.receipt)),
        _ => Ok((
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            markdown(&row),
        )
            .into_response()),
    }
}

fn markdown(row: &ReceiptRow) -> String {
    let r = native_json(row);
    let list = |v: &Value| {
        let names: Vec<&str> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    let participants: Vec<String> = r["participating_agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} ({}/{})",
                p["agent"].as_str().unwrap_or("?"),
                p["provider"].as_str().unwrap_or("?"),
                p["model"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let mut md = format!(
        "# Decision receipt {}\n\n\
         - Debate: `{}`\n- Issued: {}\n- Verdict: **{}** (confidence {})\n- Mode: {}, {} round(s)\n\
         - Participants: {}\n- Supporting: {}\n- Dissenting: {}\n\
         - Transcript digest ({}): `{}` over {} events\n- Signed by: {}\n\n## Task\n\n{}\n\n## Reasoning\n\n{}\n",
        row.receipt_id,
        row.debate_id,
        r["issued_at"].as_str().unwrap_or_default(),
        row.verdict,
        r["confidence"],
        r["mode"].as_str().unwrap_or_default(),
        r["rounds_used"],
        participants.join(", "),
        list(&r["supporting_agents"]),
        list(&r["dissenting_agents"]),
        r["transcript_digest"]["alg"].as_str().unwrap_or_default(),
        row.chain_head,
        row.event_count,
        row.key_id.as_deref().unwrap_or("unsigned"),
        r["task"].as_str().unwrap_or_default(),
        r["reasoning"].as_str().unwrap_or_default(),
    );
    if let Some(answer) = r["final_answer"].as_str() {
        md.push_str(&format!("\n## Final answer\n\n{answer}\n"));
    }
    for view in r["dissent"].as_array().into_iter().flatten() {
        if let Some(view) = view.as_str() {
            md.push_str(&format!("\n> Dissent: {view}\n"));
        }
    }
    md
}

/// The outcome of a verification. Fields in alphabetical order, as the API has always
/// written them.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct VerifyBody {
    /// Every check, in the order they ran.
    pub checks: Vec<CheckBody>,
    /// The document's `quorum.dissent.views`, as sent (empty when it has none).
    #[schema(value_type = Vec<Object>)]
    pub dissent_trail: Vec<Value>,
    /// The key whose signature verified; null when none did.
    pub key_id: Option<String>,
    pub odr_digest: String,
    pub receipt_id: String,
    /// True only when no check failed and a signature by a known key held.
    pub verified: bool,
    pub warnings: Vec<String>,
}

/// One check. Fields in alphabetical order.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CheckBody {
    pub detail: String,
    pub name: &'static str,
    pub status: crate::receipts::verify::Status,
}

/// Verify an ODR document against this deployment's signing keys (the current one and any
/// that signed receipts here before a rotation). Stateless: nothing is stored. `verified` is
/// true only when no check failed and a signature by a known key held; read `checks` for why.
#[utoipa::path(
    post,
    path = "/v2/receipts/verify",
    tag = "receipts",
    request_body(content = Object, description = "an ODR document"),
    responses(
        (status = 200, description = "the checks and the verdict", body = VerifyBody),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 413, description = "the body is larger than the configured limit", body = ErrorBody),
        (status = 415, description = "the body is not application/json", body = ErrorBody),
    )
)]
pub async fn verify_receipt(
    State(state): State<AppState>,
    Json(document): Json<Value>,
) -> Result<Json<VerifyBody>, ApiError> {
    let result = state.receipts.verify(&document).await?;
    let dissent_trail = document["quorum"]["dissent"]["views"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(Json(VerifyBody {
        checks: result
            .checks
            .into_iter()
            .map(|c| CheckBody {
                detail: c.detail,
                name: c.name,
                status: c.status,
            })
            .collect(),
        dissent_trail,
        key_id: result.key_id,
        odr_digest: result.odr_digest,
        receipt_id: result.receipt_id,
        verified: result.verified,
        warnings: result.warnings,
    }))
}

/// The public key receipts are signed with (the trust anchor for offline verification).
/// `?key_id=` gives an earlier key that signed receipts here.
#[utoipa::path(
    get,
    path = "/v2/receipts/signing-key",
    tag = "receipts",
    params(KeyParams),
    responses(
        (status = 200, description = "the key", body = SigningKey),
        (status = 404, description = "receipts are issued unsigned here, or no such key", body = ErrorBody),
    )
)]
pub async fn signing_key(
    State(state): State<AppState>,
    Query(params): Query<KeyParams>,
) -> Result<Json<SigningKey>, ApiError> {
    let (key_id, pem) = key_of(&state, params.key_id.as_deref()).await?;
    Ok(Json(SigningKey {
        algorithm: "Ed25519",
        key_id,
        public_key_pem: pem,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct KeyParams {
    /// An earlier signing key's id; default: the current key.
    key_id: Option<String>,
}

async fn key_of(state: &AppState, key_id: Option<&str>) -> Result<(String, String), ApiError> {
    let wanted = match key_id {
        Some(id) => id.to_owned(),
        None => state
            .receipts
            .signer()
            .map(|s| s.key_id().to_owned())
            .ok_or_else(|| {
                ApiError::NotFound(
                    "receipts are issued unsigned here (ARAGORA_ODR_UNSIGNED=1): there is no \
                     signing key"
                        .into(),
                )
            })?,
    };
    let pem = state
        .receipts
        .key_pem(&wanted)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("signing key {wanted} not found")))?;
    Ok((wanted, pem))
}

async fn well_known_key(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (key_id, pem) = key_of(&state, None).await?;
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/x-pem-file".to_owned()),
            (header::CACHE_CONTROL, "public, max-age=300".to_owned()),
        ],
        pem,
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&key_id) {
        response.headers_mut().insert("x-aragora-key-id", value);
    }
    Ok(response)
}

/// The receipt of a debate (native form). 404 `not_found` until the debate has ended
/// `completed` or `no_consensus` (other endings get no receipt).
#[utoipa::path(
    get,
    path = "/debates/{id}/receipt",
    tag = "receipts",
    params(("id" = String, Path, description = "debate id")),
    responses(
        (status = 200, description = "the receipt"),
        (status = 404, description = "no such debate, or it has no receipt (yet)", body = ErrorBody),
    )
)]
pub async fn debate_receipt(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    crate::telemetry::correlation::record_debate_id(id.as_str());
    let debate = state
        .store
        .get_debate(&id)
        .await?
        .filter(|d| principal.can_see(d))
        .ok_or_else(|| ApiError::NotFound(format!("debate {id} not found")))?;
    // Issued right after the end; issue it now if the instance that ended it stopped first.
    match state.receipts.issue_for(&debate).await? {
        Some(row) => Ok(json_text(row.receipt)),
        None => Err(ApiError::NotFound(format!(
            "debate {id} has no receipt: it is {} (receipts are issued for debates that end \
             completed or no_consensus)",
            debate.status
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receipts::verify::Status;

    #[test]
    fn verification_writes_its_keys_in_alphabetical_order() {
        let body = VerifyBody {
            checks: vec![CheckBody {
                detail: "ok".into(),
                name: "signature",
                status: Status::Pass,
            }],
            dissent_trail: vec![serde_json::json!({"agent": "b", "view": "no"})],
            key_id: None,
            odr_digest: "d".into(),
            receipt_id: "r".into(),
            verified: false,
            warnings: vec![],
        };
        let text = serde_json::to_string(&body).unwrap();
        assert_eq!(text, serde_json::to_value(&body).unwrap().to_string());
        assert!(text.contains("\"key_id\":null"));
    }
}
