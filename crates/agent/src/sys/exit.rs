//! Waiting for a child to exit without reaping it.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracing::debug;

/// Poll interval when the kernel has no pidfd (before Linux 5.3).
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Waits for a child of this process to exit and leaves it a zombie, so its
/// pid, which is also its process group id, stays allocated until the
/// caller reaps it.
#[derive(Debug)]
pub(crate) struct ExitWatch {
    pid: Pid,
    /// `None` where `pidfd_open` is unavailable, and then
    /// [`ExitWatch::exited`] polls `waitid`.
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl ExitWatch {
    /// Watches `pid`, which must be an unreaped child of this process. Must
    /// be called inside a Tokio runtime.
    pub(crate) fn new(pid: Pid) -> ExitWatch {
        let pidfd = match open_pidfd(pid).and_then(register) {
            Ok(pidfd) => Some(pidfd),
            Err(error) => {
                debug!(pid = pid.as_raw(), %error, "pidfd unavailable, so the child's exit is polled");
                None
            }
        };
        ExitWatch { pid, pidfd }
    }

    /// Completes once the child has exited. Cancel-safe, and completes at
    /// once on every call after the exit.
    pub(crate) async fn exited(&self) {
        if let Some(pidfd) = &self.pidfd {
            // A pidfd becomes readable when the process exits and stays
            // readable, so the readiness is never cleared.
            if pidfd.readable().await.is_ok() {
                return;
            }
        }
        while !self.has_exited() {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns whether the child has exited, without reaping it. An error
    /// from `waitid` (the child was reaped elsewhere) counts as exited.
    pub(crate) fn has_exited(&self) -> bool {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        !matches!(waitid(Id::Pid(self.pid), flags), Ok(WaitStatus::StillAlive))
    }
}

fn register(pidfd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` owns the descriptor and keeps it open, and its
    // `as_raw_fd` returns the same descriptor, for as long as the `AsyncFd`
    // owns it.
    let registered = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
    registered.map_err(|error| error.into_parts().1)
}

fn open_pidfd(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new file
    // descriptor or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing
    // else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::process::Command;

    use super::*;

    #[tokio::test]
    async fn exit_seen_without_reaping() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "exit 6"])
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id().unwrap() as i32);
        let watch = ExitWatch::new(pid);
        assert!(watch.pidfd.is_some(), "pidfd_open failed on this kernel");

        tokio::time::timeout(Duration::from_secs(10), watch.exited())
            .await
            .expect("the exit was not seen within 10 s");
        assert!(watch.has_exited());

        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("the exited child was not reaped within 10 s")
            .unwrap();
        assert_eq!(status.code(), Some(6));
    }

    #[tokio::test]
    async fn running_child_not_exited() {
        let mut child = Command::new("/bin/sleep").arg("600").spawn().unwrap();
        let pid = Pid::from_raw(child.id().unwrap() as i32);
        let watch = ExitWatch::new(pid);

        let waited = tokio::time::timeout(Duration::from_millis(200), watch.exited()).await;

        child.kill().await.unwrap();
        assert!(waited.is_err(), "a running child was reported as exited");
    }
}
