//! Signalling a job's whole process tree.

use std::fs;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::warn;

use super::cgroup::JobCgroup;

/// A job's process tree: the process group that the script's process leads
/// and, where one could be made, the job's cgroup.
///
/// The caller must not reap the group leader before [`ProcessTree::release`].
/// While the leader is unreaped (a zombie at worst), its pid stays
/// allocated, so the process group id cannot pass to an unrelated group.
///
/// Dropping the tree without `release`, as happens when the runner's future
/// is dropped, sends SIGKILL to the whole tree and removes the cgroup in the
/// background.
#[derive(Debug)]
pub(crate) struct ProcessTree {
    group: Pid,
    cgroup: Option<JobCgroup>,
    released: bool,
}

impl ProcessTree {
    /// Creates the tree of the process group led by `leader`.
    pub(crate) fn new(leader: Pid, cgroup: Option<JobCgroup>) -> ProcessTree {
        ProcessTree {
            group: leader,
            cgroup,
            released: false,
        }
    }

    /// Sends `signal` to the process group and to each process in the cgroup,
    /// which also reaches processes that left the group with `setsid`.
    pub(crate) fn signal(&self, signal: Signal) {
        signal_group(self.group, signal);
        if let Some(cgroup) = &self.cgroup {
            cgroup.signal_each(signal);
        }
    }

    /// Sends SIGKILL to the process group and kills the cgroup.
    pub(crate) fn kill(&self) {
        signal_group(self.group, Signal::SIGKILL);
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
        }
    }

    /// Returns whether no live process of the job is left. Zombies do not
    /// count, because they are dead and only wait for their parent (or init)
    /// to reap them.
    ///
    /// With a cgroup, only the cgroup is checked, because a process leaves it
    /// only by writing to another cgroup's `cgroup.procs`. Without one, this
    /// reads `/proc/<pid>/stat` of every process on the machine.
    pub(crate) fn is_empty(&self) -> bool {
        match &self.cgroup {
            Some(cgroup) => cgroup.is_empty(),
            None => live_group_members(self.group) == 0,
        }
    }

    /// Ends the kill on drop and returns the cgroup for removal. Call it once
    /// the tree is killed and before the group leader is reaped.
    pub(crate) fn release(mut self) -> Option<JobCgroup> {
        self.released = true;
        self.cgroup.take()
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        warn!(
            process_group = self.group.as_raw(),
            "the job runner stopped before the job ended, so the job's process tree gets SIGKILL"
        );
        self.kill();

        let Some(cgroup) = self.cgroup.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(remove_when_empty(cgroup));
            }
            Err(_) => warn!(
                cgroup = %cgroup.path().display(),
                "no Tokio runtime to remove the job cgroup, so it is left behind"
            ),
        }
    }
}

/// Removes `cgroup` once its killed processes are gone, waiting up to about
/// 5 s for them.
async fn remove_when_empty(cgroup: JobCgroup) {
    const CHECKS: u32 = 250;
    const CHECK_INTERVAL: Duration = Duration::from_millis(20);

    for _ in 0..CHECKS {
        if cgroup.is_empty() {
            break;
        }
        cgroup.kill_all();
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
    cgroup.remove().await;
}

fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => warn!(
            process_group = group.as_raw(),
            %signal,
            %error,
            "failed to signal the job's process group"
        ),
    }
}

/// Counts the processes in process group `group` that have not exited, by
/// reading `/proc/<pid>/stat` of every process.
///
/// `kill(-group, 0)` is no substitute, because it succeeds as long as a
/// zombie member exists, and an init that does not reap keeps zombies
/// forever.
pub(crate) fn live_group_members(group: Pid) -> usize {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    let mut count = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((state, process_group)) = parse_stat(&stat)
            && process_group == group.as_raw()
            && state != 'Z'
            && state != 'X'
        {
            count += 1;
        }
    }
    count
}

/// Returns the state and process group id from a `/proc/<pid>/stat` line,
/// `pid (comm) state ppid pgrp ...`. The command name can contain spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _parent = fields.next()?;
    let process_group = fields.next()?.parse().ok()?;
    Some((state, process_group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let stat = "4242 (a) b (c)) S 1 4240 4240 0 -1 4194560 95 0";
        assert_eq!(parse_stat(stat), Some(('S', 4240)));
    }

    #[test]
    fn stat_truncated() {
        assert_eq!(parse_stat("4242 (sh) Z 1"), None);
    }

    #[test]
    fn own_group_has_live_member() {
        let own_group = nix::unistd::getpgrp();
        assert!(live_group_members(own_group) >= 1);
    }
}
