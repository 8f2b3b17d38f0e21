//! argon2id password hashing with the crate's default parameters.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Shortest password accepted.
pub const MIN_LENGTH: usize = 12;

/// The password could not be hashed (argon2's error; it implements no `std::error::Error`
/// without its `std` feature, so it is kept as a value rather than a source).
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(pub argon2::password_hash::Error);

/// The PHC string of `password` (argon2id, random salt).
pub fn hash(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(HashError)
}

/// Whether `password` matches the PHC string `hash` (constant time inside argon2).
pub fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Spend the same work as a real check when the account does not exist, so response time
/// does not tell whether an email is registered.
pub fn verify_dummy(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("dummy password for timing").unwrap_or_default());
    let _ = verify(password, dummy);
}

/// A new password refused: shorter than [`MIN_LENGTH`] characters (the only rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the password must be at least {MIN_LENGTH} characters")]
pub struct TooShort;

/// Why a new password is refused, if it is.
pub fn check_new(password: &str) -> Result<(), TooShort> {
    if password.chars().count() < MIN_LENGTH {
        return Err(TooShort);
    }
    Ok(())
}
