//! Release sources made of real files, and snapshots to compare installed trees with.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Deterministic pseudo-random bytes (xorshift), so releases are reproducible and
/// barely compressible, like compiled code.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes `data` to `root/rel` (creating parents) with `mode`.
pub fn put(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, data).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// An application tree for release `n` (1, 2, 3, ...). Each release changes a small
/// part of the big binary, rewrites one library, and adds a file, the way real
/// releases do; everything else stays byte-identical.
pub fn app_release(root: &Path, n: u64) {
    let mut bin = noise(1, 1_200_000);
    for k in 2..=n {
        // Patch a few KiB in the middle of the binary per release.
        let at = 300_000 + (k as usize) * 150_000;
        bin[at..at + 4000].copy_from_slice(&noise(100 + k, 4000));
    }
    put(root, "bin/app", &bin, 0o755);
    put(root, "lib/libcore.so", &noise(2, 400_000), 0o644);
    put(root, "lib/libplugin.so", &noise(3 + 10 * n, 150_000), 0o644);
    put(
        root,
        "share/doc/README",
        format!("app release {n}\n").as_bytes(),
        0o644,
    );
    put(root, "share/empty.txt", b"", 0o600);
    for k in 2..=n {
        put(
            root,
            &format!("share/notes-{k}.txt"),
            &noise(200 + k, 3000),
            0o644,
        );
    }
    std::fs::create_dir_all(root.join("var/cache")).expect("empty dir");
    let link = root.join("bin/app-latest");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("app", link).expect("symlink");
}

/// What a user would see of a tree: every path with its kind, mode and content hash.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).expect("readlink");
            out.insert(rel, format!("link -> {}", target.display()));
        } else if meta.is_dir() {
            out.insert(rel, format!("dir {mode:o}"));
            walk(root, &path, out);
        } else {
            // ferry installs release files without write permission (so that files
            // shared between releases are not edited in place): the published
            // source's write bits are not part of what is compared.
            let data = std::fs::read(&path).expect("read");
            let mode = mode & !0o222;
            out.insert(rel, format!("file {mode:o} {}", blake3_hex(&data)));
        }
    }
}

fn blake3_hex(data: &[u8]) -> String {
    ferry_format::id::Digest::of(data).to_hex()
}
