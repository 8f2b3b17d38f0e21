//! `aragora receipt verify FILE [--events EVENTS.json] [--pubkey PEM] [--json]`: offline
//! verification with nothing but the files.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::keys;
use super::verify::{self, Status};
use crate::cli::say_raw;

fn read_json(what: &str, path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{what} {} is not JSON: {e}", path.display()))
}

/// The events of an events page (`{"events": [...]}`), an export (`{"debate", "events"}`)
/// or a bare array.
fn events_of(value: Value) -> Result<Vec<Value>, String> {
    match value {
        Value::Array(list) => Ok(list),
        Value::Object(mut obj) => match obj.remove("events") {
            Some(Value::Array(list)) => Ok(list),
            _ => Err("the events file has no `events` array".into()),
        },
        _ => Err("the events file must hold an `events` array".into()),
    }
}

pub fn verify(
    file: &Path,
    events: Option<&Path>,
    pubkey: Option<&Path>,
    as_json: bool,
) -> ExitCode {
    let input = (|| {
        let doc = read_json("receipt", file)?;
        let key = match pubkey {
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read public key {}: {e}", path.display()))?;
                Some(keys::public_key_from_pem(&pem).ok_or_else(|| {
                    format!(
                        "{}: not an Ed25519 public key in PEM (-----BEGIN PUBLIC KEY-----)",
                        path.display()
                    )
                })?)
            }
            None => None,
        };
        let events = match events {
            Some(path) => Some(events_of(read_json("events", path)?)?),
            None => None,
        };
        Ok::<_, String>((doc, key, events))
    })();
    let (doc, key, events) = match input {
        Ok(input) => input,
        Err(why) => {
            eprintln!("aragora receipt verify: {why}");
            return ExitCode::from(2);
        }
    };
    // With --pubkey, that key is the only one trusted, whatever key id a signature names.
    let mut result = verify::verify(&doc, &|_| key);
    let unchecked = key.is_none() && !doc["signatures"].as_array().is_none_or(Vec::is_empty);
    if unchecked && let Some(sig) = result.checks.iter_mut().find(|c| c.name == "signature") {
        sig.status = Status::Skip;
        sig.detail = "signed, but no --pubkey was given: the signature was not checked".into();
    }
    match &events {
        Some(events)
            if !result
                .checks
                .iter()
                .any(|c| c.name == "schema_conformance" && c.status == Status::Fail) =>
        {
            result.checks.push(verify::verify_chain(&doc, events));
        }
        _ => {}
    }
    let failed = result.failed();
    // Not failed and not verified: unsigned, or signed without --pubkey to check it.
    let verdict = if failed {
        "FAILED"
    } else if result.verified {
        "VERIFIED"
    } else {
        "UNVERIFIED"
    };
    if as_json {
        let mut out = serde_json::to_value(&result).unwrap_or_default();
        out["verdict"] = json!(verdict);
        say_raw(&format!("{out:#}\n"));
    } else {
        let mut text = format!("Decision receipt {}: {verdict}\n", result.receipt_id);
        if !result.odr_digest.is_empty() {
            text.push_str(&format!("  odr_digest: sha-256:{}\n", result.odr_digest));
        }
        for check in &result.checks {
            let mark = match check.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Warn => "WARN",
                Status::Skip => "----",
            };
            text.push_str(&format!("  [{mark}] {}: {}\n", check.name, check.detail));
        }
        for warning in &result.warnings {
            text.push_str(&format!("  ! {warning}\n"));
        }
        say_raw(&text);
    }
    match verdict {
        "FAILED" => ExitCode::from(1),
        "VERIFIED" => ExitCode::SUCCESS,
        _ => ExitCode::from(3),
    }
}
