//! Release sources shared by the tests.

use std::path::{Path, PathBuf};

use ferry_tests::tree::app_release;
use ferry_tests::{Agent, Publisher, Server};
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

/// The usual opening of an update test: release 1 of `sources` published on channel
/// `stable` (with `extra` publish arguments), served by the real `ferry-server` on
/// loopback, and an agent that installed it.
pub struct Scene {
    pub p: Publisher,
    pub sources: Sources,
    pub srv: Server,
    pub agent: Agent,
}

impl Scene {
    pub fn installed(sources: Sources, extra: &[&str]) -> Scene {
        let p = Publisher::new("stable");
        p.publish_with(&v(1), &sources.release(1), extra);
        let srv = p.serve();
        let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
        agent.update();
        Scene {
            p,
            sources,
            srv,
            agent,
        }
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
