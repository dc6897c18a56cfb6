//! `ferry history`: the event log, newest first.

use anyhow::Result;

use super::HistoryArgs;
use super::report;
use super::root::Root;
use crate::install::history;
use crate::install::lock::LockMode;

pub fn run(args: &HistoryArgs) -> Result<()> {
    let root = Root::open(&args.root, LockMode::Shared, &args.lock)?;
    let events = history::load(&root.layout.history())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    if events.is_empty() {
        println!("no history yet");
    }
    for e in events {
        let from = e.from.as_deref().unwrap_or("none");
        let to = e.to.as_deref().unwrap_or("?");
        // An automatic rollback tried `to` and is back on `from`.
        let moves = if e.event == "auto-rollback" {
            format!("{from} -> {to} -> {from}")
        } else {
            format!("{from} -> {to}")
        };
        println!(
            "{}  {:<8} {moves}  {} in {} requests  key {}  {}",
            report::utc(e.time),
            e.event,
            report::bytes(e.bytes_downloaded),
            e.requests,
            e.key_id,
            e.result
        );
    }
    Ok(())
}
