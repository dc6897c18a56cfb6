//! # ferry-server
//!
//! The build and distribution side of ferry. Everything it writes or reads is defined
//! by `ferry_format`; this crate only decides *when* and *where*.
//!
//! - [`keygen`]: a publishing key pair (`ferry.key`, `ferry.pub`).
//! - [`publish`]: a file or directory becomes a signed release of a channel:
//!   [`publish::walk`] lists the source, [`publish::table`] splits chunks into carried
//!   (previous generation, bytes reused) and new (compressed in parallel),
//!   [`publish::archive`] writes the archive object, then the manifest and, last, the
//!   channel head are signed and written.
//! - [`repo`]: the repository on disk (layout paths to files); [`fsutil`]: every write
//!   is atomic (temp, fsync, rename, fsync dir) with modes 0644/0755.
//! - [`serve`]: the repository over HTTP/1.1 and h2c with Range, ETag and
//!   cache headers, a connection cap, an access log and graceful shutdown.
//! - [`ls`]: what a repository's channels offer.
//! - [`cli`] and [`run`]: the command line the `ferry-server` binary hands over.
//!
//! ```no_run
//! use ferry_server::publish::{publish, PublishOptions};
//! let key = ferry_server::keygen::read_secret("keys/ferry.key".as_ref())?;
//! let report = publish(&PublishOptions {
//!     repo: "repo".into(),
//!     key: &key,
//!     channel: "stable".into(),
//!     version: "1.0.0".into(),
//!     expires_in: ferry_server::publish::DEFAULT_EXPIRES_IN,
//!     retain: 10,
//!     zstd_level: 19,
//!     source: "build/out".into(),
//! })?;
//! println!("{}", report.summary());
//! # Ok::<(), ferry_server::error::Error>(())
//! ```
#![forbid(unsafe_code)]

pub mod cli;
pub mod error;
pub mod fsutil;
pub mod keygen;
pub mod ls;
pub mod publish;
pub mod repo;
pub mod serve;

use std::io::Write;

use anyhow::Context;

use cli::{Cli, Command};

/// Runs one command line. Command output goes to stdout; logs go to stderr.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            let files = keygen::keygen(&out)?;
            println!("key id:     {}", files.key_id);
            println!("secret key: {} (keep it private)", files.secret.display());
            println!(
                "public key: {} (give it to clients)",
                files.public.display()
            );
        }
        Command::Publish {
            repo,
            key,
            channel,
            version,
            expires_in,
            retain,
            zstd_level,
            json,
            path,
        } => {
            let key = keygen::read_secret(&key)?;
            let report = publish::publish(&publish::PublishOptions {
                repo,
                key: &key,
                channel,
                version,
                expires_in,
                retain,
                zstd_level,
                source: path,
            })?;
            let text = if json {
                serde_json::to_string(&report).context("cannot encode the report")? + "\n"
            } else {
                report.summary()
            };
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write to stdout")?;
        }
        Command::Serve {
            repo,
            listen,
            max_connections,
            access_log,
        } => serve::run_cli(&serve::ServeOptions {
            repo,
            listen,
            max_connections,
            access_log,
        })?,
        Command::Ls { repo, channel, key } => {
            let key = key.as_deref().map(ls::read_public).transpose()?;
            let text = ls::ls(&repo::Repo::new(repo), channel.as_deref(), key.as_ref())?;
            print!("{text}");
        }
    }
    Ok(())
}
