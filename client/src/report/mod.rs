//! Reports to the fleet server (FORMAT.md §10, docs/AGENT.md#reports): what `ferry
//! agent` tells `<first server>/v1/reports` after every check and every `heartbeat`,
//! when `token_file` is set. Reports wait in an on-disk queue ([`queue`]) and are
//! delivered in order with the agent's enrollment ([`send`]), so a server outage
//! loses no outcome.

pub mod queue;
pub mod send;

pub use queue::Queue;
pub use send::{Flushed, SendError, Sender};

/// This machine's name (`/proc/sys/kernel/hostname`), or `unknown`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
