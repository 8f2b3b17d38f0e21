//! Accounts and access (README.md, "HTTP API": roles and credentials): who is calling (a [`Principal`], the one type every
//! layer uses), with which [`Role`].
//!
//! - `authenticator`: a presented credential becomes a principal ([`Authenticator`], shared
//!   by the HTTP gate and the WebSocket handshake).
//! - `accounts`: login, lockout, refresh rotation and reuse detection, logout, registration,
//!   API keys, over the store ([`Accounts`]).
//! - `extractors`: the credential a request presents, the access a route declares
//!   ([`Access`]) and `require` (401 / 403).
//! - `cache`: resolved credentials, reused for `auth_cache_ms`.
//! - `tokens`: HS256 access tokens and opaque refresh tokens.
//! - `passwords`: argon2id hashing.
//! - `keys`: `ara_…` API keys (stored as SHA-256) and constant-time comparison.
//!
//! Nothing here knows routes or the application state; the HTTP middleware that applies
//! these per request lives in `http::middleware`.

pub mod accounts;
pub mod authenticator;
pub mod cache;
pub mod extractors;
pub mod keys;
pub mod passwords;
pub mod tokens;

pub use accounts::{AccountError, AccountSettings, Accounts};
pub use authenticator::{Authenticator, CredentialError};
pub use cache::CredentialCache;
pub use extractors::Access;

use serde::Serialize;

use crate::store::DebateRecord;

/// Roles, ordered: member < admin < owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A JWT access token of a user.
    User,
    /// A user's `ara_…` API key.
    ApiKey,
    /// ARAGORA_API_TOKEN: the service principal (owner rights).
    ServiceToken,
    /// No credentials: without rights when auth is on; the local owner when auth is off or
    /// for a loopback caller with `local_operator`.
    Anonymous,
}

/// The caller of one request (or WebSocket connection), resolved once by the HTTP gate or the
/// handshake. Rate limits key on it too when it is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub email: Option<String>,
    /// `None`: no rights at all.
    pub role: Option<Role>,
    pub kind: PrincipalKind,
}

/// The id usage and debates of anonymous callers are recorded under.
pub const ANONYMOUS_ID: &str = "anonymous";
/// The id of the ARAGORA_API_TOKEN principal.
pub const SERVICE_ID: &str = "service";

impl Principal {
    /// Unauthenticated caller with auth on: no rights.
    pub fn anonymous() -> Self {
        Principal {
            id: ANONYMOUS_ID.into(),
            email: None,
            role: None,
            kind: PrincipalKind::Anonymous,
        }
    }

    /// Auth off, or a loopback caller with `local_operator`: owner rights.
    pub fn local_owner() -> Self {
        Principal {
            role: Some(Role::Owner),
            ..Principal::anonymous()
        }
    }

    pub fn service() -> Self {
        Principal {
            id: SERVICE_ID.into(),
            email: None,
            role: Some(Role::Owner),
            kind: PrincipalKind::ServiceToken,
        }
    }

    /// Has at least `role`.
    pub fn has(&self, role: Role) -> bool {
        self.role.is_some_and(|r| r >= role)
    }

    pub fn authenticated(&self) -> bool {
        self.kind != PrincipalKind::Anonymous
    }

    /// Admins and owners see every debate.
    pub fn sees_all(&self) -> bool {
        self.has(Role::Admin)
    }

    /// The owner id recorded on a debate this principal creates.
    pub fn owner_id(&self) -> Option<String> {
        self.authenticated().then(|| self.id.clone())
    }

    /// Whether this principal may see `debate` (members: only their own).
    pub fn can_see(&self, debate: &DebateRecord) -> bool {
        self.can_see_owned_by(debate.owner_id.as_deref())
    }

    /// Whether something owned by `owner` (a debate, its receipt) is visible to this principal.
    pub fn can_see_owned_by(&self, owner: Option<&str>) -> bool {
        self.sees_all() || (self.authenticated() && owner == Some(self.id.as_str()))
    }

    /// The user account behind this principal, if any.
    pub fn user_id(&self) -> Option<&str> {
        matches!(self.kind, PrincipalKind::User | PrincipalKind::ApiKey).then_some(self.id.as_str())
    }
}
