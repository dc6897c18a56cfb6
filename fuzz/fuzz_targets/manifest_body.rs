//! Manifest body: decoding never panics; a body that decodes is valid, its chunk
//! table tiles the archive exactly, it is the canonical encoding of its value, and it
//! survives sign -> verify with the public API unchanged.
#![no_main]

use ferry_format::envelope::{Envelope, ObjectKind, TrustedKeys};
use ferry_format::keys::SecretKey;
use ferry_format::manifest::EntryKind;
use ferry_format::path::check_path;
use ferry_format::plan::plan_archive;
use ferry_format::verified::verify_own_manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = ferry_format::fuzzing::decode_manifest_body(data) else {
        return;
    };
    m.validate().expect("a decoded manifest is valid");
    let offsets = m.chunk_offsets();
    assert_eq!(offsets.len(), m.chunks.len() + 1);
    assert_eq!(offsets.last(), Some(&m.archive.size));
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "chunks overlap or are empty"
    );
    for e in &m.entries {
        assert!(check_path(&e.path).is_ok());
        if let EntryKind::File { chunks, .. } = &e.kind {
            assert!(chunks.iter().all(|&i| (i as usize) < m.chunks.len()));
        }
    }
    let _ = m.total_file_bytes();
    // Holding nothing means fetching the whole archive in one range; holding all, none.
    let all = plan_archive(&m, |_| false, 0);
    assert_eq!(all.download_bytes, m.archive.size);
    assert_eq!(all.ranges.len(), usize::from(!m.chunks.is_empty()));
    assert!(plan_archive(&m, |_| true, 0).ranges.is_empty());

    let key = SecretKey::from_seed([1; 32]);
    let signed = m.sign(&[&key]).expect("a decoded manifest signs");
    let env = Envelope::decode(ObjectKind::Manifest, &signed).unwrap();
    assert_eq!(env.body, data, "manifest body encoding is not canonical");
    let back = verify_own_manifest(&signed, &TrustedKeys::single(key.public())).unwrap();
    assert_eq!(*back, m);
});
