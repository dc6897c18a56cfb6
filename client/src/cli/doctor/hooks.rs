//! The hook checks: `pre_switch`, `post_switch` and `health_check` run with
//! `/bin/sh -c`, so their first word must be an executable file, found as the shell
//! finds it (a path with a `/` as it is, else the first match along `PATH`). What the
//! shell decides itself (builtins, keywords, expansions, assignments) cannot be
//! checked without running it, and says so.

use std::path::{Path, PathBuf};

use super::Check;

/// sh's default search path when `PATH` is unset (dash, bash).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// POSIX special and regular builtins and reserved words, plus common extensions.
const SHELL_WORDS: &[&str] = &[
    "!", ".", ":", "[", "{", "}", "alias", "bg", "break", "case", "cd", "command", "continue",
    "do", "done", "echo", "elif", "else", "esac", "eval", "exec", "exit", "export", "false", "fc",
    "fg", "fi", "for", "function", "getopts", "hash", "if", "in", "jobs", "kill", "local",
    "printf", "pwd", "read", "readonly", "return", "select", "set", "shift", "source", "test",
    "then", "times", "trap", "true", "type", "ulimit", "umask", "unalias", "unset", "until",
    "wait", "while",
];

pub fn check(key: &str, command: &str) -> Check {
    let name = format!("hook {key}");
    let Some(word) = command.split_whitespace().next() else {
        return Check::fail(
            name,
            "the command is empty",
            format!("remove `{key}` from .ferry/config.toml, or give it a command"),
        );
    };
    let cannot = |why: String| {
        Check::warn(
            name.clone(),
            format!("cannot check `{command}`: {why}"),
            "run it by hand with /bin/sh -c to be sure it works",
        )
    };
    if word.chars().any(|c| "$`'\"\\(){}<>|;&*?[]~=#".contains(c)) && word != "[" {
        return cannot(format!("its first word `{word}` is expanded by the shell"));
    }
    if SHELL_WORDS.contains(&word) {
        return cannot(format!("`{word}` is a shell builtin or keyword"));
    }
    if word.contains('/') {
        let path = Path::new(word);
        if !path.is_absolute() {
            return cannot(format!(
                "`{word}` is relative to the directory the hook runs in; an absolute path can be checked"
            ));
        }
        return match executable(path) {
            Ok(()) => Check::ok(name, format!("`{word}` is an executable file")),
            Err(why) => Check::fail(
                name,
                format!("`{word}` {why}"),
                format!("install it, `chmod +x` it, or fix `{key}` in .ferry/config.toml"),
            ),
        };
    }
    let path_var = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string());
    let mut not_executable: Option<(PathBuf, String)> = None;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(word);
        if !candidate.exists() {
            continue;
        }
        match executable(&candidate) {
            Ok(()) => {
                return Check::ok(
                    name,
                    format!("`{word}` is {} (found along PATH)", candidate.display()),
                );
            }
            Err(why) => {
                not_executable.get_or_insert((candidate, why));
            }
        }
    }
    match not_executable {
        Some((p, why)) => Check::fail(
            name,
            format!("`{word}` along PATH is {}, which {why}", p.display()),
            format!("`chmod +x` it, or fix `{key}` in .ferry/config.toml"),
        ),
        None => Check::fail(
            name,
            format!("`{word}` not found along PATH ({path_var})"),
            format!(
                "install it, or give its absolute path in `{key}` in .ferry/config.toml (the agent's PATH, e.g. under systemd, may differ from this shell's)"
            ),
        ),
    }
}

/// Whether `path` is a file this process may execute; else why not.
fn executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => format!("cannot be read: {e}"),
    })?;
    if !meta.is_file() {
        return Err("is not a file".into());
    }
    rustix::fs::access(path, rustix::fs::Access::EXEC_OK).map_err(|_| {
        format!(
            "is not executable (mode {:o})",
            meta.permissions().mode() & 0o7777
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    #[test]
    fn hooks_resolve_like_the_shell_would() {
        assert_eq!(check("pre_switch", "sh -c true").status, Status::Ok);
        assert_eq!(check("pre_switch", "/bin/sh -c true").status, Status::Ok);
        let c = check("post_switch", "/nonexistent/restart --now");
        assert_eq!(c.status, Status::Fail, "{c}");
        assert!(c.detail.contains("does not exist"), "{c}");
        let c = check("health_check", "no-such-program-ferry-doctor");
        assert_eq!(c.status, Status::Fail, "{c}");
        assert!(c.detail.contains("not found along PATH"), "{c}");
        for cmd in ["cd /x && run", "$HOME/bin/x", "FOO=1 x", "./check.sh"] {
            assert_eq!(check("health_check", cmd).status, Status::Warn, "{cmd}");
        }
        let t = tempfile::tempdir().unwrap();
        let script = t.path().join("hook");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let c = check("pre_switch", script.to_str().unwrap());
        // root may execute nothing without an x bit either.
        assert_eq!(c.status, Status::Fail, "{c}");
        assert!(c.detail.contains("not executable"), "{c}");
        assert_eq!(check("pre_switch", "").status, Status::Fail);
    }
}
