//! The command line: argument definitions and one module per command. Commands use
//! `anyhow` and add context; the library modules below them return typed errors.

mod agent;
mod deliver;
mod doctor;
pub(crate) mod dry_run;
pub mod exit;
mod fleet;
mod history;
mod init;
mod manual;
mod plan;
pub(crate) mod progress;
pub(crate) mod report;
pub(crate) mod rollback;
mod root;
mod size;
pub(crate) mod status;
mod switch;
pub(crate) mod update;
mod verify;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// ferry: delta updates from a signed repository into an install root.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None, after_help = exit::HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text or as one JSON object each (for log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Configure an install root (writes ROOT/.ferry/config.toml; no network).
    Init(InitArgs),
    /// Install the channel's current release, reusing local chunks.
    Update(UpdateArgs),
    /// Switch back to an older release and pin it.
    Rollback(RollbackArgs),
    /// Show what updates and rollbacks happened, newest first.
    History(HistoryArgs),
    /// Show the root's channel, active release, retained releases and pin.
    Status(StatusArgs),
    /// Check the active release on disk against its signed manifest.
    Verify(VerifyArgs),
    /// Check what the next update needs (servers, keys, clock, disk, lock, hooks);
    /// changes nothing, exits 1 when a check fails.
    Doctor(DoctorArgs),
    /// Keep the root updated in the background: check every `interval`, switch inside
    /// the update windows with the hooks, pre-stage outside them.
    Agent(AgentArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell
    /// (e.g. `ferry completions bash > /etc/bash_completion.d/ferry`).
    Completions(CompletionsArgs),
    /// Print the manual page, or write one page per command into a folder.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write ferry.1 and ferry-COMMAND.1 into this folder instead of printing ferry.1.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Install root.
    #[arg(long)]
    pub root: PathBuf,
    #[command(flatten)]
    pub lock: LockArgs,
    /// One check, then exit (for cron and tests); the exit status says how it went.
    #[arg(long)]
    pub once: bool,
    /// Time between checks, e.g. 30s or 15m [default: the root's `interval`, else 15m].
    #[arg(long, value_name = "DURATION", value_parser = ferry_format::duration::parse_duration)]
    pub interval: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Install root (created if missing).
    #[arg(long)]
    pub root: PathBuf,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Repository base URL: http://, https:// or file://. Repeatable: every one is
    /// written to `servers`, and requests go to the first.
    #[arg(long, required = true)]
    pub server: Vec<String>,
    /// Channel to follow.
    #[arg(long)]
    pub channel: String,
    /// Public key file (`ferry-public-key:v1:...`) trusted to sign the channel.
    #[arg(long, required_unless_present = "key_list")]
    pub public_key: Option<PathBuf>,
    /// A key list file (the repository's `keys/N`) to trust instead of, or as the
    /// successor of, the single public key: later key lists are followed from it.
    #[arg(long, value_name = "FILE")]
    pub key_list: Option<PathBuf>,
    /// Releases to keep installed (for instant rollback).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: u64,
    /// Clock skew tolerated when checking a channel head's expiry, e.g. 5m (default: none).
    #[arg(long, value_name = "DURATION", value_parser = ferry_format::duration::parse_duration)]
    pub max_clock_skew: Option<std::time::Duration>,
    /// A path of the application's own data to copy from the active release into
    /// each new one before switching, e.g. `logs/` (a directory and everything under
    /// it) or `*.db`; `*` and `?` match within one path component; a pattern with a
    /// `/` inside is anchored at the release root. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub carry: Vec<String>,
    /// Overwrite an existing configuration (state and releases are kept).
    #[arg(long)]
    pub force: bool,
    /// PEM file of the CA certificate(s) to trust for an https:// server instead of
    /// the system's roots (copied to ROOT/.ferry/ca.pem, named by `ca_file`).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Proxy for every request, e.g. http://proxy:3128 (default: HTTPS_PROXY,
    /// HTTP_PROXY, ALL_PROXY and NO_PROXY from the environment).
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// Abort a download when fewer bytes per second than this arrive over
    /// --low-speed-time [default: 1024; 0 never aborts].
    #[arg(long, value_name = "BYTES")]
    pub low_speed_limit: Option<u64>,
    /// The window of --low-speed-limit, e.g. 30s or 2m [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = init::parse_window)]
    pub low_speed_time: Option<std::time::Duration>,
}

/// `ferry init` for [`crate::updater::Updater::new`], quietly.
pub(crate) fn init_root(c: &crate::updater::Config) -> anyhow::Result<()> {
    init::initialise(
        &InitArgs {
            root: c.root.clone(),
            lock: LockArgs::default(),
            server: c.servers.clone(),
            channel: c.channel.clone(),
            public_key: Some(c.public_key.clone()),
            key_list: None,
            keep: c.keep,
            max_clock_skew: None,
            carry: Vec::new(),
            force: false,
            ca_file: None,
            proxy: None,
            low_speed_limit: None,
            low_speed_time: None,
        },
        false,
    )
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Install root.
    #[arg(long)]
    pub root: PathBuf,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Update even if a rollback pinned this root.
    #[arg(long)]
    pub force: bool,
    /// Refuse a plan that needs to download more than SIZE (e.g. 5MiB), before
    /// downloading it [default: the root's `max_download`, else no limit].
    #[arg(long, value_name = "SIZE", value_parser = size::parse_size)]
    pub max_download: Option<u64>,
    /// Print the plan and what it would download, from the head and the manifest
    /// alone (at most 3 requests, with two hops); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print nothing but errors (no plan, progress bar or summary).
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Install root.
    #[arg(long)]
    pub root: PathBuf,
    #[command(flatten)]
    pub lock: LockArgs,
    /// How many retained releases to go down.
    #[arg(long, conflicts_with = "to")]
    pub steps: Option<usize>,
    /// Exact version to switch to (fetched from the channel if not retained).
    #[arg(long)]
    pub to: Option<String>,
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Install root.
    #[arg(long)]
    pub root: PathBuf,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Install root.
    #[arg(long)]
    pub root: PathBuf,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Install root.
    #[arg(long)]
    pub root: PathBuf,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Install root.
    #[arg(long)]
    pub root: PathBuf,
    /// Print one JSON object on stdout instead of one line per check.
    #[arg(long)]
    pub json: bool,
}

/// `--lock-timeout`, on every command that takes the root's lock.
#[derive(Debug, Clone, Default, Args)]
pub struct LockArgs {
    /// How long to wait for another ferry command holding this root, e.g. 30s or 0s
    /// (fail at once) [default: the root's `lock_timeout`, else 10m].
    #[arg(long, value_name = "DURATION", value_parser = parse_lock_timeout)]
    pub lock_timeout: Option<std::time::Duration>,
}

/// A duration with a unit, or a bare `0`.
fn parse_lock_timeout(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    ferry_format::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs one parsed command.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(a) => init::run(&a),
        Command::Update(a) if a.dry_run => dry_run::run(&a),
        Command::Update(a) => update::run(&a),
        Command::Rollback(a) => rollback::run(&a),
        Command::History(a) => history::run(&a),
        Command::Status(a) => status::run(&a),
        Command::Verify(a) => verify::run(&a),
        Command::Agent(a) => agent::run(&a),
        Command::Doctor(a) => doctor::run(&a),
        Command::Completions(a) => manual::completions(&a),
        Command::Man(a) => manual::man(&a),
    }
}
