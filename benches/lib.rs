//! Benchmarks of ferry's hot paths; the criterion targets are declared in Cargo.toml.
