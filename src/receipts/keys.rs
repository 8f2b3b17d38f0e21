//! The receipt signing key: an Ed25519 key in a PKCS#8 PEM file, its public half as SPKI PEM,
//! and its key id (`ed25519-` + the first 16 hex digits of SHA-256 over the raw 32-byte
//! public key), which is how a receipt names the key that signed it.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Why a key could not be loaded or created. Messages name the file, never key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: cannot read the receipt signing key: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: the receipt signing key is writable by group or others (mode {mode:04o}); \
         make it owner-only with `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "{path}: not an Ed25519 private key in PKCS#8 PEM (-----BEGIN PRIVATE KEY-----); \
         create one with `openssl genpkey -algorithm ed25519 -out {path}`"
    )]
    Malformed { path: PathBuf },
    #[error("{path}: cannot write the generated receipt signing key: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The key id of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("ed25519-{}", &hex[..16])
}

/// A public key from SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn public_key_from_pem(pem: &str) -> Option<VerifyingKey> {
    VerifyingKey::from_public_key_pem(pem.trim()).ok()
}

/// The key receipts are signed with.
pub struct Signer {
    key: SigningKey,
    key_id: String,
    public_pem: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn from_key(key: SigningKey) -> Signer {
        let public = key.verifying_key();
        let public_pem = public
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("an Ed25519 public key always encodes as SPKI PEM");
        Signer {
            key_id: key_id(&public),
            key,
            public_pem,
        }
    }

    /// A fresh random key.
    pub fn generate() -> Signer {
        let seed: [u8; 32] = rand::random();
        Signer::from_key(SigningKey::from_bytes(&seed))
    }

    /// Parse a PKCS#8 PEM private key.
    pub fn from_pkcs8_pem(pem: &str) -> Option<Signer> {
        SigningKey::from_pkcs8_pem(pem.trim())
            .ok()
            .map(Signer::from_key)
    }

    /// Load the operator's key file: it must be an Ed25519 PKCS#8 PEM that neither group nor
    /// others can write.
    pub fn load(path: &Path) -> Result<Signer, KeyError> {
        check_mode(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Signer::from_pkcs8_pem(&text).ok_or_else(|| KeyError::Malformed {
            path: path.to_owned(),
        })
    }

    /// The development default: the key at `path`, created (mode 0600) on first use.
    /// Returns the signer and whether it was created now.
    pub fn load_or_create(path: &Path) -> Result<(Signer, bool), KeyError> {
        if path.exists() {
            return Signer::load(path).map(|s| (s, false));
        }
        let signer = Signer::generate();
        let pem = signer
            .key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("an Ed25519 private key always encodes as PKCS#8 PEM");
        write_private(path, pem.as_bytes()).map_err(|source| KeyError::Write {
            path: path.to_owned(),
            source,
        })?;
        Ok((signer, true))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }
}

#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    if mode & 0o004 != 0 {
        tracing::warn!(
            target: "aragora::receipts",
            path = %path.display(),
            "the receipt signing key is readable by every local user (mode {mode:04o}); chmod 600 it"
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path) -> Result<(), KeyError> {
    Ok(())
}

/// Create `path` owner-only (0600) and write `bytes`; an existing file is never replaced.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_the_sha256_prefix_of_the_raw_public_key() {
        let signer = Signer::from_key(SigningKey::from_bytes(&[7u8; 32]));
        let raw = signer.verifying_key().to_bytes();
        let digest = Sha256::digest(raw);
        let expected: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(signer.key_id(), format!("ed25519-{expected}"));
        assert_eq!(signer.key_id().len(), "ed25519-".len() + 16);
    }

    #[test]
    fn generated_key_file_is_owner_only_and_reloads_to_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/odr.pem");
        let (first, created) = Signer::load_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (again, created) = Signer::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first.key_id(), again.key_id());
        let public = public_key_from_pem(first.public_pem()).unwrap();
        assert_eq!(public, first.verifying_key());
    }

    #[cfg(unix)]
    #[test]
    fn a_group_writable_key_file_is_refused_with_the_path_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odr.pem");
        Signer::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        let err = Signer::load(&path).unwrap_err().to_string();
        assert!(err.contains("writable by group or others"), "{err}");
        assert!(err.contains("0664"), "{err}");
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }

    #[test]
    fn a_malformed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odr.pem");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let err = Signer::load(&path).unwrap_err().to_string();
        assert!(err.contains("not an Ed25519 private key"), "{err}");
        let missing = Signer::load(&dir.path().join("absent.pem"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read"), "{missing}");
    }
}
