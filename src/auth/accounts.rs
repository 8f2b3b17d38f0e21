//! Accounts over the store: password login with per-email lockout and a per-IP failure
//! limit, token issue, refresh rotation with reuse detection (a spent token presented again
//! revokes its whole family), logout revocation, registration and email validation, API
//! keys. The HTTP handlers (`http::auth`) keep what is HTTP: cookies, the Origin check and
//! the JSON bodies.
//!
//! Bad credentials always get the same answer whether or not the email exists, and a locked
//! unknown email answers exactly like a locked account. No token, key or password is ever
//! logged.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{CredentialCache, Principal, Role, keys, passwords, tokens};
use crate::config::{Config, Secret};
use crate::error::ApiError;
use crate::store::{ApiKeyRecord, DynStore, NewUser, RefreshTokenRecord, StoreError, User};

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// No JWT secret: there are no tokens to issue (404).
    #[error("password login is not configured on this server (no ARAGORA_JWT_SECRET)")]
    NotConfigured,
    /// Too many failed logins from this client IP (429).
    #[error("too many failed logins from this client; try again later")]
    TooManyFailures { retry_after: u64 },
    /// The email is not acceptable text (400).
    #[error(transparent)]
    BadEmail(crate::text::ControlChar),
    /// The email is locked after repeated failures (423).
    #[error("this account is temporarily locked after repeated failed logins; try again later")]
    Locked { retry_after: u64 },
    /// Wrong email or password, deliberately not told apart (401).
    #[error("invalid email or password")]
    BadCredentials,
    /// Unknown, expired, revoked or reused refresh token (401).
    #[error("invalid or expired refresh token")]
    InvalidRefresh,
    #[error("registration is disabled on this server")]
    RegistrationDisabled,
    /// A field of a new account is not valid (422).
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// API keys belong to user accounts (400).
    #[error("API keys belong to user accounts; this caller is not a user (log in first)")]
    NotAUser,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<AccountError> for ApiError {
    fn from(err: AccountError) -> ApiError {
        let message = err.to_string();
        match err {
            AccountError::NotConfigured | AccountError::RegistrationDisabled => {
                ApiError::NotFound(message)
            }
            AccountError::TooManyFailures { retry_after } => ApiError::TooManyRequests {
                message,
                retry_after,
            },
            AccountError::BadEmail(_) | AccountError::NotAUser => ApiError::BadRequest(message),
            AccountError::Locked { retry_after } => ApiError::Locked {
                message,
                retry_after,
            },
            AccountError::BadCredentials | AccountError::InvalidRefresh => {
                ApiError::Unauthorized(message)
            }
            AccountError::Invalid { field, message } => ApiError::Validation {
                field: field.into(),
                message,
            },
            AccountError::Store(e) => ApiError::from(e),
            AccountError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

/// A fresh access token and refresh token for `user`.
#[derive(Debug)]
pub struct Session {
    pub access_token: String,
    /// Seconds the access token is valid.
    pub expires_in: u64,
    pub refresh_token: String,
    /// Seconds the refresh token is valid.
    pub refresh_expires_in: u64,
    pub user: User,
}

/// A new API key: shown once, stored as its SHA-256.
#[derive(Debug)]
pub struct NewApiKey {
    pub key: String,
    pub record: ApiKeyRecord,
}

/// What `me` shows of an account besides the principal.
#[derive(Debug, Default)]
pub struct Profile {
    pub created_at: Option<DateTime<Utc>>,
    pub api_key: Option<ApiKeyRecord>,
}

/// The account settings of the configuration.
#[derive(Clone)]
pub struct AccountSettings {
    pub jwt_secret: Option<Secret>,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Failed logins of one email before it is locked for `lockout`.
    pub max_failures: u32,
    pub lockout: Duration,
    /// Failed logins from one client IP within `lockout` before it gets 429.
    pub ip_max_failures: u32,
    pub registration_enabled: bool,
}

impl AccountSettings {
    pub fn from_config(c: &Config) -> Self {
        AccountSettings {
            jwt_secret: c.auth.jwt_secret.clone(),
            access_token_ttl: c.auth.access_token_ttl,
            refresh_token_ttl: c.auth.refresh_token_ttl,
            max_failures: c.auth.login_max_failures,
            lockout: c.auth.login_lockout,
            ip_max_failures: c.auth.login_ip_max_failures,
            registration_enabled: c.auth.registration_enabled,
        }
    }
}

/// The accounts of one server.
pub struct Accounts {
    store: DynStore,
    settings: AccountSettings,
    /// Failed logins per client IP.
    ip_failures: LoginLimiter,
    /// Dropped for an account whose keys change, so the change applies here at once.
    credentials: Arc<CredentialCache>,
}

impl Accounts {
    pub fn new(
        store: DynStore,
        settings: AccountSettings,
        credentials: Arc<CredentialCache>,
    ) -> Self {
        Accounts {
            ip_failures: LoginLimiter::new(settings.ip_max_failures, settings.lockout),
            store,
            settings,
            credentials,
        }
    }

    /// Password login is possible (a JWT secret is configured).
    pub fn configured(&self) -> Result<(), AccountError> {
        self.jwt_secret().map(|_| ())
    }

    fn jwt_secret(&self) -> Result<&[u8], AccountError> {
        self.settings
            .jwt_secret
            .as_ref()
            .map(|s| s.expose().as_bytes())
            .ok_or(AccountError::NotConfigured)
    }

    /// Check `email` and `password` from client `ip` and open a session. Failures count
    /// against the email (lock after `max_failures`) and the IP (429 beyond its limit).
    pub async fn login(
        &self,
        email: &str,
        password: String,
        ip: IpAddr,
    ) -> Result<Session, AccountError> {
        self.configured()?;
        if let Some(retry_after) = self.ip_failures.blocked(ip) {
            tracing::warn!(target: "aragora::auth", client = %ip, "login refused: too many failures from this client");
            return Err(AccountError::TooManyFailures { retry_after });
        }
        // Failures and locks are kept by email, whether or not an account has it: a locked
        // unknown email answers exactly like a locked account, so lockouts reveal nothing.
        let email = email.trim().to_lowercase();
        crate::text::check("email", &email, false).map_err(AccountError::BadEmail)?;
        let email_key = email_hash(&email);
        let now = Utc::now();
        let (failures, locked_until) = self.store.login_attempts(&email_key).await?;
        if let Some(until) = locked_until
            && until > now
        {
            self.ip_failures.fail(ip);
            return Err(AccountError::Locked {
                retry_after: (until - now).num_seconds().max(1) as u64,
            });
        }
        let user = self.store.user_by_email(&email).await?;
        let ok = match &user {
            Some(user) => {
                let hash = user.password_hash.clone();
                tokio::task::spawn_blocking(move || passwords::verify(&password, &hash))
                    .await
                    .map_err(|e| AccountError::Internal(e.to_string()))?
            }
            None => {
                // Same work as a real check, off the async threads like the real one.
                let _ =
                    tokio::task::spawn_blocking(move || passwords::verify_dummy(&password)).await;
                false
            }
        };
        let Some(user) = user.filter(|_| ok) else {
            self.ip_failures.fail(ip);
            let failures = failures + 1;
            if failures as u32 >= self.settings.max_failures {
                let until = now
                    + chrono::Duration::from_std(self.settings.lockout)
                        .unwrap_or(chrono::Duration::minutes(15));
                self.store
                    .set_login_attempts(&email_key, 0, Some(until))
                    .await?;
                tracing::warn!(target: "aragora::auth", client = %ip, "email locked after repeated failed logins");
            } else {
                self.store
                    .set_login_attempts(&email_key, failures, None)
                    .await?;
                tracing::info!(target: "aragora::auth", client = %ip, "login failed");
            }
            return Err(AccountError::BadCredentials);
        };
        if failures != 0 || locked_until.is_some() {
            self.store.set_login_attempts(&email_key, 0, None).await?;
        }
        let family = uuid::Uuid::new_v4().simple().to_string();
        self.issue(user, &family).await
    }

    /// A fresh access token and a refresh token in `family_id`.
    async fn issue(&self, user: User, family_id: &str) -> Result<Session, AccountError> {
        let secret = self.jwt_secret()?;
        let ttl = self.settings.access_token_ttl.as_secs();
        let access_token = tokens::issue_access(secret, &user.id, &user.role, ttl)
            .map_err(|e| AccountError::Internal(e.to_string()))?;
        let (refresh_token, hash) = tokens::new_refresh_token();
        self.store
            .insert_refresh_token(&RefreshTokenRecord {
                token_hash: hash,
                user_id: user.id.clone(),
                family_id: family_id.to_owned(),
                expires_at: Utc::now()
                    + chrono::Duration::from_std(self.settings.refresh_token_ttl)
                        .unwrap_or(chrono::Duration::days(30)),
                used: false,
                revoked: false,
            })
            .await?;
        Ok(Session {
            access_token,
            expires_in: ttl,
            refresh_token,
            refresh_expires_in: self.settings.refresh_token_ttl.as_secs(),
            user,
        })
    }

    /// Rotate a refresh token: it is spent and a new pair is issued in its family.
    /// Presenting a spent token again revokes the whole family (a stolen token was used).
    pub async fn refresh(&self, token: &str) -> Result<Session, AccountError> {
        let hash = keys::sha256_hex(token.trim());
        let record = self
            .store
            .refresh_token(&hash)
            .await?
            .ok_or(AccountError::InvalidRefresh)?;
        if record.revoked || record.expires_at <= Utc::now() {
            return Err(AccountError::InvalidRefresh);
        }
        // The atomic "unused → used" flip decides races: only one rotation wins.
        if record.used || !self.store.use_refresh_token(&hash).await? {
            let revoked = self.store.revoke_refresh_family(&record.family_id).await?;
            tracing::warn!(
                target: "aragora::auth",
                user_id = %record.user_id,
                revoked,
                "refresh token reuse detected; the token family is revoked"
            );
            return Err(AccountError::InvalidRefresh);
        }
        let user = self
            .store
            .user_by_id(&record.user_id)
            .await?
            .ok_or(AccountError::InvalidRefresh)?;
        self.issue(user, &record.family_id).await
    }

    /// Revoke the family of a refresh token (the access token expires on its own). Returns
    /// the account it belonged to; an unknown token is not an error.
    pub async fn logout(&self, token: &str) -> Result<Option<String>, AccountError> {
        let hash = keys::sha256_hex(token.trim());
        let Some(record) = self.store.refresh_token(&hash).await? else {
            return Ok(None);
        };
        self.store.revoke_refresh_family(&record.family_id).await?;
        Ok(Some(record.user_id))
    }

    /// Create a member account (only when registration is enabled).
    pub async fn register(&self, email: &str, password: String) -> Result<User, AccountError> {
        if !self.settings.registration_enabled {
            return Err(AccountError::RegistrationDisabled);
        }
        let email = email.trim().to_lowercase();
        if !valid_email(&email) {
            return Err(AccountError::Invalid {
                field: "email",
                message: "`email` must be an address such as name@example.com".into(),
            });
        }
        passwords::check_new(&password).map_err(|e| AccountError::Invalid {
            field: "password",
            message: e.to_string(),
        })?;
        let hash = tokio::task::spawn_blocking(move || passwords::hash(&password))
            .await
            .map_err(|e| AccountError::Internal(e.to_string()))?
            .map_err(|e| AccountError::Internal(e.to_string()))?;
        let user = self
            .store
            .create_user(&NewUser {
                id: uuid::Uuid::new_v4().to_string(),
                email,
                password_hash: hash,
                role: Role::Member.as_str().into(),
            })
            .await?;
        tracing::info!(target: "aragora::auth", user_id = %user.id, "user registered");
        Ok(user)
    }

    /// The account's creation time and active API key, for a user principal.
    pub async fn profile(&self, principal: &Principal) -> Result<Profile, AccountError> {
        let Some(user_id) = principal.user_id() else {
            return Ok(Profile::default());
        };
        Ok(Profile {
            created_at: self
                .store
                .user_by_id(user_id)
                .await?
                .map(|user| user.created_at),
            api_key: self.store.active_api_key(user_id).await?,
        })
    }

    /// A new API key for the caller's account; any previous key is revoked.
    pub async fn create_api_key(&self, principal: &Principal) -> Result<NewApiKey, AccountError> {
        let user_id = account_of(principal)?;
        let (key, prefix, hash) = keys::new_api_key();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let record = self
            .store
            .replace_api_key(user_id, &id, &hash, &prefix)
            .await?;
        // The replaced key stops working here at once (elsewhere within `auth_cache_ms`).
        self.credentials.forget_account(user_id);
        tracing::info!(target: "aragora::auth", user_id = %user_id, prefix = %record.prefix, "api key created");
        Ok(NewApiKey { key, record })
    }

    /// Revoke the caller's API keys: at once on this instance, within `auth_cache_ms` on
    /// every other. Returns how many were active.
    pub async fn revoke_api_keys(&self, principal: &Principal) -> Result<u64, AccountError> {
        let user_id = account_of(principal)?;
        let revoked = self.store.revoke_api_keys(user_id).await?;
        self.credentials.forget_account(user_id);
        tracing::info!(target: "aragora::auth", user_id = %user_id, revoked, "api key revoked");
        Ok(revoked)
    }
}

fn account_of(principal: &Principal) -> Result<&str, AccountError> {
    principal.user_id().ok_or(AccountError::NotAUser)
}

/// The key failed logins are kept under: SHA-256 hex of the lower-cased email (the address
/// itself is not stored for attempts).
fn email_hash(email: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(email.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `email` (already lower-cased and trimmed) looks like an address.
pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Failed logins per client IP in a sliding window: beyond the limit, logins from that IP
/// get 429 until the window passes (slows password guessing across many accounts).
pub struct LoginLimiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl LoginLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        LoginLimiter {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds to wait when this IP is over its limit.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let map = self.failures.lock();
        let (start, count) = map.get(&ip)?;
        let elapsed = start.elapsed();
        (*count >= self.max && elapsed < self.window)
            .then(|| self.window.checked_sub(elapsed).unwrap().as_secs().max(1))
    }

    pub fn fail(&self, ip: IpAddr) {
        let mut map = self.failures.lock();
        // Bound the memory a flood of distinct addresses can take.
        if map.len() > 100_000 {
            let window = self.window;
            map.retain(|_, (start, _)| start.elapsed() < window);
        }
        let entry = map.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_validated() {
        assert!(valid_email("ann@example.com"));
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@example",
            "ann@.com",
            "ann@com.",
            "a b@x.io",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
        assert!(!valid_email(&format!("{}@example.com", "a".repeat(250))));
    }

    #[test]
    fn the_ip_limiter_blocks_past_its_limit_within_the_window() {
        let limiter = LoginLimiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limiter.blocked(ip), None);
        limiter.fail(ip);
        assert_eq!(limiter.blocked(ip), None);
        limiter.fail(ip);
        assert!(limiter.blocked(ip).is_some_and(|s| (1..=60).contains(&s)));
        assert_eq!(limiter.blocked("192.0.2.2".parse().unwrap()), None);
    }

    #[test]
    fn account_errors_keep_their_http_answers() {
        use axum::http::StatusCode;
        let cases = [
            (AccountError::NotConfigured, StatusCode::NOT_FOUND),
            (
                AccountError::TooManyFailures { retry_after: 3 },
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (
                AccountError::BadEmail(crate::text::ControlChar {
                    field: "email".into(),
                    ch: '\0',
                }),
                StatusCode::BAD_REQUEST,
            ),
            (AccountError::Locked { retry_after: 3 }, StatusCode::LOCKED),
            (AccountError::BadCredentials, StatusCode::UNAUTHORIZED),
            (AccountError::InvalidRefresh, StatusCode::UNAUTHORIZED),
            (AccountError::RegistrationDisabled, StatusCode::NOT_FOUND),
            (
                AccountError::Invalid {
                    field: "email",
                    message: "m".into(),
                },
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (AccountError::NotAUser, StatusCode::BAD_REQUEST),
        ];
        for (err, status) in cases {
            assert_eq!(ApiError::from(err).status(), status);
        }
        assert_eq!(
            ApiError::from(AccountError::BadCredentials).to_string(),
            "invalid email or password"
        );
    }
}
