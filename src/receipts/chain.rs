//! The transcript digest a receipt binds: a SHA-256 hash chain over the debate's durable
//! event log, each event in the exact JSON form `GET /api/debates/{id}/events` serves it.
//!
//! ```text
//! link_0 = 32 zero bytes
//! link_i = SHA-256(link_{i-1} ‖ JCS(event_i))      for the events in seq order 1..n
//! head   = hex(link_n)
//! ```
//!
//! Anyone holding the events can recompute the head (`aragora receipt verify --events`);
//! changing, dropping, reordering or adding an event changes it.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::store::StoredEvent;

/// The name the receipt's `subject.digest.alg` gives this recipe.
pub const CHAIN_ALG: &str = "aragora-event-chain-sha256";

/// An event as the API serves it (and as the chain hashes it).
pub fn event_json(e: &StoredEvent) -> Value {
    json!({
        "type": e.kind,
        "debate_id": e.debate_id,
        "seq": e.seq,
        "timestamp": e.timestamp,
        "round": e.round,
        "agent": e.agent,
        "data": e.data,
    })
}

/// RFC 8785 canonical bytes of a JSON value. A `serde_json::Value` holds no NaN or
/// infinity and only string keys, so this cannot fail.
pub fn canonical(value: &Value) -> Vec<u8> {
    serde_json_canonicalizer::to_vec(value).expect("a serde_json::Value is always JCS-serialisable")
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The chain head over `events`, in the order given.
pub fn chain_head<'a>(events: impl IntoIterator<Item = &'a Value>) -> String {
    let mut link = [0u8; 32];
    for event in events {
        let mut h = Sha256::new();
        h.update(link);
        h.update(canonical(event));
        link = h.finalize().into();
    }
    hex(&link)
}

/// Why a set of events cannot be the whole log of one debate (events are numbered from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("the event list is empty")]
    Empty,
    #[error(
        "event {index} has seq {seq}, expected {expected}: the log must be whole and in order \
         (fetch every page of /api/debates/{{id}}/events)"
    )]
    OutOfOrder {
        index: usize,
        seq: i64,
        expected: i64,
    },
    #[error("event {0} has no numeric `seq`")]
    NoSeq(usize),
    #[error("event seq {seq} belongs to debate {other}, not {debate_id}")]
    OtherDebate {
        seq: i64,
        other: String,
        debate_id: String,
    },
}

/// Why a set of events cannot be the whole log of one debate.
pub fn check_log(events: &[Value], debate_id: &str) -> Result<(), LogError> {
    if events.is_empty() {
        return Err(LogError::Empty);
    }
    for (i, e) in events.iter().enumerate() {
        let want = i as i64 + 1;
        match e.get("seq").and_then(Value::as_i64) {
            Some(seq) if seq == want => {}
            Some(seq) => {
                return Err(LogError::OutOfOrder {
                    index: i + 1,
                    seq,
                    expected: want,
                });
            }
            None => return Err(LogError::NoSeq(i + 1)),
        }
        if let Some(id) = e.get("debate_id").and_then(Value::as_str)
            && id != debate_id
        {
            return Err(LogError::OtherDebate {
                seq: want,
                other: id.to_owned(),
                debate_id: debate_id.to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64, text: &str) -> Value {
        json!({"type": "agent_message", "debate_id": "d1", "seq": seq, "timestamp": "2026-12-03T10:00:00.123456Z",
               "round": 1, "agent": "a", "data": {"content": text, "share": 0.5}})
    }

    #[test]
    fn chain_of_nothing_is_zero_and_each_link_hashes_the_previous_one() {
        assert_eq!(chain_head(std::iter::empty()), "0".repeat(64));
        let events = [ev(1, "x"), ev(2, "y")];
        let mut first = Sha256::new();
        first.update([0u8; 32]);
        first.update(canonical(&events[0]));
        let first: [u8; 32] = first.finalize().into();
        let mut second = Sha256::new();
        second.update(first);
        second.update(canonical(&events[1]));
        assert_eq!(chain_head(&events), hex(&second.finalize()));
    }

    #[test]
    fn any_change_to_the_log_changes_the_head() {
        let log = [ev(1, "x"), ev(2, "y"), ev(3, "z")];
        let head = chain_head(&log);
        let edited = [ev(1, "x"), ev(2, "Y"), ev(3, "z")];
        let reordered = [ev(1, "x"), ev(3, "z"), ev(2, "y")];
        assert_ne!(chain_head(&edited), head);
        assert_ne!(chain_head(&reordered), head);
        assert_ne!(chain_head(&log[..2]), head);
        // Member order and whitespace in the source JSON do not matter: JCS fixes them.
        let respelled: Value = serde_json::from_str(
            r#"{"data": {"share": 0.50, "content": "x"}, "agent": "a", "round": 1,
                "timestamp": "2026-12-03T10:00:00.123456Z", "seq": 1, "debate_id": "d1", "type": "agent_message"}"#,
        )
        .unwrap();
        assert_eq!(chain_head([&respelled]), chain_head([&log[0]]));
    }

    #[test]
    fn a_log_with_a_gap_or_another_debates_event_is_named() {
        let err = check_log(&[ev(1, "x"), ev(3, "z")], "d1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("seq 3, expected 2"), "{err}");
        let err = check_log(&[ev(1, "x")], "d2").unwrap_err().to_string();
        assert!(err.contains("belongs to debate d1"), "{err}");
        assert!(check_log(&[], "d1").is_err());
        check_log(&[ev(1, "x"), ev(2, "y")], "d1").unwrap();
    }

    /// RFC 8785's number forms (ECMAScript shortest round-trip), key order by UTF-16 code
    /// units and minimal string escaping, through the crate the receipts use.
    #[test]
    fn canonical_json_follows_rfc_8785() {
        let text = |v: Value| String::from_utf8(canonical(&v)).unwrap();
        assert_eq!(text(json!(100.0)), "100");
        assert_eq!(text(json!(1e21)), "1e+21");
        assert_eq!(text(json!(1e-6)), "0.000001");
        assert_eq!(text(json!(1e-7)), "1e-7");
        assert_eq!(text(json!(-0.0)), "0");
        assert_eq!(text(json!(0.1 + 0.2)), "0.30000000000000004");
        assert_eq!(
            text(json!(123456789012345680000.0)),
            "123456789012345680000"
        );
        assert_eq!(text(json!(9007199254740993u64)), "9007199254740992");
        // U+20AC (€) sorts before U+1F600 (😀, a surrogate pair 0xD83D…) by UTF-16 code
        // units although its UTF-8 bytes sort after; "\r" and "1" before "a".
        let v: Value =
            serde_json::from_str(r#"{"€": 1, "😀": 2, "a": 3, "\r": 4, "1": 5, "ö": 6}"#).unwrap();
        assert_eq!(
            text(v),
            "{\"\\r\":4,\"1\":5,\"a\":3,\"ö\":6,\"€\":1,\"😀\":2}"
        );
        assert_eq!(
            text(json!("tab\there \"q\" \u{1f} é \u{2028}")),
            "\"tab\\there \\\"q\\\" \\u001f é \u{2028}\""
        );
        assert_eq!(
            text(json!({"b": [1, {"d": true, "c": null}], "a": "x"})),
            r#"{"a":"x","b":[1,{"c":null,"d":true}]}"#
        );
    }
}
