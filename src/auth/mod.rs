//! Accounts and access (contract §4): who is calling (a [`Principal`]), with which [`Role`].
//!
//! - `tokens`: HS256 access tokens and opaque refresh tokens.
//! - `passwords`: argon2id hashing.
//! - `keys`: `ara_…` API keys (stored as SHA-256) and constant-time comparison.
//! - `extractors`: the middleware that resolves credentials once per request, the route
//!   policy (public / member / admin) and `require`.

pub mod cache;
pub mod extractors;
pub mod keys;
pub mod passwords;
pub mod tokens;

pub use cache::CredentialCache;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The caller of one request, resolved once by the auth middleware.
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
        let map = self.failures.lock().expect("limiter lock");
        let (start, count) = map.get(&ip)?;
        let elapsed = start.elapsed();
        (*count >= self.max && elapsed < self.window)
            .then(|| (self.window - elapsed).as_secs().max(1))
    }

    pub fn fail(&self, ip: IpAddr) {
        let mut map = self.failures.lock().expect("limiter lock");
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
