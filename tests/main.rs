//! End-to-end tests: one binary driving the real `ferry-server`, nginx and `ferry`
//! over loopback. Build the binaries first: `cargo build --workspace --bins`.

mod it {
    pub mod diffs;
    pub mod fixtures;
    pub mod http_semantics;
    pub mod keys;
    pub mod online;
    pub mod paths;
    pub mod pipeline;
    pub mod resume;
    pub mod rollback;
    pub mod static_host;
    pub mod tamper;
    pub mod tls;
    pub mod upload;
}
