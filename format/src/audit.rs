//! Audit reports (FORMAT.md §11): what `ferry-server audit export` writes — who
//! published, re-signed, rolled out, paused, halted or revoked what and when, and
//! every agent outcome — and the signed form `audit verify` checks.
//!
//! A signed report is one JSON object, one line:
//!
//! ```text
//! {"report":<the report, byte for byte>,"key_id":"<64 hex>","signature":"<128 hex>"}\n
//! ```
//!
//! The ed25519 signature covers `"ferry-audit-v1" 0x00 | report bytes`: its own domain,
//! so no signature on a report can pass for one on a head, manifest or key list (their
//! messages start `"ferry-signature-v1" 0x00`), and none of theirs for a report. The
//! layout around the report is fixed (prefix `{"report":`, a suffix of 221 bytes), so
//! the verifier takes the report's exact bytes from between them and refuses a file
//! that is not byte for byte what the signer writes around them: any edit — of the
//! report, the key id, the signature or even the white space — fails.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};
use crate::keys::{KeyId, PublicKey, SecretKey};

/// The report schema this crate writes; readers accept it and lower ones.
pub const AUDIT_SCHEMA: u32 = 1;
/// The signature domain of audit reports.
const AUDIT_CONTEXT: &[u8] = b"ferry-audit-v1\0";
const KIND: &str = "audit report";

/// Event types (the `event` field). Readers keep types they do not know: a newer
/// writer may add some.
pub mod event {
    /// A release appeared in the channel's signed head.
    pub const PUBLISHED: &str = "published";
    /// A release left the head (no longer retained).
    pub const RETIRED: &str = "retired";
    /// The percentage of agents offered a release changed.
    pub const ROLLOUT_CHANGED: &str = "rollout-changed";
    /// A release's rollout was paused: 0% in force while the publisher signed more.
    pub const PAUSED: &str = "paused";
    /// A pause was lifted.
    pub const RESUMED: &str = "resumed";
    /// A head re-signed with nothing changed but its expiry (and sequence).
    pub const REFRESHED: &str = "refreshed";
    /// What a release requires of agents changed (FORMAT.md §5.2).
    pub const REQUIREMENTS_CHANGED: &str = "requirements-changed";
    /// A release was revoked (recall).
    pub const REVOKED: &str = "revoked";
    /// Heads began naming another key list.
    pub const KEY_LIST_CHANGED: &str = "key-list-changed";
    /// The oldest head kept in the log, when it is not the channel's first: the state
    /// the events after it start from.
    pub const BASELINE: &str = "baseline";
    /// A file in the head log that is not a head the repository's keys signed
    /// (altered, misnamed, signed by no trusted key): reported, never read as events.
    pub const INVALID_LOG_ENTRY: &str = "invalid-log-entry";
    /// The server halted a rollout by itself (its record in the fleet database).
    pub const HALTED: &str = "halted";
    /// An agent's report of an attempt, by its state: `agent-` and the state name
    /// (`agent-idle` after a successful update, `agent-failed`, `agent-rolled-back`,
    /// `agent-refused`, ...).
    pub const AGENT_PREFIX: &str = "agent-";
}

/// Which role signed a head (FORMAT.md §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignerRole {
    Publisher,
    Online,
}

impl SignerRole {
    pub fn name(self) -> &'static str {
        match self {
            SignerRole::Publisher => "publisher",
            SignerRole::Online => "online",
        }
    }
}

/// One audit event. Fields that do not apply to an event are null (head fields for
/// agent outcomes and the other way round).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unix seconds: a head's `issued_at`, a report's or a halt's time.
    pub time: u64,
    /// The same instant as RFC 3339 UTC.
    pub time_utc: String,
    /// One of [`event`].
    pub event: String,
    pub channel: String,
    pub release: Option<String>,
    /// Head sequence and publisher (content) sequence of the head the event comes from.
    pub head_sequence: Option<u64>,
    pub publisher_sequence: Option<u64>,
    /// blake3 of the head's exact bytes: the name of its log entry (FORMAT.md §7).
    pub head: Option<String>,
    /// Which role signed the head's freshness layer.
    pub role: Option<SignerRole>,
    /// Keys whose signatures on the head's freshness layer verified (64 hex each).
    pub key_ids: Vec<String>,
    /// Keys whose signatures on the publisher content verified.
    pub content_key_ids: Vec<String>,
    /// Rollout percentage in force after the event, and before it.
    pub percent: Option<u8>,
    pub previous_percent: Option<u8>,
    /// The head's expiry (unix seconds).
    pub expires_at: Option<u64>,
    pub agent_id: Option<String>,
    pub hostname: Option<String>,
    /// The id of the agent report an outcome comes from.
    pub agent_report_id: Option<String>,
    /// The agent's result word.
    pub result: Option<String>,
    /// Free text: an agent's error, a halt's reason, the requirements, key list versions.
    pub detail: Option<String>,
}

/// An audit report: the events of one time range, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub schema: u32,
    /// Random, 32 hex: names this export.
    pub report_id: String,
    /// Unix seconds and RFC 3339 UTC.
    pub generated_at: u64,
    pub generated_at_utc: String,
    /// The range: `since` ≤ time < `until`.
    pub since: u64,
    pub since_utc: String,
    pub until: u64,
    pub until_utc: String,
    /// The repository the heads were read from, as given.
    pub repository: String,
    /// The fleet database agent outcomes were read from, if any.
    pub fleet_db: Option<String>,
    /// Events by type.
    pub counts: BTreeMap<String, u64>,
    pub events: Vec<AuditEvent>,
}

impl AuditReport {
    /// Decodes a report, refusing a schema newer than this crate reads.
    pub fn from_json(bytes: &[u8]) -> Result<AuditReport> {
        #[derive(Deserialize)]
        struct Schema {
            schema: u32,
        }
        let s: Schema = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        if s.schema > AUDIT_SCHEMA {
            return Err(FormatError::UnsupportedFormat {
                kind: KIND,
                found: u16::try_from(s.schema).unwrap_or(u16::MAX),
                supported: AUDIT_SCHEMA as u16,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))
    }

    /// Counts the events by type.
    pub fn count(events: &[AuditEvent]) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for e in events {
            *counts.entry(e.event.clone()).or_insert(0) += 1;
        }
        counts
    }
}

fn malformed(reason: String) -> FormatError {
    FormatError::Malformed { kind: KIND, reason }
}

fn bad_signature(reason: String) -> FormatError {
    FormatError::BadSignature { kind: KIND, reason }
}

fn signed_message(report: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUDIT_CONTEXT.len() + report.len());
    m.extend_from_slice(AUDIT_CONTEXT);
    m.extend_from_slice(report);
    m
}

/// The signed file around `report` (exact bytes), `key_id` and `signature`.
fn signed_file(report: &[u8], key_id: &KeyId, signature: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(report.len() + 240);
    out.extend_from_slice(b"{\"report\":");
    out.extend_from_slice(report);
    out.extend_from_slice(b",\"key_id\":\"");
    out.extend_from_slice(key_id.to_hex().as_bytes());
    out.extend_from_slice(b"\",\"signature\":\"");
    out.extend_from_slice(hex::encode(signature).as_bytes());
    out.extend_from_slice(b"\"}\n");
    out
}

/// Signs the report JSON `report` (one JSON object, no white space around it) with
/// `key` and returns the signed file.
pub fn sign_report(report: &[u8], key: &SecretKey) -> Result<Vec<u8>> {
    if report.first() != Some(&b'{') || report.last() != Some(&b'}') {
        return Err(malformed(
            "a report is one JSON object with no white space around it".into(),
        ));
    }
    AuditReport::from_json(report)?;
    let signature = key.sign(&signed_message(report));
    Ok(signed_file(report, &key.public().id(), &signature))
}

/// A signed report whose signature by the expected key verified.
#[derive(Clone, Debug)]
pub struct VerifiedReport {
    /// The exact signed bytes.
    pub bytes: Vec<u8>,
    pub report: AuditReport,
    pub key_id: KeyId,
}

/// Checks a signed report file against `key`: the file is exactly what
/// [`sign_report`] writes, names `key`, and its signature over the report's bytes
/// verifies; then decodes the report.
pub fn verify_signed_report(file: &[u8], key: &PublicKey) -> Result<VerifiedReport> {
    const PREFIX: &[u8] = b"{\"report\":";
    // `,"key_id":"` 64 hex `","signature":"` 128 hex `"}` newline.
    const SUFFIX_LEN: usize = 11 + 64 + 15 + 128 + 3;
    let not_signed =
        || malformed("not a signed audit report (`audit export --sign` writes one)".into());
    if file.len() < PREFIX.len() + SUFFIX_LEN || !file.starts_with(PREFIX) {
        return Err(not_signed());
    }
    let (head, suffix) = file.split_at(file.len() - SUFFIX_LEN);
    let report = &head[PREFIX.len()..];
    let text = std::str::from_utf8(suffix).map_err(|_| not_signed())?;
    let key_hex = text.get(11..75).ok_or_else(not_signed)?;
    let sig_hex = text.get(90..218).ok_or_else(not_signed)?;
    let mut signature = [0u8; 64];
    hex::decode_to_slice(sig_hex, &mut signature)
        .map_err(|e| bad_signature(format!("the signature is not 128 hex characters: {e}")))?;
    let key_id = crate::id::Digest::from_hex(key_hex)
        .map_err(|e| bad_signature(format!("the key id is not 64 hex characters: {e}")))?;
    // The layout is fixed, so the report's bytes are exactly what lies between; any
    // other byte anywhere (white space, case of the hex, a field) is an edit.
    if signed_file(report, &key_id, &signature) != file {
        return Err(malformed(
            "the file is not byte for byte what `audit export --sign` writes: it was edited after signing".into(),
        ));
    }
    let expected = key.id();
    if key_id != expected {
        return Err(bad_signature(format!(
            "signed by key {}, not by the given key {}",
            key_id.to_hex(),
            expected.to_hex()
        )));
    }
    if !key.verify(&signed_message(report), &signature) {
        return Err(bad_signature(
            "the signature does not match the report: the report was changed after it was signed, or the signature is damaged".into(),
        ));
    }
    Ok(VerifiedReport {
        bytes: report.to_vec(),
        report: AuditReport::from_json(report)?,
        key_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Vec<u8> {
        let events = vec![AuditEvent {
            time: 100,
            time_utc: "1970-01-01T00:01:40Z".into(),
            event: event::PUBLISHED.into(),
            channel: "stable".into(),
            release: Some("1.0.0".into()),
            head_sequence: Some(1),
            publisher_sequence: Some(1),
            role: Some(SignerRole::Publisher),
            key_ids: vec!["ab".repeat(32)],
            ..AuditEvent::default()
        }];
        serde_json::to_vec(&AuditReport {
            schema: AUDIT_SCHEMA,
            report_id: "00".repeat(16),
            generated_at: 200,
            generated_at_utc: "1970-01-01T00:03:20Z".into(),
            since: 0,
            since_utc: "1970-01-01T00:00:00Z".into(),
            until: 200,
            until_utc: "1970-01-01T00:03:20Z".into(),
            repository: "repo".into(),
            fleet_db: None,
            counts: AuditReport::count(&events),
            events,
        })
        .unwrap()
    }

    #[test]
    fn a_signed_report_verifies_with_its_key_only() {
        let k = SecretKey::from_seed([1; 32]);
        let bytes = report();
        let file = sign_report(&bytes, &k).unwrap();
        assert!(file.ends_with(b"\"}\n"));
        let v = verify_signed_report(&file, &k.public()).unwrap();
        assert_eq!(v.bytes, bytes);
        assert_eq!(v.key_id, k.public().id());
        assert_eq!(v.report.events[0].event, "published");
        assert_eq!(v.report.counts["published"], 1);
        let other = SecretKey::from_seed([2; 32]).public();
        let e = verify_signed_report(&file, &other).unwrap_err().to_string();
        assert!(e.contains("not by the given key"), "{e}");
        // The other key's own signature over the same bytes is not this one's.
        let theirs = sign_report(&bytes, &SecretKey::from_seed([2; 32])).unwrap();
        assert!(verify_signed_report(&theirs, &k.public()).is_err());
        assert!(verify_signed_report(&theirs, &other).is_ok());
    }

    /// Every single-byte change of a signed file is refused.
    #[test]
    fn any_edit_fails() {
        let k = SecretKey::from_seed([1; 32]);
        let file = sign_report(&report(), &k).unwrap();
        for i in 0..file.len() {
            for flip in [0x01u8, 0x20] {
                let mut edited = file.clone();
                edited[i] ^= flip;
                assert!(
                    verify_signed_report(&edited, &k.public()).is_err(),
                    "byte {i} ^ {flip:#x} ({:?}) passed",
                    edited[i] as char
                );
            }
        }
        // A digit of the report changed: the signature names it.
        let pos = file.windows(5).position(|w| w == b"\"1.0.").unwrap() + 1;
        let mut edited = file.clone();
        edited[pos] = b'2';
        let e = verify_signed_report(&edited, &k.public())
            .unwrap_err()
            .to_string();
        assert!(e.contains("changed after it was signed"), "{e}");
        // White space added, a field appended, the key id in capitals: not the
        // signer's bytes.
        let mut spaced = file.clone();
        spaced.insert(1, b' ');
        assert!(verify_signed_report(&spaced, &k.public()).is_err());
        let text = String::from_utf8(file.clone()).unwrap();
        let id = k.public().id().to_hex();
        let upper = text.replace(&id, &id.to_uppercase());
        let e = verify_signed_report(upper.as_bytes(), &k.public())
            .unwrap_err()
            .to_string();
        assert!(e.contains("edited after signing"), "{e}");
        let appended = String::from_utf8(file.clone())
            .unwrap()
            .replace("\"}\n", "\",\"x\":1}\n");
        assert!(verify_signed_report(appended.as_bytes(), &k.public()).is_err());
        // Truncated.
        assert!(verify_signed_report(&file[..file.len() - 2], &k.public()).is_err());
    }

    /// The signature is over the domain prefix and the report: not the bare report
    /// (what a signature in another protocol over the same bytes would be).
    #[test]
    fn signatures_are_domain_separated() {
        let k = SecretKey::from_seed([1; 32]);
        let bytes = report();
        let file = sign_report(&bytes, &k).unwrap();
        let bare = k.sign(&bytes);
        let forged = signed_file(&bytes, &k.public().id(), &bare);
        assert_ne!(forged, file);
        let e = verify_signed_report(&forged, &k.public())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match"), "{e}");
        let mut m = b"ferry-audit-v1\0".to_vec();
        m.extend_from_slice(&bytes);
        assert!(k.public().verify(&m, &k.sign(&m)));
    }

    #[test]
    fn newer_schemas_and_non_reports_are_refused() {
        let k = SecretKey::from_seed([1; 32]);
        let newer = String::from_utf8(report())
            .unwrap()
            .replace("\"schema\":1", "\"schema\":2");
        let e = sign_report(newer.as_bytes(), &k).unwrap_err().to_string();
        assert!(e.contains("upgrade ferry"), "{e}");
        assert!(sign_report(b" {}", &k).is_err());
        assert!(sign_report(b"{\"schema\":1}", &k).is_err());
        let e = verify_signed_report(b"[1]", &k.public())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a signed audit report"), "{e}");
    }
}
