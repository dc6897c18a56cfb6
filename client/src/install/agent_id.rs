//! `ROOT/.ferry/agent_id`: a random 128-bit id, 32 lowercase hex characters, made by
//! `ferry init` (or on first use by roots made before). It places the agent in a
//! release's rollout (FORMAT.md §5.1) and stays the same across updates, so raising a
//! rollout only ever adds agents.
//!
//! A root copied to another machine (a cloned image) must not share its id with the
//! original: `agent_id.machine` holds a digest of the machine id the agent id was made
//! on (`/etc/machine-id`, else `/var/lib/dbus/machine-id`; the id itself is not
//! stored), and a different machine id makes a new agent id. The new id is written
//! before the new digest, so a crash in between makes yet another id, never keeps a
//! clone's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::fsutil;

/// Where the machine id is read from, in order.
const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// Reads the id at `path`, creating it if the file does not exist and making a new
/// one if the machine changed since it was made.
pub fn load_or_create(path: &Path) -> Result<[u8; 16]> {
    load_or_create_on(path, machine_digest().as_deref())
}

/// The id as 32 lowercase hex characters.
pub fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn load_or_create_on(path: &Path, machine: Option<&str>) -> Result<[u8; 16]> {
    let bound = machine_file(path);
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(parse(text.trim()).with_context(|| {
            format!(
                "{} is damaged (expected 32 hex characters); delete it to get a new agent id",
                path.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let recorded = std::fs::read_to_string(&bound)
        .ok()
        .map(|t| t.trim().to_string());
    let id = match (existing, machine, recorded.as_deref()) {
        (Some(id), Some(now), Some(was)) if now != was => {
            let new = create(path)?;
            tracing::warn!(
                "this root's agent id {} was made on another machine (a cloned image?): it is now {}",
                hex(&id),
                hex(&new)
            );
            new
        }
        (Some(id), _, _) => id,
        (None, _, _) => create(path)?,
    };
    if let Some(now) = machine
        && recorded.as_deref() != Some(now)
    {
        fsutil::write_atomic(&bound, format!("{now}\n").as_bytes())?;
    }
    Ok(id)
}

fn create(path: &Path) -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("no randomness for an agent id: {e}"))?;
    fsutil::write_atomic(path, format!("{}\n", hex(&id)).as_bytes())?;
    Ok(id)
}

fn machine_file(path: &Path) -> PathBuf {
    path.with_extension("machine")
}

/// A digest of this machine's id, or `None` where the system has none.
fn machine_digest() -> Option<String> {
    MACHINE_ID_FILES.iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        let id = text.trim();
        (!id.is_empty()).then(|| {
            let mut h = blake3::Hasher::new();
            h.update(b"ferry-machine-id\0");
            h.update(id.as_bytes());
            h.finalize().to_hex().to_string()
        })
    })
}

fn parse(text: &str) -> Result<[u8; 16]> {
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("not 32 hex characters");
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_back() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("agent_id");
        let a = load_or_create(&p).unwrap();
        assert_eq!(load_or_create(&p).unwrap(), a);
        assert_eq!(std::fs::read_to_string(&p).unwrap().trim().len(), 32);
        std::fs::write(&p, "xyz").unwrap();
        let e = format!("{:#}", load_or_create(&p).unwrap_err());
        assert!(e.contains("damaged"), "{e}");
    }

    #[test]
    fn another_machine_id_makes_a_new_agent_id_and_the_same_keeps_it() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("agent_id");
        let a = load_or_create_on(&p, Some("m1")).unwrap();
        assert_eq!(load_or_create_on(&p, Some("m1")).unwrap(), a);
        // A system without a machine id keeps whatever it has.
        assert_eq!(load_or_create_on(&p, None).unwrap(), a);
        // The image cloned onto machine m2.
        let b = load_or_create_on(&p, Some("m2")).unwrap();
        assert_ne!(a, b);
        assert_eq!(load_or_create_on(&p, Some("m2")).unwrap(), b);
        assert_eq!(
            std::fs::read_to_string(machine_file(&p)).unwrap().trim(),
            "m2"
        );
        // A root from before the machine was recorded adopts the machine it is on.
        std::fs::remove_file(machine_file(&p)).unwrap();
        assert_eq!(load_or_create_on(&p, Some("m3")).unwrap(), b);
        assert_eq!(load_or_create_on(&p, Some("m3")).unwrap(), b);
    }
}
