//! `ferry`: parse the command line, run it, print any error once, and exit with the
//! status of its kind of failure ([`ferry_client::cli::exit`]: offline, network,
//! verification, policy, disk, lock; `ferry --help` lists them).

use clap::Parser;

fn main() {
    #[cfg(feature = "failpoints")]
    let _failpoints = ferry_client::failpoint::setup();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = ferry_client::cli::Cli::parse();
    if let Err(e) = ferry_client::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(ferry_client::cli::exit::code(&e));
    }
}
