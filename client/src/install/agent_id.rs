//! `ROOT/.ferry/agent_id`: a random 128-bit id, 32 lowercase hex characters, made on
//! first use. It places the agent in a release's rollout (FORMAT.md §5.1) and stays
//! the same across updates, so raising a rollout only ever adds agents.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::fsutil;

/// Reads the id at `path`, creating it if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<[u8; 16]> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(text.trim()).with_context(|| {
            format!(
                "{} is damaged (expected 32 hex characters); delete it to get a new agent id",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut id = [0u8; 16];
            getrandom::fill(&mut id)
                .map_err(|e| anyhow::anyhow!("no randomness for an agent id: {e}"))?;
            let text: String = id.iter().map(|b| format!("{b:02x}")).collect();
            fsutil::write_atomic(path, format!("{text}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
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
}
