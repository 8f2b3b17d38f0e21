//! The credential check, shared by the HTTP gate and the WebSocket handshake: a presented
//! credential (service token, `ara_…` API key or JWT access token) becomes a [`Principal`].
//!
//! An [`Authenticator`] holds only what that needs: the store, the secrets, the
//! local-operator flag, the trusted proxies and the credential cache. It knows nothing of
//! routes, requests or the application state.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::HeaderMap;
use ipnet::IpNet;

use super::{CredentialCache, Principal, PrincipalKind, Role, keys, tokens};
use crate::config::{Config, Secret};
use crate::error::ApiError;
use crate::store::DynStore;

/// Why presented credentials were not accepted.
#[derive(Debug)]
pub enum CredentialError {
    /// Not valid (the reason is deliberately not told).
    Invalid,
    /// They could not be checked: the store did not answer. Not the caller's fault, so it
    /// is not a 401 (a browser would otherwise drop a good session during an outage).
    Unavailable(ApiError),
}

use CredentialError::Invalid as InvalidCredentials;

fn unavailable(e: crate::store::StoreError) -> CredentialError {
    tracing::error!(target: "aragora::auth", error = %e, "credential lookup failed");
    CredentialError::Unavailable(ApiError::from(e))
}

/// Resolves credentials to principals.
pub struct Authenticator {
    store: DynStore,
    /// Auth on: a secret is configured, or the environment is production.
    enabled: bool,
    /// ARAGORA_API_TOKEN's SHA-256: the service principal (compared in constant time).
    service_digest: Option<[u8; 32]>,
    /// ARAGORA_JWT_SECRET: access tokens.
    jwt_secret: Option<Secret>,
    /// Credential-less loopback callers without proxy headers are the local owner.
    local_operator: bool,
    /// Peers whose X-Forwarded-* headers are believed (ARAGORA_TRUSTED_PROXIES).
    trusted_proxies: Vec<IpNet>,
    /// Resolved keys and accounts, reused for `auth_cache_ms`.
    credentials: Arc<CredentialCache>,
}

impl Authenticator {
    pub fn new(config: &Config, store: DynStore, credentials: Arc<CredentialCache>) -> Self {
        Authenticator {
            store,
            enabled: config.auth_enabled(),
            service_digest: config
                .auth
                .api_token
                .as_ref()
                .map(|t| keys::digest(t.expose())),
            jwt_secret: config.auth.jwt_secret.clone(),
            local_operator: config.auth.local_operator,
            trusted_proxies: config.http.trusted_proxies.clone(),
            credentials,
        }
    }

    /// The principal of a caller: `token` is what it presented (header, subprotocol or
    /// query), `peer` its TCP address.
    pub async fn principal_for(
        &self,
        token: Option<&str>,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Result<Principal, CredentialError> {
        match (self.principal_now(token, peer, headers), token) {
            (Some(principal), _) => Ok(principal),
            // What may read the store is boxed: its future is large, and a request that
            // never needs it would otherwise carry (and copy) its whole state.
            (None, Some(token)) => Box::pin(self.resolve_token(token)).await,
            (None, None) => Ok(Principal::anonymous()),
        }
    }

    /// The principal when it is known without I/O: auth off, no credential presented, or
    /// one resolved recently on this instance. `None` when the presented credential has to
    /// be looked up ([`principal_for`](Self::principal_for) does that).
    pub fn principal_now(
        &self,
        token: Option<&str>,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Option<Principal> {
        if !self.enabled {
            return Some(Principal::local_owner());
        }
        match token {
            Some(token) => self.resolve_cached(token),
            None if self.local_operator && is_local(peer, headers) => {
                Some(Principal::local_owner())
            }
            None => Some(Principal::anonymous()),
        }
    }

    /// The principal of a credential resolved recently on this instance (the service token,
    /// a cached API key or access token), without I/O; the same order as
    /// [`resolve_token`](Self::resolve_token). Auth must be on.
    fn resolve_cached(&self, token: &str) -> Option<Principal> {
        // One SHA-256 of the token serves both the service-token check and the key lookup.
        let digest = keys::digest(token);
        if self.is_service_token(&digest) {
            return Some(Principal::service());
        }
        if keys::looks_like_api_key(token) {
            return self.credentials.api_key(&keys::hex(&digest));
        }
        if self.jwt_secret.is_some() {
            return self
                .credentials
                .token(token, chrono::Utc::now().timestamp());
        }
        None
    }

    /// Whether a presented token (by its SHA-256) is the service token.
    fn is_service_token(&self, digest: &[u8; 32]) -> bool {
        self.service_digest
            .as_ref()
            .is_some_and(|service| keys::digests_eq(digest, service))
    }

    /// Resolve a presented credential. Auth must be on.
    pub async fn resolve_token(&self, token: &str) -> Result<Principal, CredentialError> {
        if self.is_service_token(&keys::digest(token)) {
            return Ok(Principal::service());
        }
        if keys::looks_like_api_key(token) {
            return self.resolve_api_key(token).await;
        }
        if self.jwt_secret.is_some()
            && let Some(principal) = self
                .credentials
                .token(token, chrono::Utc::now().timestamp())
        {
            return Ok(principal);
        }
        if let Some(secret) = &self.jwt_secret
            && tokens::looks_like_jwt(token)
            && let Some(claims) = tokens::verify_access(secret.expose().as_bytes(), token)
        {
            // The account's current role counts (a demotion applies within `auth_cache_ms`);
            // a deleted account's tokens stop working.
            let expires = claims.exp.saturating_add(tokens::LEEWAY_SECONDS as i64);
            if let Some(principal) = self.credentials.user(&claims.sub) {
                self.credentials.put_token(token, expires, &principal);
                return Ok(principal);
            }
            let user = self
                .store
                .user_by_id(&claims.sub)
                .await
                .map_err(unavailable)?
                .ok_or(InvalidCredentials)?;
            let role = Role::parse(&user.role).ok_or(InvalidCredentials)?;
            let principal = Principal {
                id: user.id,
                email: Some(user.email),
                role: Some(role),
                kind: PrincipalKind::User,
            };
            self.credentials.put_user(&claims.sub, &principal);
            self.credentials.put_token(token, expires, &principal);
            return Ok(principal);
        }
        Err(InvalidCredentials)
    }

    async fn resolve_api_key(&self, token: &str) -> Result<Principal, CredentialError> {
        let hash = keys::sha256_hex(token);
        // Reused for at most `auth_cache_ms` (≤ 1 s): a key revoked on any instance stops
        // working everywhere within that time, and at once on the instance that revoked it.
        if let Some(principal) = self.credentials.api_key(&hash) {
            return Ok(principal);
        }
        let key = self
            .store
            .api_key_by_hash(&hash)
            .await
            .map_err(unavailable)?
            .filter(|k| k.revoked_at.is_none())
            .ok_or(InvalidCredentials)?;
        let user = self
            .store
            .user_by_id(&key.user_id)
            .await
            .map_err(unavailable)?
            .ok_or(InvalidCredentials)?;
        let role = Role::parse(&user.role).ok_or(InvalidCredentials)?;
        if self.credentials.should_touch(&key.id)
            && let Err(e) = self.store.touch_api_key(&key.id, chrono::Utc::now()).await
        {
            tracing::warn!(target: "aragora::auth", error = %e, "could not record api key use");
        }
        let principal = Principal {
            id: user.id,
            email: Some(user.email),
            role: Some(role),
            kind: PrincipalKind::ApiKey,
        };
        self.credentials.put_api_key(&hash, &principal);
        Ok(principal)
    }

    /// Whether the TCP peer is a trusted proxy (ARAGORA_TRUSTED_PROXIES), by the rule
    /// [`crate::ratelimit::client_ip`] uses.
    pub fn from_trusted_proxy(&self, peer: SocketAddr) -> bool {
        let peer = peer.ip().to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    /// The client's address: the peer, or what a trusted proxy says it forwarded (the same
    /// rule as the rate limiter's).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        crate::ratelimit::client_ip(peer.ip(), headers, &self.trusted_proxies)
    }
}

/// Whether a request comes straight from this machine: loopback peer and no proxy headers.
pub fn is_local(peer: Option<IpAddr>, headers: &HeaderMap) -> bool {
    peer.is_some_and(|ip| ip.is_loopback())
        && !headers.contains_key("x-forwarded-for")
        && !headers.contains_key("x-real-ip")
        && !headers.contains_key("forwarded")
}
