//! # ferry-server
//!
//! The build and distribution side of ferry. Everything it writes or reads is defined
//! by `ferry_format`; this crate only decides *when* and *where*.
//!
//! - [`keygen`]: a publishing key pair (`ferry.key`, `ferry.pub`); [`key_admin`]: key
//!   lists (`key new-list`, `key show`) and `refresh-head`; [`trust`]: which keys a
//!   repository's signatures answer to.
//! - [`publish`]: a file or directory becomes a signed release of a channel:
//!   [`publish::walk`] lists the source, [`publish::table`] splits chunks into carried
//!   (previous generation, bytes reused) and new (compressed in parallel),
//!   [`publish::archive`] writes the archive object, [`publish::diff`] a binary diff
//!   from each recent release, then the manifest and, last, the channel head (listing
//!   manifest diffs) are signed and written. [`publish::remote`] (`publish --to URL`)
//!   runs the same steps on a staging copy of a remote channel and uploads the result.
//! - [`repo`]: the repository on disk (layout paths to files); [`fsutil`]: every write
//!   is atomic (temp, fsync, rename, fsync dir) with modes 0644/0755.
//! - [`failpoint`]: `crash_point!`, the crash-injection points of the kill tests
//!   (compiled in only with the `failpoints` feature).
//! - [`serve`]: the repository over HTTP/1.1 and h2c with Range, ETag and
//!   cache headers, a connection cap, an access log and graceful shutdown;
//!   [`serve::upload`]: the token-guarded `PUT` API that accepts only verified heads.
//! - [`ls`]: what a repository's channels offer; [`rollout`]: `ferry-server rollout`
//!   (raise, lower, pause, resume the newest release's rollout, target labels);
//!   [`revoke`]: `ferry-server revoke` (recall a release).
//! - [`audit`]: `ferry-server audit export|verify|prune`, from the head log every head
//!   write leaves (FORMAT.md §7.1, §11).
//! - [`cli`] and [`run`]: the command line the `ferry-server` binary hands over.
//!
//! ```no_run
//! use ferry_server::publish::{publish, PublishOptions};
//! let key = ferry_server::keygen::read_secret("keys/ferry.key".as_ref())?;
//! let report = publish(&PublishOptions {
//!     repo: "repo".into(),
//!     key: &key,
//!     extra_keys: &[],
//!     channel: "stable".into(),
//!     version: "1.0.0".into(),
//!     expires_in: ferry_server::publish::DEFAULT_EXPIRES_IN,
//!     content_expires_in: ferry_server::publish::DEFAULT_CONTENT_EXPIRES_IN,
//!     rollout: 100,
//!     requires: Default::default(),
//!     rollout_labels: Default::default(),
//!     retain: 10,
//!     zstd_level: 19,
//!     source: "build/out".into(),
//!     diff_bases: Default::default(),
//!     fresh_level: Some(ferry_server::publish::fresh::DEFAULT_FRESH_LEVEL),
//!     progress: Default::default(),
//! })?;
//! println!("{}", report.summary());
//! # Ok::<(), ferry_server::error::Error>(())
//! ```
#![forbid(unsafe_code)]

#[macro_use]
pub mod failpoint;
pub mod audit;
pub mod cli;
pub mod error;
pub mod fsutil;
pub mod gc;
pub mod key_admin;
pub mod keygen;
pub mod ls;
pub mod manual;
pub mod publish;
pub mod repo;
pub mod revoke;
pub mod rollout;
pub mod serve;
pub mod store;
pub mod trust;

use std::io::Write;

use anyhow::Context;

use cli::{Cli, Command};

/// Runs one command line. Command output goes to stdout; logs go to stderr.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let options = cli.store_options;
    let open = |location: &store::Location| store::Store::open(location, &options);
    match cli.command {
        Command::Keygen { out } => print_key_pair(&keygen::keygen(&out)?),
        Command::Key { command } => key_command(command, &options)?,
        Command::RefreshHead {
            repo,
            channel,
            key,
            timestamp_key,
            expires_in,
            content_expires_in,
            rollout,
        } => {
            let opts = key_admin::RefreshOptions {
                expires_in,
                content_expires_in,
                rollout: rollout.map(key_admin::RolloutChange::Percent),
            };
            let store = open(&repo)?;
            let (online, keys) = head_signers(timestamp_key.as_deref(), &key)?;
            let text = store.write(store::Mirror::Heads(Some(&channel)), |repo| {
                let text = match &online {
                    Some(k) => key_admin::refresh_online(repo, &channel, k, opts)?,
                    None => key_admin::refresh_head(repo, &channel, &keys, opts)?,
                };
                Ok(store.relocate(repo, text))
            })?;
            print!("{text}");
        }
        Command::Rollout {
            repo,
            channel,
            key,
            timestamp_key,
            percent,
            pause,
            resume,
            labels,
            every_agent,
            json,
        } => {
            // clap allows at most one of the three, and requires a change.
            let change = match (percent, pause, resume) {
                (Some(p), _, _) => Some(key_admin::RolloutChange::Percent(p)),
                (None, true, _) => Some(key_admin::RolloutChange::Pause),
                (None, false, true) => Some(key_admin::RolloutChange::Resume),
                (None, false, false) => None,
            };
            let labels = if every_agent {
                Some(ferry_format::requirements::Requirements::none())
            } else if labels.is_empty() {
                None
            } else {
                Some(ferry_format::requirements::Requirements::new(labels).context("--labels")?)
            };
            let store = open(&repo)?;
            let (online, keys) = head_signers(timestamp_key.as_deref(), &key)?;
            let report = store.write(store::Mirror::Heads(Some(&channel)), |repo| {
                let signer = match &online {
                    Some(k) => rollout::Signer::Online(k),
                    None => rollout::Signer::Publishing(&keys),
                };
                rollout::retarget(repo, &channel, signer, change, labels.clone())
            })?;
            let text = if json {
                serde_json::to_string(&report).context("cannot encode the report")? + "\n"
            } else {
                report.line()
            };
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write to stdout")?;
        }
        Command::Revoke {
            repo,
            channel,
            key,
            version,
            json,
        } => {
            let keys = read_secrets(&key)?;
            let report = open(&repo)?.write(store::Mirror::Heads(Some(&channel)), |repo| {
                revoke::revoke(repo, &channel, &keys, &version)
            })?;
            let text = if json {
                serde_json::to_string(&report).context("cannot encode the report")? + "\n"
            } else {
                report.line()
            };
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write to stdout")?;
        }
        Command::Publish {
            repo,
            to,
            token_file,
            cache,
            key,
            channel,
            version,
            expires_in,
            content_expires_in,
            rollout,
            requires,
            rollout_labels,
            retain,
            zstd_level,
            diff_bases,
            diff_depth,
            fresh_level,
            no_fresh,
            json,
            path,
        } => {
            let diff_bases = match diff_depth {
                Some(k) => publish::bases::DiffBases::depth(k).map_err(anyhow::Error::msg)?,
                None => diff_bases,
            };
            let requires =
                ferry_format::requirements::Requirements::new(requires).context("--requires")?;
            let rollout_labels = ferry_format::requirements::Requirements::new(rollout_labels)
                .context("--rollout-labels")?;
            let mut keys = key
                .iter()
                .map(|k| keygen::read_secret(k))
                .collect::<Result<Vec<_>, _>>()?;
            let key = keys.remove(0);
            let mut opts = publish::PublishOptions {
                // Set below for --repo; with --to a staging folder is used.
                repo: Default::default(),
                key: &key,
                extra_keys: &keys,
                channel,
                version,
                expires_in,
                content_expires_in,
                rollout,
                requires,
                rollout_labels,
                retain,
                zstd_level,
                source: path,
                diff_bases,
                fresh_level: (!no_fresh).then_some(fresh_level),
                progress: Default::default(),
            };
            // Drawn on stderr while the publish runs, cleared before the summary (or
            // the error) is printed.
            let display = publish::progress::Display::start(!json);
            opts.progress = display.progress();
            let report = match to {
                Some(url) => publish::remote::publish_to(
                    &publish::remote::RemoteOptions {
                        url,
                        token_file: token_file.unwrap_or_default(),
                        cache,
                    },
                    &opts,
                )?,
                // Without --to clap requires --repo.
                None => {
                    let store = open(&repo.context("--repo or --to is required")?)?;
                    let channel = opts.channel.clone();
                    let bases = opts.diff_bases.clone();
                    let mirror = store::Mirror::Release {
                        channel: &channel,
                        key: &key,
                        diff_bases: &bases,
                        progress: &opts.progress.clone(),
                    };
                    store.write(mirror, |repo| {
                        opts.repo = repo.root().to_path_buf();
                        publish::publish(&opts)
                    })?
                }
            };
            drop(display);
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
            tls_cert,
            tls_key,
            upload_token_file,
            public_key,
            max_upload_size,
            upload_bytes_per_hour,
            upload_requests_per_minute,
            timestamp_key,
            agent_token_file,
            operator_token_file,
            fleet_db,
            heartbeat_interval,
            report_retention,
            halt_when,
            cache_dir,
            cache_size,
            diffs_on_demand,
            diff_jobs,
            diff_queue,
            diff_max_input,
        } => {
            let store = open(&repo)?;
            if diffs_on_demand && !matches!(store, store::Store::Local(_)) {
                anyhow::bail!(
                    "--diffs-on-demand needs a folder --repo: diffs are made from, and kept in, a repository on this machine's disk"
                );
            }
            let on_demand = diffs_on_demand.then_some(serve::ondemand::Options {
                jobs: diff_jobs,
                queue: diff_queue,
                max_input: diff_max_input,
            });
            if let Some(dir) = &cache_dir {
                store
                    .use_cache(dir, cache_size)
                    .with_context(|| format!("--cache-dir {}", dir.display()))?;
            }
            store.check()?;
            let fleet = match (agent_token_file, operator_token_file, fleet_db) {
                (Some(agent_tokens), Some(operator_tokens), Some(db)) => {
                    let db = audit::command::parse_fleet_db(&db)?;
                    // clap requires --timestamp-key with --halt-when.
                    let halt = match (halt_when, &timestamp_key) {
                        (Some(rule), Some(k)) => Some((rule, keygen::read_secret(k)?)),
                        _ => None,
                    };
                    Some(serve::fleet::Fleet::open(serve::fleet::FleetOptions {
                        repo: store.clone(),
                        agent_tokens,
                        operator_tokens,
                        db,
                        heartbeat: heartbeat_interval,
                        retention: report_retention,
                        halt,
                    })?)
                }
                _ => None,
            };
            let limits = serve::quota::Limits {
                bytes_per_hour: upload_bytes_per_hour,
                requests_per_minute: upload_requests_per_minute,
            };
            let refresher = timestamp_key
                .map(|k| -> anyhow::Result<_> {
                    let key = keygen::read_secret(&k)?;
                    serve::refresh::Refresher::new(&store, key)
                        .with_context(|| format!("--timestamp-key {}", k.display()))
                })
                .transpose()?;
            let uploads = upload_token_file
                .map(|t| {
                    serve::upload::Uploads::load(&t, &public_key, max_upload_size)
                        .map(|u| u.with_limits(limits))
                })
                .transpose()?;
            let tls = tls_cert
                .zip(tls_key)
                .map(|(cert, key)| serve::tls::TlsFiles { cert, key });
            serve::run_cli(
                &serve::ServeOptions {
                    store,
                    listen,
                    max_connections,
                    access_log,
                },
                tls.as_ref(),
                uploads,
                refresher,
                fleet,
                on_demand,
            )?;
        }
        Command::Audit { command } => audit::command::run(command, &options)?,
        Command::Completions { shell } => manual::completions(shell)?,
        Command::Man { out } => manual::man(out.as_deref())?,
        Command::Gc {
            repo,
            grace,
            dry_run,
            keep_releases,
        } => {
            let store = open(&repo)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let report = rt.block_on(gc::gc(
                &store,
                gc::GcOptions {
                    grace,
                    dry_run,
                    keep_releases,
                },
            ))?;
            std::io::stdout()
                .write_all(report.text().as_bytes())
                .context("cannot write to stdout")?;
        }
        Command::Ls { repo, channel, key } => {
            let key = key.as_deref().map(ls::read_public).transpose()?;
            let store = open(&repo)?;
            let text = store.read(store::Mirror::Listing(channel.as_deref()), |repo| {
                Ok(store.relocate(repo, ls::ls(repo, channel.as_deref(), key.as_ref())?))
            })?;
            print!("{text}");
        }
    }
    Ok(())
}

fn print_key_pair(files: &keygen::KeyPairFiles) {
    println!("key id:     {}", files.key_id);
    println!("secret key: {} (keep it private)", files.secret.display());
    println!(
        "public key: {} (give it to clients)",
        files.public.display()
    );
}

/// Who signs a head change: the online key of `--timestamp-key` when given, else the
/// publishing keys of `--key`.
fn head_signers(
    timestamp_key: Option<&std::path::Path>,
    key: &[std::path::PathBuf],
) -> anyhow::Result<(
    Option<ferry_format::keys::SecretKey>,
    Vec<ferry_format::keys::SecretKey>,
)> {
    match timestamp_key {
        Some(path) => Ok((Some(keygen::read_secret(path)?), Vec::new())),
        None => Ok((None, read_secrets(key)?)),
    }
}

fn read_secrets(
    paths: &[std::path::PathBuf],
) -> anyhow::Result<Vec<ferry_format::keys::SecretKey>> {
    Ok(paths
        .iter()
        .map(|p| keygen::read_secret(p))
        .collect::<Result<Vec<_>, _>>()?)
}

fn key_command(command: cli::KeyCommand, options: &[store::StoreOption]) -> anyhow::Result<()> {
    match command {
        cli::KeyCommand::Gen { out, name } => print_key_pair(&keygen::keygen_named(&out, &name)?),
        cli::KeyCommand::NewList {
            repo,
            roots,
            root_threshold,
            publishers,
            threshold,
            online,
            online_threshold,
            signers,
            previous_key,
        } => {
            let read_pub = |paths: &[std::path::PathBuf]| {
                paths
                    .iter()
                    .map(|p| keygen::read_public(p))
                    .collect::<Result<Vec<_>, _>>()
            };
            let roots = read_pub(&roots)?;
            let publishers = read_pub(&publishers)?;
            let online = read_pub(&online)?;
            let signers = read_secrets(&signers)?;
            let previous_key = previous_key
                .as_deref()
                .map(keygen::read_public)
                .transpose()?;
            let store = store::Store::open(&repo, options)?;
            let text = store.write(store::Mirror::Keys, |repo| {
                let text = key_admin::new_list(
                    repo,
                    &key_admin::NewList {
                        roots: &roots,
                        root_threshold,
                        publishers: &publishers,
                        threshold,
                        online: &online,
                        online_threshold,
                        signers: &signers,
                        previous_key,
                    },
                )?;
                Ok(store.relocate(repo, text))
            })?;
            print!("{text}");
        }
        cli::KeyCommand::Show { repo, version } => {
            let store = store::Store::open(&repo, options)?;
            print!(
                "{}",
                store.read(store::Mirror::Keys, |repo| key_admin::show(repo, version))?
            );
        }
    }
    Ok(())
}
