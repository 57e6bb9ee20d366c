//! The work a job's child process does between `fork` and `exec`: join the
//! job cgroup, switch to the job's user and keep the agent's file
//! descriptors from reaching the job.
//!
//! Everything is prepared in the parent. In the child, after `fork` in a
//! multithreaded program, only async-signal-safe calls are allowed, so the
//! closure makes raw system calls on prepared values and never allocates.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::process::Credentials;

/// Prepared steps for one child, run by [`ChildSetup::run`] in the child.
#[derive(Debug)]
pub(crate) struct ChildSetup {
    /// `cgroup.procs` of the job cgroup, opened by the parent, which keeps it
    /// open until the spawn returns.
    cgroup_procs: Option<RawFd>,
    identity: Option<Identity>,
}

#[derive(Debug)]
struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    /// The working directory, entered again after the switch so that a
    /// directory the job's user may not enter fails the spawn.
    cwd: CString,
}

impl ChildSetup {
    /// Prepares the steps. Fails when `cwd` contains a NUL byte.
    pub(crate) fn new(
        cgroup_procs: Option<RawFd>,
        credentials: Option<&Credentials>,
        cwd: &Path,
    ) -> io::Result<ChildSetup> {
        let identity = match credentials {
            None => None,
            Some(credentials) => {
                let cwd = CString::new(cwd.as_os_str().as_bytes()).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("working directory `{}` contains a NUL byte", cwd.display()),
                    )
                })?;
                Some(Identity {
                    uid: credentials.uid,
                    gid: credentials.gid,
                    groups: credentials.groups.clone(),
                    cwd,
                })
            }
        };
        Ok(ChildSetup {
            cgroup_procs,
            identity,
        })
    }

    /// Runs in the child after `fork`: joins the cgroup, then calls
    /// `setgroups`, `setgid` and `setuid` in that order, then enters the
    /// working directory again as the new user, and last marks every file
    /// descriptor above stderr close-on-exec.
    ///
    /// The cgroup comes first because the job's user may not have write
    /// access to `cgroup.procs`. The error carries only `errno`, because that
    /// is all the standard library passes back to the parent.
    pub(crate) fn run(&self) -> io::Result<()> {
        if let Some(fd) = self.cgroup_procs {
            join_cgroup(fd)?;
        }

        if let Some(identity) = &self.identity {
            // SAFETY: `groups` is a live, initialized slice of `gid_t` whose
            // length is passed with it; setgroups only reads it.
            let result =
                unsafe { libc::setgroups(identity.groups.len(), identity.groups.as_ptr()) };
            check(result)?;

            // SAFETY: setgid takes a plain integer and is async-signal-safe.
            check(unsafe { libc::setgid(identity.gid) })?;

            // SAFETY: setuid takes a plain integer and is async-signal-safe.
            check(unsafe { libc::setuid(identity.uid) })?;

            // SAFETY: `cwd` is a NUL-terminated string that outlives the call.
            check(unsafe { libc::chdir(identity.cwd.as_ptr()) })?;
        }

        mark_inherited_fds_cloexec();
        Ok(())
    }
}

/// Marks every descriptor from 3 up close-on-exec, so that descriptors the
/// agent inherited without that flag do not reach the job.
///
/// They are not closed here, because the standard library still reports an
/// `exec` failure through one of them. Best effort: `CLOSE_RANGE_CLOEXEC`
/// needs Linux 5.11, and on older kernels the descriptors stay as they are.
fn mark_inherited_fds_cloexec() {
    const FIRST_AFTER_STDIO: libc::c_uint = 3;

    // SAFETY: close_range takes plain integers and touches no memory of this
    // process; with CLOSE_RANGE_CLOEXEC it only sets a flag on descriptors.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            FIRST_AFTER_STDIO,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `fd`.
fn join_cgroup(fd: RawFd) -> io::Result<()> {
    const OWN_PID: &[u8] = b"0";

    // A signal handler inherited from the agent can interrupt the write with
    // EINTR, so the write is retried a few times.
    for _ in 0..8 {
        // SAFETY: `fd` is open for the duration of the spawn (the parent owns
        // it), and the buffer is a static byte string of the length passed.
        let written = unsafe { libc::write(fd, OWN_PID.as_ptr().cast(), OWN_PID.len()) };
        if written == OWN_PID.len() as isize {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if written < 0 && error.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if written < 0 {
            return Err(error);
        }
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Err(io::Error::from_raw_os_error(libc::EINTR))
}

/// Turns a `-1` return of a libc call into the `errno` error.
fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
