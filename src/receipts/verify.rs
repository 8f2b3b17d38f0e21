//! Verification of an ODR document: its shape, the quorum's consistency, the canonical
//! digest and the Ed25519 signatures (against the keys the caller trusts), and, when the
//! debate's events are given, the transcript chain. Used by `POST /api/v2/receipts/verify`
//! and `aragora receipt verify`; the result has the same check names as `aragora-verify`.

use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;
use serde_json::Value;

use super::chain::{self, CHAIN_ALG};
use super::document::{OdrVersion, odr_digest, signature_message};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Warn,
    Skip,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

/// The outcome: `verified` only when nothing failed and a signature was checked and held.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Verification {
    pub verified: bool,
    pub receipt_id: String,
    pub odr_digest: String,
    /// The key whose signature verified.
    pub key_id: Option<String>,
    pub checks: Vec<Check>,
    pub warnings: Vec<String>,
}

impl Verification {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
    }
}

const REQUIRED: [&str; 13] = [
    "odr_version",
    "profile",
    "receipt_id",
    "issued_at",
    "subject",
    "claim",
    "reasoning",
    "quorum",
    "confidence",
    "cruxes",
    "attestation",
    "routing",
    "signatures",
];

fn present_or_absent(v: &Value) -> bool {
    matches!(v["status"].as_str(), Some("present"))
        || (v["status"] == "absent" && v["reason"].as_str().is_some_and(|r| !r.is_empty()))
}

fn strings(v: &Value) -> bool {
    v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
}

/// The document's shape; the list is empty when it conforms.
pub fn structure_errors(doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(obj) = doc.as_object() else {
        return vec!["receipt: the top-level value must be a JSON object".into()];
    };
    for member in REQUIRED {
        if !obj.contains_key(member) {
            errors.push(format!("missing required member: {member}"));
        }
    }
    for key in obj.keys() {
        if !REQUIRED.contains(&key.as_str()) && key != "source" && key != "adjudication" {
            errors.push(format!("unknown top-level member: {key}"));
        }
    }
    let version = doc["odr_version"].as_str().and_then(OdrVersion::parse);
    match version {
        None => errors.push("odr_version: must be \"0.1\" or \"0.2\"".into()),
        Some(v) if doc["profile"].as_str() != Some(v.profile().as_str()) => {
            errors.push("profile: must match odr_version".into());
        }
        Some(_) => {}
    }
    if doc["receipt_id"].as_str().is_none_or(str::is_empty) {
        errors.push("receipt_id: required non-empty string".into());
    }
    if !doc["subject"]["identifier"].is_string() {
        errors.push("subject.identifier: required string".into());
    }
    let digest = &doc["subject"]["digest"];
    if !(digest["status"] == "present" && digest["value"].is_string()
        || digest["status"] == "absent")
    {
        errors.push("subject.digest: must be a present block or an absent marker".into());
    }
    if doc["claim"]["verdict"].as_str().is_none_or(str::is_empty) {
        errors.push("claim.verdict: required non-empty string".into());
    }
    for block in ["reasoning", "quorum", "confidence", "cruxes"] {
        if obj.contains_key(block) && !present_or_absent(&doc[block]) {
            errors.push(format!(
                "{block}: must be a present block or an absent marker"
            ));
        }
    }
    let quorum = &doc["quorum"];
    if quorum["status"] == "present" {
        for field in [
            "method",
            "reached",
            "supporting_agents",
            "participants",
            "independence",
            "dissent",
        ] {
            if quorum.get(field).is_none() {
                errors.push(format!("quorum.{field}: required when present"));
            }
        }
        if !strings(&quorum["supporting_agents"]) {
            errors.push("quorum.supporting_agents: must be an array of strings".into());
        }
        match quorum["participants"].as_array() {
            Some(list) => {
                for (i, p) in list.iter().enumerate() {
                    if !p["agent"].is_string() || p.get("model_family").is_none() {
                        errors.push(format!(
                            "quorum.participants[{i}]: requires agent and model_family"
                        ));
                    }
                }
            }
            None => errors.push("quorum.participants: must be an array".into()),
        }
        if !strings(&quorum["dissent"]["dissenting_agents"]) {
            errors.push("quorum.dissent.dissenting_agents: must be an array of strings".into());
        }
    }
    let confidence = &doc["confidence"];
    if confidence["status"] == "present" {
        if !confidence["value"]
            .as_f64()
            .is_some_and(|v| (0.0..=1.0).contains(&v))
        {
            errors.push("confidence.value: required number in [0, 1] when present".into());
        }
        if confidence["scale"] != "unit_interval" {
            errors.push("confidence.scale: must be \"unit_interval\" when present".into());
        }
    }
    if !matches!(
        doc["attestation"]["disposition"].as_str(),
        Some("autonomous" | "human_attested")
    ) {
        errors.push("attestation.disposition: must be \"human_attested\" or \"autonomous\"".into());
    }
    if doc["routing"]["status"] != "reserved" {
        errors.push("routing.status: must be \"reserved\"".into());
    }
    match doc["signatures"].as_array() {
        Some(list) => {
            for (i, sig) in list.iter().enumerate() {
                for field in ["alg", "key_id", "signature"] {
                    if sig[field].as_str().is_none_or(str::is_empty) {
                        errors.push(format!(
                            "signatures[{i}].{field}: required non-empty string"
                        ));
                    }
                }
                if sig["alg"].is_string() && sig["alg"] != "Ed25519" {
                    errors.push(format!("signatures[{i}].alg: only \"Ed25519\" is defined"));
                }
            }
        }
        None if obj.contains_key("signatures") => {
            errors.push("signatures: must be an array".into());
        }
        None => {}
    }
    if version == Some(OdrVersion::V01) {
        let scoped = [
            (&doc["reasoning"], "reasoning", "observations"),
            (quorum, "quorum", "verdicts"),
            (quorum, "quorum", "rule"),
        ];
        for (block, path, member) in scoped {
            if block.get(member).is_some() {
                errors.push(format!("{path}.{member}: not in profile 0.1"));
            }
        }
        if obj.contains_key("adjudication") {
            errors.push("adjudication: not in profile 0.1".into());
        }
    }
    errors
}

fn quorum_consistency(doc: &Value) -> Check {
    let quorum = &doc["quorum"];
    if quorum["status"] != "present" {
        return check(
            "quorum_consistency",
            Status::Skip,
            "no present quorum block",
        );
    }
    let participants: Vec<&str> = quorum["participants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["agent"].as_str())
        .collect();
    let mut missing: Vec<&str> = quorum["supporting_agents"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            quorum["dissent"]["dissenting_agents"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .chain(
            quorum["verdicts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| &v["issuer"]),
        )
        .filter_map(Value::as_str)
        .filter(|a| !participants.contains(a))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        check(
            "quorum_consistency",
            Status::Pass,
            "supporting, dissenting and voting agents all appear in participants",
        )
    } else {
        check(
            "quorum_consistency",
            Status::Fail,
            format!(
                "agents referenced but not among the participants: {}",
                missing.join(", ")
            ),
        )
    }
}

fn decode_signature(text: &str) -> Option<Signature> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .filter(|b| b.len() == 64)
        .or_else(|| {
            (text.len() == 128 && text.is_ascii())
                .then(|| {
                    (0..128)
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
                        .collect::<Option<Vec<u8>>>()
                })
                .flatten()
        })?;
    Signature::from_slice(&raw).ok()
}

/// Verify `doc`. `key_for` gives the trusted public key for a signature's `key_id`
/// (the server's key ring, or the one `--pubkey`); unknown ids are not trusted.
pub fn verify(doc: &Value, key_for: &dyn Fn(&str) -> Option<VerifyingKey>) -> Verification {
    let receipt_id = doc["receipt_id"].as_str().unwrap_or_default().to_owned();
    let mut checks = Vec::new();
    let errors = structure_errors(doc);
    if !errors.is_empty() {
        let shown: Vec<&str> = errors.iter().take(12).map(String::as_str).collect();
        checks.push(check("schema_conformance", Status::Fail, shown.join("; ")));
        return Verification {
            verified: false,
            receipt_id,
            odr_digest: String::new(),
            key_id: None,
            checks,
            warnings: Vec::new(),
        };
    }
    let version = doc["odr_version"]
        .as_str()
        .and_then(OdrVersion::parse)
        .unwrap_or(OdrVersion::V02);
    checks.push(check(
        "schema_conformance",
        Status::Pass,
        format!("conforms to the ODR v{} profile", version.as_str()),
    ));
    checks.push(quorum_consistency(doc));
    let digest = odr_digest(doc);
    checks.push(check(
        "canonical_digest",
        Status::Pass,
        format!("sha-256:{digest}"),
    ));

    let mut key_id = None;
    let signatures = doc["signatures"].as_array().cloned().unwrap_or_default();
    let signature = if signatures.is_empty() {
        check(
            "signature",
            Status::Warn,
            "the receipt is unsigned; its authenticity cannot be established",
        )
    } else {
        let mut notes = Vec::new();
        let mut failed = false;
        for (i, entry) in signatures.iter().enumerate() {
            let id = entry["key_id"].as_str().unwrap_or_default();
            let Some(key) = key_for(id) else {
                notes.push(format!("signatures[{i}]: key {id} is not a trusted key"));
                continue;
            };
            if super::keys::key_id(&key) != id {
                failed = true;
                notes.push(format!(
                    "signatures[{i}]: signed by key {id}, but the trusted key is {}",
                    super::keys::key_id(&key)
                ));
                continue;
            }
            let message = signature_message(version, &digest, entry);
            match entry["signature"].as_str().and_then(decode_signature) {
                Some(sig) if key.verify_strict(&message, &sig).is_ok() => {
                    key_id.get_or_insert_with(|| id.to_owned());
                    notes.push(format!("signatures[{i}] (key_id={id}): verified"));
                }
                Some(_) => {
                    failed = true;
                    notes.push(format!("signatures[{i}] (key_id={id}): INVALID"));
                }
                None => {
                    failed = true;
                    notes.push(format!("signatures[{i}]: undecodable signature"));
                }
            }
        }
        let detail = notes.join("; ");
        if failed {
            check(
                "signature",
                Status::Fail,
                format!("signature check failed: {detail}"),
            )
        } else if key_id.is_some() {
            check(
                "signature",
                Status::Pass,
                format!("Ed25519 signature verified: {detail}"),
            )
        } else {
            check(
                "signature",
                Status::Fail,
                format!("no signature by a trusted key: {detail}"),
            )
        }
    };
    let signed = signature.status == Status::Pass;
    checks.push(signature);

    let mut warnings = Vec::new();
    if doc["attestation"]["disposition"] == "autonomous" {
        warnings
            .push("attestation: autonomous (no human accepted the risk of this decision)".into());
    }
    let independence = &doc["quorum"]["independence"];
    if independence["disclosed"] == true
        && independence["distinct_model_families"]
            .as_u64()
            .unwrap_or(0)
            < 2
    {
        warnings.push(
            "quorum.independence: a single model family (limited adversarial diversity)".into(),
        );
    }
    if doc["confidence"]["calibration"]["status"] == "absent" {
        warnings.push("confidence: present but not calibrated".into());
    }
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    Verification {
        verified: signed && !failed,
        receipt_id,
        odr_digest: digest,
        key_id,
        checks,
        warnings,
    }
}

/// The transcript check: the events (the whole log, as the events API serves it) hash to
/// the receipt's `subject.digest`.
pub fn verify_chain(doc: &Value, events: &[Value]) -> Check {
    let digest = &doc["subject"]["digest"];
    if digest["alg"] != CHAIN_ALG {
        return check(
            "event_chain",
            Status::Fail,
            format!("subject.digest.alg is {}, not {CHAIN_ALG}", digest["alg"]),
        );
    }
    let debate_id = doc["subject"]["identifier"].as_str().unwrap_or_default();
    if let Err(e) = chain::check_log(events, debate_id) {
        return check("event_chain", Status::Fail, e.to_string());
    }
    let head = chain::chain_head(events);
    if digest["value"].as_str() == Some(head.as_str()) {
        check(
            "event_chain",
            Status::Pass,
            format!(
                "the {} events of debate {debate_id} hash to the receipt's transcript digest",
                events.len()
            ),
        )
    } else {
        check(
            "event_chain",
            Status::Fail,
            format!(
                "the {} events hash to {head}, but the receipt binds {}: the transcript differs",
                events.len(),
                digest["value"].as_str().unwrap_or("nothing")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_documents_fail_cleanly() {
        let inputs = [
            serde_json::json!(null),
            serde_json::json!([1, 2]),
            serde_json::json!("x"),
            serde_json::json!({"odr_version": "0.2", "signatures": [{"signature": "é".repeat(64), "key_id": "k", "alg": "Ed25519"}]}),
        ];
        for doc in inputs {
            let r = verify(&doc, &|_| None);
            assert!(!r.verified);
            assert!(r.failed(), "{doc}");
        }
        // A 128-byte signature of multi-byte characters is not hex and does not panic.
        assert!(decode_signature(&"é".repeat(64)).is_none());
        assert!(decode_signature(&"0".repeat(128)).is_some());
    }
}
