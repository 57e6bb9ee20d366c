//! Checks of a job against the agent's own `[allow]` policy
//! ([`AllowPolicy`]), made while the job is prepared, before its process
//! exists.
//!
//! The policy is the peer operator's, so it applies whatever the coordinator
//! and its plugins sent. A job that breaks it ends with `denied_by_agent`,
//! and the message names the value, the option that forbids it and the fix.
//! Each check passes when its list is empty or its key is absent.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use runwarden_protocol::status::Outcome;

use crate::config::AllowPolicy;
use crate::prepare::JobFailure;

/// Checks the job's effective timeout, in seconds, against
/// `allow.max_timeout_secs`. A larger timeout is denied, not lowered.
pub fn check_timeout(
    allow: &AllowPolicy,
    timeout_secs: i32,
    peer_id: &str,
) -> Result<(), JobFailure> {
    let Some(max) = allow.max_timeout_secs else {
        return Ok(());
    };
    if u64::try_from(timeout_secs).is_ok_and(|secs| secs <= max) {
        return Ok(());
    }
    Err(JobFailure::new(
        Outcome::DeniedByAgent,
        format!(
            "timeout {timeout_secs} s is not allowed on peer `{peer_id}`: the agent's allow.max_timeout_secs is {max}, and a longer timeout is denied, not shortened, so nothing ran; set content.timeout to at most {max} (0 means the coordinator's default, which may be longer), or ask the operator of peer `{peer_id}` to raise allow.max_timeout_secs"
        ),
    ))
}

/// Checks the run-as user's name against `allow.users`.
pub fn check_user(allow: &AllowPolicy, user: &str, peer_id: &str) -> Result<(), JobFailure> {
    if allow.users.is_empty() || allow.users.iter().any(|allowed| allowed == user) {
        return Ok(());
    }
    Err(denied(
        peer_id,
        &format!("user `{user}`"),
        "allow.users",
        &quoted(allow.users.iter()),
        "content.user (empty means the agent's own user)",
    ))
}

/// Checks the job's working directory against `allow.working_dirs` and
/// returns the directory to run in: `cwd` with symlinks resolved when the
/// list is set, else `cwd` unchanged.
///
/// # Errors
///
/// Denies a directory outside every listed one. Fails with `path_not_found`
/// when `cwd` cannot be resolved.
pub fn check_working_dir(
    allow: &AllowPolicy,
    cwd: PathBuf,
    peer_id: &str,
) -> Result<PathBuf, JobFailure> {
    if allow.working_dirs.is_empty() {
        return Ok(cwd);
    }

    let resolved = std::fs::canonicalize(&cwd).map_err(|error| {
        JobFailure::new(
            Outcome::PathNotFound,
            format!(
                "working directory `{}` cannot be resolved on peer `{peer_id}` ({error}); create it or change content.path",
                cwd.display()
            ),
        )
    })?;
    let inside = allow
        .working_dirs
        .iter()
        .any(|allowed| resolved.starts_with(resolve_existing(allowed)));
    if inside {
        return Ok(resolved);
    }

    let what = if resolved == cwd {
        format!("working directory `{}`", cwd.display())
    } else {
        format!(
            "working directory `{}` (resolved to `{}`)",
            cwd.display(),
            resolved.display()
        )
    };
    Err(denied(
        peer_id,
        &what,
        "allow.working_dirs",
        &quoted(allow.working_dirs.iter().map(|dir| dir.display())),
        "content.path (empty means the run-as user's home)",
    ))
}

/// Checks the interpreter the job would run, as `content.cmd`, a `#!` line
/// or the default names it, against `allow.interpreters`. A name without `/`
/// is looked up in `path_var`, the job's `PATH`, and a relative path is
/// taken from `cwd`, as `exec` would. Both sides are compared after
/// resolving symlinks.
pub fn check_interpreter(
    allow: &AllowPolicy,
    interpreter: &str,
    path_var: Option<&OsStr>,
    cwd: &Path,
    peer_id: &str,
) -> Result<(), JobFailure> {
    if allow.interpreters.is_empty() {
        return Ok(());
    }

    let what = match locate_program(interpreter, path_var, cwd) {
        Some(located) => {
            let resolved = resolve_existing(&located);
            let allowed = allow
                .interpreters
                .iter()
                .any(|allowed| resolve_existing(allowed) == resolved);
            if allowed {
                return Ok(());
            }
            if resolved.as_os_str() == interpreter {
                format!("interpreter `{interpreter}`")
            } else {
                format!(
                    "interpreter `{interpreter}` (resolved to `{}`)",
                    resolved.display()
                )
            }
        }
        None => format!("interpreter `{interpreter}` (not found in the job's PATH)"),
    };
    Err(denied(
        peer_id,
        &what,
        "allow.interpreters",
        &quoted(allow.interpreters.iter().map(|path| path.display())),
        "content.cmd or the script's `#!` line",
    ))
}

/// Returns the interpreter named on a script's `#!` line, as the kernel
/// reads it: the first word after `#!`. `None` when the script has no `#!`
/// line.
pub fn shebang_interpreter(body: &[u8]) -> Option<String> {
    let rest = body.strip_prefix(b"#!")?;
    let line = rest.split(|byte| *byte == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let word = line
        .trim_start_matches([' ', '\t'])
        .split([' ', '\t'])
        .next()
        .unwrap_or_default();
    Some(word.to_owned())
}

fn denied(peer_id: &str, what: &str, option: &str, allowed: &str, field: &str) -> JobFailure {
    JobFailure::new(
        Outcome::DeniedByAgent,
        format!(
            "{what} is not allowed on peer `{peer_id}`: the agent's {option} permits only {allowed}, so nothing ran; choose an allowed value with {field}, or ask the operator of peer `{peer_id}` to add it to {option}"
        ),
    )
}

fn quoted<T: std::fmt::Display>(values: impl Iterator<Item = T>) -> String {
    values
        .map(|value| format!("`{value}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Returns `path` with symlinks resolved, or `path` itself when it does not
/// exist or cannot be resolved.
fn resolve_existing(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Finds the file `exec` would run for `program`.
fn locate_program(program: &str, path_var: Option<&OsStr>, cwd: &Path) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        return Some(cwd.join(program));
    }
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AllowPolicy {
        AllowPolicy::default()
    }

    #[test]
    fn empty_policy_allows_everything() {
        let allow = policy();
        assert!(check_timeout(&allow, 86_400, "p1").is_ok());
        assert!(check_user(&allow, "root", "p1").is_ok());
        assert!(check_interpreter(&allow, "/no/such", None, Path::new("/"), "p1").is_ok());
        let cwd = check_working_dir(&allow, PathBuf::from("/no/such"), "p1").unwrap();
        assert_eq!(cwd, PathBuf::from("/no/such"));
    }

    #[test]
    fn timeout_above_max_is_denied() {
        let allow = AllowPolicy {
            max_timeout_secs: Some(60),
            ..policy()
        };
        assert!(check_timeout(&allow, 60, "p1").is_ok());

        let failure = check_timeout(&allow, 61, "p1").unwrap_err();
        assert_eq!(failure.outcome, Outcome::DeniedByAgent);
        assert!(
            failure.message.contains("timeout 61 s"),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("allow.max_timeout_secs is 60"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn user_outside_list_is_denied() {
        let allow = AllowPolicy {
            users: vec!["deploy".into()],
            ..policy()
        };
        assert!(check_user(&allow, "deploy", "p1").is_ok());

        let failure = check_user(&allow, "root", "p1").unwrap_err();
        assert!(
            failure.message.contains("user `root`"),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("allow.users"),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("operator of peer `p1`"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn working_dir_symlink_out_is_denied() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("allowed");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(allowed.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, allowed.join("escape")).unwrap();
        let allow = AllowPolicy {
            working_dirs: vec![allowed.clone()],
            ..policy()
        };

        assert!(check_working_dir(&allow, allowed.join("sub"), "p1").is_ok());
        let failure = check_working_dir(&allow, allowed.join("escape"), "p1").unwrap_err();
        assert_eq!(failure.outcome, Outcome::DeniedByAgent);
        assert!(
            failure.message.contains("resolved to"),
            "{}",
            failure.message
        );
        let sibling = root.path().join("allowed-not");
        std::fs::create_dir_all(&sibling).unwrap();
        assert!(check_working_dir(&allow, sibling, "p1").is_err());
    }

    #[test]
    fn interpreter_is_found_in_path() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let allow = AllowPolicy {
            interpreters: vec![tool.clone()],
            ..policy()
        };
        let path_var = dir.path().as_os_str();

        assert!(check_interpreter(&allow, "tool", Some(path_var), Path::new("/"), "p1").is_ok());
        let failure =
            check_interpreter(&allow, "missing", Some(path_var), Path::new("/"), "p1").unwrap_err();
        assert!(
            failure.message.contains("not found in the job's PATH"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn shebang_takes_first_word() {
        assert_eq!(
            shebang_interpreter(b"#! /usr/bin/env python3\nprint(1)"),
            Some("/usr/bin/env".to_owned())
        );
        assert_eq!(
            shebang_interpreter(b"#!/bin/bash -e\n"),
            Some("/bin/bash".to_owned())
        );
        assert_eq!(shebang_interpreter(b"echo hi\n"), None);
    }
}
