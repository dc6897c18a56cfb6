//! Envelope framing of a manifest: decoding never panics, and whatever decodes
//! re-encodes to exactly the input bytes (the framing is canonical).
#![no_main]

use ferry_format::envelope::{Envelope, ObjectKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(ObjectKind::Manifest, data) {
        assert_eq!(env.encode(), data, "manifest envelope does not round-trip");
        // Reach the body decoder too, so seeds that are whole manifests go deeper.
        let _ = ferry_format::fuzzing::decode_manifest_body(&env.body);
    }
});
