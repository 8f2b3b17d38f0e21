//! Text that reaches storage is checked once, here, for both backends: Postgres cannot store
//! NUL in TEXT and SQLite can, so without this a NUL was a 500 on one backend and a success
//! on the other. Control characters are refused with the field that held them.

use serde_json::Value;

/// The first character of `s` that may not be stored: NUL and the other C0 controls and DEL;
/// with `multiline`, tab, newline and carriage return are allowed.
pub fn forbidden_char(s: &str, multiline: bool) -> Option<char> {
    s.chars()
        .find(|&c| c.is_control() && !(multiline && matches!(c, '\t' | '\n' | '\r')))
}

/// A value refused for a character that may not be stored: the field (or JSON path) that
/// held it, and the character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` contains a control character (U+{code:04X}); remove it", code = u32::from(*.ch))]
pub struct ControlChar {
    pub field: String,
    pub ch: char,
}

/// Why `s`, the value of `field`, is refused.
pub fn check(field: &str, s: &str, multiline: bool) -> Result<(), ControlChar> {
    match forbidden_char(s, multiline) {
        None => Ok(()),
        Some(ch) => Err(ControlChar {
            field: field.to_owned(),
            ch,
        }),
    }
}

/// Every string and key of a JSON value, named by its path under `field`
/// (`metadata.tags[2]`); tabs and newlines are allowed in values, not in keys.
pub fn check_json(field: &str, value: &Value) -> Result<(), ControlChar> {
    match value {
        Value::String(s) => check(field, s, true),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_json(&format!("{field}[{i}]"), v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let path = format!("{field}.{k}");
            check(&path, k, false)?;
            check_json(&path, v)
        }),
        _ => Ok(()),
    }
}

/// Percent-decode one path segment (invalid escapes are kept as they are).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                hex(bytes.get(i + 1).copied()),
                hex(bytes.get(i + 2).copied()),
            )
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: Option<u8>) -> Option<u8> {
    match b? {
        c @ b'0'..=b'9' => Some(c - b'0'),
        c @ b'a'..=b'f' => Some(c - b'a' + 10),
        c @ b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The first path segment or query value of a request that holds a control character:
/// (`path` or the query parameter's name, the refusal).
pub fn check_uri(path: &str, query: Option<&str>) -> Result<(), (String, String)> {
    // Printable ASCII without escapes cannot hold a control character: the common case.
    let plain = |text: &str| text.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'%');
    if plain(path) && query.is_none_or(plain) {
        return Ok(());
    }
    for segment in path.split('/') {
        if segment.contains('%') || forbidden_char(segment, false).is_some() {
            check("path", &percent_decode(segment), false)
                .map_err(|e| ("path".into(), e.to_string()))?;
        }
    }
    if let Some(q) = query {
        for (name, value) in url::form_urlencoded::parse(q.as_bytes()) {
            check(&name, &value, false).map_err(|e| (e.field.clone(), e.to_string()))?;
            check("query parameter name", &name, false)
                .map_err(|e| ("query".into(), e.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uris_are_refused_only_for_control_characters_escaped_or_not() {
        assert!(check_uri("/api/debates/abc", None).is_ok());
        assert!(check_uri("/api/debates", Some("status=running&limit=5+1")).is_ok());
        assert!(check_uri("/api/agents/caf%C3%A9", Some("q=%20x")).is_ok());
        assert_eq!(check_uri("/api/debates/a%00b", None).unwrap_err().0, "path");
        assert_eq!(
            check_uri("/api/debates", Some("status=%01")).unwrap_err().0,
            "status"
        );
        assert_eq!(
            check_uri("/api/debates", Some("st%0Aatus=1"))
                .unwrap_err()
                .0,
            "query"
        );
    }

    #[test]
    fn nul_and_controls_are_named_tabs_and_newlines_allowed_in_prose() {
        assert!(check("task", "a\nb\tc\r", true).is_ok());
        assert!(
            check("task", "a\u{0}b", true)
                .unwrap_err()
                .to_string()
                .contains("U+0000")
        );
        assert!(check("id", "a\nb", false).is_err());
        assert!(check("task", "a\u{7f}", true).is_err());
        assert!(check("task", "ünïcødé ✓", true).is_ok());
    }

    #[test]
    fn json_paths_name_the_offending_string() {
        let v = json!({"ok": "fine", "tags": ["a", "b\u{0}"]});
        assert_eq!(
            check_json("metadata", &v).unwrap_err().field,
            "metadata.tags[1]"
        );
        let v = json!({"bad\u{1}key": 1});
        assert!(
            check_json("metadata", &v)
                .unwrap_err()
                .field
                .starts_with("metadata.bad")
        );
        assert!(check_json("metadata", &json!({"n": 1, "x": null})).is_ok());
    }

    #[test]
    fn uri_checks_decode_path_and_query() {
        assert_eq!(
            check_uri("/api/debates/abc%00def", None).unwrap_err().0,
            "path"
        );
        assert_eq!(
            check_uri("/api/leaderboard", Some("domain=a%00b&limit=3"))
                .unwrap_err()
                .0,
            "domain"
        );
        assert!(check_uri("/api/debates/abc", Some("status=running&x=%20y")).is_ok());
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }
}
