//! Fleet tokens and agent credentials.
//!
//! Tokens (`--agent-token-file`, `--operator-token-file`: one per line) are kept only
//! as blake3 digests, and an offered token is compared with every one of them in
//! constant time: fixed-size digests leak neither a token's bytes nor its length.
//! Credentials are 32 random bytes (hex) handed to an agent at enrollment; the store
//! keeps their digest bound to the agent's id and finds an offered one by its digest,
//! which reveals nothing a caller could use (the digest of a 256-bit random value).

use std::path::Path;

use ferry_format::id::Digest;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

use super::FleetError;
use crate::fsutil;

/// Largest token file accepted.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// The digests of one token file's tokens.
pub struct Tokens {
    digests: Vec<Digest>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} digests)", self.digests.len())
    }
}

impl Tokens {
    /// Reads a token file: one token per line, surrounding whitespace ignored, empty
    /// lines and `#` comments skipped. A file without any token is refused: it would
    /// make a role nobody can use, which is surely a mistake.
    pub fn load(path: &Path) -> Result<Tokens, FleetError> {
        let bytes = fsutil::read_small(path, MAX_TOKEN_FILE)?;
        let bad = |reason: &str| FleetError::Config(format!("{}: {reason}", path.display()));
        let text = String::from_utf8(bytes).map_err(|_| bad("the token file is not UTF-8 text"))?;
        let mut digests = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(bad(
                    "a token must be one line without spaces or control characters",
                ));
            }
            digests.push(Digest::of(line.as_bytes()));
        }
        if digests.is_empty() {
            return Err(bad("the token file holds no token"));
        }
        Ok(Tokens { digests })
    }

    /// Whether `offered` is one of the tokens. Every digest is compared, so the time
    /// taken does not tell which one matched.
    pub fn contains(&self, offered: &str) -> bool {
        let offered = Digest::of(offered.as_bytes());
        let mut found = subtle::Choice::from(0);
        for d in &self.digests {
            found |= offered.0.ct_eq(&d.0);
        }
        bool::from(found)
    }
}

/// The bearer token of an `Authorization` header, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// A new agent credential: 32 random bytes as 64 hex characters.
pub fn new_credential() -> Result<String, FleetError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| FleetError::Config(format!("no randomness for a credential: {e}")))?;
    Ok(hex::encode(bytes))
}

/// What the store keeps of a credential.
pub fn credential_digest(credential: &str) -> [u8; 32] {
    Digest::of(credential.as_bytes()).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_whole_lines_and_empty_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "# fleet tokens\n  alpha \n\nbeta\n").unwrap();
        let t = Tokens::load(&f).unwrap();
        assert!(t.contains("alpha") && t.contains("beta"));
        assert!(!t.contains("alph") && !t.contains("alphabeta") && !t.contains(""));
        std::fs::write(&f, "\n# none\n").unwrap();
        assert!(
            Tokens::load(&f)
                .unwrap_err()
                .to_string()
                .contains("no token")
        );
        std::fs::write(&f, "a b\n").unwrap();
        assert!(Tokens::load(&f).is_err());
    }

    #[test]
    fn bearer_needs_the_scheme() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "Bearer  xyz ".parse().unwrap());
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert(AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&h), None);
        let c = new_credential().unwrap();
        assert_eq!(c.len(), 64);
        assert_ne!(c, new_credential().unwrap());
    }
}
