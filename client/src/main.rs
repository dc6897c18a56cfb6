//! `ferry`: parse the command line, run it, print any error once.

use clap::Parser;

fn main() {
    #[cfg(feature = "failpoints")]
    let _failpoints = ferry_client::failpoint::setup();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = ferry_client::cli::Cli::parse();
    if let Err(e) = ferry_client::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
