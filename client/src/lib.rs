//! # ferry-client
//!
//! `ferry`, the agent: it keeps an install root on the current release of a channel
//! published by `ferry-server`, downloading only the chunks it does not already have,
//! and can roll back instantly to a retained release.
//!
//! **For an application that updates itself, the API is [`updater`]**: [`updater::Updater`]
//! (`new`/`open`, `check`/`plan`, `apply`, `rollback`, `status`), the plan it executes
//! and its typed errors, each with an example; `client/examples/self_update.rs` is a
//! whole application. The other modules are the `ferry` binary's internals, public
//! for its tests and benchmarks, hidden from this documentation and not a stable API.
//!
//! The internal modules follow the path of an update:
//!
//! - `fetch`: the `fetch::Transport` trait (HTTP via reqwest, or a `file://`
//!   repository folder), counted requests and bytes, resumable archive ranges.
//! - `apply`: the local chunk index over retained releases (`apply::source`),
//!   applying a diff object to a retained release into a spool of verified chunks
//!   (`apply::diff`), building a release tree in staging (`apply::build`),
//!   checking a tree against its manifest (`apply::check`).
//! - `install`: the root's layout, lock, config, state, history, the atomic
//!   `current` switch, and the pure keep/rollback/pin rules (`install::retain`).
//! - `report`: the agent's reports to the fleet server, queued on disk.
//! - `fsutil`: atomic writes and fsync, the one place durable changes are made.
//! - `failpoint`: `crash_point!`, the crash-injection points of the kill tests
//!   (compiled in only with the `failpoints` feature).
//! - `cli`: one module per command; `cli::deliver` strings the steps together.
//!
//! Trust: every byte from the repository goes through `ferry_format::verified`
//! (heads, manifests, also those rebuilt from a manifest diff) or is checked against
//! a chunk id (archive chunks, chunks a diff produces) before it is used, and only
//! `Verified<Manifest>` values reach the planner and the tree builder. A `kill -9` at
//! any moment leaves `ROOT/current` on an intact release; the next run resumes.
//!
//! ```no_run
//! use clap::Parser;
//! let cli = ferry_client::cli::Cli::parse_from(["ferry", "status", "--root", "/opt/app"]);
//! ferry_client::run(cli).unwrap();
//! ```

#[macro_use]
#[doc(hidden)]
pub mod failpoint;
#[doc(hidden)]
pub mod agent;
#[doc(hidden)]
pub mod apply;
#[doc(hidden)]
pub mod cli;
#[doc(hidden)]
pub mod fetch;
#[doc(hidden)]
pub mod fsutil;
#[doc(hidden)]
pub mod install;
#[doc(hidden)]
pub mod report;
pub mod updater;

/// Runs a parsed command line: what the `ferry` binary's `main` does.
///
/// ```no_run
/// use clap::Parser;
/// let cli = ferry_client::cli::Cli::parse_from(["ferry", "status", "--root", "/opt/app"]);
/// ferry_client::run(cli).unwrap();
/// ```
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    // reqwest is built without a default crypto provider; installing ring twice (as
    // tests do) is harmless, so the result is ignored.
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logging(&cli);
    cli::dispatch(cli)
}

/// `NO_COLOR` set to anything but the empty string (no-color.org).
///
/// ```
/// // SAFETY: no other thread reads the environment in this example.
/// unsafe { std::env::set_var("NO_COLOR", "1") };
/// assert!(ferry_client::no_color());
/// ```
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Logs go to stderr: text (colour only on a terminal, without `NO_COLOR`) or one JSON
/// object per line.
/// The agent logs its checks at `info`; one-shot commands print their own summary and
/// log only warnings. `FERRY_LOG` (an `EnvFilter`) overrides either.
fn init_logging(cli: &cli::Cli) {
    let default = match cli.command {
        cli::Command::Agent(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| {
        // The platform verifier logs its own copy of a certificate error that ferry
        // already reports with context.
        tracing_subscriber::EnvFilter::new(format!("{default},rustls_platform_verifier=off"))
    });
    let builder = tracing_subscriber::fmt()
        .with_writer(|| cli::progress::LogWriter)
        .with_env_filter(filter);
    let _ = match cli.log_format {
        cli::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        cli::LogFormat::Text => {
            let agent = matches!(cli.command, cli::Command::Agent(_));
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !no_color();
            if agent {
                // A service's log wants times; a one-shot command's stderr does not.
                builder.with_ansi(ansi).with_target(false).try_init()
            } else {
                // A person reads it: the level and the message, no module path.
                builder
                    .with_ansi(ansi)
                    .without_time()
                    .with_target(false)
                    .try_init()
            }
        }
    };
}
