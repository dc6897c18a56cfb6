//! End-to-end tests: one binary driving the real `ferry-server`, nginx and `ferry`
//! over loopback. Build the binaries first: `cargo build --workspace --bins --examples`.

mod it {
    pub mod agent;
    pub mod app_files;
    pub mod audit;
    pub mod budget;
    pub mod config_file;
    pub mod crash;
    pub mod diffs;
    pub mod doctor;
    pub mod dry_run;
    pub mod exit_codes;
    pub mod fixtures;
    pub mod flaky_network;
    pub mod fleet;
    pub mod fleet_page;
    pub mod fleet_pg;
    pub mod fleet_run;
    pub mod head_check;
    pub mod hostile_clients;
    pub mod http_semantics;
    pub mod identity;
    pub mod keys;
    pub mod limits;
    pub mod manual;
    pub mod metrics;
    pub mod mirrors;
    pub mod online;
    pub mod paths;
    pub mod pipeline;
    pub mod publish_limits;
    pub mod recall;
    pub mod reinit;
    pub mod reports;
    pub mod requirements_publish;
    pub mod resume;
    pub mod rollback;
    pub mod rollout_cmd;
    pub mod s3;
    pub mod self_update;
    pub mod static_host;
    pub mod tamper;
    pub mod terminal;
    pub mod tls;
    pub mod upload;
}
