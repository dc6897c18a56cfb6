//! Key list objects (envelope and body): decoding never panics; a list that decodes is
//! valid, its roles build, its body is canonical (re-signing gives the same body), and
//! the trust-root operations on hostile bytes never panic.
#![no_main]

use ferry_format::envelope::{Envelope, ObjectKind};
use ferry_format::keylist::{TrustRoot, inspect, key_list_ref};
use ferry_format::keys::SecretKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_seed([1; 32]);
    let _ = TrustRoot::SingleKey(key.public()).advance(data);
    let _ = TrustRoot::from_stored(data);
    let Ok(list) = inspect(data) else {
        return;
    };
    list.validate().expect("an inspected key list is valid");
    let (_, _, _) = (list.publishers(), list.roots(), list.online());
    assert_eq!(key_list_ref(data).unwrap().version, list.version);
    let resigned = list.sign(&[&key]).expect("a decoded key list signs");
    let env = |b: &[u8]| Envelope::decode(ObjectKind::KeyList, b).unwrap();
    // Format 1 lists are still read but written as format 2 (with an empty online role).
    if env(data).format == ObjectKind::KeyList.format_version() {
        assert_eq!(
            env(&resigned).body,
            env(data).body,
            "key list body encoding is not canonical"
        );
    }
    assert_eq!(inspect(&resigned).unwrap(), list);
});
