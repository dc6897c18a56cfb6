//! `ROOT/.ferry/history.jsonl`: an append-only log, one JSON event per line.
//!
//! ```text
//! {"schema":1,"time":1795411146,"event":"update","from":"1.0.0","to":"2.0.0",
//!  "bytes_downloaded":185548,"requests":3,"key_id":"3f2a...","result":"ok"}
//! ```
//! `result` is `"ok"` or `"error: <message>"`. A line cut short by a crash mid-append
//! is skipped when reading, so one bad line never hides the rest.
//!
//! Growth is bounded: an append that finds the log at [`MAX_BYTES`] first renames it
//! to `history.1.jsonl` (replacing the previous one), so the two files together hold
//! at most about twice that, the newest few thousand events. Reading takes both.

use std::path::{Path, PathBuf};

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

/// Size at which the log is rotated: about 4,000 events.
pub const MAX_BYTES: u64 = 1 << 20;

/// Appends `event` as one line, rotating the log first if it is full.
pub fn append(path: &Path, event: &Event) -> Result<(), StoreError> {
    append_capped(path, event, MAX_BYTES)
}

fn append_capped(path: &Path, event: &Event, max_bytes: u64) -> Result<(), StoreError> {
    // A struct of strings and numbers always serialises.
    let line = serde_json::to_string(event).expect("serialisable");
    let full = std::fs::symlink_metadata(path).is_ok_and(|m| m.len() >= max_bytes);
    if full {
        // A crash after the rename leaves an empty current log: nothing is lost.
        let older = rotated(path);
        fsutil::ctx("rotating", path, std::fs::rename(path, &older))?;
        fsutil::fsync_dir(older.parent().unwrap_or(Path::new(".")))?;
    }
    crash_point!("client::history::append");
    Ok(fsutil::append_line(path, &line)?)
}

/// `history.1.jsonl` beside `history.jsonl`: the events before the current file's.
pub fn rotated(path: &Path) -> PathBuf {
    path.with_extension("1.jsonl")
}

/// All readable events of the log and its rotated predecessor, newest first.
pub fn load(path: &Path) -> Result<Vec<Event>, StoreError> {
    let mut events = load_one(path)?;
    events.extend(load_one(&rotated(path))?);
    Ok(events)
}

fn load_one(path: &Path) -> Result<Vec<Event>, StoreError> {
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

    #[test]
    fn the_log_rotates_at_its_cap_and_reads_newest_first_across_both_files() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("history.jsonl");
        let event = |n: u64| {
            let mut e = Event::new("update", n, "00112233aabbccdd");
            e.to = Some(format!("{n}.0.0"));
            e
        };
        let line_len = serde_json::to_string(&event(10)).unwrap().len() as u64 + 1;
        let cap = 5 * line_len;
        for n in 10..40 {
            append_capped(&p, &event(n), cap).unwrap();
            let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
            assert!(size(&p) <= cap, "current log over its cap");
            assert!(size(&rotated(&p)) <= cap, "rotated log over its cap");
        }
        assert!(!t.path().join("history.2.jsonl").exists());
        let times: Vec<u64> = load(&p).unwrap().iter().map(|e| e.time).collect();
        // 30 appended, the newest 5 to 10 kept, newest first and contiguous.
        assert!((5..=10).contains(&times.len()), "{times:?}");
        let expected: Vec<u64> = (40 - times.len() as u64..40).rev().collect();
        assert_eq!(times, expected);
    }
}
