//! cgroup v2 support: the agent's parent cgroup and one child cgroup per job.
//!
//! A job's cgroup contains every process of the job, including those that
//! call `setsid` and so leave the job's process group. The agent can
//! therefore list and kill the whole tree, and the cgroup is empty exactly
//! when no process of the job is left.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{info, warn};

const MOUNTINFO: &str = "/proc/self/mountinfo";
const OWN_CGROUP: &str = "/proc/self/cgroup";

/// Attempts to find a free job cgroup name before giving up.
const CREATE_ATTEMPTS: u32 = 100;

/// How often and how long [`JobCgroup::remove`] retries `rmdir`, which fails
/// with `EBUSY` while a process of the job is still exiting.
const REMOVE_RETRY_INTERVAL: Duration = Duration::from_millis(20);
const REMOVE_ATTEMPTS: u32 = 50;

/// Counter that makes job cgroup names unique within this agent.
static NEXT_JOB_CGROUP: AtomicU64 = AtomicU64::new(0);

/// Finds a writable cgroup v2 hierarchy and creates the agent's parent cgroup
/// in it, for use as `ProcessLimits::cgroup_parent`.
///
/// The parent is `<mount point><agent's own cgroup>/runwarden-agent-<pid>`.
/// The mount point comes from the first `cgroup2` entry of
/// `/proc/self/mountinfo` whose root contains the agent's own cgroup, which is
/// the `0::<path>` line of `/proc/self/cgroup`. An existing directory of that
/// name is reused. Returns `None`, and logs a warning with the cause, when
/// there is no cgroup v2 mount or the agent may not create a cgroup in it.
pub fn detect_parent() -> Option<PathBuf> {
    match try_detect_parent() {
        Ok(parent) => {
            info!(cgroup = %parent.display(), "created the agent's parent cgroup");
            Some(parent)
        }
        Err(error) => {
            warn!(
                %error,
                "cgroup v2 is not usable, so jobs run in process groups only \
                 and a job process that calls setsid can outlive its job"
            );
            None
        }
    }
}

/// Removes the parent cgroup made by [`detect_parent`], which must be empty.
///
/// Call it at agent shutdown, after every job has ended.
pub fn remove_parent(parent: &Path) -> io::Result<()> {
    fs::remove_dir(parent).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!(
                "failed to remove the agent's parent cgroup `{}`: {error}; \
                 a job cgroup or process is probably still inside it",
                parent.display()
            ),
        )
    })
}

fn try_detect_parent() -> io::Result<PathBuf> {
    let own_dir = own_cgroup_dir()?;
    let parent = own_dir.join(format!("runwarden-agent-{}", std::process::id()));
    match fs::create_dir(&parent) {
        Ok(()) => {}
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {}
        Err(error) => {
            return Err(io::Error::new(
                error.kind(),
                format!(
                    "failed to create cgroup `{}`: {error}; the agent needs \
                     write access to its own cgroup `{}`",
                    parent.display(),
                    own_dir.display()
                ),
            ));
        }
    }

    if !parent.join("cgroup.procs").is_file() {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "`{}` is not a cgroup: it has no cgroup.procs",
                parent.display()
            ),
        ));
    }
    Ok(parent)
}

/// Returns the directory of the agent's own cgroup in the first `cgroup2`
/// mount that contains it.
pub(crate) fn own_cgroup_dir() -> io::Result<PathBuf> {
    let mountinfo = read_with_context(Path::new(MOUNTINFO))?;
    let own_cgroup_file = read_with_context(Path::new(OWN_CGROUP))?;
    let Some(own_cgroup) = parse_own_cgroup(&own_cgroup_file) else {
        return Err(io::Error::new(
            ErrorKind::NotFound,
            format!("{OWN_CGROUP} has no cgroup v2 line `0::<path>`"),
        ));
    };

    let own_dir = cgroup2_mounts(&mountinfo)
        .iter()
        .find_map(|mount| mount.dir_of(own_cgroup));
    own_dir.ok_or_else(|| {
        io::Error::new(
            ErrorKind::NotFound,
            format!(
                "no cgroup2 mount in {MOUNTINFO} contains the agent's cgroup \
                 `{own_cgroup}`; mount cgroup v2 (usually at /sys/fs/cgroup) to \
                 give each job its own cgroup"
            ),
        )
    })
}

fn read_with_context(path: &Path) -> io::Result<String> {
    fs::read_to_string(path).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("failed to read {}: {error}", path.display()),
        )
    })
}

/// Returns the path of the `0::<path>` line of `/proc/<pid>/cgroup`.
fn parse_own_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// A `cgroup2` mount from `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
struct Cgroup2Mount {
    /// Path inside the hierarchy that is mounted, `/` unless a subtree is
    /// bind-mounted.
    root: String,
    mount_point: PathBuf,
}

impl Cgroup2Mount {
    /// Returns the directory of `cgroup` under this mount, or `None` when the
    /// mount does not contain it.
    fn dir_of(&self, cgroup: &str) -> Option<PathBuf> {
        let relative = if self.root == "/" {
            cgroup
        } else {
            let rest = cgroup.strip_prefix(self.root.as_str())?;
            if !rest.is_empty() && !rest.starts_with('/') {
                return None;
            }
            rest
        };
        Some(self.mount_point.join(relative.trim_start_matches('/')))
    }
}

/// Parses the `cgroup2` entries of `/proc/self/mountinfo`, in file order.
///
/// A line is `id parent major:minor root mount-point options [optional...] -
/// fstype source super-options`, with spaces and some other bytes in paths
/// written as octal escapes such as `\040`.
fn cgroup2_mounts(mountinfo: &str) -> Vec<Cgroup2Mount> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        if after.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = before.split(' ').collect();
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        mounts.push(Cgroup2Mount {
            root: unescape_mountinfo(root),
            mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
        });
    }
    mounts
}

/// Decodes the `\ooo` octal escapes that the kernel writes in mountinfo paths.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped_byte = bytes
            .get(index + 1..index + 4)
            .filter(|_| bytes[index] == b'\\')
            .and_then(decode_octal_byte);
        match escaped_byte {
            Some(byte) => {
                decoded.push(byte);
                index += 4;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Decodes three octal digits into a byte, or returns `None` when they are
/// not octal digits or exceed 255.
fn decode_octal_byte(digits: &[u8]) -> Option<u8> {
    let mut value: u32 = 0;
    for digit in digits {
        if !(b'0'..=b'7').contains(digit) {
            return None;
        }
        value = value * 8 + u32::from(digit - b'0');
    }
    u8::try_from(value).ok()
}

/// One job's cgroup, a child of the agent's parent cgroup.
///
/// The runner kills the job's processes and then calls [`JobCgroup::remove`].
/// Drop makes one more `rmdir` attempt, which fails harmlessly when the
/// directory is gone or still has processes.
#[derive(Debug)]
pub(crate) struct JobCgroup {
    path: PathBuf,
    /// `cgroup.procs`, opened for writing before `fork` so that the child
    /// joins the cgroup with a single `write` and no path lookup.
    procs: File,
}

impl JobCgroup {
    /// Creates a uniquely named cgroup `job-<n>` under `parent`.
    pub(crate) fn create(parent: &Path) -> io::Result<JobCgroup> {
        for _ in 0..CREATE_ATTEMPTS {
            let number = NEXT_JOB_CGROUP.fetch_add(1, Ordering::Relaxed);
            let path = parent.join(format!("job-{number}"));
            match fs::create_dir(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::AlreadyExists => continue,
                Err(error) => {
                    return Err(io::Error::new(
                        error.kind(),
                        format!("failed to create job cgroup `{}`: {error}", path.display()),
                    ));
                }
            }

            let procs_path = path.join("cgroup.procs");
            return match OpenOptions::new().write(true).open(&procs_path) {
                Ok(procs) => Ok(JobCgroup { path, procs }),
                Err(error) => {
                    let _ = fs::remove_dir(&path);
                    Err(io::Error::new(
                        error.kind(),
                        format!("failed to open `{}`: {error}", procs_path.display()),
                    ))
                }
            };
        }
        Err(io::Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "found no free job cgroup name under `{}` in {CREATE_ATTEMPTS} attempts",
                parent.display()
            ),
        ))
    }

    /// Opens a job cgroup that already exists, such as one left by an agent
    /// that died.
    pub(crate) fn existing(path: PathBuf) -> io::Result<JobCgroup> {
        let procs = OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))?;
        Ok(JobCgroup { path, procs })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// File descriptor of this cgroup's `cgroup.procs`, valid while `self`
    /// lives. Writing `0` to it moves the writing process into the cgroup.
    pub(crate) fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Lists the processes in the cgroup. Processes that have exited are not
    /// listed, even while they are zombies.
    pub(crate) fn pids(&self) -> io::Result<Vec<Pid>> {
        let text = fs::read_to_string(self.path.join("cgroup.procs"))?;
        let pids = text
            .lines()
            .filter_map(|line| line.trim().parse::<i32>().ok())
            .map(Pid::from_raw)
            .collect();
        Ok(pids)
    }

    /// Returns whether no process is left in the cgroup. A cgroup that cannot
    /// be read counts as not empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.pids().is_ok_and(|pids| pids.is_empty())
    }

    /// Sends `signal` to each process in the cgroup.
    ///
    /// NOTE: a listed process can exit, and its pid be reused, before the
    /// signal is sent. The window is a few microseconds. SIGKILL goes through
    /// [`JobCgroup::kill_all`] where the kernel supports it, which has no such
    /// window.
    pub(crate) fn signal_each(&self, signal: Signal) {
        let pids = match self.pids() {
            Ok(pids) => pids,
            Err(error) => {
                warn!(cgroup = %self.path.display(), %error, "failed to list the job cgroup's processes");
                return;
            }
        };
        for pid in pids {
            match kill(pid, signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(error) => {
                    warn!(pid = pid.as_raw(), %signal, %error, "failed to signal a job process")
                }
            }
        }
    }

    /// Kills every process in the cgroup with SIGKILL, through `cgroup.kill`
    /// where the kernel has it (Linux 5.14 and later) and process by process
    /// otherwise.
    pub(crate) fn kill_all(&self) {
        let cgroup_kill = OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.kill"))
            .and_then(|mut file| file.write_all(b"1"));
        if let Err(error) = cgroup_kill {
            if error.kind() != ErrorKind::NotFound {
                warn!(cgroup = %self.path.display(), %error, "failed to write cgroup.kill, so job processes are killed one by one");
            }
            self.signal_each(Signal::SIGKILL);
        }
    }

    /// Removes the cgroup directory, retrying for up to about a second while
    /// processes are still leaving it. Logs a warning when it stays.
    pub(crate) async fn remove(self) {
        let mut last_error = None;
        for _ in 0..REMOVE_ATTEMPTS {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(error) if error.kind() == ErrorKind::NotFound => return,
                Err(error) => last_error = Some(error),
            }
            tokio::time::sleep(REMOVE_RETRY_INTERVAL).await;
        }
        if let Some(error) = last_error {
            warn!(cgroup = %self.path.display(), %error, "failed to remove the job cgroup, so it is left behind");
        }
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.path);
    }
}

/// Kills the job processes that an earlier agent left behind when it died
/// without cleaning up (for example on SIGKILL), and removes its cgroups.
///
/// It looks at the `runwarden-agent-<pid>` siblings of this agent's own
/// parent cgroup whose pid no longer exists. A folder whose pid is alive
/// belongs to a running agent and is left alone. Returns how many leftover
/// job cgroups it emptied.
pub fn kill_stale_jobs() -> usize {
    let own_dir = match own_cgroup_dir() {
        Ok(dir) => dir,
        Err(error) => {
            tracing::debug!(%error, "no cgroup v2 hierarchy; no stale jobs to look for");
            return 0;
        }
    };
    let Ok(entries) = fs::read_dir(&own_dir) else {
        return 0;
    };

    let mut emptied = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix("runwarden-agent-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        emptied += empty_stale_parent(&entry.path());
    }
    emptied
}

fn empty_stale_parent(parent: &Path) -> usize {
    let mut emptied = 0;
    if let Ok(jobs) = fs::read_dir(parent) {
        for job in jobs.flatten().filter(|entry| entry.path().is_dir()) {
            let Ok(cgroup) = JobCgroup::existing(job.path()) else {
                continue;
            };
            if !cgroup.is_empty() {
                warn!(cgroup = %job.path().display(), "killing processes left by an agent that died");
                cgroup.kill_all();
                emptied += 1;
            }
            for _ in 0..REMOVE_ATTEMPTS {
                if cgroup.is_empty() && fs::remove_dir(job.path()).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    if let Err(error) = fs::remove_dir(parent) {
        warn!(cgroup = %parent.display(), %error, "failed to remove a stale agent cgroup");
    }
    emptied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_from_v2_line() {
        let text = "4:memory:/a/b\n0::/system.slice/runwarden.service\n";
        assert_eq!(
            parse_own_cgroup(text),
            Some("/system.slice/runwarden.service")
        );
    }

    #[test]
    fn own_cgroup_missing_on_v1_only() {
        assert_eq!(parse_own_cgroup("4:memory:/a\n1:cpu:/\n"), None);
    }

    #[test]
    fn mountinfo_finds_cgroup2_entries() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
50 23 0:38 /jobs /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw
";
        let mounts = cgroup2_mounts(mountinfo);
        assert_eq!(
            mounts,
            vec![
                Cgroup2Mount {
                    root: "/".to_owned(),
                    mount_point: PathBuf::from("/sys/fs/cgroup/unified"),
                },
                Cgroup2Mount {
                    root: "/jobs".to_owned(),
                    mount_point: PathBuf::from("/mnt/my cgroups"),
                },
            ]
        );
    }

    #[test]
    fn mount_dir_of_own_cgroup() {
        let whole = Cgroup2Mount {
            root: "/".to_owned(),
            mount_point: PathBuf::from("/sys/fs/cgroup"),
        };
        assert_eq!(whole.dir_of("/"), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(
            whole.dir_of("/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/a/b"))
        );

        let subtree = Cgroup2Mount {
            root: "/jobs".to_owned(),
            mount_point: PathBuf::from("/mnt/cg"),
        };
        assert_eq!(subtree.dir_of("/jobs"), Some(PathBuf::from("/mnt/cg")));
        assert_eq!(subtree.dir_of("/jobs/x"), Some(PathBuf::from("/mnt/cg/x")));
        assert_eq!(subtree.dir_of("/jobsmore"), None);
        assert_eq!(subtree.dir_of("/other"), None);
    }

    #[test]
    fn mountinfo_unescapes_octal() {
        assert_eq!(unescape_mountinfo("a\\040b\\134c"), "a b\\c");
        assert_eq!(unescape_mountinfo("trailing\\04"), "trailing\\04");
        assert_eq!(unescape_mountinfo("not\\999octal"), "not\\999octal");
        assert_eq!(unescape_mountinfo("too\\777big"), "too\\777big");
    }
}
