//! Envelope framing of a channel head: decoding never panics, and whatever decodes
//! re-encodes to exactly the input bytes (the framing is canonical).
#![no_main]

use ferry_format::envelope::{Envelope, ObjectKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(ObjectKind::ChannelHead, data) {
        assert_eq!(env.encode(), data, "head envelope does not round-trip");
        // Reach the body decoder too, so seeds that are whole heads go deeper.
        let claimed = ferry_format::head::claimed_key_list(data);
        if let Ok(head) = ferry_format::fuzzing::decode_head_body(&env.body) {
            assert_eq!(claimed.unwrap(), head.key_list);
        }
    }
});
