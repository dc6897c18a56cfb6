//! `ferry status`: what the root follows and has installed.

use anyhow::Result;
use serde_json::json;

use super::StatusArgs;
use super::report;
use super::root::Root;
use crate::install::agent_id;
use crate::install::lock::LockMode;

pub fn run(args: &StatusArgs) -> Result<()> {
    let root = Root::open(&args.root, LockMode::Shared, &args.lock)?;
    let s = &root.state;
    let retained: Vec<String> = s.retained().iter().map(ToString::to_string).collect();
    // Where the active release lives: `versions/<version>`, or `<version>+<n>` after a repair.
    let active_folder = s.active.as_deref().and_then(|v| s.folder_of(v));
    let id = agent_id::hex(&agent_id::load_or_create(&root.layout.agent_id())?);
    if args.json {
        let v = json!({
            "agent_id": id,
            "channel": root.config.channel,
            "server": root.config.server(),
            "servers": root.config.servers,
            "active": s.active,
            "active_folder": active_folder,
            "retained": retained,
            "pinned": s.pin,
            "last_check": s.last_check,
            "last_sequence": s.last_sequence,
            "bad": s.bad,
            "staged": s.staged.as_ref().map(|st| &st.version),
            "held_back": s.held_back,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let or_none = |o: Option<String>| o.unwrap_or_else(|| "none".into());
    println!("agent id:      {id}");
    println!("channel:       {}", root.config.channel);
    println!("server:        {}", root.config.server());
    println!(
        "active:        {}",
        or_none(s.active.as_ref().map(|v| match active_folder {
            Some(f) if f != v => format!("{v} (in versions/{f})"),
            _ => v.clone(),
        }))
    );
    println!(
        "retained:      {}",
        if retained.is_empty() {
            "none".into()
        } else {
            retained.join(", ")
        }
    );
    println!(
        "pinned:        {}",
        or_none(
            s.pin
                .as_ref()
                .map(|p| format!("{} (rolled back from {})", p.version, p.rolled_back_from))
        )
    );
    println!("last check:    {}", or_none(s.last_check.map(report::utc)));
    println!(
        "last sequence: {}",
        or_none(s.last_sequence.map(|n| n.to_string()))
    );
    if let Some(st) = &s.staged {
        println!(
            "staged:        {} (in versions/{}, waiting for an update window)",
            st.version, st.folder
        );
    }
    for h in &s.held_back {
        println!("newer:         {} not taken: {}", h.version, h.reason);
    }
    for b in &s.bad {
        println!(
            "marked bad:    {} at {}: {}",
            b.version,
            report::utc(b.at),
            b.reason
        );
    }
    Ok(())
}

/// [`crate::updater::Updater::status`].
pub(crate) fn read(u: &crate::updater::Updater) -> Result<crate::updater::Status> {
    let root = Root::open(u.root(), LockMode::Shared, u.lock())?;
    let s = &root.state;
    Ok(crate::updater::Status {
        channel: root.config.channel.clone(),
        active: s.active.clone(),
        retained: s.retained().iter().map(ToString::to_string).collect(),
        pinned: s.pin.as_ref().map(|p| p.version.clone()),
        agent_id: agent_id::hex(&agent_id::load_or_create(&root.layout.agent_id())?),
    })
}
