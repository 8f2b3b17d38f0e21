//! Correlation IDs (every request and response carries one): taken from `X-Correlation-ID` or `X-Request-ID` when
//! well-formed, else generated as `corr-` + 12 hex. The id of the request being served is kept
//! in a task-local so error bodies and log lines can carry it without threading it through.

use axum::http::HeaderMap;
use rand::Rng;

pub const HEADER: &str = "x-correlation-id";
const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: String;
}

/// A fresh id: `corr-` followed by 12 lowercase hex digits.
pub fn generate() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u64 = rand::rng().random::<u64>();
    let mut id = String::with_capacity(17);
    id.push_str("corr-");
    for shift in (0..12).rev() {
        id.push(HEX[((n >> (shift * 4)) & 0xf) as usize] as char);
    }
    id
}

/// Accept a caller's id only if it is short and made of safe characters, so it can go into
/// logs and headers verbatim (no log injection, no header splitting).
pub fn is_well_formed(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The caller's id from the request headers, if present and well-formed.
pub fn from_headers(headers: &HeaderMap) -> Option<String> {
    [HEADER, REQUEST_ID_HEADER].iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| is_well_formed(v))
            .map(str::to_owned)
    })
}

/// Run `fut` with `id` as the current correlation id.
pub async fn scope<F: Future>(id: String, fut: F) -> F::Output {
    CURRENT.scope(id, fut).await
}

/// Run `f` with `id` as the current correlation id (synchronous code, such as building an
/// error response before a request's future exists).
pub fn sync_scope<R>(id: String, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(id, f)
}

/// The correlation id of the request being served, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_contract_shape() {
        for _ in 0..100 {
            let id = generate();
            assert_eq!(id.len(), 17);
            assert!(id.starts_with("corr-"));
            assert!(id[5..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn caller_ids_are_taken_only_when_well_formed() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "req-42".parse().unwrap());
        assert_eq!(from_headers(&h).as_deref(), Some("req-42"));
        h.insert("x-correlation-id", "corr-abc".parse().unwrap());
        assert_eq!(from_headers(&h).as_deref(), Some("corr-abc"));
        h.insert("x-correlation-id", "has space".parse().unwrap());
        h.remove("x-request-id");
        assert_eq!(from_headers(&h), None);
        assert!(!is_well_formed(&"a".repeat(129)));
        assert!(!is_well_formed(""));
    }
}
