//! The command line (clap types only; behaviour lives in the command modules).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};

use crate::store::Location;

/// ferry's build and distribution side: make keys, publish releases into a static
/// repository, serve that repository over HTTP.
#[derive(Debug, Parser)]
#[command(name = "ferry-server", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Object storage setting for an s3:// --repo, as KEY=VALUE (repeat), overriding
    /// the AWS_* environment: endpoint=http://127.0.0.1:8333, region=eu-west-1,
    /// allow_http=true, virtual_hosted_style_request=false. Credentials only come from
    /// the environment.
    #[arg(long = "store-option", value_name = "KEY=VALUE", global = true,
          value_parser = crate::store::StoreOption::parse)]
    pub store_options: Vec<crate::store::StoreOption>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a publishing key pair (ferry.key secret, ferry.pub public).
    Keygen {
        /// Directory to write ferry.key and ferry.pub into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Manage the repository's key list: root keys, publishing keys, thresholds.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Re-sign a channel head with a new expiry (and the newest key list), without a
    /// new release, so agents are not frozen out between releases. With publishing
    /// keys (--key) the publisher content is re-signed too and --rollout may set any
    /// percentage; with an online key (--timestamp-key) only the head's freshness is,
    /// and --rollout may only lower or pause (0) the current release.
    RefreshHead {
        /// Repository: a folder, or s3://BUCKET/PREFIX (configured by the AWS_*
        /// environment variables and --store-option).
        #[arg(long, value_name = "DIR|URL", value_parser = crate::store::location::parse_repo)]
        repo: Location,
        #[arg(long)]
        channel: String,
        /// Publishing secret key; repeat to meet a key list threshold.
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "timestamp_key",
            conflicts_with = "timestamp_key"
        )]
        key: Vec<PathBuf>,
        /// Online secret key (listed with `key new-list --online`).
        #[arg(long, value_name = "FILE")]
        timestamp_key: Option<PathBuf>,
        /// Lifetime of the refreshed head [default: 7d with --key, the current head's
        /// lifetime with --timestamp-key].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<Duration>,
        /// Lifetime of the re-signed publisher content (--key only) [default: 90d].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "key")]
        content_expires_in: Option<Duration>,
        /// Rollout percentage (0-100) of the current release.
        #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=100))]
        rollout: Option<u8>,
    },
    /// Change the share of agents offered a channel's newest release, re-signing its
    /// head in the local repository. With publishing keys (--key): --percent signs any
    /// percentage into new publisher content, --resume restores the percentage the
    /// content signed before --pause. With the online key (--timestamp-key): --percent
    /// may only lower, --resume is refused. --pause, with either key, sets 0% in the
    /// head's freshness layer and leaves the content's percentage as it was, so a
    /// later `--resume --key` restores it (`refresh-head --key` signs a pause into the
    /// content as 0%: after it, set the percentage with --percent).
    ///
    /// --labels (with --key) sets the labels an agent must have to be offered the
    /// newest release, replacing any before; --every-agent drops them.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true)
        .args(["percent", "pause", "resume", "labels", "every_agent"])))]
    Rollout {
        /// Repository: a folder, or s3://BUCKET/PREFIX (configured by the AWS_*
        /// environment variables and --store-option).
        #[arg(long, value_name = "DIR|URL", value_parser = crate::store::location::parse_repo)]
        repo: Location,
        #[arg(long)]
        channel: String,
        /// Publishing secret key; repeat to meet a key list threshold.
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "timestamp_key",
            conflicts_with = "timestamp_key"
        )]
        key: Vec<PathBuf>,
        /// Online secret key (listed with `key new-list --online`): may only lower or pause.
        #[arg(long, value_name = "FILE")]
        timestamp_key: Option<PathBuf>,
        /// Share of agents (0-100) offered the newest release.
        #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: Option<u8>,
        /// Offer the newest release to no more agents (0%) until --resume.
        #[arg(long, conflicts_with = "percent")]
        pause: bool,
        /// Lift a --pause: back to the percentage the publisher signed (needs --key).
        #[arg(long, conflicts_with_all = ["percent", "pause"])]
        resume: bool,
        /// Offer the newest release only to agents with this label, as KEY=VALUE
        /// (repeat: all of them); the percentage applies among them. Needs --key.
        #[arg(long = "labels", value_name = "KEY=VALUE", value_parser = parse_requirement,
              conflicts_with = "every_agent")]
        labels: Vec<ferry_format::requirements::Requirement>,
        /// Offer the newest release to agents whatever their labels again (needs --key).
        #[arg(long)]
        every_agent: bool,
        /// Print one JSON object instead of the line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke (recall) a release of a channel: agents never install it again, and
    /// agents running it switch to the newest release they may run that is not revoked,
    /// even an older one. Re-signs the publisher content (publishing keys only).
    Revoke {
        /// Repository: a folder, or s3://BUCKET/PREFIX (configured by the AWS_*
        /// environment variables and --store-option).
        #[arg(long, value_name = "DIR|URL", value_parser = crate::store::location::parse_repo)]
        repo: Location,
        #[arg(long)]
        channel: String,
        /// Publishing secret key; repeat to meet a key list threshold.
        #[arg(long, value_name = "FILE", required = true)]
        key: Vec<PathBuf>,
        /// The release to revoke (listed in the channel's head).
        #[arg(long)]
        version: String,
        /// Print one JSON object instead of the line.
        #[arg(long)]
        json: bool,
    },
    /// Publish a file or directory as a new release of a channel.
    Publish {
        /// Repository: a folder (created if missing), or s3://BUCKET/PREFIX
        /// (configured by the AWS_* environment variables and --store-option).
        #[arg(
            long,
            value_name = "DIR|URL",
            required_unless_present = "to",
            conflicts_with = "to",
            value_parser = crate::store::location::parse_repo
        )]
        repo: Option<Location>,
        /// Publish to a remote `ferry-server serve --upload-token-file` at this base URL
        /// instead of a local repository (replaces --repo).
        #[arg(long, value_name = "URL", requires = "token_file")]
        to: Option<String>,
        /// File holding the upload token for --to (surrounding whitespace is ignored).
        #[arg(long, value_name = "FILE", requires = "to")]
        token_file: Option<PathBuf>,
        /// With --to: keep fetched and published objects here, so the next publish
        /// takes the previous release from disk instead of downloading it.
        #[arg(long, value_name = "DIR", requires = "to")]
        cache: Option<PathBuf>,
        /// Secret key file written by `keygen`; repeat it when the repository's key
        /// list requires more than one publishing signature.
        #[arg(long, value_name = "FILE", required = true)]
        key: Vec<PathBuf>,
        /// Channel name: 1-64 of [A-Za-z0-9._-], not starting with '.'.
        #[arg(long)]
        channel: String,
        /// Release version; must sort after the channel's current version.
        #[arg(long)]
        version: String,
        /// Lifetime of the new channel head, e.g. 12h or 7d (`serve --timestamp-key`
        /// keeps renewing it until --content-expires-in).
        #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
        expires_in: Duration,
        /// Lifetime of what the publishing keys sign (releases, rollout): past it agents
        /// refuse the channel whatever the online role re-signs.
        #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = parse_duration)]
        content_expires_in: Duration,
        /// Share of agents (0-100) offered the new release; the online role may lower
        /// it later, only publishing keys raise it.
        #[arg(long, value_name = "PCT", default_value_t = 100,
              value_parser = clap::value_parser!(u8).range(0..=100))]
        rollout: u8,
        /// What the release requires of an agent, as KEY=VALUE (repeat): os=linux,
        /// arch=x86_64, min-agent=0.3.0 (the agent's version), disk=500MiB (free space);
        /// any other key is a label the agent's configured `labels` must have with this
        /// value (role=edge). Agents that do not meet them refuse the release before
        /// downloading it; agents older than requirements stop with "upgrade ferry".
        #[arg(long = "requires", value_name = "KEY=VALUE", value_parser = parse_requirement)]
        requires: Vec<ferry_format::requirements::Requirement>,
        /// Offer the release only to agents with this label, as KEY=VALUE (repeat: all
        /// of them); --rollout applies among them. Agents older than targeting stop
        /// with "upgrade ferry".
        #[arg(long = "rollout-labels", value_name = "KEY=VALUE", value_parser = parse_requirement)]
        rollout_labels: Vec<ferry_format::requirements::Requirement>,
        /// How many releases the channel head keeps listing (rollback targets).
        #[arg(long, default_value_t = crate::publish::DEFAULT_RETAIN,
              value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
        retain: usize,
        /// zstd level for new chunks (1-22).
        #[arg(long, default_value_t = crate::publish::DEFAULT_ZSTD_LEVEL,
              value_parser = clap::value_parser!(i32).range(1..=22))]
        zstd_level: i32,
        /// Which earlier releases get a binary diff (and a manifest diff) to the new
        /// release, by distance in the channel's release list (1 = the current one):
        /// agents on them download one small object. The default skip list reaches
        /// every release up to 10 back in one diff or two (4 = 1+3, 6 = 1+5, 7 = 2+5,
        /// 9 = 1+8), from a static host too; `none` writes none.
        #[arg(long, value_name = "D,D,...", default_value_t = crate::publish::bases::DiffBases::default(),
              conflicts_with = "diff_depth")]
        diff_bases: crate::publish::bases::DiffBases,
        /// The last K releases are diff bases (same as --diff-bases 1,2,...,K; 0 writes
        /// none). Replaces --diff-bases.
        #[arg(long, value_name = "K",
              value_parser = clap::value_parser!(u8).range(0..=16).map(usize::from))]
        diff_depth: Option<usize>,
        /// zstd level (1-22) of the diff from nothing: the whole release as one
        /// long-window stream, which agents holding no release install from instead of
        /// the per-chunk archive (FORMAT.md §3.9).
        #[arg(long, value_name = "LEVEL", default_value_t = crate::publish::fresh::DEFAULT_FRESH_LEVEL,
              value_parser = clap::value_parser!(i32).range(1..=22))]
        fresh_level: i32,
        /// Write no diff from nothing: fresh installs fetch the archive.
        #[arg(long)]
        no_fresh: bool,
        /// Print one JSON object instead of the human summary.
        #[arg(long)]
        json: bool,
        /// The release: a regular file or a directory.
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Serve a repository over HTTP/1.1 and h2c, or HTTPS with --tls-cert/--tls-key.
    Serve {
        /// Repository: a folder, or s3://BUCKET/PREFIX (configured by the AWS_*
        /// environment variables and --store-option).
        #[arg(long, value_name = "DIR|URL", value_parser = crate::store::location::parse_repo)]
        repo: Location,
        /// Address to listen on; port 0 picks a free port (printed on stdout).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Most connections served at once; further ones wait to be accepted.
        #[arg(long, value_name = "N", default_value_t = 1024,
              value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        max_connections: u32,
        /// Append one JSON line per request to this file.
        #[arg(long, value_name = "FILE")]
        access_log: Option<PathBuf>,
        /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
        #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Accept uploads (`publish --to`) carrying the bearer token in this file
        /// (surrounding whitespace is ignored); needs --public-key.
        #[arg(long, value_name = "FILE", requires = "public_key")]
        upload_token_file: Option<PathBuf>,
        /// Public key an uploaded head and manifest must be signed with; repeat to
        /// trust several (any one suffices). Uploads that do not verify are refused.
        #[arg(
            long = "public-key",
            value_name = "PUB",
            requires = "upload_token_file"
        )]
        public_key: Vec<PathBuf>,
        /// Largest object an upload may carry, e.g. 512MiB.
        #[arg(long, value_name = "SIZE", default_value = "4GiB",
              value_parser = crate::serve::upload::parse_size)]
        max_upload_size: u64,
        /// Most object bytes the upload token may store per hour (429 past it), so a
        /// stolen token cannot fill the disk.
        #[arg(long, value_name = "SIZE", default_value = "16GiB",
              value_parser = crate::serve::upload::parse_size)]
        upload_bytes_per_hour: u64,
        /// Most uploads (PUTs) the upload token may make per minute (429 past it).
        #[arg(long, value_name = "N", default_value_t = crate::serve::quota::DEFAULT_REQUESTS_PER_MINUTE,
              value_parser = clap::value_parser!(u32).range(1..))]
        upload_requests_per_minute: u32,
        /// Online secret key (listed with `key new-list --online`): while serving,
        /// re-sign each channel head's freshness at half its lifetime, so the fleet
        /// does not freeze between releases (never past the publisher's content expiry).
        #[arg(long, value_name = "FILE")]
        timestamp_key: Option<PathBuf>,
        /// Fleet API (docs/FLEET.md): agents enroll and report (`POST /v1/reports`)
        /// with a fleet token from this file (one per line); needs
        /// --operator-token-file and --fleet-db.
        #[arg(long, value_name = "FILE", requires_all = ["operator_token_file", "fleet_db"])]
        agent_token_file: Option<PathBuf>,
        /// Fleet API: operators read `GET /v1/agents` and `GET /v1/fleet` with a token
        /// from this file (one per line).
        #[arg(long, value_name = "FILE", requires_all = ["agent_token_file", "fleet_db"])]
        operator_token_file: Option<PathBuf>,
        /// Fleet API: the database of reports, credentials and halts: a SQLite file
        /// (never inside --repo, which any static host may publish), or
        /// postgres://user:password@host:port/database, which several servers share
        /// (without a password in the URL, PGPASSWORD is used).
        // Parsed after clap (FleetDb::parse), whose errors would echo the value and so
        // a password in it.
        #[arg(long, value_name = "PATH|URL", requires_all = ["agent_token_file", "operator_token_file"])]
        fleet_db: Option<String>,
        /// The agents' heartbeat interval: an agent silent for 3 of them is offline.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        heartbeat_interval: Duration,
        /// Reports older than this are deleted from the fleet database.
        #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = parse_duration)]
        report_retention: Duration,
        /// Pause the newest release's rollout (with --timestamp-key, the online key)
        /// when more than P% of the agents that tried it failed or rolled back, once
        /// at least N tried it: 'failed>P%,min=N'.
        #[arg(long, value_name = "RULE", requires_all = ["fleet_db", "timestamp_key"],
              value_parser = crate::serve::fleet::HaltRule::parse)]
        halt_when: Option<crate::serve::fleet::HaltRule>,
        /// With an s3:// --repo: keep copies of the objects served in this folder, so
        /// each is read from the bucket about once (least recently used evicted first).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Most bytes --cache-dir holds, e.g. 10GiB.
        #[arg(long, value_name = "SIZE", default_value = "10GiB", requires = "cache_dir",
              value_parser = crate::serve::upload::parse_size)]
        cache_size: u64,
        /// Make a diff for any pair of releases a channel head retains when an agent
        /// asks for it (GET /diffs/BASE/TARGET), keep it in the repository and serve
        /// it to every agent after; a folder --repo only. Off by default: each diff
        /// takes a core and memory for seconds to minutes.
        #[arg(long)]
        diffs_on_demand: bool,
        /// With --diffs-on-demand: diffs made at once.
        #[arg(long, value_name = "N", default_value_t = crate::serve::ondemand::DEFAULT_JOBS,
              requires = "diffs_on_demand",
              value_parser = clap::value_parser!(u16).range(1..=256).map(usize::from))]
        diff_jobs: usize,
        /// With --diffs-on-demand: diffs waiting for a free job beyond those; requests
        /// past them are answered 503 with Retry-After.
        #[arg(long, value_name = "N", default_value_t = crate::serve::ondemand::DEFAULT_QUEUE,
              requires = "diffs_on_demand",
              value_parser = clap::value_parser!(u16).range(0..=4096).map(usize::from))]
        diff_queue: usize,
        /// With --diffs-on-demand: the largest base (its files) or target (the chunks
        /// the base lacks) a diff is made for (413 past it). A job holds the base, 4
        /// bytes per base byte of suffix array and the target in memory: about 6 bytes
        /// per byte of input at its peak.
        #[arg(long, value_name = "SIZE", default_value = "256MiB", requires = "diffs_on_demand",
              value_parser = crate::serve::upload::parse_size)]
        diff_max_input: u64,
    },
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, or write one page per command into a folder.
    Man {
        /// Write ferry-server.1 and ferry-server-COMMAND.1 into this folder.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Audit reports: who signed which head, when (from the repository's head log),
    /// as JSON (signed with --sign) or CSV; verify a signed report; prune old records.
    Audit {
        #[command(subcommand)]
        command: crate::audit::command::AuditCommand,
    },
    /// Delete the objects no channel head references any more (directly or through
    /// the manifests of the releases it lists). Heads, head log entries and key lists
    /// are never deleted.
    Gc {
        /// Repository: a folder, or s3://BUCKET/PREFIX (configured by the AWS_*
        /// environment variables and --store-option).
        #[arg(long, value_name = "DIR|URL", value_parser = crate::store::location::parse_repo)]
        repo: Location,
        /// Keep unreferenced objects younger than this (by file modification time or
        /// the bucket's last-modified): a running publish uploads its objects before
        /// its head names them. Must outlast the longest publish.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
        grace: Duration,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Also keep the objects of the N newest releases of each channel that its
        /// head no longer lists (retired ones, found in the head log), so they stay
        /// installable by `ferry rollback --to` on agents that lack them. What a head
        /// lists is always kept.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_releases: usize,
    },
    /// List a repository's channels and their releases.
    Ls {
        /// Repository: a folder, or s3://BUCKET/PREFIX (configured by the AWS_*
        /// environment variables and --store-option).
        #[arg(long, value_name = "DIR|URL", value_parser = crate::store::location::parse_repo)]
        repo: Location,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Public (or secret) key file to verify the heads with; without it the heads
        /// are listed unverified.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

fn parse_requirement(s: &str) -> Result<ferry_format::requirements::Requirement, String> {
    ferry_format::requirements::Requirement::parse(s).map_err(|e| e.to_string())
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
                diff_bases,
                diff_depth,
                ..
            } => {
                assert_eq!(expires_in, Duration::from_secs(7200));
                assert_eq!((retain, zstd_level, json, diff_depth), (3, 19, true, None));
                assert_eq!(diff_bases.distances(), &[1, 2, 3, 5, 8, 10]);
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

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a named key pair (NAME.key, NAME.pub), e.g. for a root key.
    Gen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value = "ferry")]
        name: String,
    },
    /// Write the next key list version (first list, root rotation, adding or revoking
    /// publishing keys), signed by a threshold of the previous and the new root keys.
    NewList {
        /// Repository: a folder, or s3://BUCKET/PREFIX (configured by the AWS_*
        /// environment variables and --store-option).
        #[arg(long, value_name = "DIR|URL", value_parser = crate::store::location::parse_repo)]
        repo: Location,
        /// Public key file of a root key (repeat).
        #[arg(long = "root", value_name = "PUB", required = true)]
        roots: Vec<PathBuf>,
        /// Root signatures required on the next key list.
        #[arg(long, default_value_t = 1)]
        root_threshold: u16,
        /// Public key file of a publishing key (repeat).
        #[arg(long = "publisher", value_name = "PUB", required = true)]
        publishers: Vec<PathBuf>,
        /// Publishing signatures required on heads and manifests.
        #[arg(long, default_value_t = 1)]
        threshold: u16,
        /// Public key file of an online key (repeat): it may re-sign head freshness and
        /// lower rollouts (`serve --timestamp-key`), never publish.
        #[arg(long = "online", value_name = "PUB")]
        online: Vec<PathBuf>,
        /// Online signatures required on a head re-signed by the online role.
        #[arg(long, default_value_t = 1, requires = "online")]
        online_threshold: u16,
        /// Secret key that signs the new list (repeat): previous and new root keys.
        #[arg(long = "sign", value_name = "KEY", required = true)]
        signers: Vec<PathBuf>,
        /// For the first key list: the single public key agents trust today.
        #[arg(long, value_name = "PUB")]
        previous_key: Option<PathBuf>,
    },
    /// Print the newest key list, or version N.
    Show {
        /// Repository: a folder, or s3://BUCKET/PREFIX (configured by the AWS_*
        /// environment variables and --store-option).
        #[arg(long, value_name = "DIR|URL", value_parser = crate::store::location::parse_repo)]
        repo: Location,
        #[arg(long)]
        version: Option<u64>,
    },
}
