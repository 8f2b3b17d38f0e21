//! The browser admin console at `/admin` (docs/admin-console.md), served from the binary.
//!
//! The console's files are embedded with `include_bytes!`; only names in [`ASSETS`] are
//! served, so there is no filesystem access and no path to traverse. The console's settings
//! come from `GET /admin/config.json`. Every console response carries a strict CSP and the
//! other browser hardening headers, an ETag (If-None-Match → 304) and `Cache-Control:
//! no-cache` (browsers revalidate, so a new binary's console is picked up at once).
//!
//! These routes live outside `/api`: they are not rate limited, need no credentials (the
//! console's data comes from `/api`, which enforces roles) and are not in the OpenAPI
//! document. With `admin_console = false` they are not mounted at all (404).

use std::sync::{Arc, LazyLock};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::ApiError;

/// One embedded file of the console.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// Every file the console serves. Adding a file to `src/admin/assets/` means adding it here.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("assets/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "application/javascript; charset=utf-8",
        bytes: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("assets/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("assets/favicon.svg"),
    },
];

/// The quoted ETag of each asset, in [`ASSETS`] order, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> =
    LazyLock::new(|| ASSETS.iter().map(|a| etag_of(a.bytes)).collect());

/// `"<first 16 hex digits of the SHA-256 of the bytes>"`.
pub fn etag_of(bytes: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(bytes);
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
}

/// The console's view of the configuration, fixed at start-up.
struct Console {
    csp: HeaderValue,
    config_json: Vec<u8>,
    config_etag: HeaderValue,
}

/// The Content-Security-Policy of every console response. `connect-src` allows this origin,
/// WebSockets (the live debate view) and, when set, the configured API origin.
pub fn content_security_policy(config: &Config) -> String {
    let mut connect = String::from("'self' ws: wss:");
    if let Some(api) = &config.http.admin_api_url {
        connect.push(' ');
        connect.push_str(api);
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// The body of `GET /admin/config.json`.
pub fn console_config(config: &Config) -> serde_json::Value {
    json!({
        "api_base": config.http.admin_api_url.as_deref().unwrap_or(""),
        "version": env!("CARGO_PKG_VERSION"),
        "auth_enabled": config.auth_enabled(),
        "password_login": config.auth.jwt_secret.is_some(),
    })
}

/// The console's routes (`/admin`, `/admin/`, `/admin/config.json`, `/admin/{file}`) with
/// their handlers, or none when the console is turned off. Each is declared public where the
/// API is composed, under its own pattern (the label of its log lines and metrics).
pub fn routes<S: Clone + Send + Sync + 'static>(
    config: &Config,
) -> Vec<(&'static str, MethodRouter<S>)> {
    if !config.http.admin_console {
        return Vec::new();
    }
    let config_json = serde_json::to_vec(&console_config(config)).expect("JSON serializes");
    let console = Arc::new(Console {
        csp: HeaderValue::from_str(&content_security_policy(config))
            .expect("origins are validated, so the policy is a valid header value"),
        config_etag: etag_of(&config_json),
        config_json,
    });
    vec![
        ("/admin", get(index).with_state(console.clone())),
        ("/admin/", get(index).with_state(console.clone())),
        (
            "/admin/config.json",
            get(config_json_handler).with_state(console.clone()),
        ),
        ("/admin/{file}", get(asset).with_state(console)),
    ]
}

async fn index(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    serve_asset(&console, &headers, 0)
}

async fn asset(
    State(console): State<Arc<Console>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    match ASSETS.iter().position(|a| a.name == file) {
        Some(i) => serve_asset(&console, &headers, i),
        None => {
            let mut response =
                ApiError::NotFound(format!("the admin console has no file named `{file}`"))
                    .into_response();
            security_headers(&console, response.headers_mut());
            response
        }
    }
}

async fn config_json_handler(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    serve(
        &console,
        &headers,
        "application/json",
        &console.config_etag,
        console.config_json.clone(),
    )
}

fn serve_asset(console: &Console, headers: &HeaderMap, i: usize) -> Response {
    let asset = &ASSETS[i];
    serve(
        console,
        headers,
        asset.content_type,
        &ETAGS[i],
        asset.bytes.to_vec(),
    )
}

fn serve(
    console: &Console,
    request: &HeaderMap,
    content_type: &'static str,
    etag: &HeaderValue,
    body: Vec<u8>,
) -> Response {
    let mut response = if not_modified(request, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = body.into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag.clone());
    security_headers(console, h);
    response
}

/// The hardening headers of every console response.
fn security_headers(console: &Console, h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, console.csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

/// If-None-Match (a list, weak validators or `*`) matches `etag`.
fn not_modified(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|candidate| {
            candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_16_hex_digits_of_the_sha256() {
        let tag = etag_of(b"hello");
        // sha256("hello") = 2cf24dba5fb0a30e…
        assert_eq!(tag, "\"2cf24dba5fb0a30e\"");
        assert_eq!(ETAGS.len(), ASSETS.len());
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let tag = HeaderValue::from_static("\"0123456789abcdef\"");
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, &tag));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"0123456789abcdef\""),
        );
        assert!(not_modified(&h, &tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&h, &tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert!(!not_modified(&h, &tag));
    }
}
