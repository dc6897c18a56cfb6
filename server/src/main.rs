//! The `ferry-server` binary: parse the command line, run it, report the error once.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    #[cfg(feature = "failpoints")]
    let _failpoints = ferry_server::failpoint::setup();
    let cli = ferry_server::cli::Cli::parse();
    // `serve` is a service: its log is its output. A one-shot command prints its own
    // summary, so only warnings go to stderr (FERRY_LOG=info shows the rest).
    let default = match cli.command {
        ferry_server::cli::Command::Serve { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERRY_LOG")
                .or_else(|_| EnvFilter::try_from_default_env())
                // object_store logs each retry of a request at info: only its
                // outcome matters, and that is reported as an error.
                .unwrap_or_else(|_| EnvFilter::new(format!("{default},object_store=warn"))),
        )
        // Around publish's progress line when one is drawn.
        .with_writer(|| ferry_server::publish::progress::LogWriter)
        // Colour codes only for a person at a terminal, never into files and pipes
        // (nor with NO_COLOR set).
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    match ferry_server::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
