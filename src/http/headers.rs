//! Header lookups on the request path.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// Most header values a lookup walks instead of hashing the name.
const WALK_UP_TO: usize = 8;

/// The first value of `name` in `headers`, as `HeaderMap::get` gives it. Most API clients
/// send two to five headers, and the ones looked up on every request (correlation id,
/// credentials, `Origin`) are usually absent: walking a few entries and comparing names
/// costs less than hashing the name and probing the table for a miss.
pub fn first<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.len() <= WALK_UP_TO {
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    } else {
        headers.get(name)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};

    use super::*;

    /// The walk and the table agree: same first value, same misses, for small and large maps,
    /// repeated names and custom names.
    #[test]
    fn the_walk_finds_what_the_table_finds() {
        let custom = HeaderName::from_static("x-correlation-id");
        for extra in [0usize, 3, 7, 8, 9, 20] {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, HeaderValue::from_static("example.com"));
            for i in 0..extra {
                headers.append(
                    HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            headers.append(ORIGIN, HeaderValue::from_static("https://a.example"));
            headers.append(ORIGIN, HeaderValue::from_static("https://b.example"));
            headers.insert(custom.clone(), HeaderValue::from_static("corr-1"));
            for name in [&HOST, &ORIGIN, &custom, &AUTHORIZATION] {
                assert_eq!(
                    first(&headers, name),
                    headers.get(name),
                    "{name} among {extra}"
                );
            }
            assert_eq!(first(&headers, &ORIGIN).unwrap(), "https://a.example");
            assert!(first(&headers, &AUTHORIZATION).is_none());
        }
    }
}
