//! `ferry-server completions SHELL` and `ferry-server man`: shell completions and
//! manual pages generated from the parser's own definitions, as `ferry` does.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Generator;

use crate::cli::Cli;

pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = Cli::command().bin_name("ferry-server");
    cmd.build();
    // The fallible form: a closed pipe (`| head`) is an error, not a panic.
    let mut out = std::io::stdout().lock();
    shell
        .try_generate(&cmd, &mut out)
        .and_then(|()| out.flush())
        .context("writing the completions")
}

pub fn man(out: Option<&Path>) -> Result<()> {
    match out {
        None => {
            let mut stdout = std::io::stdout().lock();
            clap_mangen::Man::new(Cli::command())
                .render(&mut stdout)
                .and_then(|()| stdout.flush())
                .context("writing the manual page")
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
            println!("manual pages written to {}", dir.display());
            Ok(())
        }
    }
}
