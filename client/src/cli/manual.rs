//! `ferry completions SHELL` and `ferry man`: shell completions and manual pages
//! generated from the same clap definitions as the parser, so they never drift from
//! what `ferry` accepts.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Generator;

use super::{Cli, CompletionsArgs, ManArgs};

pub fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command().bin_name("ferry");
    cmd.build();
    // The fallible form: a closed pipe (`| head`) is an error, not a panic.
    let mut out = std::io::stdout().lock();
    args.shell
        .try_generate(&cmd, &mut out)
        .and_then(|()| out.flush())
        .context("writing the completions")
}

pub fn man(args: &ManArgs) -> Result<()> {
    match &args.out {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .context("writing the manual page")?;
            out.flush().context("writing the manual page")
        }
        Some(dir) => write_pages(dir),
    }
}

/// `ferry.1` and one `ferry-COMMAND.1` per command into `dir`.
fn write_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing manual pages into {}", dir.display()))?;
    println!("manual pages written to {}", dir.display());
    Ok(())
}
