//! Random secrets, SHA-256 digests and constant-time comparison.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// API keys start with this.
pub const API_KEY_PREFIX: &str = "ara_";
/// Random characters after the prefix.
const API_KEY_RANDOM: usize = 40;

/// `n` random alphanumerics from the OS-seeded thread RNG.
pub fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A new API key: (key, display prefix, SHA-256 hex). The key itself is shown once and
/// never stored.
pub fn new_api_key() -> (String, String, String) {
    let key = format!("{API_KEY_PREFIX}{}", random_alnum(API_KEY_RANDOM));
    let prefix = key[..API_KEY_PREFIX.len() + 8].to_owned();
    let hash = sha256_hex(&key);
    (key, prefix, hash)
}

pub fn looks_like_api_key(s: &str) -> bool {
    s.starts_with(API_KEY_PREFIX) && s.len() == API_KEY_PREFIX.len() + API_KEY_RANDOM
}

pub fn sha256_hex(s: &str) -> String {
    hex(&digest(s))
}

/// The SHA-256 of a secret.
pub fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Lowercase hex of a digest (what [`sha256_hex`] returns).
pub fn hex(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(64);
    for b in digest {
        text.push(HEX[usize::from(b >> 4)] as char);
        text.push(HEX[usize::from(b & 0xf)] as char);
    }
    text
}

/// Constant-time equality of two secrets. Both sides are hashed first so neither the
/// content nor the length of the expected secret shows in the timing.
pub fn ct_eq(a: &str, b: &str) -> bool {
    digests_eq(&digest(a), &digest(b))
}

/// Constant-time equality of two digests ([`digest`]).
pub fn digests_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.as_slice().ct_eq(b.as_slice()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digests_are_lowercase_and_match_sha2() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(ct_eq("same", "same"));
        assert!(!ct_eq("same", "other"));
        assert!(digests_eq(&digest("x"), &digest("x")));
    }

    #[test]
    fn api_keys_have_the_documented_shape() {
        let (key, prefix, hash) = new_api_key();
        assert!(looks_like_api_key(&key));
        assert!(key[4..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(prefix, key[..12]);
        assert_eq!(hash, sha256_hex(&key));
        assert_eq!(hash.len(), 64);
        assert_ne!(new_api_key().0, key);
    }

    #[test]
    fn constant_time_comparison_is_equality() {
        assert!(ct_eq("same-secret", "same-secret"));
        assert!(!ct_eq("same-secret", "same-secreT"));
        assert!(!ct_eq("short", "a much longer secret"));
        assert!(!ct_eq("", "x"));
    }
}
