//! `ferry`: parse the command line, run it, print any error once.
//!
//! Exit codes (docs/AGENT.md): 0 success, 1 an error, 2 a usage error (from clap),
//! 3 no server reachable ([`ferry_client::fetch::is_offline`]): the machine is offline
//! or every mirror is down, and nothing changed.

use clap::Parser;

/// No server could be reached within `give_up_after`.
const EXIT_OFFLINE: i32 = 3;

fn main() {
    #[cfg(feature = "failpoints")]
    let _failpoints = ferry_client::failpoint::setup();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = ferry_client::cli::Cli::parse();
    if let Err(e) = ferry_client::run(cli) {
        eprintln!("error: {e:#}");
        let code = if ferry_client::fetch::is_offline(&e) {
            EXIT_OFFLINE
        } else {
            1
        };
        std::process::exit(code);
    }
}
