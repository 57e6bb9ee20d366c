//! Turns a job request into a [`ProcessSpec`]: who runs it, with what
//! environment, in which folder, and which program with which arguments.
//!
//! Everything here runs before the job's process exists. A failure ends the
//! job with an outcome code and a message naming the value and the fix, and
//! nothing runs.
//!
//! How each execWay becomes a command line:
//!
//! | execWay | program and arguments |
//! |---|---|
//! | 0 | `cmd FLAG content [cmd] args…`, FLAG from [`inline_form`] (`-c`, `-e`); shells get `cmd` again as `$0` |
//! | 1 | the text goes to a private temporary file, then `cmd FILE args…`, or `FILE args…` through its `#!` line when `cmd` is empty |
//! | 2 | the named script is copied from the scripts directory to a private temporary file, then as 1 |
//! | 3 | the script comes from the coordinator's store (or the agent's cache), its sha256 is checked, then as 1 |
//!
//! A script without a `#!` line and with an empty `cmd` runs with `/bin/sh`.

use std::ffi::{CString, OsString};
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runwarden_protocol::api::{ExecWay, JobRequest};
use runwarden_protocol::interpreter::inline_form;
use runwarden_protocol::status::Outcome;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::allow;
use crate::config::AllowPolicy;
use crate::link::ScriptFetcher;
use crate::process::{Credentials, ProcessSpec};

/// The default interpreter when `cmd` is empty.
pub const DEFAULT_SHELL: &str = "/bin/sh";

const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Why a job ended before its process started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    pub outcome: Outcome,
    pub message: String,
}

impl JobFailure {
    pub(crate) fn new(outcome: Outcome, message: impl Into<String>) -> JobFailure {
        JobFailure {
            outcome,
            message: message.into(),
        }
    }
}

/// What preparing a job needs from the agent.
pub struct PrepareContext<'a> {
    pub peer_id: &'a str,
    pub scripts_dir: &'a Path,
    /// Folder of cached execWay 3 scripts, named by their sha256.
    pub cache_dir: &'a Path,
    pub fetcher: &'a ScriptFetcher,
    /// The agent's `[allow]` policy.
    pub allow: &'a AllowPolicy,
}

/// A job ready to spawn. Dropping it removes its temporary script folder.
pub struct PreparedJob {
    pub spec: ProcessSpec,
    _script_dir: Option<TempDir>,
}

/// The account a job runs as.
struct RunAs {
    name: String,
    home: PathBuf,
    shell: PathBuf,
    uid: u32,
    /// `None` when no switch is needed (the agent's own user).
    credentials: Option<Credentials>,
}

/// Prepares a job, checking the agent's `[allow]` policy on the way: the
/// timeout first, then the run-as user, the working directory and, once the
/// script is known, its interpreter.
pub async fn prepare_job(
    job: &JobRequest,
    context: &PrepareContext<'_>,
) -> Result<PreparedJob, JobFailure> {
    let content = &job.content;
    let allow = context.allow;
    let peer_id = context.peer_id;
    allow::check_timeout(allow, content.timeout, peer_id)?;

    // A requested user is checked before the lookup, so that a forbidden
    // name is denied whether or not it exists on this machine.
    if !content.user.is_empty() {
        allow::check_user(allow, &content.user, peer_id)?;
    }
    let run_as = resolve_user(&content.user, peer_id)?;
    if content.user.is_empty() {
        allow::check_user(allow, &run_as.name, peer_id)?;
    }

    let env = build_env(&run_as, content);
    let cwd = resolve_cwd(&content.path, &run_as, peer_id)?;
    let cwd = allow::check_working_dir(allow, cwd, peer_id)?;

    let exec_way = ExecWay::from_code(content.exec_way).ok_or_else(|| {
        JobFailure::new(
            Outcome::SpawnFailed,
            format!(
                "execWay {} is unknown to this agent; use 0, 1, 2 or 3",
                content.exec_way
            ),
        )
    })?;

    let path_var = env
        .iter()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| value.as_os_str());
    let check_interpreter =
        |interpreter: &str| allow::check_interpreter(allow, interpreter, path_var, &cwd, peer_id);
    let check_script = |body: &[u8]| {
        let interpreter = if !content.cmd.is_empty() {
            content.cmd.clone()
        } else {
            allow::shebang_interpreter(body).unwrap_or_else(|| DEFAULT_SHELL.to_owned())
        };
        check_interpreter(&interpreter)
    };

    let (program, args, script_dir) = match exec_way {
        ExecWay::CommandLine => {
            let interpreter = if content.cmd.is_empty() {
                DEFAULT_SHELL
            } else {
                &content.cmd
            };
            check_interpreter(interpreter)?;
            let (program, args) = command_line(&content.cmd, &content.content, &content.args)?;
            (program, args, None)
        }
        ExecWay::InlineContent => {
            let body = content.content.as_bytes();
            check_script(body)?;
            script_command(&content.cmd, "script", body, &content.args, &run_as)?
        }
        ExecWay::NodeScript => {
            let body = read_node_script(context.scripts_dir, &content.content)?;
            check_script(&body)?;
            let file_name = script_file_name(&content.content);
            script_command(&content.cmd, file_name, &body, &content.args, &run_as)?
        }
        ExecWay::StoredScript => {
            let body = stored_script(context, &content.content, &content.filehash).await?;
            check_script(&body)?;
            let file_name = script_file_name(&content.content);
            script_command(&content.cmd, file_name, &body, &content.args, &run_as)?
        }
    };

    let timeout_secs = u64::try_from(content.timeout.max(1)).unwrap_or(1);
    let spec = ProcessSpec {
        program,
        args,
        env,
        cwd,
        credentials: run_as.credentials,
        stdin: content.input.as_bytes().to_vec(),
        timeout: Duration::from_secs(timeout_secs),
    };
    Ok(PreparedJob {
        spec,
        _script_dir: script_dir,
    })
}

fn resolve_user(requested: &str, peer_id: &str) -> Result<RunAs, JobFailure> {
    let agent_uid = nix::unistd::geteuid();

    let user = if requested.is_empty() {
        nix::unistd::User::from_uid(agent_uid)
    } else {
        nix::unistd::User::from_name(requested)
    };
    let user = match user {
        Ok(Some(user)) => user,
        Ok(None) if requested.is_empty() => {
            return Err(JobFailure::new(
                Outcome::AgentError,
                format!(
                    "the agent's own uid {agent_uid} has no passwd entry; add one or set content.user"
                ),
            ));
        }
        Ok(None) => {
            return Err(JobFailure::new(
                Outcome::UserNotFound,
                format!(
                    "user `{requested}` does not exist on peer `{peer_id}`; create it there or pick an existing user"
                ),
            ));
        }
        Err(error) => {
            return Err(JobFailure::new(
                Outcome::AgentError,
                format!("failed to look up user `{requested}` on peer `{peer_id}`: {error}"),
            ));
        }
    };

    let credentials = if user.uid == agent_uid {
        None
    } else if agent_uid.is_root() {
        Some(credentials_of(&user)?)
    } else {
        let agent_name = nix::unistd::User::from_uid(agent_uid)
            .ok()
            .flatten()
            .map_or_else(|| agent_uid.to_string(), |agent| agent.name);
        return Err(JobFailure::new(
            Outcome::UserNotPermitted,
            format!(
                "the agent on peer `{peer_id}` runs as `{agent_name}`, not root, so it can run jobs only as `{agent_name}`, not as `{}`; run the agent as root or leave content.user empty",
                user.name
            ),
        ));
    };

    Ok(RunAs {
        uid: user.uid.as_raw(),
        name: user.name,
        home: user.dir,
        shell: user.shell,
        credentials,
    })
}

fn credentials_of(user: &nix::unistd::User) -> Result<Credentials, JobFailure> {
    let name = CString::new(user.name.clone()).map_err(|_| {
        JobFailure::new(
            Outcome::UserNotFound,
            format!("user name {:?} contains NUL", user.name),
        )
    })?;
    let groups = nix::unistd::getgrouplist(&name, user.gid).map_err(|error| {
        JobFailure::new(
            Outcome::AgentError,
            format!("failed to list the groups of user `{}`: {error}", user.name),
        )
    })?;

    Ok(Credentials {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.into_iter().map(|gid| gid.as_raw()).collect(),
    })
}

/// Builds the login environment that `su -` gives the user, then adds the
/// request's `env` and then its `secretEnv` on top. Nothing of the agent's
/// own environment leaks into the job.
fn build_env(
    run_as: &RunAs,
    content: &runwarden_protocol::api::ScriptContent,
) -> Vec<(OsString, OsString)> {
    let shell = if run_as.shell.as_os_str().is_empty() {
        PathBuf::from(DEFAULT_SHELL)
    } else {
        run_as.shell.clone()
    };
    let path = if run_as.uid == 0 {
        ROOT_PATH
    } else {
        USER_PATH
    };

    let mut env: Vec<(OsString, OsString)> = vec![
        ("HOME".into(), run_as.home.clone().into_os_string()),
        ("USER".into(), run_as.name.clone().into()),
        ("LOGNAME".into(), run_as.name.clone().into()),
        ("SHELL".into(), shell.into_os_string()),
        ("PATH".into(), path.into()),
    ];
    let requested = content
        .env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .chain(content.secret_env.iter());
    for (name, value) in requested {
        env.retain(|(existing, _)| existing.as_os_str() != name);
        env.push((name.into(), value.into()));
    }
    env
}

fn resolve_cwd(path: &str, run_as: &RunAs, peer_id: &str) -> Result<PathBuf, JobFailure> {
    if path.is_empty() {
        if run_as.home.is_dir() {
            return Ok(run_as.home.clone());
        }
        return Ok(PathBuf::from("/"));
    }

    let cwd = PathBuf::from(path);
    if !cwd.is_dir() {
        return Err(JobFailure::new(
            Outcome::PathNotFound,
            format!(
                "working directory `{path}` does not exist on peer `{peer_id}` or is not a directory; create it or change content.path"
            ),
        ));
    }
    Ok(cwd)
}

fn command_line(
    cmd: &str,
    code: &str,
    args: &[String],
) -> Result<(PathBuf, Vec<OsString>), JobFailure> {
    let interpreter = if cmd.is_empty() { DEFAULT_SHELL } else { cmd };
    let form = inline_form(interpreter).ok_or_else(|| {
        JobFailure::new(
            Outcome::SpawnFailed,
            format!(
                "interpreter `{interpreter}` has no known inline-code flag; use execWay 1 for it"
            ),
        )
    })?;

    let mut argv: Vec<OsString> = vec![form.flag.into(), code.into()];
    if form.takes_arg0 {
        argv.push(interpreter.into());
    }
    argv.extend(args.iter().map(OsString::from));
    Ok((PathBuf::from(interpreter), argv))
}

/// Writes `body` to a private temporary file owned by the run-as user and
/// returns the command that runs it.
fn script_command(
    cmd: &str,
    file_name: &str,
    body: &[u8],
    args: &[String],
    run_as: &RunAs,
) -> Result<(PathBuf, Vec<OsString>, Option<TempDir>), JobFailure> {
    let (dir, file) = write_private_script(file_name, body, run_as)?;

    let mut argv: Vec<OsString> = Vec::new();
    let program = if !cmd.is_empty() {
        argv.push(file.clone().into_os_string());
        PathBuf::from(cmd)
    } else if body.starts_with(b"#!") {
        file
    } else {
        argv.push(file.clone().into_os_string());
        PathBuf::from(DEFAULT_SHELL)
    };
    argv.extend(args.iter().map(OsString::from));
    Ok((program, argv, Some(dir)))
}

fn write_private_script(
    file_name: &str,
    body: &[u8],
    run_as: &RunAs,
) -> Result<(TempDir, PathBuf), JobFailure> {
    let failed = |what: &str, error: std::io::Error| {
        JobFailure::new(
            Outcome::AgentError,
            format!("failed to {what} for the job's script in the system temp folder: {error}"),
        )
    };

    // Mode 0700, so only its owner can enter the folder; ownership moves to
    // the run-as user below.
    let dir = tempfile::Builder::new()
        .prefix("runwarden-job-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(|error| failed("create a private folder", error))?;
    let file = dir.path().join(file_name);
    std::fs::write(&file, body).map_err(|error| failed("write the script", error))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o700))
        .map_err(|error| failed("set the script's mode", error))?;

    if let Some(credentials) = &run_as.credentials {
        let uid = Some(nix::unistd::Uid::from_raw(credentials.uid));
        let gid = Some(nix::unistd::Gid::from_raw(credentials.gid));
        for path in [dir.path(), file.as_path()] {
            nix::unistd::chown(path, uid, gid)
                .map_err(|errno| failed("hand the script to the run-as user", errno.into()))?;
        }
    }
    Ok((dir, file))
}

/// The last component of a script name, used as the temporary file's name so
/// that `$0` stays recognizable.
fn script_file_name(name: &str) -> &str {
    match name.rsplit('/').next() {
        Some(last) if !last.is_empty() && last != "." && last != ".." => last,
        _ => "script",
    }
}

/// Reads an execWay 2 script. The lookup goes through a capability handle on
/// the scripts directory, so `..`, absolute names and symlinks that leave the
/// directory fail instead of reaching other files.
fn read_node_script(scripts_dir: &Path, name: &str) -> Result<Vec<u8>, JobFailure> {
    let outside = || {
        JobFailure::new(
            Outcome::ScriptOutsideDir,
            format!(
                "script name `{name}` leads outside the scripts directory `{}`; give a name inside it",
                scripts_dir.display()
            ),
        )
    };
    if name.starts_with('/') || name.split('/').any(|part| part == "..") {
        return Err(outside());
    }

    let dir = cap_std::fs::Dir::open_ambient_dir(scripts_dir, cap_std::ambient_authority())
        .map_err(|error| {
            JobFailure::new(
                Outcome::ScriptNotFound,
                format!(
                    "scripts directory `{}` cannot be opened ({error}); create it or fix scripts_dir in the agent config",
                    scripts_dir.display()
                ),
            )
        })?;

    let not_found = || {
        JobFailure::new(
            Outcome::ScriptNotFound,
            format!(
                "script `{name}` not found in the scripts directory `{}`; put it there or fix the name",
                scripts_dir.display()
            ),
        )
    };
    let mut file = match dir.open(name) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            // cap-std reports an escape through a symlink as PermissionDenied.
            return Err(outside());
        }
        Err(error) => {
            return Err(JobFailure::new(
                Outcome::ScriptNotFound,
                format!("script `{name}` cannot be opened: {error}"),
            ));
        }
    };

    let is_file = file.metadata().map(|meta| meta.is_file()).unwrap_or(false);
    if !is_file {
        return Err(not_found());
    }
    let mut body = Vec::new();
    file.read_to_end(&mut body).map_err(|error| {
        JobFailure::new(
            Outcome::AgentError,
            format!("failed to read script `{name}`: {error}"),
        )
    })?;
    Ok(body)
}

/// Returns an execWay 3 script body: from the cache when a file with that
/// hash is there and still matches, else from the coordinator, checked
/// against `filehash` and the store's own record, then cached.
async fn stored_script(
    context: &PrepareContext<'_>,
    name: &str,
    filehash: &str,
) -> Result<Vec<u8>, JobFailure> {
    let expected = filehash.to_ascii_lowercase();
    let cached_path = context.cache_dir.join(&expected);
    if let Ok(body) = std::fs::read(&cached_path) {
        if sha256_hex(&body) == expected {
            tracing::debug!(script = name, sha256 = %expected, "script taken from cache");
            return Ok(body);
        }
        tracing::warn!(path = %cached_path.display(), "cached script does not match its hash; fetching it again");
    }

    let fetched = context.fetcher.fetch(name).await.map_err(|error| {
        JobFailure::new(
            Outcome::AgentError,
            format!("failed to fetch script `{name}` from the coordinator: {error}"),
        )
    })?;
    let Some(script) = fetched else {
        return Err(JobFailure::new(
            Outcome::ScriptNotFound,
            format!(
                "script `{name}` not found in the coordinator's script store; upload it with POST /scripts"
            ),
        ));
    };

    let body = script.content.into_bytes();
    let actual = sha256_hex(&body);
    if actual != expected {
        return Err(JobFailure::new(
            Outcome::HashMismatch,
            format!(
                "script `{name}` has sha256 {actual}, but content.filehash is {expected}; nothing ran. Send the hash that GET /scripts lists, or upload the intended script"
            ),
        ));
    }
    if !script.info.sha256.eq_ignore_ascii_case(&actual) {
        return Err(JobFailure::new(
            Outcome::HashMismatch,
            format!(
                "script `{name}` has sha256 {actual}, but the script store records {}; nothing ran. Upload the script again",
                script.info.sha256
            ),
        ));
    }

    if let Err(error) = write_cache(context.cache_dir, &expected, &body) {
        tracing::warn!(%error, script = name, "failed to cache script; the job runs anyway");
    }
    Ok(body)
}

fn write_cache(cache_dir: &Path, hash: &str, body: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(cache_dir)?;
    let mut staged = tempfile::NamedTempFile::new_in(cache_dir)?;
    std::io::Write::write_all(&mut staged, body)?;
    staged.as_file().sync_all()?;
    staged
        .persist(cache_dir.join(hash))
        .map_err(|error| error.error)?;
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_command_line_passes_args_as_positional() {
        let args = vec!["a b".to_owned(), "c".to_owned()];
        let (program, argv) = command_line("", "echo \"$1\"", &args).unwrap();
        assert_eq!(program, PathBuf::from("/bin/sh"));
        let argv: Vec<_> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(argv, ["-c", "echo \"$1\"", "/bin/sh", "a b", "c"]);
    }

    #[test]
    fn python_command_line_has_no_arg0() {
        let (program, argv) = command_line("python3", "print(1)", &["x".to_owned()]).unwrap();
        assert_eq!(program, PathBuf::from("python3"));
        let argv: Vec<_> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(argv, ["-c", "print(1)", "x"]);
    }

    #[test]
    fn unknown_interpreter_fails_spawn() {
        let failure = command_line("/usr/bin/awk", "x", &[]).unwrap_err();
        assert_eq!(failure.outcome, Outcome::SpawnFailed);
        assert!(failure.message.contains("/usr/bin/awk"));
    }

    #[test]
    fn node_script_cannot_escape_by_symlink() {
        let scripts = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.sh"), "echo secret").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.sh"),
            scripts.path().join("link.sh"),
        )
        .unwrap();

        let failure = read_node_script(scripts.path(), "link.sh").unwrap_err();
        assert_eq!(failure.outcome, Outcome::ScriptOutsideDir);
    }

    #[test]
    fn node_script_rejects_parent_and_absolute() {
        let scripts = tempfile::tempdir().unwrap();
        for name in ["../x.sh", "/etc/passwd", "a/../../x"] {
            let failure = read_node_script(scripts.path(), name).unwrap_err();
            assert_eq!(failure.outcome, Outcome::ScriptOutsideDir, "{name}");
        }
    }

    #[test]
    fn node_script_missing_is_not_found() {
        let scripts = tempfile::tempdir().unwrap();
        let failure = read_node_script(scripts.path(), "none.sh").unwrap_err();
        assert_eq!(failure.outcome, Outcome::ScriptNotFound);
    }

    #[test]
    fn node_script_inside_dir_is_read() {
        let scripts = tempfile::tempdir().unwrap();
        std::fs::create_dir(scripts.path().join("sub")).unwrap();
        std::fs::write(scripts.path().join("sub/ok.sh"), "echo ok").unwrap();
        let body = read_node_script(scripts.path(), "sub/ok.sh").unwrap();
        assert_eq!(body, b"echo ok");
    }

    #[test]
    fn unknown_user_is_user_not_found() {
        let failure = resolve_user("rw-no-such-user-x", "p1").err().unwrap();
        assert_eq!(failure.outcome, Outcome::UserNotFound);
        assert!(failure.message.contains("rw-no-such-user-x"));
    }
}
