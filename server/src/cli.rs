//! The command line (clap types only; behaviour lives in the command modules).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};

/// ferry's build and distribution side: make keys, publish releases into a static
/// repository, serve that repository over HTTP.
#[derive(Debug, Parser)]
#[command(name = "ferry-server", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a publishing key pair (ferry.key secret, ferry.pub public).
    Keygen {
        /// Directory to write ferry.key and ferry.pub into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Publish a file or directory as a new release of a channel.
    Publish {
        /// Repository root (created if missing).
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// Secret key file written by `keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Channel name: 1-64 of [A-Za-z0-9._-], not starting with '.'.
        #[arg(long)]
        channel: String,
        /// Release version; must sort after the channel's current version.
        #[arg(long)]
        version: String,
        /// Lifetime of the new channel head, e.g. 12h or 7d.
        #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
        expires_in: Duration,
        /// How many releases the channel head keeps listing (rollback targets).
        #[arg(long, default_value_t = crate::publish::DEFAULT_RETAIN,
              value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
        retain: usize,
        /// zstd level for new chunks (1-22).
        #[arg(long, default_value_t = crate::publish::DEFAULT_ZSTD_LEVEL,
              value_parser = clap::value_parser!(i32).range(1..=22))]
        zstd_level: i32,
        /// Print one JSON object instead of the human summary.
        #[arg(long)]
        json: bool,
        /// The release: a regular file or a directory.
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Serve a repository over HTTP/1.1 and h2c.
    Serve {
        /// Repository root.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// Address to listen on; port 0 picks a free port (printed on stdout).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Most connections served at once; further ones wait to be accepted.
        #[arg(long, value_name = "N", default_value_t = 512,
              value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        max_connections: u32,
        /// Append one JSON line per request to this file.
        #[arg(long, value_name = "FILE")]
        access_log: Option<PathBuf>,
    },
    /// List a repository's channels and their releases.
    Ls {
        /// Repository root.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Public (or secret) key file used to verify and decode the heads; without
        /// it only channel names are listed.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = ferry_format::duration::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_parses_the_contract() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "ferry-server",
            "publish",
            "--repo",
            "r",
            "--key",
            "k",
            "--channel",
            "stable",
            "--version",
            "1.0.0",
            "--expires-in",
            "2h",
            "--retain",
            "3",
            "--json",
            "src",
        ])
        .unwrap();
        match cli.command {
            Command::Publish {
                expires_in,
                retain,
                zstd_level,
                json,
                ..
            } => {
                assert_eq!(expires_in, Duration::from_secs(7200));
                assert_eq!((retain, zstd_level, json), (3, 19, true));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from([
                "ferry-server",
                "publish",
                "--repo",
                "r",
                "--key",
                "k",
                "--channel",
                "c",
                "--version",
                "1",
                "--expires-in",
                "7",
                "p"
            ])
            .is_err()
        );
    }
}
