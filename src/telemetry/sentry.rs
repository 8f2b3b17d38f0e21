//! Error reporting to Sentry when `SENTRY_DSN` is set.
//!
//! ERROR events (through the tracing layer installed by `logging::init`) and panics (the
//! panic integration) are sent with the tags `correlation_id` and `debate_id` taken from the
//! request and span they happened in. Every event passes [`Scrubber`] first: known secret values (JWT
//! secret, API token, provider keys, the database and Redis URLs' passwords) and anything that
//! looks like a credential (`Authorization`/`Bearer …`, `sk-…`, `ara_…`, `password=…`,
//! `token=…`, `api_key=…`) are replaced with `[Filtered]`, and request headers and cookies
//! are dropped.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use ::sentry::protocol::{Event, Value};

use crate::config::Config;

/// Keeps the Sentry client alive; dropping it flushes pending events (bounded).
pub struct SentryGuard(#[allow(dead_code)] ::sentry::ClientInitGuard);

/// Whether a Sentry client was started: the log layers that feed Sentry (breadcrumbs, error
/// events) do nothing otherwise, so they skip building breadcrumbs that nobody would send.
static REPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn reporting() -> bool {
    REPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Start reporting when `config.logging.sentry_dsn` is set. An unusable DSN is logged and ignored
/// (error reporting must not stop the server).
pub fn init(config: &Config) -> Option<SentryGuard> {
    let dsn = config.logging.sentry_dsn.as_ref()?;
    crate::agents::http::install_crypto_provider();
    let dsn = match dsn.expose().parse::<::sentry::types::Dsn>() {
        Ok(dsn) => dsn,
        Err(err) => {
            eprintln!("aragora: SENTRY_DSN is not a valid DSN ({err}); error reporting is off");
            return None;
        }
    };
    let scrubber = Arc::new(Scrubber::from_config(config));
    let mut options = ::sentry::ClientOptions::default();
    options.dsn = Some(dsn);
    options.release = Some(Cow::Borrowed(concat!(
        "aragora@",
        env!("CARGO_PKG_VERSION")
    )));
    options.environment = Some(Cow::Borrowed(match config.env {
        crate::config::Environment::Development => "development",
        crate::config::Environment::Production => "production",
    }));
    options.send_default_pii = false;
    options.attach_stacktrace = true;
    options.shutdown_timeout = std::time::Duration::from_secs(2);
    options.before_send = Some(Arc::new(move |event| Some(prepare(event, &scrubber))));
    let guard = SentryGuard(::sentry::init(options));
    REPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    Some(guard)
}

/// Tag the event with the ids of the request and span it happened in, then scrub it.
fn prepare(mut event: Event<'static>, scrubber: &Scrubber) -> Event<'static> {
    let ids = super::errors::current_span_ids();
    let fields = event
        .contexts
        .get("Rust Tracing Fields")
        .and_then(|c| match c {
            ::sentry::protocol::Context::Other(map) => Some(map.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let from_fields = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_owned);
    let correlation_id = from_fields("correlation_id")
        .or(ids.correlation_id)
        .or_else(super::correlation::current);
    let debate_id = from_fields("debate_id").or(ids.debate_id);
    if let Some(id) = correlation_id {
        event.tags.insert("correlation_id".into(), id);
    }
    if let Some(id) = debate_id {
        event.tags.insert("debate_id".into(), id);
    }
    scrubber.scrub_event(&mut event);
    event
}

/// Removes secrets from events before they leave the process.
#[derive(Debug, Default, Clone)]
pub struct Scrubber {
    /// Exact secret values configured in this process (at least 6 characters long).
    secrets: Vec<String>,
}

const FILTERED: &str = "[Filtered]";

/// Keys whose values are secrets wherever they appear (`key=value`, `"key": "value"`, maps).
const SECRET_KEYS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "api_key",
    "apikey",
    "api-key",
    "x-api-key",
    "token",
    "access_token",
    "refresh_token",
    "password",
    "passwd",
    "secret",
    "jwt_secret",
    "cookie",
    "set-cookie",
];

impl Scrubber {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 6).collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    pub fn from_config(config: &Config) -> Self {
        let mut secrets: Vec<String> = config.secret_values();
        for url in [
            Some(config.database.url.expose().to_owned()),
            config.redis.url.as_ref().map(|u| u.expose().to_owned()),
        ]
        .into_iter()
        .flatten()
        {
            if let Ok(parsed) = url::Url::parse(&url)
                && let Some(password) = parsed.password()
            {
                secrets.push(password.to_owned());
            }
        }
        Self::new(secrets)
    }

    /// Scrub one string.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), FILTERED);
            }
        }
        out = scrub_prefixed(&out, "Bearer ");
        out = scrub_prefixed(&out, "bearer ");
        out = scrub_prefixed(&out, "Basic ");
        out = scrub_token_like(&out, "sk-");
        out = scrub_token_like(&out, "ara_");
        for key in SECRET_KEYS {
            out = scrub_key_values(&out, key);
        }
        // URL userinfo: scheme://user:password@host
        scrub_url_passwords(&out)
    }

    fn scrub_value(&self, key: Option<&str>, value: &mut Value) {
        if key.is_some_and(is_secret_key) {
            *value = Value::String(FILTERED.to_owned());
            return;
        }
        match value {
            Value::String(s) => *s = self.scrub(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.scrub_value(None, v)),
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    self.scrub_value(Some(k), v);
                }
            }
            _ => {}
        }
    }

    fn scrub_map(&self, map: &mut BTreeMap<String, Value>) {
        for (k, v) in map.iter_mut() {
            self.scrub_value(Some(k), v);
        }
    }

    pub fn scrub_event(&self, event: &mut Event<'static>) {
        if let Some(message) = &mut event.message {
            *message = self.scrub(message);
        }
        if let Some(logentry) = &mut event.logentry {
            logentry.message = self.scrub(&logentry.message);
        }
        for exception in &mut event.exception.values {
            if let Some(value) = &mut exception.value {
                *value = self.scrub(value);
            }
        }
        for tag in event.tags.values_mut() {
            *tag = self.scrub(tag);
        }
        self.scrub_map(&mut event.extra);
        for context in event.contexts.values_mut() {
            if let ::sentry::protocol::Context::Other(map) = context {
                self.scrub_map(map);
            }
        }
        for crumb in &mut event.breadcrumbs.values {
            if let Some(message) = &mut crumb.message {
                *message = self.scrub(message);
            }
            self.scrub_map(&mut crumb.data);
        }
        if let Some(request) = &mut event.request {
            request.headers.clear();
            request.cookies = None;
            request.env.clear();
            if let Some(query) = &mut request.query_string {
                *query = self.scrub(query);
            }
            if let Some(data) = &mut request.data {
                *data = self.scrub(data);
            }
        }
    }
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.contains(&key.as_str())
        || key.ends_with("_key")
        || key.ends_with("_token")
        || key.ends_with("_secret")
        || key.contains("password")
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=')
}

/// `<prefix><token>` → `<prefix>[Filtered]`.
fn scrub_prefixed(text: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        out.push_str(&rest[..at + prefix.len()]);
        rest = &rest[at + prefix.len()..];
        let end = rest.find(|c: char| !is_token_char(c)).unwrap_or(rest.len());
        if end > 0 {
            out.push_str(FILTERED);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A token starting with `prefix` at a word boundary (`sk-abc…`, `ara_…`) → `[Filtered]`.
fn scrub_token_like(text: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let boundary = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !is_token_char(c));
        let tail = &rest[at + prefix.len()..];
        let end = tail.find(|c: char| !is_token_char(c)).unwrap_or(tail.len());
        out.push_str(&rest[..at]);
        if boundary && end >= 8 {
            out.push_str(FILTERED);
        } else {
            out.push_str(&rest[at..at + prefix.len() + end]);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `key=value`, `key: value`, `"key":"value"` (key matched case-insensitively) → value filtered.
fn scrub_key_values(text: &str, key: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find(key) {
        let at = search + found;
        let after = at + key.len();
        search = after;
        let before_ok = lower[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if !before_ok {
            continue;
        }
        // Separator: optional quote, then `=` or `:`, spaces, optional quote.
        let bytes = text.as_bytes();
        let mut i = after;
        if bytes.get(i) == Some(&b'"') {
            i += 1;
        }
        if !matches!(bytes.get(i), Some(b'=' | b':')) {
            continue;
        }
        i += 1;
        while bytes.get(i) == Some(&b' ') {
            i += 1;
        }
        let quoted = bytes.get(i) == Some(&b'"');
        if quoted {
            i += 1;
        }
        if !quoted && matches!(key, "authorization" | "proxy-authorization") {
            // `Authorization: Bearer x`: keep the scheme word, filter the credential.
            let word = text[i..]
                .find(|c: char| !c.is_ascii_alphabetic())
                .map_or(text.len(), |e| i + e);
            if bytes.get(word) == Some(&b' ') && word > i {
                i = word + 1;
            }
        }
        let value_end = if quoted {
            text[i..].find('"').map_or(text.len(), |e| i + e)
        } else {
            text[i..]
                .find(|c: char| c.is_whitespace() || [',', ';', '&', '}', '"'].contains(&c))
                .map_or(text.len(), |e| i + e)
        };
        if value_end == i {
            continue;
        }
        out.push_str(&text[copied..i]);
        out.push_str(FILTERED);
        copied = value_end;
        search = value_end.max(search);
    }
    out.push_str(&text[copied..]);
    out
}

/// `scheme://user:password@host` → `scheme://user:[Filtered]@host`.
fn scrub_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        out.push_str(&rest[..at + 3]);
        rest = &rest[at + 3..];
        let authority_end = rest
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"')
            .unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at_sign) = authority.rfind('@')
            && let Some(colon) = authority[..at_sign].find(':')
        {
            out.push_str(&authority[..=colon]);
            out.push_str(FILTERED);
            out.push_str(&authority[at_sign..]);
        } else {
            out.push_str(authority);
        }
        rest = &rest[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_known_secrets_and_credential_shapes() {
        let s = Scrubber::new(["super-secret-jwt-value".to_owned(), "short".to_owned()]);
        let text = "jwt super-secret-jwt-value; Authorization: Bearer abc.def-123 key sk-ant-REALLYLONGKEY123 \
                    ara_0123456789abcdef password=hunter22 api_key=xyz token: tok123 \
                    postgres://aragora:pgpass@db:5432/aragora keep short sk-no";
        let out = s.scrub(text);
        for secret in [
            "super-secret-jwt-value",
            "abc.def-123",
            "REALLYLONGKEY123",
            "0123456789abcdef",
            "hunter22",
            "xyz",
            "tok123",
            "pgpass",
        ] {
            assert!(!out.contains(secret), "{secret} left in {out}");
        }
        assert!(
            out.contains("postgres://aragora:[Filtered]@db:5432/aragora"),
            "{out}"
        );
        assert!(out.contains("keep short sk-no"), "{out}");
        assert!(out.starts_with("jwt [Filtered];"), "{out}");
    }

    #[test]
    fn scrubs_every_part_of_an_event() {
        let s = Scrubber::new(["sk-test-provider-key-1234".to_owned()]);
        let mut event = Event {
            message: Some("call failed with sk-test-provider-key-1234".into()),
            ..Event::default()
        };
        event
            .extra
            .insert("api_key".into(), Value::String("plain".into()));
        event.extra.insert(
            "nested".into(),
            serde_json::json!({"password": "p", "note": "Bearer zzzzzz"}),
        );
        event.tags.insert("correlation_id".into(), "corr-1".into());
        event.request = Some(::sentry::protocol::Request {
            headers: [("Authorization".to_owned(), "Bearer qqq".to_owned())].into(),
            ..Default::default()
        });
        s.scrub_event(&mut event);
        let json = serde_json::to_string(&event).unwrap();
        for secret in [
            "sk-test-provider-key-1234",
            "plain",
            "\"p\"",
            "zzzzzz",
            "qqq",
        ] {
            assert!(!json.contains(secret), "{secret} left in {json}");
        }
        assert_eq!(event.tags["correlation_id"], "corr-1");
    }
}
