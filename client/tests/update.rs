//! End-to-end through the library with a `file://` repository written by hand with
//! `ferry_format`: install, delta update, rollback and pin, corrupt archive,
//! replayed head, older release refused.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use ferry_format::keys::SecretKey;
use ferry_format::layout::head_path;

#[test]
fn install_update_rollback_and_attacks() {
    let t = tempfile::tempdir().unwrap();
    let repo_dir = t.path().join("repo");
    let root = t.path().join("root");
    let r = root.to_str().unwrap();
    let mut repo = Repo::new(&repo_dir);
    let key_file = t.path().join("ferry.pub");
    fs::write(&key_file, repo.key.public().to_text()).unwrap();

    let app1 = noise(600_000, 7);
    repo.publish("1.0.0", &release(&app1, "one"));

    let server = format!("file://{}", repo_dir.display());
    let init = [
        "init",
        "--root",
        r,
        "--server",
        &server,
        "--channel",
        "stable",
        "--public-key",
        key_file.to_str().unwrap(),
        "--keep",
        "2",
    ];
    ferry(&init).unwrap();
    let e = ferry(&init).unwrap_err().to_string();
    assert!(e.contains("already initialised"), "{e}");

    // Install.
    ferry(&["update", "--root", r]).unwrap();
    let cur = root.join("current");
    assert_eq!(fs::read_link(&cur).unwrap(), Path::new("versions/1.0.0"));
    assert_eq!(fs::read(cur.join("bin/app")).unwrap(), app1);
    assert_eq!(
        fs::read_link(cur.join("app")).unwrap(),
        Path::new("bin/app")
    );
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    // Published 0755; every installed release file is read-only.
    assert_eq!(mode(&cur.join("bin/app")), 0o555);
    assert_eq!(mode(&cur.join("data")), 0o555);
    assert_eq!(mode(&cur.join("data/empty")), 0o444);
    ferry(&["verify", "--root", r]).unwrap();
    ferry(&["update", "--root", r, "--json"]).unwrap();

    // Delta update: only the changed middle of bin/app is fetched.
    let mut app2 = app1.clone();
    app2[300_000..300_100].copy_from_slice(&[0xAB; 100]);
    repo.publish("2.0.0", &release(&app2, "two"));
    ferry(&["update", "--root", r]).unwrap();
    assert_eq!(fs::read(cur.join("bin/app")).unwrap(), app2);
    assert_eq!(fs::read(cur.join("README")).unwrap(), b"two");
    let h = history(&root);
    assert_eq!(h[0]["event"], "install");
    assert_eq!(h[1]["event"], "update");
    assert_eq!(h[1]["from"], "1.0.0");
    assert_eq!(h[1]["requests"], 3, "head, manifest, one range");
    let downloaded = h[1]["bytes_downloaded"].as_u64().unwrap();
    assert!(
        downloaded < 400_000,
        "delta, not the whole app: {downloaded}"
    );
    assert!(
        fs::read_dir(root.join(".ferry/staging")).is_err(),
        "staging cleaned"
    );

    // Rollback pins; update respects the pin until forced.
    ferry(&["rollback", "--root", r]).unwrap();
    assert_eq!(fs::read(cur.join("bin/app")).unwrap(), app1);
    let s = state(&root);
    assert_eq!(s["pin"]["version"], "1.0.0");
    assert_eq!(s["pin"]["rolled_back_from"], "2.0.0");
    ferry(&["update", "--root", r]).unwrap();
    assert_eq!(fs::read(cur.join("README")).unwrap(), b"one", "pinned");
    let e = ferry(&["rollback", "--root", r]).unwrap_err().to_string();
    assert!(e.contains("retained versions are 1.0.0, 2.0.0"), "{e}");
    ferry(&["update", "--root", r, "--force"]).unwrap();
    assert_eq!(fs::read(cur.join("README")).unwrap(), b"two");
    assert!(state(&root)["pin"].is_null());

    // A corrupt chunk in the archive: refused, nothing installed, error recorded.
    let mut app3 = app2.clone();
    app3[100_000..100_200].copy_from_slice(&[0xCD; 200]);
    let archive = repo.publish("3.0.0", &release(&app3, "three"));
    let good = fs::read(&archive).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 10;
    bad[last] ^= 0xFF;
    fs::write(&archive, &bad).unwrap();
    let e = format!("{:#}", ferry(&["update", "--root", r]).unwrap_err());
    assert!(e.contains("corrupt"), "{e}");
    assert_eq!(fs::read_link(&cur).unwrap(), Path::new("versions/2.0.0"));
    assert!(!root.join("versions/3.0.0").exists());
    let h = history(&root);
    let last_event = h.last().unwrap();
    assert!(
        last_event["result"]
            .as_str()
            .unwrap()
            .starts_with("error: ")
    );
    assert_eq!(last_event["to"], "3.0.0");
    // Repaired repository: the next update completes.
    fs::write(&archive, &good).unwrap();
    ferry(&["update", "--root", r]).unwrap();
    assert_eq!(fs::read(cur.join("bin/app")).unwrap(), app3);
    // keep = 2: 1.0.0 was pruned with its manifest.
    assert!(!root.join("versions/1.0.0").exists());
    assert!(!root.join(".ferry/manifests/1.0.0").exists());
    assert!(root.join("versions/2.0.0").exists());

    // rollback --to a pruned release fetches it again.
    ferry(&["rollback", "--root", r, "--to", "1.0.0"]).unwrap();
    assert_eq!(fs::read(cur.join("bin/app")).unwrap(), app1);
    ferry(&["verify", "--root", r]).unwrap();
    ferry(&["update", "--root", r, "--force"]).unwrap();
    assert_eq!(fs::read(cur.join("README")).unwrap(), b"three");

    // A replayed older head is refused.
    let newest = fs::read(repo_dir.join(head_path("stable"))).unwrap();
    repo.put(&head_path("stable"), &repo.heads[0].clone());
    let e = format!("{:#}", ferry(&["update", "--root", r]).unwrap_err());
    assert!(e.contains("replayed"), "{e}");
    repo.put(&head_path("stable"), &newest);

    // A newer head naming an older current release is a rollback attack.
    let old = repo.releases[..2].to_vec();
    repo.sign_head(old);
    let e = format!("{:#}", ferry(&["update", "--root", r]).unwrap_err());
    assert!(e.contains("older release"), "{e}");
    assert_eq!(fs::read(cur.join("README")).unwrap(), b"three");

    // Two different heads with one sequence number: equivocation.
    repo.sequence -= 1;
    let rels = repo.releases[1..].to_vec();
    repo.sign_head(rels);
    let e = format!("{:#}", ferry(&["update", "--root", r]).unwrap_err());
    assert!(e.contains("equivocating"), "{e}");

    // Tampering with the installed tree is found by verify; a file the application
    // added is listed apart, not counted as a problem.
    fs::write(root.join("versions/3.0.0/bin/extra"), b"x").unwrap();
    ferry(&["verify", "--root", r]).unwrap();
    let app_file = root.join("versions/3.0.0/README");
    fs::set_permissions(&app_file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&app_file, b"evil!").unwrap();
    let e = ferry(&["verify", "--root", r]).unwrap_err().to_string();
    assert!(e.contains("1 problem(s)"), "{e}");
}

#[test]
fn wrong_key_fails_at_update_not_init() {
    let t = tempfile::tempdir().unwrap();
    let repo_dir = t.path().join("repo");
    let root = t.path().join("root");
    let mut repo = Repo::new(&repo_dir);
    repo.publish("1.0.0", &release(b"tiny", "x"));
    let key_file = t.path().join("other.pub");
    fs::write(&key_file, SecretKey::from_seed([9; 32]).public().to_text()).unwrap();
    let server = format!("file://{}", repo_dir.display());
    let r = root.to_str().unwrap();
    ferry(&[
        "init",
        "--root",
        r,
        "--server",
        &server,
        "--channel",
        "stable",
        "--public-key",
        key_file.to_str().unwrap(),
    ])
    .unwrap();
    let e = format!("{:#}", ferry(&["update", "--root", r]).unwrap_err());
    assert!(e.contains("signature check failed"), "{e}");
    assert!(fs::symlink_metadata(root.join("current")).is_err());
    let e = format!("{:#}", ferry(&["rollback", "--root", r]).unwrap_err());
    assert!(e.contains("nothing is installed"), "{e}");
}
