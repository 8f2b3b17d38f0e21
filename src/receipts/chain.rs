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
///
/// Written straight into one buffer: members are sorted by their keys' UTF-16 code units,
/// every number is written as the IEEE double ECMAScript would print (`ryu-js`), strings
/// with JSON's minimal escapes. The tests check it byte for byte against an independent
/// RFC 8785 implementation.
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(&mut out, value);
    out
}

/// The canonical bytes of `value` without its member `skip` (an object's own member only;
/// any other value as [`canonical`]): what hashing a copy with that member removed gives,
/// without the copy.
pub fn canonical_without(value: &Value, skip: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    match value {
        Value::Object(map) => write_members(&mut out, map.iter().filter(|(k, _)| *k != skip)),
        other => write_canonical(&mut out, other),
    }
    out
}

/// Append the canonical bytes of `value` to `out`.
pub fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n.as_f64().unwrap_or(0.0)),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_members(out, map.iter()),
    }
}

/// An object of `members`, in RFC 8785 order.
fn write_members<'a>(out: &mut Vec<u8>, members: impl Iterator<Item = (&'a String, &'a Value)>) {
    let mut members: Vec<(&String, &Value)> = members.collect();
    // A map iterates in UTF-8 byte order (or insertion order, if serde_json's
    // `preserve_order` is ever enabled), which differs from UTF-16 order only for some
    // non-ASCII keys: sort unless already in order.
    if !members.is_sorted_by(|a, b| utf16_order(a.0, b.0).is_le()) {
        members.sort_unstable_by(|a, b| utf16_order(a.0, b.0));
    }
    out.push(b'{');
    for (i, (key, item)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.push(b':');
        write_canonical(out, item);
    }
    out.push(b'}');
}

/// RFC 8785 orders members by the UTF-16 code units of their keys.
fn utf16_order(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.as_bytes().cmp(b.as_bytes());
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

/// Every JSON number is an IEEE double in RFC 8785, printed as ECMAScript prints it.
fn write_number(out: &mut Vec<u8>, n: f64) {
    if n.is_finite() {
        out.extend_from_slice(ryu_js::Buffer::new().format_finite(n).as_bytes());
    } else {
        // Unreachable for a serde_json::Value; RFC 8785 has no form for it.
        out.extend_from_slice(b"null");
    }
}

/// A JSON string with only the escapes RFC 8785 requires: `"`, `\\`, and the controls below
/// U+0020 (`\b \t \n \f \r` by name, the rest as lowercase `\u00xx`).
fn write_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The canonical bytes of [`event_json`]`(e)`, written without building that value.
pub fn canonical_event(e: &StoredEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    // Keys in RFC 8785 order: agent, data, debate_id, round, seq, timestamp, type.
    out.extend_from_slice(b"{\"agent\":");
    match &e.agent {
        Some(a) => write_string(&mut out, a),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"data\":");
    write_canonical(&mut out, &e.data);
    out.extend_from_slice(b",\"debate_id\":");
    write_string(&mut out, &e.debate_id);
    out.extend_from_slice(b",\"round\":");
    match e.round {
        Some(r) => write_number(&mut out, f64::from(r)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"seq\":");
    #[allow(clippy::cast_precision_loss)] // as every JSON number: an IEEE double
    write_number(&mut out, e.seq as f64);
    out.extend_from_slice(b",\"timestamp\":");
    match serde_json::to_value(e.timestamp) {
        Ok(t) => write_canonical(&mut out, &t),
        Err(_) => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"type\":");
    write_string(&mut out, &e.kind);
    out.push(b'}');
    out
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
    link_all(events.into_iter().map(canonical))
}

/// The chain head over stored events as the API serves them (what [`chain_head`] gives for
/// their [`event_json`] forms).
pub fn chain_head_of_stored(events: &[StoredEvent]) -> String {
    link_all(events.iter().map(canonical_event))
}

fn link_all(canonical_events: impl Iterator<Item = Vec<u8>>) -> String {
    let mut link = [0u8; 32];
    for bytes in canonical_events {
        link = next_link(&link, &bytes);
    }
    hex(&link)
}

fn next_link(link: &[u8; 32], canonical_event: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(link);
    h.update(canonical_event);
    h.finalize().into()
}

/// The chain over a debate's log built as the log is written, one event at a time from seq
/// 1: at the end, [`ChainFold::head`] is what [`chain_head_of_stored`] gives for the whole log,
/// without reading it back.
#[derive(Debug, Clone, Default)]
pub struct ChainFold {
    link: [u8; 32],
    count: usize,
    last_seq: i64,
}

impl ChainFold {
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds in the next event of the log. `false`, folding nothing, when `event` is not the
    /// one after the last (a gap: someone else wrote to the log in between).
    pub fn push(&mut self, event: &StoredEvent) -> bool {
        if event.seq != self.last_seq + 1 {
            return false;
        }
        self.link = next_link(&self.link, &canonical_event(event));
        self.count += 1;
        self.last_seq = event.seq;
        true
    }

    pub fn head(&self) -> String {
        hex(&self.link)
    }

    /// How many events were folded in.
    pub fn count(&self) -> usize {
        self.count
    }
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

    /// A small deterministic generator of JSON values: nested arrays and objects, keys and
    /// strings drawn from ASCII, controls, Latin, the private-use area (U+E000…, which
    /// UTF-16 sorts after surrogate pairs) and astral characters, numbers from integers,
    /// decimals and raw bit patterns.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn text(&mut self) -> String {
            const CHARS: &[char] = &[
                'a',
                'b',
                'Z',
                '0',
                ' ',
                '"',
                '\\',
                '/',
                '\n',
                '\r',
                '\t',
                '\u{8}',
                '\u{c}',
                '\u{0}',
                '\u{1f}',
                '\u{7f}',
                'é',
                'ö',
                '€',
                '\u{2028}',
                '\u{e000}',
                '\u{fffd}',
                '😀',
                '\u{10ffff}',
            ];
            (0..self.below(8))
                .map(|_| CHARS[self.below(CHARS.len() as u64) as usize])
                .collect()
        }
        fn number(&mut self) -> Value {
            match self.below(5) {
                0 => json!(self.next() as i64),
                1 => json!(self.next()),
                2 => json!(self.below(2000) as i64 - 1000),
                3 => json!((self.below(100_000) as f64) / 1000.0),
                _ => {
                    let f = f64::from_bits(self.next());
                    if f.is_finite() { json!(f) } else { json!(0.5) }
                }
            }
        }
        fn value(&mut self, depth: u32) -> Value {
            match self.below(if depth > 3 { 4 } else { 6 }) {
                0 => Value::Null,
                1 => Value::Bool(self.below(2) == 0),
                2 => self.number(),
                3 => Value::String(self.text()),
                4 => (0..self.below(5)).map(|_| self.value(depth + 1)).collect(),
                _ => Value::Object(
                    (0..self.below(6))
                        .map(|_| (self.text(), self.value(depth + 1)))
                        .collect(),
                ),
            }
        }
    }

    #[test]
    fn canonical_bytes_match_an_independent_rfc_8785_implementation() {
        let mut generator = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let v = generator.value(0);
            let reference = serde_json_canonicalizer::to_vec(&v).unwrap();
            assert_eq!(
                String::from_utf8(canonical(&v)).unwrap(),
                String::from_utf8(reference).unwrap(),
                "for {v}"
            );
            // Without a member: the same as canonicalising a copy that lacks it.
            if let Some((key, _)) = v.as_object().and_then(|m| m.iter().next()) {
                let mut copy = v.clone();
                copy.as_object_mut().unwrap().remove(key);
                assert_eq!(canonical_without(&v, key), canonical(&copy), "for {v}");
            }
        }
    }

    #[test]
    fn a_stored_event_is_hashed_as_the_api_serves_it() {
        let mut generator = Gen(7);
        let timestamp = chrono::DateTime::parse_from_rfc3339("2026-12-03T10:00:00.123456Z")
            .unwrap()
            .to_utc();
        for i in 0..500 {
            let e = StoredEvent {
                debate_id: format!("deb-{i}"),
                seq: i64::from(i) * 7 + 1,
                kind: generator.text(),
                round: (i % 3 != 0).then_some(i - 100),
                agent: (i % 2 == 0).then(|| generator.text()),
                data: generator.value(1),
                timestamp: timestamp + chrono::Duration::microseconds(i64::from(i) * 1_001),
            };
            assert_eq!(
                canonical_event(&e),
                serde_json_canonicalizer::to_vec(&event_json(&e)).unwrap(),
                "for {}",
                event_json(&e)
            );
        }
        let events: Vec<StoredEvent> = (1..=3)
            .map(|seq| StoredEvent {
                debate_id: "d1".into(),
                seq,
                kind: "agent_message".into(),
                round: Some(1),
                agent: Some("a".into()),
                data: json!({"content": format!("text {seq}"), "share": 0.5}),
                timestamp,
            })
            .collect();
        let served: Vec<Value> = events.iter().map(event_json).collect();
        assert_eq!(chain_head_of_stored(&events), chain_head(&served));
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
