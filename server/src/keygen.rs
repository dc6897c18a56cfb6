//! `ferry-server keygen`: a new publishing key pair.
//!
//! `ferry.key` (the secret, mode 0600) stays on the build machine; `ferry.pub` is
//! handed to every client. An existing secret key is never overwritten: losing it
//! would strand every client that trusts it.

use std::path::{Path, PathBuf};

use ferry_format::keys::SecretKey;

use crate::error::{Error, Result};
use crate::fsutil::{self, FILE_MODE, Place};

/// Secret key file name inside the key directory.
pub const SECRET_FILE: &str = "ferry.key";
/// Public key file name inside the key directory.
pub const PUBLIC_FILE: &str = "ferry.pub";

/// What keygen wrote.
#[derive(Debug)]
pub struct KeyPairFiles {
    pub key_id: String,
    pub secret: PathBuf,
    pub public: PathBuf,
}

/// Generates a key pair into `dir` (created 0700 if missing).
pub fn keygen(dir: &Path) -> Result<KeyPairFiles> {
    keygen_named(dir, "ferry")
}

/// Generates `NAME.key` and `NAME.pub` into `dir`: root keys and further publishing
/// keys of a key list get names of their own.
pub fn keygen_named(dir: &Path, name: &str) -> Result<KeyPairFiles> {
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    if secret.symlink_metadata().is_ok() {
        return Err(Error::KeyExists { path: secret });
    }
    fsutil::ensure_dir(dir, 0o700)?;
    let key = SecretKey::generate()?;
    // Refuse rather than replace, even if the file appeared since the check above.
    match fsutil::write_atomic(&secret, key.to_text().as_bytes(), 0o600, Place::Refuse) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::KeyExists { path: secret });
        }
        other => other?,
    };
    let pk = key.public();
    fsutil::write_atomic(&public, pk.to_text().as_bytes(), FILE_MODE, Place::Replace)?;
    Ok(KeyPairFiles {
        key_id: pk.id().to_hex(),
        secret,
        public,
    })
}

/// Reads a public key file, or derives the public key from a secret key file.
pub fn read_public(path: &Path) -> Result<ferry_format::keys::PublicKey> {
    crate::ls::read_public(path)
}

/// Reads a secret key file.
pub fn read_secret(path: &Path) -> Result<SecretKey> {
    let text = fsutil::read_small(path, 4096)?;
    let text = String::from_utf8_lossy(&text);
    SecretKey::from_text(text.trim()).map_err(|source| Error::FormatContext {
        context: format!("{} is not a ferry secret key", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_pair_and_refuses_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("nested/keys");
        let files = keygen(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.secret), 0o600);
        assert_eq!(mode(&files.public), 0o644);
        let key = read_secret(&files.secret).unwrap();
        assert_eq!(key.public().id().to_hex(), files.key_id);
        let before = std::fs::read(&files.secret).unwrap();
        let e = keygen(&dir).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        assert_eq!(std::fs::read(&files.secret).unwrap(), before);
    }
}
