//! Integration tests of ferry-server, built as one binary.
//!
//! - `publish`: two and more releases through the library; generations, carried
//!   bytes, the head, modes, refusals.
//! - `diff`: diff objects and manifest diffs against earlier releases, applied back.
//! - `serve`: the real server in-process on 127.0.0.1:0, driven by raw HTTP/1.1.
//! - `cli`: the real binary: keygen, publish --json, serve's `listening on` line and
//!   SIGTERM.

mod cli;
mod common;
mod diff;
mod publish;
mod serve;
