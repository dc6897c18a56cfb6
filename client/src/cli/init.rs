//! `ferry init`: write the root's configuration. No network: a wrong server or key
//! shows up at the first `ferry update`, which is where it can be diagnosed.

use anyhow::{Context, Result, bail};
use ferry_format::keylist::TrustRoot;
use ferry_format::keys::PublicKey;
use ferry_format::version::check_channel;

use super::InitArgs;
use crate::fsutil;
use crate::install::StoreError;
use crate::install::agent_id;
use crate::install::config::{self, CA_FILE, Config};
use crate::install::layout::Layout;
use crate::install::lock::{DEFAULT_TIMEOUT, LockMode, RootLock};
use crate::install::reinit;
use crate::install::state::State;

pub fn run(args: &InitArgs) -> Result<()> {
    initialise(args, true)
}

/// `ferry init`; `announce` prints the line that names the root, channel and agent id
/// (the library's `Updater::new` initialises quietly: stdout is its application's).
pub(crate) fn initialise(args: &InitArgs, announce: bool) -> Result<()> {
    check_channel(&args.channel)?;
    let servers: Vec<String> = args.server.iter().map(|s| s.trim().to_string()).collect();
    for server in &servers {
        if !["http://", "https://", "file://"]
            .iter()
            .any(|p| server.starts_with(p))
        {
            bail!("unsupported server URL {server:?}: expected http://, https:// or file://");
        }
    }
    let key_text = match &args.public_key {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading public key {}", path.display()))?;
            if let Err(e) = PublicKey::from_text(&text) {
                eprintln!(
                    "warning: {}: {e}; `ferry update` will fail until it is fixed",
                    path.display()
                );
            }
            text
        }
        None => String::new(),
    };
    // A key list anchor is checked now: it is local input, and trusting a damaged one
    // would only fail later with a less clear message.
    let anchor = match &args.key_list {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading key list {}", path.display()))?;
            let trust = TrustRoot::from_stored(&bytes)
                .with_context(|| format!("{} is not a valid key list", path.display()))?;
            Some((trust.version(), bytes, trust))
        }
        None => None,
    };
    crate::apply::pattern::parse_all(&args.carry)?;
    let ca_certs = ca_certs(args, &servers)?;
    let layout = Layout::new(&args.root);
    fsutil::create_dir_all(&layout.ferry_dir())?;
    // A root of an older ferry is converted first, so that `--force` compares with,
    // and the lock timeout comes from, its configuration.
    config::migrate(&layout).context("converting .ferry/config.json to config.toml")?;
    let timeout = match args.lock.lock_timeout {
        Some(t) => t,
        None => Config::load(&layout.config()).map_or(DEFAULT_TIMEOUT, |c| c.lock_timeout()),
    };
    let _lock = RootLock::acquire(&layout.lock(), LockMode::Exclusive, timeout)?;
    let previous = if layout.config().exists() {
        if !args.force {
            bail!(
                "{} is already initialised ({} exists); use --force to overwrite the configuration",
                args.root.display(),
                layout.config().display()
            );
        }
        Some(Config::load(&layout.config()))
    } else {
        None
    };
    let keep = usize::try_from(args.keep).unwrap_or(usize::MAX);
    let mut config = Config::new(
        servers,
        args.channel.clone(),
        key_text.trim().to_string(),
        keep,
    );
    config.proxy = args.proxy.clone();
    config.low_speed_limit = args.low_speed_limit;
    config.low_speed_time_secs = args.low_speed_time.map(|d| d.as_secs());
    if ca_certs.is_some() {
        config.ca_file = Some(CA_FILE.into());
    }
    config.max_clock_skew_secs = args.max_clock_skew.map_or(0, |d| d.as_secs());
    config.carry = args.carry.clone();
    config.lock_timeout_secs = args.lock.lock_timeout.map(|d| d.as_secs());
    // Trust and memory first, the configuration last: a crash in between leaves the
    // old configuration, and rerunning this command does the whole job again.
    if let Some(previous) = previous {
        reinitialise(&layout, previous, &config, anchor.as_ref())?;
    }
    if let Some((version, bytes, _)) = &anchor {
        fsutil::create_dir_all(&layout.keys())?;
        fsutil::write_atomic(&layout.key_list(*version), bytes)?;
    }
    if let Some(pem) = &ca_certs {
        fsutil::write_atomic(&layout.ferry_dir().join(CA_FILE), pem.as_bytes())?;
    }
    // Made now, so the id an operator sees after init is the one the agent reports
    // and places in rollouts (a re-init keeps it).
    let id = agent_id::load_or_create(&layout.agent_id())?;
    config.save(&layout.config())?;
    if announce {
        println!(
            "initialised {} for channel {} from {} (agent id {})",
            args.root.display(),
            args.channel,
            args.server.join(", "),
            agent_id::hex(&id)
        );
    }
    Ok(())
}

/// `init --force` over an initialised root: drops key lists that do not continue the
/// new trust root, and forgets the anti-rollback memory when the channel or the trust
/// root changes (reinit.rs says why). Says what it did.
fn reinitialise(
    layout: &Layout,
    previous: Result<Config, StoreError>,
    config: &Config,
    anchor: Option<&(u64, Vec<u8>, TrustRoot)>,
) -> Result<()> {
    let before = reinit::trust_label(layout, previous.as_ref().map_or("", |c| &c.public_key));
    let new_root = match anchor {
        Some((_, _, trust)) => Some(trust.clone()),
        None => PublicKey::from_text(&config.public_key)
            .ok()
            .map(TrustRoot::SingleKey),
    };
    let removed = reinit::prune_key_lists(layout, new_root.as_ref())?;
    if !removed.is_empty() {
        println!(
            "removed key list(s) {} accepted under the previous trust root, which the new one does not continue",
            reinit::key_list_names(layout, &removed)
        );
    }
    let after = match anchor {
        // Written next, as the newest list unless a kept successor is newer.
        Some((version, bytes, _)) if reinit::stored_key_lists(layout).last() <= Some(version) => {
            format!("key list {}", blake3::hash(bytes).to_hex())
        }
        _ => reinit::trust_label(layout, &config.public_key),
    };
    let reason = match &previous {
        Err(e) => format!("the previous configuration is unreadable ({e})"),
        Ok(old) if old.channel != config.channel => {
            format!("channel {} -> {}", old.channel, config.channel)
        }
        Ok(_) if before != after => "a new trust root".to_string(),
        Ok(_) => return Ok(()),
    };
    let old_channel = previous.as_ref().map_or("", |c| c.channel.as_str());
    let mut state = State::load(&layout.state())?;
    let forgot = reinit::forget_memory(&mut state, old_channel, &config.channel);
    state.save(&layout.state())?;
    if !forgot.is_empty() {
        println!(
            "{reason}: reset the anti-rollback memory kept for the previous configuration ({})",
            forgot.join(", ")
        );
    }
    if !state.releases.is_empty() {
        let kept: Vec<&str> = state.releases.iter().map(|r| r.version.as_str()).collect();
        println!(
            "installed releases kept: {} (active: {}); `ferry update` moves to the channel's current release",
            kept.join(", "),
            state.active.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

/// The CA file's text, read and checked with the proxy (by building the HTTP client
/// they describe) before anything is written.
fn ca_certs(args: &InitArgs, servers: &[String]) -> Result<Option<String>> {
    let ca_certs = match &args.ca_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading CA file {}", path.display()))?,
        ),
        None => None,
    };
    if let Some(proxy) = &args.proxy
        && !(proxy.starts_with("http://") || proxy.starts_with("https://"))
    {
        bail!("unsupported proxy URL {proxy:?}: expected http:// or https://");
    }
    let mut check = Config::new(Vec::new(), String::new(), String::new(), 1);
    check.ca_certs.clone_from(&ca_certs);
    check.proxy.clone_from(&args.proxy);
    check
        .http_options()
        .check()
        .with_context(|| match &args.ca_file {
            Some(path) => format!("checking {} and the proxy", path.display()),
            None => "checking the proxy".to_string(),
        })?;
    if args.ca_file.is_some() {
        for server in servers.iter().filter(|s| !s.starts_with("https://")) {
            eprintln!("warning: --ca-file only applies to an https:// server, not {server}");
        }
    }
    Ok(ca_certs)
}

/// A `--low-speed-time` window: a duration with a unit, at least one second.
pub(super) fn parse_window(s: &str) -> Result<std::time::Duration, String> {
    let d = ferry_format::duration::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}
