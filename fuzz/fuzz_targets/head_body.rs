//! Channel head body: decoding never panics; a body that decodes is valid, is the
//! canonical encoding of its value (re-signing yields the same body bytes), and
//! survives sign -> verify with the public API unchanged.
#![no_main]

use ferry_format::envelope::{Envelope, ObjectKind, TrustedKeys};
use ferry_format::keys::SecretKey;
use ferry_format::verified::{HeadPolicy, verify_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(head) = ferry_format::fuzzing::decode_head_body(data) else {
        return;
    };
    head.validate().expect("a decoded head is valid");
    let current = head.current();
    assert!(
        head.releases
            .iter()
            .all(|r| head.release(&r.version.parse().unwrap()) == Some(r))
    );
    assert_eq!(current, head.releases.last().unwrap());

    let key = SecretKey::from_seed([1; 32]);
    let signed = head.sign(&[&key]).expect("a decoded head signs");
    let env = Envelope::decode(ObjectKind::ChannelHead, &signed).unwrap();
    assert_eq!(env.body, data, "head body encoding is not canonical");
    let policy = HeadPolicy {
        channel: &head.channel,
        now: head.issued_at,
        max_skew: 0,
        last_sequence: Some(head.sequence),
        key_list_version: head.key_list.map_or(0, |k| k.version),
    };
    let back = verify_head(&signed, &TrustedKeys::single(key.public()), &policy).unwrap();
    assert_eq!(*back, head);
});
