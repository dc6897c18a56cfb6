//! Channel head body: decoding never panics; a body that decodes is valid (with the
//! content it carries), is the canonical encoding of its value (re-signing yields the
//! same body bytes), and survives sign -> verify with the public API unchanged.
#![no_main]

use ferry_format::envelope::{Envelope, ObjectKind, TrustedKeys};
use ferry_format::keylist::HeadKeys;
use ferry_format::keys::SecretKey;
use ferry_format::verified::{HeadPolicy, verify_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut head) = ferry_format::fuzzing::decode_head_body(data) else {
        return;
    };
    head.validate().expect("a decoded head is valid");
    let current = head.current();
    assert!(
        head.releases()
            .iter()
            .all(|r| head.release(&r.version.parse().unwrap()) == Some(r))
    );
    assert_eq!(current, head.releases().last().unwrap());
    assert!(head.rollout.iter().all(|r| r.percent <= head.content.rollout_of(&r.version)));

    let key = SecretKey::from_seed([1; 32]);
    let signed = head.sign(&[&key]).expect("a decoded head signs");
    let env = Envelope::decode(ObjectKind::ChannelHead, &signed).unwrap();
    assert_eq!(env.body, data, "head body encoding is not canonical");
    let content_body = |b: &[u8]| Envelope::decode(ObjectKind::ChannelContent, b).unwrap().body;
    let before = content_body(head.content_bytes());
    head.resign_content(&[&key]).expect("decoded content signs");
    assert_eq!(content_body(head.content_bytes()), before, "content encoding is not canonical");
    let signed = head.sign(&[&key]).unwrap();
    let policy = HeadPolicy {
        channel: head.channel(),
        now: 0,
        max_skew: 0,
        last_sequence: Some(head.sequence),
        key_list_version: head.key_list.map_or(0, |k| k.version),
        last_content_sequence: Some(head.content.sequence),
        rollout_seen: None,
    };
    let keys = HeadKeys::from(TrustedKeys::single(key.public()));
    let back = verify_head(&signed, &keys, &policy).unwrap();
    assert_eq!(*back, head);
});
