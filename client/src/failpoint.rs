//! Crash-injection points for the kill tests (tests/it/crash.rs).
//!
//! `crash_point!("client::switch_current::renamed")` marks an instant at which a crash must leave
//! everything usable. Only a build with this crate's `failpoints` feature compiles
//! them in: the tests crate turns it on, so workspace-wide builds (`cargo build
//! --workspace --bins`, what the end-to-end tests run) have them and `cargo build
//! --release -p ferry-client` does not;
//! there, `FAILPOINTS="NAME=return"` (the `fail` crate's syntax, so `2*off->return`
//! crashes at the third pass) aborts the process at that point, as a kill -9 would
//! stop it: no unwinding, no destructors, no buffered output. Every pass through a
//! point is appended, one name per line, to the file named by `FERRY_FAILPOINT_TRACE`, so
//! the test discovers which points a command passes without a list to keep in sync.

/// Marks a step that a crash may interrupt; see the module docs.
macro_rules! crash_point {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        $crate::failpoint::trace($name);
        fail::fail_point!($name, |_| std::process::abort());
    }};
}

/// Records one pass through a point, if tracing was asked for.
#[cfg(feature = "failpoints")]
pub fn trace(name: &str) {
    use std::io::Write;
    use std::sync::OnceLock;
    static TRACE: OnceLock<Option<std::fs::File>> = OnceLock::new();
    let file = TRACE.get_or_init(|| {
        let path = std::env::var_os(TRACE_VAR)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    if let Some(mut f) = file.as_ref() {
        // One write per line: O_APPEND keeps lines of concurrent threads whole.
        let _ = f.write_all(format!("{name}\n").as_bytes());
    }
}

/// The variable naming the trace file.
#[cfg(feature = "failpoints")]
pub const TRACE_VAR: &str = "FERRY_FAILPOINT_TRACE";

/// Configures the points named in `FAILPOINTS`; keep the guard for the life of
/// the process.
#[cfg(feature = "failpoints")]
pub fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}
