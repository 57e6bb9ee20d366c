//! Runs one job's process to its end and reports how it ended.
//!
//! The runner owns the whole life of a job's process tree: it spawns the
//! interpreter in a new process group (and a new cgroup where the machine
//! allows), switches credentials, feeds standard input, captures both output
//! streams concurrently under a byte cap, and on timeout or cancel sends
//! SIGTERM to the whole tree, waits the grace period, then SIGKILLs whatever
//! is left. No process of the job outlives [`run_process`].

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Pid, geteuid};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::output::{CappedBuffer, LiveOutput};
use crate::sys::cgroup::JobCgroup;
use crate::sys::exit::ExitWatch;
use crate::sys::kill::ProcessTree;
use crate::sys::pre_exec::ChildSetup;

#[cfg(test)]
mod tests;

/// Size of each read from the stdout and stderr pipes.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How often the runner checks whether the job's processes are gone.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long the runner waits for the job's processes to disappear after the
/// final SIGKILL before it logs them as left over and returns. Only a
/// process stuck in the kernel (state `D`) takes this long.
const KILLED_EXIT_WAIT: Duration = Duration::from_secs(5);

/// How long the output pipes are still read once the job's processes are
/// gone, for the bytes still buffered in them. The pipes reach end of file
/// at once unless a process outside the job has their write end open.
const OUTPUT_TAIL_WAIT: Duration = Duration::from_secs(1);

/// Everything needed to start a job's process. The environment is exactly
/// `env`: nothing is inherited from the agent.
///
/// Its `Debug` output shows the environment's names and the size of
/// `stdin`, never their values, because `env` contains the job's secret
/// variables.
#[derive(Clone)]
pub struct ProcessSpec {
    pub program: PathBuf,
    /// `argv[1..]`.
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    /// `None` keeps the agent's own identity.
    pub credentials: Option<Credentials>,
    /// Written to standard input, which is then closed; empty means
    /// `/dev/null`.
    pub stdin: Vec<u8>,
    pub timeout: Duration,
}

impl std::fmt::Debug for ProcessSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env_names: Vec<_> = self.env.iter().map(|(name, _)| name).collect();
        f.debug_struct("ProcessSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env_names", &env_names)
            .field("cwd", &self.cwd)
            .field("credentials", &self.credentials)
            .field("stdin_bytes", &self.stdin.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The identity a job's process switches to before `exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, exactly; the primary group may be among them.
    pub groups: Vec<u32>,
}

/// Agent-wide settings that bound every job's process.
#[derive(Debug, Clone)]
pub struct ProcessLimits {
    /// Time between SIGTERM and SIGKILL on timeout or cancel.
    pub kill_grace: Duration,
    /// How long output is still read after the script's own process exits,
    /// before leftover processes are killed and the pipes are dropped.
    pub drain_timeout: Duration,
    /// Parent cgroup (cgroup v2) under which each job gets its own cgroup;
    /// `None` uses process groups alone.
    pub cgroup_parent: Option<PathBuf>,
}

/// How a job's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// The process exited by itself with this code.
    Exited(i32),
    /// A signal that the agent did not send killed the process.
    Signaled(i32),
    /// The timeout passed and the agent killed the tree; the signal is the
    /// one that ended the script's process.
    TimedOut { signal: i32 },
    /// The cancel token fired and the agent killed the tree.
    Canceled { signal: i32 },
}

impl Termination {
    /// The exit code the API reports: the code itself, or 128+N for signal N.
    pub fn exit_code(self) -> i32 {
        match self {
            Termination::Exited(code) => code,
            Termination::Signaled(signal)
            | Termination::TimedOut { signal }
            | Termination::Canceled { signal } => 128 + signal,
        }
    }
}

/// The process could not be started.
#[derive(Debug, thiserror::Error)]
#[error("failed to start `{program}`: {source}")]
pub struct SpawnError {
    pub program: String,
    #[source]
    pub source: std::io::Error,
}

/// Runs the process of `spec` until it ends, times out or `cancel` fires.
///
/// Output goes into `output` as it arrives, so a live query sees it while the
/// job runs. `on_started` is called once, right after the spawn succeeds.
///
/// The timeout counts from the spawn. On timeout or cancel, whichever comes
/// first, the whole tree gets SIGTERM. The tree then has
/// `limits.kill_grace` to exit, and whatever is left gets SIGKILL. When the
/// script's process exits by itself, output is read for up to
/// `limits.drain_timeout` more, and then every process left in the job's
/// process group and cgroup gets SIGKILL.
///
/// Before it returns, the runner waits (up to 5 s after the final SIGKILL)
/// until no live process of the job is left, and reaps the script's process.
///
/// Dropping the returned future before it completes sends SIGKILL to the
/// job's tree, and Tokio reaps the script's process in the background.
///
/// NOTE: without a cgroup, a process that leaves the job's process group
/// (with `setsid` or `setpgid`) is out of reach and can outlive the job.
pub async fn run_process(
    mut spec: ProcessSpec,
    limits: &ProcessLimits,
    output: Arc<LiveOutput>,
    cancel: CancellationToken,
    on_started: impl FnOnce(u32) + Send,
) -> Result<Termination, SpawnError> {
    check_cwd(&spec)?;

    let cgroup = limits.cgroup_parent.as_deref().and_then(|parent| {
        JobCgroup::create(parent)
            .inspect_err(|error| {
                warn!(%error, "failed to create the job cgroup, so the job runs in its process group only");
            })
            .ok()
    });
    let (mut child, cgroup) = spawn(&spec, cgroup).await?;
    let deadline = deadline_after(spec.timeout);

    let Some(pid) = child.id() else {
        unreachable!("a child that was just spawned and not yet waited for has a pid");
    };
    on_started(pid);
    info!(
        pid,
        program = %spec.program.display(),
        cgroup = cgroup.as_ref().map(|cgroup| cgroup.path().display().to_string()),
        "job process started"
    );

    let leader = Pid::from_raw(pid as i32);
    let exit = ExitWatch::new(leader);
    let tree = ProcessTree::new(leader, cgroup);
    let stdin_writer = child
        .stdin
        .take()
        .map(|stdin| tokio::spawn(write_stdin(stdin, std::mem::take(&mut spec.stdin), pid)));
    let mut readers = OutputReaders::start(&mut child, &output);

    let ending = tokio::select! {
        biased;
        () = exit.exited() => Ending::ByItself,
        () = cancel.cancelled() => Ending::Canceled,
        () = sleep_until(deadline) => Ending::TimedOut,
    };

    let signal_sent = match ending {
        Ending::ByItself => {
            drain_output(&mut readers, limits.drain_timeout, &cancel, pid).await;
            None
        }
        Ending::TimedOut => {
            warn!(
                pid,
                timeout_ms = millis(spec.timeout),
                "the job timed out, so its process tree gets SIGTERM"
            );
            Some(terminate(&tree, &exit, limits.kill_grace, pid).await)
        }
        Ending::Canceled => {
            info!(
                pid,
                "the job was canceled, so its process tree gets SIGTERM"
            );
            Some(terminate(&tree, &exit, limits.kill_grace, pid).await)
        }
    };

    kill_remaining(&tree, pid).await;
    let cgroup = tree.release();
    let status = reap(&mut child, pid).await;
    readers.finish(OUTPUT_TAIL_WAIT, pid).await;
    if let Some(writer) = stdin_writer {
        writer.abort();
    }
    if let Some(cgroup) = cgroup {
        cgroup.remove().await;
    }

    let termination = termination(ending, status, signal_sent, pid);
    info!(pid, ?termination, "job process ended");
    Ok(termination)
}

/// Reason the runner stopped waiting for the script's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    ByItself,
    TimedOut,
    Canceled,
}

fn check_cwd(spec: &ProcessSpec) -> Result<(), SpawnError> {
    let problem = match fs::metadata(&spec.cwd) {
        Ok(metadata) if metadata.is_dir() => return Ok(()),
        Ok(_) => io::Error::new(
            io::ErrorKind::NotADirectory,
            format!(
                "working directory `{}` is not a directory",
                spec.cwd.display()
            ),
        ),
        Err(error) => io::Error::new(
            error.kind(),
            format!(
                "working directory `{}` is not accessible: {error}",
                spec.cwd.display()
            ),
        ),
    };
    Err(spawn_error(spec, problem))
}

/// Spawns the process, in `cgroup` where given.
///
/// When the spawn fails with a cgroup, the runner removes the cgroup and
/// tries once more without it. The first child failed before `exec`, so the
/// program did not run and a second attempt is safe. If the second attempt
/// succeeds, joining the cgroup was what failed, and the job runs in its
/// process group only.
async fn spawn(
    spec: &ProcessSpec,
    cgroup: Option<JobCgroup>,
) -> Result<(Child, Option<JobCgroup>), SpawnError> {
    let Some(cgroup) = cgroup else {
        return spawn_once(spec, None).map(|child| (child, None));
    };

    let first_error = match spawn_once(spec, Some(&cgroup)) {
        Ok(child) => return Ok((child, Some(cgroup))),
        Err(error) => error,
    };

    let cgroup_path = cgroup.path().to_owned();
    cgroup.remove().await;
    let child = spawn_once(spec, None)?;
    warn!(
        cgroup = %cgroup_path.display(),
        error = %first_error,
        "failed to start the job process in its cgroup, so it runs in its process group only"
    );
    Ok((child, None))
}

fn spawn_once(spec: &ProcessSpec, cgroup: Option<&JobCgroup>) -> Result<Child, SpawnError> {
    let procs_fd = cgroup.map(JobCgroup::procs_fd);
    let setup = ChildSetup::new(procs_fd, spec.credentials.as_ref(), &spec.cwd)
        .map_err(|error| spawn_error(spec, error))?;

    let stdin = if spec.stdin.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    };
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(name, value)| (name, value)))
        .current_dir(&spec.cwd)
        .process_group(0)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    // SAFETY: `ChildSetup::run` makes only async-signal-safe system calls on
    // values prepared before `fork` and does not allocate. The cgroup file
    // descriptor it writes to stays open until `spawn` returns, because
    // `cgroup` is borrowed for this whole function.
    unsafe {
        command.pre_exec(move || setup.run());
    }

    command.spawn().map_err(|error| spawn_error(spec, error))
}

fn spawn_error(spec: &ProcessSpec, error: io::Error) -> SpawnError {
    let source = match &spec.credentials {
        Some(credentials) if error.raw_os_error() == Some(libc::EPERM) && !geteuid().is_root() => {
            io::Error::new(
                error.kind(),
                format!(
                    "{error}: switching to uid {} and gid {} requires the agent to \
                     run as root, but it runs as uid {}",
                    credentials.uid,
                    credentials.gid,
                    geteuid()
                ),
            )
        }
        _ => error,
    };
    SpawnError {
        program: spec.program.display().to_string(),
        source,
    }
}

/// Writes all of `bytes` to the job's stdin and then closes it.
///
/// A job may exit or close stdin without reading everything, so a broken
/// pipe is normal and only logged at debug level.
async fn write_stdin(mut stdin: ChildStdin, bytes: Vec<u8>, pid: u32) {
    match stdin.write_all(&bytes).await {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
            debug!(pid, "the job process closed stdin before reading all of it");
        }
        Err(error) => warn!(pid, %error, "failed to write the job's stdin"),
    }
}

/// The tasks that read the job's stdout and stderr into its [`LiveOutput`].
struct OutputReaders {
    tasks: JoinSet<()>,
}

impl OutputReaders {
    fn start(child: &mut Child, output: &Arc<LiveOutput>) -> OutputReaders {
        let mut tasks = JoinSet::new();
        if let Some(stdout) = child.stdout.take() {
            let output = Arc::clone(output);
            tasks.spawn(async move { read_stream(stdout, &output.stdout).await });
        }
        if let Some(stderr) = child.stderr.take() {
            let output = Arc::clone(output);
            tasks.spawn(async move { read_stream(stderr, &output.stderr).await });
        }
        OutputReaders { tasks }
    }

    /// Waits until both streams reach end of file or `deadline` passes, and
    /// returns whether they reached end of file. Cancel-safe.
    async fn wait_until(&mut self, deadline: Instant) -> bool {
        let all_done = async {
            while let Some(result) = self.tasks.join_next().await {
                if let Err(error) = result {
                    error!(%error, "an output reader task failed");
                }
            }
        };
        timeout_at(deadline, all_done).await.is_ok()
    }

    /// Waits up to `limit` for the streams to end, then stops reading.
    async fn finish(mut self, limit: Duration, pid: u32) {
        if !self.wait_until(deadline_after(limit)).await {
            warn!(
                pid,
                "a process outside the job keeps its output pipes open, so the rest of the output is dropped"
            );
            self.tasks.abort_all();
        }
    }
}

/// Reads `pipe` to end of file into `buffer`. Bytes past the buffer's cap are
/// still read, and counted as dropped, so the cap does not stall the writer.
async fn read_stream(mut pipe: impl AsyncRead + Unpin, buffer: &Mutex<CappedBuffer>) {
    let mut chunk = vec![0; READ_BUFFER_BYTES];
    loop {
        let count = match pipe.read(&mut chunk).await {
            Ok(0) => return,
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                warn!(%error, "failed to read the job's output, so the rest of this stream is lost");
                return;
            }
        };
        buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(&chunk[..count]);
    }
}

/// Reads output after the script's process exited by itself, until both
/// streams end, `drain_timeout` passes or `cancel` fires.
async fn drain_output(
    readers: &mut OutputReaders,
    drain_timeout: Duration,
    cancel: &CancellationToken,
    pid: u32,
) {
    let drained = tokio::select! {
        drained = readers.wait_until(deadline_after(drain_timeout)) => drained,
        () = cancel.cancelled() => false,
    };
    if !drained {
        info!(
            pid,
            drain_timeout_ms = millis(drain_timeout),
            "the job process exited but its output is still open, so the processes it left are killed"
        );
    }
}

/// Sends SIGTERM to the tree and gives it `kill_grace` to exit, then sends
/// SIGKILL when the script's process is still running.
///
/// Returns the last signal sent before the script's process exited. When the
/// script's process exits early, the rest of the tree keeps the rest of the
/// grace period, and [`kill_remaining`] kills what is left after it.
async fn terminate(tree: &ProcessTree, exit: &ExitWatch, kill_grace: Duration, pid: u32) -> Signal {
    tree.signal(Signal::SIGTERM);
    let grace_end = deadline_after(kill_grace);

    if timeout_at(grace_end, exit.exited()).await.is_ok() {
        while !tree.is_empty() && Instant::now() < grace_end {
            sleep(POLL_INTERVAL.min(grace_end - Instant::now())).await;
        }
        return Signal::SIGTERM;
    }

    warn!(
        pid,
        kill_grace_ms = millis(kill_grace),
        "the job process did not exit within the kill grace after SIGTERM, so its tree gets SIGKILL"
    );
    tree.kill();
    Signal::SIGKILL
}

/// Sends SIGKILL to every process left in the tree and waits up to
/// [`KILLED_EXIT_WAIT`] until none is alive.
///
/// The script's process must not be reaped yet, so that its pid still names
/// the job's process group.
async fn kill_remaining(tree: &ProcessTree, pid: u32) {
    if tree.is_empty() {
        return;
    }
    debug!(pid, "killing the processes left in the job's tree");

    let give_up = deadline_after(KILLED_EXIT_WAIT);
    loop {
        tree.kill();
        sleep(POLL_INTERVAL).await;
        if tree.is_empty() {
            return;
        }
        if Instant::now() >= give_up {
            error!(
                pid,
                wait_ms = millis(KILLED_EXIT_WAIT),
                "processes of the job are still alive after SIGKILL, probably stuck in the kernel"
            );
            return;
        }
    }
}

/// Reaps the script's process. Returns `None` when it is still running
/// [`KILLED_EXIT_WAIT`] after SIGKILL. Tokio then reaps it in the background
/// once it exits, because the `Child` is dropped.
async fn reap(child: &mut Child, pid: u32) -> Option<ExitStatus> {
    match timeout(KILLED_EXIT_WAIT, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        Ok(Err(error)) => {
            error!(pid, %error, "failed to reap the job process");
            None
        }
        Err(_) => {
            error!(
                pid,
                wait_ms = millis(KILLED_EXIT_WAIT),
                "the job process has not exited after SIGKILL, so it is reaped in the background"
            );
            None
        }
    }
}

fn termination(
    ending: Ending,
    status: Option<ExitStatus>,
    signal_sent: Option<Signal>,
    pid: u32,
) -> Termination {
    let own_signal = status.and_then(|status| status.signal());
    let sent = signal_sent.unwrap_or(Signal::SIGKILL) as i32;
    match ending {
        Ending::TimedOut => Termination::TimedOut {
            signal: own_signal.unwrap_or(sent),
        },
        Ending::Canceled => Termination::Canceled {
            signal: own_signal.unwrap_or(sent),
        },
        Ending::ByItself => {
            if let Some(signal) = own_signal {
                return Termination::Signaled(signal);
            }
            match status.and_then(|status| status.code()) {
                Some(code) => Termination::Exited(code),
                None => {
                    // NOTE: only reachable when something else in the agent
                    // reaped the child with waitpid(-1). The -1 is no real
                    // exit code.
                    error!(
                        pid,
                        "the job process's exit status is unknown, so it is reported as exit code -1"
                    );
                    Termination::Exited(-1)
                }
            }
        }
    }
}

/// Converts `duration` to whole milliseconds for logs, saturating at
/// `u64::MAX`.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Returns the instant `duration` from now, or about 30 years from now when
/// that overflows.
fn deadline_after(duration: Duration) -> Instant {
    const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(duration)
        .unwrap_or_else(|| now + FAR_FUTURE)
}
