//! HS256 access tokens (sub, role, iat, exp, jti, type) and opaque refresh tokens.
//!
//! Verification accepts HS256 only: `alg: none`, RS256/ES256 headers (algorithm confusion)
//! and every other algorithm are rejected before the signature is looked at.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::keys;

/// Clock skew tolerated on `exp`/`iat`, seconds.
pub const LEEWAY_SECONDS: u64 = 5;
pub const ACCESS: &str = "access";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// A signed access token for `user_id` valid for `ttl_seconds`.
pub fn issue_access(
    secret: &[u8],
    user_id: &str,
    role: &str,
    ttl_seconds: u64,
) -> Result<String, SignError> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: user_id.to_owned(),
        role: role.to_owned(),
        iat: now,
        exp: now + ttl_seconds as i64,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        kind: ACCESS.to_owned(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(SignError)
}

/// An access token could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign a token: {0}")]
pub struct SignError(#[source] pub jsonwebtoken::errors::Error);

/// The claims of a valid access token; `None` for anything else (bad signature, other
/// algorithm, expired, missing claims, not an access token). The reason is not reported:
/// callers answer one generic 401.
pub fn verify_access(secret: &[u8], token: &str) -> Option<Claims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "iat", "sub"]);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_exp = true;
    let data =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
            .ok()?;
    let now = chrono::Utc::now().timestamp();
    // A token from the future (beyond the skew) was not issued by this server's clock.
    if data.claims.kind != ACCESS || data.claims.iat > now + LEEWAY_SECONDS as i64 {
        return None;
    }
    Some(data.claims)
}

/// Whether a bearer string has the shape of a JWT (three dot-separated parts).
pub fn looks_like_jwt(s: &str) -> bool {
    s.split('.').count() == 3
}

/// A new opaque refresh token: (token, SHA-256 hex to store).
pub fn new_refresh_token() -> (String, String) {
    let token = format!("art_{}", keys::random_alnum(48));
    let hash = keys::sha256_hex(&token);
    (token, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip_and_wrong_secret() {
        let token = issue_access(SECRET, "u1", "member", 60).unwrap();
        let claims = verify_access(SECRET, &token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.role.as_str()),
            ("u1", "member")
        );
        assert_eq!(claims.kind, "access");
        assert!(verify_access(b"another secret of at least 32 bytes!", &token).is_none());
    }

    #[test]
    fn expired_tokens_are_rejected() {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: "u1".into(),
            role: "owner".into(),
            iat: now - 100,
            exp: now - 30,
            jti: "j".into(),
            kind: ACCESS.into(),
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(verify_access(SECRET, &token).is_none());
    }
}
