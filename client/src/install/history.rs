//! `ROOT/.ferry/history.jsonl`: an append-only log, one JSON event per line.
//!
//! ```text
//! {"schema":1,"time":1795411146,"event":"update","from":"1.0.0","to":"2.0.0",
//!  "bytes_downloaded":185548,"requests":3,"key_id":"3f2a...","result":"ok"}
//! ```
//! `result` is `"ok"` or `"error: <message>"`. A line cut short by a crash mid-append
//! is skipped when reading, so one bad line never hides the rest.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{SCHEMA, StoreError};
use crate::fsutil;

/// One history event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub schema: u32,
    /// Unix seconds.
    pub time: u64,
    /// `install` (first release on this root), `update` or `rollback`.
    pub event: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub bytes_downloaded: u64,
    pub requests: u64,
    /// First 16 hex characters of the trusted key's id.
    pub key_id: String,
    pub result: String,
}

impl Event {
    pub fn new(event: &str, time: u64, key_id: &str) -> Self {
        Event {
            schema: SCHEMA,
            time,
            event: event.to_string(),
            from: None,
            to: None,
            bytes_downloaded: 0,
            requests: 0,
            key_id: key_id.to_string(),
            result: "ok".to_string(),
        }
    }
}

/// Appends `event` as one line.
pub fn append(path: &Path, event: &Event) -> Result<(), StoreError> {
    // A struct of strings and numbers always serialises.
    let line = serde_json::to_string(event).expect("serialisable");
    crash_point!("client::history::append");
    Ok(fsutil::append_line(path, &line)?)
}

/// All readable events, newest first.
pub fn load(path: &Path) -> Result<Vec<Event>, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fsutil::ctx("reading", path, Err(e))?),
    };
    let mut events: Vec<Event> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| match serde_json::from_str::<Event>(l) {
            Ok(e) => Some(e),
            Err(err) => {
                tracing::warn!(
                    "skipping unreadable history line in {}: {err}",
                    path.display()
                );
                None
            }
        })
        .collect();
    events.reverse();
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_load_newest_first() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("history.jsonl");
        assert!(load(&p).unwrap().is_empty());
        let mut a = Event::new("install", 10, "00112233aabbccdd");
        a.to = Some("1.0.0".into());
        let mut b = Event::new("update", 20, "00112233aabbccdd");
        b.from = Some("1.0.0".into());
        b.to = Some("2.0.0".into());
        b.result = "error: boom".into();
        append(&p, &a).unwrap();
        append(&p, &b).unwrap();
        // A torn line from a crash is skipped.
        fsutil::append_line(&p, "{\"schema\":1,\"ti").unwrap();
        let got = load(&p).unwrap();
        assert_eq!(got, vec![b, a]);
        let first = std::fs::read_to_string(&p).unwrap();
        let v: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["result"], "ok");
    }
}
