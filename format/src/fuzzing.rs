//! Entry points for the cargo-fuzz targets in `fuzz/`. This module exists only for
//! fuzzing: it is compiled only with the `fuzzing` feature, it is not part of the
//! crate's API, and nothing but `fuzz/` may enable that feature.
//!
//! Each function is a thin wrapper that lets a fuzz target reach a crate-private
//! decoder directly, without first producing a valid signature.

use crate::error::Result;
use crate::head::ChannelHead;
use crate::manifest::Manifest;

/// Decodes and validates a channel head body (the bytes inside its envelope) and the
/// content it carries, exactly as a client does after the signature checks.
pub fn decode_head_body(body: &[u8]) -> Result<ChannelHead> {
    let (content, partial) = ChannelHead::decode_layers(body)?;
    partial.finish(&content)
}

/// Decodes and validates a manifest body (the bytes inside its envelope), exactly as a
/// client does after the signature check.
pub fn decode_manifest_body(body: &[u8]) -> Result<Manifest> {
    Manifest::decode_body(body)
}
