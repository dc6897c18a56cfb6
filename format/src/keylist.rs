//! Key lists: the root of trust that can rotate (FORMAT.md §4.5).
//!
//! A key list names the root keys (kept offline) with their threshold, and the
//! publishing keys with the threshold required on channel heads and manifests. Key
//! list `n+1` is accepted only when signed by a threshold of key list `n`'s root keys
//! *and* by a threshold of its own root keys, so a client that skipped several
//! rotations follows the chain one version at a time, as TUF does for root metadata.
//!
//! The single-key setup is key list version 0, implicit: one key that is both root and
//! publisher with threshold 1. Its successor (version 1) must therefore be signed by
//! that key, which is how a fleet moves from one key to a key list.
//!
//! Format 2 adds the *online* role (TUF's timestamp role, extended): keys that may
//! live on the serving machine and re-sign a head's freshness or lower a rollout,
//! never its releases (FORMAT.md §5). Format 1 lists, which have no online role, are
//! still read: key lists are never rewritten.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::envelope::{Envelope, ObjectKind, TrustedKeys};
use crate::error::{FormatError, Result};
use crate::id::{Digest, ObjectRef};
use crate::keys::{PublicKey, SecretKey};

/// Most keys a key list may name in each role.
pub const MAX_KEYS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// 1 for the first published key list; each successor is exactly one higher.
    pub version: u64,
    /// Unix seconds, informational.
    pub issued_at: u64,
    /// Raw ed25519 public keys, strictly ascending, that sign the next key list.
    pub root_keys: Vec<[u8; 32]>,
    pub root_threshold: u16,
    /// Raw ed25519 public keys, strictly ascending, that sign heads and manifests.
    pub publish_keys: Vec<[u8; 32]>,
    pub publish_threshold: u16,
    /// Raw ed25519 public keys, strictly ascending, that may re-sign a head's
    /// freshness (format 2; empty: no online role).
    pub online_keys: Vec<[u8; 32]>,
    /// 0 exactly when `online_keys` is empty.
    pub online_threshold: u16,
}

/// The body of a format 1 key list, before the online role.
#[derive(Deserialize)]
struct KeyListV1 {
    version: u64,
    issued_at: u64,
    root_keys: Vec<[u8; 32]>,
    root_threshold: u16,
    publish_keys: Vec<[u8; 32]>,
    publish_threshold: u16,
}

/// Where the head says the channel's current key list is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyListRef {
    pub version: u64,
    pub object: ObjectRef,
}

fn malformed(reason: String) -> FormatError {
    FormatError::Malformed {
        kind: "key list",
        reason,
    }
}

fn role(keys: &[[u8; 32]], threshold: u16, what: &str) -> Result<TrustedKeys> {
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(malformed(format!(
            "{} {what} keys, expected 1 to {MAX_KEYS}",
            keys.len()
        )));
    }
    if keys.windows(2).any(|w| w[0] >= w[1]) {
        return Err(malformed(format!("{what} keys not sorted or repeated")));
    }
    let parsed = keys
        .iter()
        .map(PublicKey::from_bytes)
        .collect::<Result<Vec<_>>>()?;
    TrustedKeys::new(parsed, threshold as usize).map_err(|_| {
        malformed(format!(
            "{what} threshold {threshold} with {} keys",
            keys.len()
        ))
    })
}

impl KeyList {
    /// Builds a key list with sorted keys.
    pub fn new(
        version: u64,
        issued_at: u64,
        root: &[PublicKey],
        root_threshold: u16,
        publish: &[PublicKey],
        publish_threshold: u16,
    ) -> Result<Self> {
        let sorted = |keys: &[PublicKey]| {
            let mut v: Vec<[u8; 32]> = keys.iter().map(PublicKey::to_bytes).collect();
            v.sort();
            v.dedup();
            v
        };
        let list = KeyList {
            version,
            issued_at,
            root_keys: sorted(root),
            root_threshold,
            publish_keys: sorted(publish),
            publish_threshold,
            online_keys: Vec::new(),
            online_threshold: 0,
        };
        list.validate()?;
        Ok(list)
    }

    /// Adds the online role: `keys` may re-sign head freshness, `threshold` of them.
    pub fn with_online(mut self, keys: &[PublicKey], threshold: u16) -> Result<Self> {
        let mut v: Vec<[u8; 32]> = keys.iter().map(PublicKey::to_bytes).collect();
        v.sort();
        v.dedup();
        self.online_keys = v;
        self.online_threshold = threshold;
        self.validate()?;
        Ok(self)
    }

    pub fn validate(&self) -> Result<()> {
        if self.version == 0 {
            return Err(malformed(
                "version 0 is reserved for the single-key setup".into(),
            ));
        }
        role(&self.root_keys, self.root_threshold, "root")?;
        role(&self.publish_keys, self.publish_threshold, "publishing")?;
        if self.online_keys.is_empty() {
            if self.online_threshold != 0 {
                return Err(malformed(format!(
                    "online threshold {} without online keys",
                    self.online_threshold
                )));
            }
        } else {
            role(&self.online_keys, self.online_threshold, "online")?;
        }
        Ok(())
    }

    /// The keys and threshold that may re-sign a head's freshness, if the list has
    /// an online role.
    pub fn online(&self) -> Option<TrustedKeys> {
        (!self.online_keys.is_empty()).then(|| {
            role(&self.online_keys, self.online_threshold, "online").expect("validated key list")
        })
    }

    /// The keys and threshold that sign heads and manifests.
    pub fn publishers(&self) -> TrustedKeys {
        // validate() ran on every KeyList handed out, so the roles are well formed.
        role(&self.publish_keys, self.publish_threshold, "publishing").expect("validated key list")
    }

    /// The keys and threshold that sign the next key list.
    pub fn roots(&self) -> TrustedKeys {
        role(&self.root_keys, self.root_threshold, "root").expect("validated key list")
    }

    /// Validates, signs with every given key and encodes the stored bytes.
    pub fn sign(&self, keys: &[&SecretKey]) -> Result<Vec<u8>> {
        self.validate()?;
        Ok(Envelope::sign(ObjectKind::KeyList, codec::encode(self), keys).encode())
    }
}

/// What a client trusts: the implicit single-key list (version 0) or a verified list.
#[derive(Clone, Debug)]
pub enum TrustRoot {
    SingleKey(PublicKey),
    List(KeyList),
}

impl TrustRoot {
    pub fn version(&self) -> u64 {
        match self {
            TrustRoot::SingleKey(_) => 0,
            TrustRoot::List(l) => l.version,
        }
    }

    /// Keys and threshold for channel heads and manifests.
    pub fn publishers(&self) -> TrustedKeys {
        match self {
            TrustRoot::SingleKey(k) => TrustedKeys::single(*k),
            TrustRoot::List(l) => l.publishers(),
        }
    }

    /// Keys and threshold that must sign the next key list.
    pub fn roots(&self) -> TrustedKeys {
        match self {
            TrustRoot::SingleKey(k) => TrustedKeys::single(*k),
            TrustRoot::List(l) => l.roots(),
        }
    }

    /// The online role, if any (never in the single-key setup).
    pub fn online(&self) -> Option<TrustedKeys> {
        match self {
            TrustRoot::SingleKey(_) => None,
            TrustRoot::List(l) => l.online(),
        }
    }

    /// Everything a channel head may be signed with (FORMAT.md §6.1).
    pub fn head_keys(&self) -> HeadKeys {
        HeadKeys {
            publishers: self.publishers(),
            online: self.online(),
        }
    }

    /// A key list the client stored itself after verifying it (FORMAT.md §6.3): its own
    /// root signatures are checked again so a damaged file is noticed.
    pub fn from_stored(bytes: &[u8]) -> Result<Self> {
        let (list, env) = decode(bytes)?;
        env.verify(&list.roots())?;
        Ok(TrustRoot::List(list))
    }

    /// FORMAT.md §6.3: accepts `bytes` as the successor of this trust root. The list
    /// must be exactly one version higher and signed by a threshold of the current root
    /// keys and by a threshold of its own root keys.
    pub fn advance(&self, bytes: &[u8]) -> Result<TrustRoot> {
        let (list, env) = decode(bytes)?;
        if list.version != self.version() + 1 {
            return Err(malformed(format!(
                "version {} does not follow the trusted version {}",
                list.version,
                self.version()
            )));
        }
        env.verify(&self.roots())
            .map_err(|e| FormatError::BadSignature {
                kind: "key list",
                reason: format!(
                    "version {} is not signed by the root keys of version {}: {e}",
                    list.version,
                    self.version()
                ),
            })?;
        env.verify(&list.roots())
            .map_err(|e| FormatError::BadSignature {
                kind: "key list",
                reason: format!(
                    "version {} is not signed by its own root keys: {e}",
                    list.version
                ),
            })?;
        Ok(TrustRoot::List(list))
    }
}

/// The keys a channel head answers to: its publisher content needs a threshold of
/// `publishers`; its freshness layer a threshold of `publishers` or of `online`.
#[derive(Clone, Debug)]
pub struct HeadKeys {
    pub publishers: TrustedKeys,
    pub online: Option<TrustedKeys>,
}

impl From<TrustedKeys> for HeadKeys {
    fn from(publishers: TrustedKeys) -> Self {
        HeadKeys {
            publishers,
            online: None,
        }
    }
}

impl From<&TrustedKeys> for HeadKeys {
    fn from(publishers: &TrustedKeys) -> Self {
        HeadKeys::from(publishers.clone())
    }
}

impl From<&HeadKeys> for HeadKeys {
    fn from(keys: &HeadKeys) -> Self {
        keys.clone()
    }
}

fn decode(bytes: &[u8]) -> Result<(KeyList, Envelope)> {
    let env = Envelope::decode(ObjectKind::KeyList, bytes)?;
    let list = if env.format == 1 {
        let v1: KeyListV1 = codec::decode("key list", &env.body)?;
        KeyList {
            version: v1.version,
            issued_at: v1.issued_at,
            root_keys: v1.root_keys,
            root_threshold: v1.root_threshold,
            publish_keys: v1.publish_keys,
            publish_threshold: v1.publish_threshold,
            online_keys: Vec::new(),
            online_threshold: 0,
        }
    } else {
        codec::decode("key list", &env.body)?
    };
    list.validate()?;
    Ok((list, env))
}

/// Decodes a stored key list without checking any signature: for display by the
/// publisher's tools only, never for trust decisions.
pub fn inspect(bytes: &[u8]) -> Result<KeyList> {
    decode(bytes).map(|(l, _)| l)
}

/// The reference a head carries to the key list `bytes`.
pub fn key_list_ref(bytes: &[u8]) -> Result<KeyListRef> {
    let list = inspect(bytes)?;
    Ok(KeyListRef {
        version: list.version,
        object: ObjectRef::of(bytes),
    })
}

/// Checks that `bytes` are the key list a head names.
pub fn check_ref(r: &KeyListRef, bytes: &[u8]) -> Result<()> {
    r.object.check("key list", bytes)
}

impl KeyListRef {
    pub fn hash(&self) -> Digest {
        self.object.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    #[test]
    fn chain_from_single_key_through_rotations() {
        let single = TrustRoot::SingleKey(k(1).public());
        // v1: roots {2,3} threshold 2, publishers {4}; signed by the old single key and both new roots.
        let v1 = KeyList::new(
            1,
            0,
            &[k(2).public(), k(3).public()],
            2,
            &[k(4).public()],
            1,
        )
        .unwrap();
        let v1b = v1.sign(&[&k(1), &k(2), &k(3)]).unwrap();
        let t1 = single.advance(&v1b).unwrap();
        assert_eq!(t1.version(), 1);
        assert_eq!(t1.publishers().key_ids(), vec![k(4).public().id()]);

        // Missing the old single key's signature: refused.
        let only_new = v1.sign(&[&k(2), &k(3)]).unwrap();
        let e = single.advance(&only_new).unwrap_err().to_string();
        assert!(
            e.contains("not signed by the root keys of version 0"),
            "{e}"
        );
        // Below its own root threshold: refused.
        let half = v1.sign(&[&k(1), &k(2)]).unwrap();
        assert!(single.advance(&half).is_err());

        // v2 rotates root 3 -> 5 and revokes publisher 4 for 6.
        let v2 = KeyList::new(
            2,
            0,
            &[k(2).public(), k(5).public()],
            2,
            &[k(6).public()],
            1,
        )
        .unwrap();
        let v2b = v2.sign(&[&k(2), &k(3), &k(5)]).unwrap();
        let t2 = t1.advance(&v2b).unwrap();
        assert_eq!(t2.publishers().key_ids(), vec![k(6).public().id()]);
        // Skipping a version is refused: v2 cannot follow v0.
        assert!(single.advance(&v2b).is_err());
        // Stored copies reload.
        assert_eq!(TrustRoot::from_stored(&v2b).unwrap().version(), 2);
    }

    #[test]
    fn malformed_lists_are_refused() {
        assert!(KeyList::new(1, 0, &[k(1).public()], 2, &[k(1).public()], 1).is_err());
        assert!(KeyList::new(0, 0, &[k(1).public()], 1, &[k(1).public()], 1).is_err());
        assert!(KeyList::new(1, 0, &[], 1, &[k(1).public()], 1).is_err());
    }

    #[test]
    fn format_1_lists_are_read_without_an_online_role() {
        #[derive(Serialize)]
        struct V1 {
            version: u64,
            issued_at: u64,
            root_keys: Vec<[u8; 32]>,
            root_threshold: u16,
            publish_keys: Vec<[u8; 32]>,
            publish_threshold: u16,
        }
        let v1 = V1 {
            version: 1,
            issued_at: 0,
            root_keys: vec![k(2).public().to_bytes()],
            root_threshold: 1,
            publish_keys: vec![k(3).public().to_bytes()],
            publish_threshold: 1,
        };
        let bytes =
            Envelope::sign_as(ObjectKind::KeyList, 1, codec::encode(&v1), &[&k(1), &k(2)]).encode();
        let t = TrustRoot::SingleKey(k(1).public()).advance(&bytes).unwrap();
        assert!(t.online().is_none());
        // Format 2 with an online role; a threshold without keys is malformed.
        let l = KeyList::new(2, 0, &[k(2).public()], 1, &[k(3).public()], 1)
            .unwrap()
            .with_online(&[k(4).public()], 1)
            .unwrap();
        let t2 = t.advance(&l.sign(&[&k(2)]).unwrap()).unwrap();
        assert_eq!(t2.online().unwrap().key_ids(), vec![k(4).public().id()]);
        let mut bad = l.clone();
        bad.online_keys.clear();
        assert!(bad.validate().is_err());
    }
}
