//! Release sources shared by the tests.

use std::path::{Path, PathBuf};

use ferry_tests::tree::app_release;
use tempfile::TempDir;

/// Sources of releases 1..=n of the sample application, in `src/<n>/`.
pub struct Sources {
    pub dir: TempDir,
}

impl Sources {
    pub fn app(n: u64) -> Sources {
        let dir = tempfile::tempdir().expect("tempdir");
        for k in 1..=n {
            app_release(&dir.path().join(k.to_string()), k);
        }
        Sources { dir }
    }

    pub fn release(&self, k: u64) -> PathBuf {
        self.dir.path().join(k.to_string())
    }
}

/// `k.0.0`, the version the tests give release k.
pub fn v(k: u64) -> String {
    format!("{k}.0.0")
}

pub fn tree_eq(installed: &Path, source: &Path) {
    let a = ferry_tests::tree::snapshot(installed);
    let b = ferry_tests::tree::snapshot(source);
    assert_eq!(a, b, "installed tree differs from the published source");
}
