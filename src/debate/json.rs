//! Tolerant extraction of a JSON object from model output: providers wrap JSON in prose,
//! in ```json fences, or add trailing commentary. Nothing is invented: when no object with
//! the wanted key can be found the caller gets `None` and records the output as unparseable.

use serde_json::{Map, Value};

/// The first JSON object in `text` that has the key `required`.
pub fn find_object(text: &str, required: &str) -> Option<Map<String, Value>> {
    candidates(text)
        .filter_map(|c| serde_json::from_str::<Value>(c).ok())
        .find_map(|v| match v {
            Value::Object(map) if map.contains_key(required) => Some(map),
            _ => None,
        })
}

/// Candidate JSON texts, most likely first: the whole text, fenced blocks, then every
/// balanced `{…}` span (string-aware, so braces inside strings don't confuse it).
fn candidates(text: &str) -> impl Iterator<Item = &str> {
    let mut out: Vec<&str> = vec![text.trim()];
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body_start = after.find('\n').map_or(0, |i| i + 1);
        let Some(end) = after[body_start..].find("```") else {
            break;
        };
        out.push(after[body_start..body_start + end].trim());
        rest = &after[body_start + end + 3..];
    }
    out.extend(balanced_objects(text));
    out.into_iter()
}

fn balanced_objects(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'{' {
            i += 1;
            continue;
        }
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        let mut end = None;
        for (j, &b) in bytes.iter().enumerate().skip(i) {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(j);
                        break;
                    }
                }
                _ => {}
            }
        }
        match end {
            Some(j) => {
                found.push(&text[i..=j]);
                i = j + 1;
            }
            None => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_fenced_and_embedded_objects() {
        assert!(find_object(r#"{"vote":"a"}"#, "vote").is_some());
        let fenced =
            "Here is my vote:\n```json\n{\"vote\": \"b\", \"confidence\": 0.7}\n```\nThanks.";
        assert_eq!(find_object(fenced, "vote").unwrap()["vote"], "b");
        let prose =
            "I pick {\"vote\": \"c\", \"reasoning\": \"it has {braces} in a string\"} overall.";
        assert_eq!(find_object(prose, "vote").unwrap()["vote"], "c");
        let two = r#"{"note": 1} and then {"vote": "d"}"#;
        assert_eq!(find_object(two, "vote").unwrap()["vote"], "d");
    }

    #[test]
    fn nothing_is_invented() {
        assert!(find_object("I vote for alice", "vote").is_none());
        assert!(find_object("{\"vote\": \"a\"", "vote").is_none());
        assert!(find_object("{\"choice\": \"a\"}", "vote").is_none());
    }
}
