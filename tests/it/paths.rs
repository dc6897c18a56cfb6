//! Path attacks: a manifest signed with the real publishing key but naming `..`,
//! absolute paths, duplicate paths, a symlink out of the tree, or a file written
//! through a symlink is refused before anything is written, and the active release
//! stays as it was.

use ferry_format::envelope::TrustedKeys;
use ferry_format::head::ChannelHead;
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::keys::SecretKey;
use ferry_format::manifest::{Entry, EntryKind, Manifest};
use ferry_format::test_support::sign_manifest_unchecked;
use ferry_format::verified::{verify_own_head, verify_own_manifest};

use super::fixtures::{Scene, Sources, tree_eq, v};

fn dir(path: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::Dir { mode: 0o755 },
    }
}

fn link(path: &str, target: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::Symlink {
            target: target.into(),
        },
    }
}

fn empty_file(path: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File {
            mode: 0o644,
            size: 0,
            hash: Digest::of(b""),
            chunks: vec![],
        },
    }
}

#[test]
fn malicious_paths_are_refused_before_anything_is_written() {
    let Scene {
        p,
        sources,
        srv: _srv,
        agent,
    } = Scene::installed(Sources::app(2), &[]);
    // A real release 2 gives a valid archive and chunk table to build attacks on.
    p.publish(&v(2), &sources.release(2));
    let key = SecretKey::from_text(&std::fs::read_to_string(p.key()).unwrap()).unwrap();
    let trusted = TrustedKeys::single(key.public());
    let head_bytes = std::fs::read(p.head_file()).unwrap();
    let head: ChannelHead = (*verify_own_head(&head_bytes, &trusted).unwrap()).clone();
    let m_bytes = std::fs::read(p.object_file(&head.current().manifest.hash.to_hex())).unwrap();
    let base: Manifest = (*verify_own_manifest(&m_bytes, &trusted).unwrap()).clone();

    let attacks: Vec<(&str, Vec<Entry>, &str)> = vec![
        ("dot-dot", vec![empty_file("../escaped")], "'.' or '..'"),
        (
            "absolute",
            vec![empty_file("/tmp/ferry-escaped")],
            "absolute",
        ),
        ("duplicate", vec![dir("a"), dir("a")], "duplicate"),
        (
            "symlink-out",
            vec![link("evil", "../../etc")],
            "outside the tree",
        ),
        (
            "write-through-symlink",
            vec![dir("d"), link("d/l", ".."), empty_file("d/l/x")],
            "parent is not a directory",
        ),
    ];
    for (i, (name, entries, expect)) in attacks.into_iter().enumerate() {
        let mut m = base.clone();
        m.version = format!("2.0.{}", i + 1);
        m.entries = entries;
        m.chunks.clear();
        m.archive = ObjectRef {
            hash: m.archive.hash,
            size: 0,
        };
        let bytes = sign_manifest_unchecked(&m, &[&key]);
        let r = p.object_file(&Digest::of(&bytes).to_hex());
        std::fs::create_dir_all(r.parent().unwrap()).unwrap();
        std::fs::write(&r, &bytes).unwrap();
        let mut h = head.clone();
        h.sequence += 1 + i as u64;
        h.content.sequence += 1 + i as u64;
        h.content.releases.push(ferry_format::head::ReleaseRef {
            version: m.version.clone(),
            manifest: ObjectRef::of(&bytes),
        });
        h.resign_content(&[&key]).unwrap();
        std::fs::write(p.head_file(), h.sign(&[&key]).unwrap()).unwrap();

        let err = agent.update_fails();
        assert!(
            err.contains(expect),
            "{name}: error should say {expect:?}: {err}"
        );
        assert_eq!(agent.active().as_deref(), Some("1.0.0"), "{name}");
        tree_eq(&agent.current(), &sources.release(1));
        assert!(
            !agent.root().join("versions").join(&m.version).exists(),
            "{name}"
        );
        assert!(!std::path::Path::new("/tmp/ferry-escaped").exists());
        assert!(!agent.root().join("escaped").exists());
        let staging = agent.root().join(".ferry/staging");
        let leftovers: Vec<_> = std::fs::read_dir(&staging)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            leftovers.iter().all(|n| n == "downloads"),
            "{name}: nothing is built for a refused manifest: {leftovers:?}"
        );
    }
}
