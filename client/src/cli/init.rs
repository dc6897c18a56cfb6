//! `ferry init`: write the root's configuration. No network: a wrong server or key
//! shows up at the first `ferry update`, which is where it can be diagnosed.

use anyhow::{Context, Result, bail};
use ferry_format::keys::PublicKey;
use ferry_format::version::check_channel;

use super::InitArgs;
use crate::fsutil;
use crate::install::config::Config;
use crate::install::layout::Layout;
use crate::install::lock::{LockMode, RootLock};

pub fn run(args: &InitArgs) -> Result<()> {
    check_channel(&args.channel)?;
    let server = args.server.trim().to_string();
    if !["http://", "https://", "file://"]
        .iter()
        .any(|p| server.starts_with(p))
    {
        bail!("unsupported server URL {server:?}: expected http://, https:// or file://");
    }
    let key_text = std::fs::read_to_string(&args.public_key)
        .with_context(|| format!("reading public key {}", args.public_key.display()))?;
    if let Err(e) = PublicKey::from_text(&key_text) {
        eprintln!(
            "warning: {}: {e}; `ferry update` will fail until it is fixed",
            args.public_key.display()
        );
    }
    let layout = Layout::new(&args.root);
    fsutil::create_dir_all(&layout.ferry_dir())?;
    let _lock = RootLock::acquire(&layout.lock(), LockMode::Exclusive)
        .with_context(|| format!("locking {}", layout.lock().display()))?;
    if layout.config().exists() && !args.force {
        bail!(
            "{} is already initialised ({} exists); use --force to overwrite the configuration",
            args.root.display(),
            layout.config().display()
        );
    }
    let keep = usize::try_from(args.keep).unwrap_or(usize::MAX);
    Config::new(
        server,
        args.channel.clone(),
        key_text.trim().to_string(),
        keep,
    )
    .save(&layout.config())?;
    println!(
        "initialised {} for channel {} from {}",
        args.root.display(),
        args.channel,
        args.server
    );
    Ok(())
}
