//! Resolved credentials, reused for a short time so an authenticated request does not cost
//! database round trips: an API key's lookup (and its owner's) and a JWT subject's account.
//!
//! Freshness is the cache's whole contract: an entry answers for at most `ttl` (≤ 1 s,
//! `auth_cache_ms`), so a revocation, a deleted account or a role change made on any
//! instance (or straight in the database) applies everywhere within that time. Changes made
//! through this instance (a key replaced or revoked) drop the account's entries at once.
//! Refused credentials are never cached: a new key works on its first request.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::Principal;

/// Entries kept at most per map; past it, expired entries are swept, and if that is not
/// enough the map starts over (a flood of distinct valid credentials, not a normal load).
const MAX_ENTRIES: usize = 50_000;

/// How often one instance records a key's `last_used_at` (the column has minute precision
/// for operators; the store also skips a write within the minute).
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// One resolved credential: when it was resolved, until when it may answer at most (Unix
/// seconds; an access token's expiry, else no limit), and whose it is.
struct Entry {
    at: Instant,
    expires: i64,
    principal: Principal,
}

type Entries = DashMap<String, Entry>;

pub struct CredentialCache {
    ttl: Duration,
    /// API keys by SHA-256 of the key.
    keys: Entries,
    /// JWT subjects by user id.
    users: Entries,
    /// Verified access tokens (the token itself), until their expiry (leeway included): a
    /// token seen within the TTL skips its signature check and claims parsing.
    tokens: Entries,
    /// When this instance last recorded each key's use, by key id.
    touched: DashMap<String, Instant>,
}

impl CredentialCache {
    pub fn new(ttl: Duration) -> Self {
        CredentialCache {
            ttl,
            keys: DashMap::new(),
            users: DashMap::new(),
            tokens: DashMap::new(),
            touched: DashMap::new(),
        }
    }

    /// The entry's principal if it was resolved within the TTL and has not expired at `now`.
    fn get(&self, map: &Entries, id: &str, now: i64) -> Option<Principal> {
        let entry = map.get(id)?;
        (entry.at.elapsed() < self.ttl && entry.expires > now).then(|| entry.principal.clone())
    }

    fn put(&self, map: &Entries, id: &str, expires: i64, principal: &Principal) {
        if self.ttl.is_zero() {
            return;
        }
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, entry| entry.at.elapsed() < self.ttl);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        let entry = Entry {
            at: Instant::now(),
            expires,
            principal: principal.clone(),
        };
        map.insert(id.to_owned(), entry);
    }

    /// The principal of the API key with this hash, if resolved within the TTL.
    pub fn api_key(&self, key_hash: &str) -> Option<Principal> {
        self.get(&self.keys, key_hash, i64::MIN)
    }

    pub fn put_api_key(&self, key_hash: &str, principal: &Principal) {
        self.put(&self.keys, key_hash, i64::MAX, principal);
    }

    /// The principal of a JWT subject, if its account was read within the TTL.
    pub fn user(&self, user_id: &str) -> Option<Principal> {
        self.get(&self.users, user_id, i64::MIN)
    }

    pub fn put_user(&self, user_id: &str, principal: &Principal) {
        self.put(&self.users, user_id, i64::MAX, principal);
    }

    /// The principal of an access token verified within the TTL and not yet expired at
    /// `now` (Unix seconds).
    pub fn token(&self, token: &str, now: i64) -> Option<Principal> {
        self.get(&self.tokens, token, now)
    }

    /// Remember a verified access token until `expires` (Unix seconds) or the TTL.
    pub fn put_token(&self, token: &str, expires: i64, principal: &Principal) {
        self.put(&self.tokens, token, expires, principal);
    }

    /// Drop everything known about an account (its keys changed or its rights did).
    pub fn forget_account(&self, user_id: &str) {
        for map in [&self.keys, &self.tokens] {
            map.retain(|_, entry| entry.principal.id != user_id);
        }
        self.users.remove(user_id);
    }

    /// Whether this instance should record a use of key `key_id` now (once a minute).
    pub fn should_touch(&self, key_id: &str) -> bool {
        let now = Instant::now();
        if self.touched.len() >= MAX_ENTRIES {
            self.touched
                .retain(|_, at| now.duration_since(*at) < TOUCH_EVERY);
        }
        match self.touched.entry(key_id.to_owned()) {
            dashmap::mapref::entry::Entry::Occupied(mut seen) => {
                if now.duration_since(*seen.get()) < TOUCH_EVERY {
                    return false;
                }
                seen.insert(now);
                true
            }
            dashmap::mapref::entry::Entry::Vacant(slot) => {
                slot.insert(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{PrincipalKind, Role};

    fn member(id: &str) -> Principal {
        Principal {
            id: id.into(),
            email: Some(format!("{id}@example.com")),
            role: Some(Role::Member),
            kind: PrincipalKind::ApiKey,
        }
    }

    #[test]
    fn entries_answer_within_the_ttl_and_not_after() {
        let cache = CredentialCache::new(Duration::from_millis(50));
        cache.put_api_key("h1", &member("u1"));
        cache.put_user("u2", &member("u2"));
        assert_eq!(cache.api_key("h1"), Some(member("u1")));
        assert_eq!(cache.user("u2"), Some(member("u2")));
        assert_eq!(cache.api_key("h2"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.api_key("h1"), None, "expired");
        assert_eq!(cache.user("u2"), None, "expired");
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let cache = CredentialCache::new(Duration::ZERO);
        cache.put_api_key("h1", &member("u1"));
        assert_eq!(cache.api_key("h1"), None);
    }

    #[test]
    fn forgetting_an_account_drops_its_keys_and_its_jwt_entry_only() {
        let cache = CredentialCache::new(Duration::from_secs(10));
        cache.put_api_key("h1", &member("u1"));
        cache.put_api_key("h1b", &member("u1"));
        cache.put_api_key("h2", &member("u2"));
        cache.put_user("u1", &member("u1"));
        cache.forget_account("u1");
        assert_eq!(cache.api_key("h1"), None);
        assert_eq!(cache.api_key("h1b"), None);
        assert_eq!(cache.user("u1"), None);
        assert_eq!(cache.api_key("h2"), Some(member("u2")));
    }

    #[test]
    fn a_verified_token_answers_until_the_ttl_or_its_expiry_whichever_is_first() {
        let cache = CredentialCache::new(Duration::from_millis(50));
        cache.put_token("t1", 1_000, &member("u1"));
        assert_eq!(cache.token("t1", 999), Some(member("u1")));
        assert_eq!(cache.token("t1", 1_000), None, "expired");
        assert_eq!(cache.token("t2", 0), None);
        cache.forget_account("u1");
        assert_eq!(cache.token("t1", 0), None, "forgotten with its account");
        cache.put_token("t3", i64::MAX, &member("u3"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.token("t3", 0), None, "past the TTL");
    }

    #[test]
    fn a_key_use_is_recorded_once_a_minute() {
        let cache = CredentialCache::new(Duration::from_secs(1));
        assert!(cache.should_touch("k1"));
        assert!(!cache.should_touch("k1"));
        assert!(cache.should_touch("k2"));
    }

    #[test]
    fn the_maps_stay_bounded() {
        let cache = CredentialCache::new(Duration::from_secs(10));
        for i in 0..MAX_ENTRIES + 10 {
            cache.put_api_key(&format!("h{i}"), &member("u"));
        }
        assert!(cache.keys.len() <= MAX_ENTRIES);
        let last = format!("h{}", MAX_ENTRIES + 9);
        assert!(cache.api_key(&last).is_some(), "the newest entry is kept");
    }
}
