//! Tests of [`run_process`] against real processes.
//!
//! Each job gets a unique `RW_TEST_MARK` environment variable, so a test can
//! find every process of its job that is still alive by scanning
//! `/proc/*/environ`. Credential and cgroup tests skip themselves, with a
//! note on stderr, when the test does not run as root or there is no cgroup
//! v2.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::*;
use crate::sys::cgroup;

/// Upper bound on any single job in these tests.
const TEST_WAIT: Duration = Duration::from_secs(60);

const MARK_VARIABLE: &str = "RW_TEST_MARK";

static NEXT_MARK: AtomicU64 = AtomicU64::new(0);

fn unique_mark() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    let number = NEXT_MARK.fetch_add(1, Ordering::Relaxed);
    format!("{}-{number}-{nanos}", std::process::id())
}

/// A job to run, with the mark that its processes carry.
struct TestJob {
    spec: ProcessSpec,
    limits: ProcessLimits,
    cap: usize,
    mark: String,
}

impl TestJob {
    fn new(program: &str, args: &[&str]) -> TestJob {
        let mark = unique_mark();
        let spec = ProcessSpec {
            program: PathBuf::from(program),
            args: args.iter().map(OsString::from).collect(),
            env: vec![
                (OsString::from("PATH"), OsString::from("/usr/bin:/bin")),
                (OsString::from(MARK_VARIABLE), OsString::from(&mark)),
            ],
            cwd: PathBuf::from("/"),
            credentials: None,
            stdin: Vec::new(),
            timeout: Duration::from_secs(30),
        };
        let limits = ProcessLimits {
            kill_grace: Duration::from_secs(2),
            drain_timeout: Duration::from_millis(300),
            cgroup_parent: None,
        };
        TestJob {
            spec,
            limits,
            cap: 1024 * 1024,
            mark,
        }
    }

    fn shell(script: &str) -> TestJob {
        TestJob::new("/bin/sh", &["-c", script])
    }

    async fn run(self) -> Finished {
        self.run_with_cancel(CancellationToken::new()).await
    }

    async fn run_with_cancel(self, cancel: CancellationToken) -> Finished {
        let output = Arc::new(LiveOutput::new(self.cap));
        let started = Arc::new(StdMutex::new(Vec::new()));
        let started_in_callback = Arc::clone(&started);
        let begin = Instant::now();

        let run = run_process(
            self.spec,
            &self.limits,
            Arc::clone(&output),
            cancel,
            move |pid| started_in_callback.lock().unwrap().push(pid),
        );
        let result = timeout(TEST_WAIT, run)
            .await
            .expect("run_process did not return within the test's time limit");

        let started = started.lock().unwrap().clone();
        Finished {
            result,
            output,
            started,
            elapsed: begin.elapsed(),
            mark: self.mark,
        }
    }
}

struct Finished {
    result: Result<Termination, SpawnError>,
    output: Arc<LiveOutput>,
    started: Vec<u32>,
    elapsed: Duration,
    mark: String,
}

impl Finished {
    fn termination(&self) -> Termination {
        match &self.result {
            Ok(termination) => *termination,
            Err(error) => panic!("the job failed to start: {error}"),
        }
    }

    fn stdout(&self) -> Vec<u8> {
        self.output.stdout.lock().unwrap().kept().to_vec()
    }

    /// Asserts that no live process carries this job's mark. Kills the ones
    /// it finds first, so a failing test leaves nothing behind.
    fn assert_nothing_left(&self) {
        let left = processes_with_mark(&self.mark);
        for pid in &left {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        assert!(
            left.is_empty(),
            "processes of the job are still alive after run_process returned: {left:?}"
        );
    }
}

/// Lists the pids whose environment contains `RW_TEST_MARK=<mark>`. Zombies
/// have an empty environment, so only live processes are listed.
fn processes_with_mark(mark: &str) -> Vec<i32> {
    let needle = format!("{MARK_VARIABLE}={mark}\0").into_bytes();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ
            .windows(needle.len())
            .any(|window| window == needle.as_slice())
        {
            found.push(pid);
        }
    }
    found
}

fn is_root() -> bool {
    geteuid().is_root()
}

/// A cgroup made for one test to serve as `cgroup_parent`, removed on drop.
struct TestCgroupParent {
    path: PathBuf,
}

impl TestCgroupParent {
    /// Creates the cgroup, or returns `None` with a note on stderr when the
    /// machine has no writable cgroup v2.
    fn create(test: &str) -> Option<TestCgroupParent> {
        if !is_root() {
            eprintln!("skipping {test}: cgroup tests need root");
            return None;
        }
        let own_dir = match cgroup::own_cgroup_dir() {
            Ok(dir) => dir,
            Err(error) => {
                eprintln!("skipping {test}: no cgroup v2: {error}");
                return None;
            }
        };
        let path = own_dir.join(format!("runwarden-test-{}-{test}", std::process::id()));
        if let Err(error) = fs::create_dir(&path) {
            eprintln!(
                "skipping {test}: failed to create cgroup {}: {error}",
                path.display()
            );
            return None;
        }
        Some(TestCgroupParent { path })
    }

    /// Names of the job cgroups still inside this parent.
    fn children(&self) -> Vec<String> {
        fs::read_dir(&self.path)
            .unwrap()
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for TestCgroupParent {
    /// Removes the job cgroups and the parent, retrying for up to a second
    /// because a failed test may leave processes that are still exiting.
    fn drop(&mut self) {
        for _ in 0..50 {
            for child in self.children() {
                let _ = fs::remove_dir(self.path.join(child));
            }
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("failed to remove test cgroup {}", self.path.display());
    }
}

#[tokio::test]
async fn exit_code_passes_through() {
    let finished = TestJob::shell("exit 7").run().await;

    assert_eq!(finished.termination(), Termination::Exited(7));
    assert_eq!(finished.termination().exit_code(), 7);
}

#[tokio::test]
async fn own_signal_reported_as_signaled() {
    let finished = TestJob::shell("kill -USR1 $$").run().await;

    assert_eq!(finished.termination(), Termination::Signaled(libc::SIGUSR1));
}

#[tokio::test]
async fn on_started_gets_pid_once() {
    let finished = TestJob::shell("echo $$").run().await;

    assert_eq!(finished.termination(), Termination::Exited(0));
    assert_eq!(finished.started.len(), 1);
    let printed = String::from_utf8(finished.stdout()).unwrap();
    assert_eq!(printed.trim(), finished.started[0].to_string());
}

#[tokio::test]
async fn only_stdio_fds_inherited() {
    let finished = TestJob::new("/usr/bin/ls", &["/proc/self/fd"]).run().await;

    assert_eq!(finished.termination(), Termination::Exited(0));
    // `ls` itself has descriptor 3 open to read the directory.
    assert_eq!(
        String::from_utf8(finished.stdout()).unwrap(),
        "0\n1\n2\n3\n"
    );
}

#[tokio::test]
async fn environment_is_exactly_spec_env() {
    let job = TestJob::new("/usr/bin/env", &[]);
    let expected = format!("PATH=/usr/bin:/bin\n{MARK_VARIABLE}={}\n", job.mark);

    let finished = job.run().await;

    assert_eq!(finished.termination(), Termination::Exited(0));
    assert_eq!(String::from_utf8(finished.stdout()).unwrap(), expected);
}

#[tokio::test]
async fn arguments_and_cwd_reach_process() {
    let directory = tempfile::tempdir().unwrap();
    let mut job = TestJob::new(
        "/bin/sh",
        &[
            "-c",
            "printf '%s|' \"$0\" \"$1\"; pwd",
            "first arg",
            "second",
        ],
    );
    job.spec.cwd = directory.path().to_owned();

    let finished = job.run().await;

    assert_eq!(finished.termination(), Termination::Exited(0));
    let expected = format!("first arg|second|{}\n", directory.path().display());
    assert_eq!(String::from_utf8(finished.stdout()).unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_larger_than_pipe_echoed() {
    let input: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|index| (index.wrapping_mul(7) % 251) as u8)
        .collect();
    let mut job = TestJob::new("/usr/bin/cat", &[]);
    job.spec.stdin = input.clone();
    job.cap = 4 * 1024 * 1024;

    let finished = job.run().await;

    assert_eq!(finished.termination(), Termination::Exited(0));
    let echoed = finished.stdout();
    assert_eq!(echoed.len(), input.len());
    assert!(
        echoed == input,
        "cat echoed different bytes than it was given"
    );
    assert_eq!(finished.output.stdout.lock().unwrap().dropped(), 0);
}

#[tokio::test]
async fn empty_stdin_is_dev_null() {
    let mut job = TestJob::shell("readlink /proc/self/fd/0; cat");
    job.spec.timeout = Duration::from_secs(10);

    let finished = job.run().await;

    assert_eq!(finished.termination(), Termination::Exited(0));
    assert_eq!(finished.stdout(), b"/dev/null\n");
    assert!(finished.elapsed < Duration::from_secs(5));
}

#[tokio::test]
async fn unread_stdin_is_no_error() {
    let mut job = TestJob::shell("exit 3");
    job.spec.stdin = vec![b'x'; 8 * 1024 * 1024];

    let finished = job.run().await;

    assert_eq!(finished.termination(), Termination::Exited(3));
    assert!(finished.elapsed < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_streams_capped_concurrently() {
    const TOTAL: u64 = 50 * 1024 * 1024;
    const CAP: usize = 1024 * 1024;
    let script = format!("head -c {TOTAL} /dev/zero & head -c {TOTAL} /dev/zero >&2; wait");
    let mut job = TestJob::shell(&script);
    job.cap = CAP;

    let finished = job.run().await;

    assert_eq!(finished.termination(), Termination::Exited(0));
    let stdout = finished.output.stdout.lock().unwrap().clone();
    let stderr = finished.output.stderr.lock().unwrap().clone();
    assert_eq!(stdout.kept().len(), CAP);
    assert_eq!(stdout.dropped(), TOTAL - CAP as u64);
    assert_eq!(stderr.kept().len(), CAP);
    assert_eq!(stderr.dropped(), TOTAL - CAP as u64);
}

#[tokio::test]
async fn timeout_kills_sleeping_shell() {
    let mut job = TestJob::shell("sleep 600");
    job.spec.timeout = Duration::from_millis(300);

    let finished = job.run().await;

    finished.assert_nothing_left();
    assert_eq!(
        finished.termination(),
        Termination::TimedOut {
            signal: libc::SIGTERM
        }
    );
    assert_eq!(finished.termination().exit_code(), 128 + libc::SIGTERM);
    assert!(finished.elapsed >= Duration::from_millis(300));
    assert!(finished.elapsed < Duration::from_secs(10));
}

/// Runs a shell whose background child ignores SIGTERM, lets it time out,
/// and checks that the child got SIGKILL only after the grace period.
async fn check_sigterm_ignored_child(cgroup_parent: Option<PathBuf>) {
    let mut job = TestJob::shell("bash -c 'trap \"\" TERM INT; sleep 600' & wait");
    job.spec.timeout = Duration::from_millis(300);
    job.limits.kill_grace = Duration::from_millis(800);
    job.limits.cgroup_parent = cgroup_parent;

    let finished = job.run().await;

    finished.assert_nothing_left();
    assert_eq!(
        finished.termination(),
        Termination::TimedOut {
            signal: libc::SIGTERM
        }
    );
    assert!(
        finished.elapsed >= Duration::from_millis(1100),
        "returned after {:?}, before timeout plus grace",
        finished.elapsed
    );
    assert!(finished.elapsed < Duration::from_secs(10));
}

#[tokio::test]
async fn sigterm_ignored_killed_after_grace() {
    check_sigterm_ignored_child(None).await;
}

#[tokio::test]
async fn sigterm_ignored_killed_in_cgroup() {
    let Some(parent) = TestCgroupParent::create("sigterm_ignored_killed_in_cgroup") else {
        return;
    };

    check_sigterm_ignored_child(Some(parent.path.clone())).await;

    assert_eq!(parent.children(), Vec::<String>::new());
}

#[tokio::test]
async fn main_ignoring_sigterm_gets_sigkill() {
    let mut job = TestJob::shell("trap '' TERM; sleep 600; true");
    job.spec.timeout = Duration::from_millis(200);
    job.limits.kill_grace = Duration::from_millis(500);

    let finished = job.run().await;

    finished.assert_nothing_left();
    assert_eq!(
        finished.termination(),
        Termination::TimedOut {
            signal: libc::SIGKILL
        }
    );
    assert!(finished.elapsed >= Duration::from_millis(700));
}

#[tokio::test]
async fn setsid_escapee_killed_with_cgroup() {
    let Some(parent) = TestCgroupParent::create("setsid_escapee_killed_with_cgroup") else {
        return;
    };
    let mut job = TestJob::shell(
        "setsid sh -c 'trap \"\" TERM; sleep 600' </dev/null >/dev/null 2>&1 & \
         sleep 0.3; exit 4",
    );
    job.limits.cgroup_parent = Some(parent.path.clone());

    let finished = job.run().await;

    finished.assert_nothing_left();
    assert_eq!(finished.termination(), Termination::Exited(4));
    assert_eq!(parent.children(), Vec::<String>::new());
}

#[tokio::test]
async fn setsid_escapee_killed_on_timeout() {
    let Some(parent) = TestCgroupParent::create("setsid_escapee_killed_on_timeout") else {
        return;
    };
    let mut job = TestJob::shell("setsid sh -c 'trap \"\" TERM; sleep 600' & sleep 600");
    job.spec.timeout = Duration::from_millis(300);
    job.limits.kill_grace = Duration::from_millis(300);
    job.limits.cgroup_parent = Some(parent.path.clone());

    let finished = job.run().await;

    finished.assert_nothing_left();
    assert_eq!(
        finished.termination(),
        Termination::TimedOut {
            signal: libc::SIGTERM
        }
    );
    assert_eq!(parent.children(), Vec::<String>::new());
}

/// Runs a shell that leaves a background child holding the output pipes and
/// checks that the job ends after the drain timeout with the child killed.
async fn check_background_pipe_holder(cgroup_parent: Option<PathBuf>) {
    let mut job = TestJob::shell("sleep 600 & echo done");
    job.limits.drain_timeout = Duration::from_millis(300);
    job.limits.cgroup_parent = cgroup_parent;

    let finished = job.run().await;

    finished.assert_nothing_left();
    assert_eq!(finished.termination(), Termination::Exited(0));
    assert_eq!(finished.stdout(), b"done\n");
    assert!(finished.elapsed >= Duration::from_millis(300));
    assert!(finished.elapsed < Duration::from_secs(5));
}

#[tokio::test]
async fn background_pipe_holder_killed_after_drain() {
    check_background_pipe_holder(None).await;
}

#[tokio::test]
async fn background_pipe_holder_killed_in_cgroup() {
    let Some(parent) = TestCgroupParent::create("background_pipe_holder_killed_in_cgroup") else {
        return;
    };

    check_background_pipe_holder(Some(parent.path.clone())).await;

    assert_eq!(parent.children(), Vec::<String>::new());
}

#[tokio::test]
async fn background_without_pipes_killed() {
    let job = TestJob::shell("sleep 600 </dev/null >/dev/null 2>&1 & exit 0");

    let finished = job.run().await;

    finished.assert_nothing_left();
    assert_eq!(finished.termination(), Termination::Exited(0));
    assert!(finished.elapsed < Duration::from_secs(5));
}

#[tokio::test]
async fn cancel_reports_canceled() {
    let job = TestJob::shell("sleep 600");
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        sleep(Duration::from_millis(300)).await;
        canceller.cancel();
    });

    let finished = job.run_with_cancel(cancel).await;

    finished.assert_nothing_left();
    assert_eq!(
        finished.termination(),
        Termination::Canceled {
            signal: libc::SIGTERM
        }
    );
    assert!(finished.elapsed < Duration::from_secs(10));
}

#[tokio::test]
async fn cancel_fired_before_start() {
    let mut job = TestJob::shell("sleep 600");
    job.spec.timeout = Duration::from_secs(2);
    let cancel = CancellationToken::new();
    cancel.cancel();

    let finished = job.run_with_cancel(cancel).await;

    finished.assert_nothing_left();
    assert_eq!(
        finished.termination(),
        Termination::Canceled {
            signal: libc::SIGTERM
        }
    );
    assert!(finished.elapsed < Duration::from_secs(2));
}

#[tokio::test]
async fn timeout_before_cancel_wins() {
    let mut job = TestJob::shell("trap '' TERM; sleep 600; true");
    job.spec.timeout = Duration::from_millis(200);
    job.limits.kill_grace = Duration::from_secs(1);
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        sleep(Duration::from_millis(600)).await;
        canceller.cancel();
    });

    let finished = job.run_with_cancel(cancel).await;

    finished.assert_nothing_left();
    assert_eq!(
        finished.termination(),
        Termination::TimedOut {
            signal: libc::SIGKILL
        }
    );
}

#[tokio::test]
async fn job_runs_in_own_cgroup() {
    let Some(parent) = TestCgroupParent::create("job_runs_in_own_cgroup") else {
        return;
    };
    let mut job = TestJob::new("/usr/bin/cat", &["/proc/self/cgroup"]);
    job.limits.cgroup_parent = Some(parent.path.clone());

    let finished = job.run().await;

    assert_eq!(finished.termination(), Termination::Exited(0));
    let cgroups = String::from_utf8(finished.stdout()).unwrap();
    let own = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("no cgroup v2 line in /proc/self/cgroup");
    let parent_name = parent.path.file_name().unwrap().to_str().unwrap();
    assert!(
        own.contains(&format!("/{parent_name}/job-")),
        "the job ran in cgroup {own}, not in a job cgroup under {parent_name}"
    );
    assert_eq!(parent.children(), Vec::<String>::new());
}

#[tokio::test]
async fn missing_cgroup_parent_falls_back() {
    let mut job = TestJob::shell("exit 5");
    job.limits.cgroup_parent = Some(PathBuf::from("/nonexistent/runwarden-cgroup"));

    let finished = job.run().await;

    assert_eq!(finished.termination(), Termination::Exited(5));
}

#[test]
fn detect_parent_creates_agent_cgroup() {
    if !is_root() || cgroup::own_cgroup_dir().is_err() {
        eprintln!("skipping detect_parent_creates_agent_cgroup: needs root and cgroup v2");
        return;
    }

    let parent = cgroup::detect_parent().expect("detect_parent found no usable cgroup v2");

    let name = format!("runwarden-agent-{}", std::process::id());
    assert_eq!(parent.file_name().unwrap().to_str().unwrap(), name);
    assert!(parent.join("cgroup.procs").is_file());
    cgroup::remove_parent(&parent).unwrap();
    assert!(!parent.exists());
}

#[tokio::test]
async fn credentials_switch_user() {
    if !is_root() {
        eprintln!("skipping credentials_switch_user: switching users needs root");
        return;
    }
    let mut job = TestJob::shell("id -u; id -G");
    job.spec.credentials = Some(Credentials {
        uid: 65534,
        gid: 65534,
        groups: vec![65534, 4242],
    });

    let finished = job.run().await;

    assert_eq!(finished.termination(), Termination::Exited(0));
    assert_eq!(
        String::from_utf8(finished.stdout()).unwrap(),
        "65534\n65534 4242\n"
    );
}

#[tokio::test]
async fn credentials_switch_user_in_cgroup() {
    let Some(parent) = TestCgroupParent::create("credentials_switch_user_in_cgroup") else {
        return;
    };
    let mut job = TestJob::shell("id -u; id -G; grep '^0::' /proc/self/cgroup");
    job.spec.credentials = Some(Credentials {
        uid: 65534,
        gid: 65534,
        groups: vec![],
    });
    job.limits.cgroup_parent = Some(parent.path.clone());

    let finished = job.run().await;

    assert_eq!(finished.termination(), Termination::Exited(0));
    let printed = String::from_utf8(finished.stdout()).unwrap();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.first(), Some(&"65534"));
    assert_eq!(lines.get(1), Some(&"65534"));
    assert!(
        lines.get(2).is_some_and(|line| line.contains("/job-")),
        "the job ran outside its cgroup: {printed}"
    );
}

#[tokio::test]
async fn credentials_without_cwd_access_rejected() {
    if !is_root() {
        eprintln!("skipping credentials_without_cwd_access_rejected: switching users needs root");
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    fs::set_permissions(directory.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let mut job = TestJob::shell("exit 0");
    job.spec.cwd = directory.path().to_owned();
    job.spec.credentials = Some(Credentials {
        uid: 65534,
        gid: 65534,
        groups: vec![],
    });

    let finished = job.run().await;

    let error = finished
        .result
        .expect_err("the job started in a directory its user cannot enter");
    assert_eq!(error.source.kind(), io::ErrorKind::PermissionDenied);
    assert!(finished.started.is_empty());
}

#[tokio::test]
async fn missing_program_is_spawn_error() {
    let finished = TestJob::new("/nonexistent/runwarden-program", &[])
        .run()
        .await;

    let error = finished.result.expect_err("a missing program started");
    assert_eq!(error.source.kind(), io::ErrorKind::NotFound);
    assert!(error.to_string().contains("/nonexistent/runwarden-program"));
    assert!(finished.started.is_empty());
}

#[tokio::test]
async fn missing_cwd_is_spawn_error() {
    let mut job = TestJob::shell("exit 0");
    job.spec.cwd = PathBuf::from("/nonexistent/runwarden-cwd");

    let finished = job.run().await;

    let error = finished
        .result
        .expect_err("a job started in a missing directory");
    assert_eq!(error.source.kind(), io::ErrorKind::NotFound);
    assert!(error.to_string().contains("/nonexistent/runwarden-cwd"));
    assert!(finished.started.is_empty());
}

#[tokio::test]
async fn missing_program_with_cgroup_leaves_no_cgroup() {
    let Some(parent) = TestCgroupParent::create("missing_program_with_cgroup_leaves_no_cgroup")
    else {
        return;
    };
    let mut job = TestJob::new("/nonexistent/runwarden-program", &[]);
    job.limits.cgroup_parent = Some(parent.path.clone());

    let finished = job.run().await;

    let error = finished.result.expect_err("a missing program started");
    assert_eq!(error.source.kind(), io::ErrorKind::NotFound);
    assert_eq!(parent.children(), Vec::<String>::new());
}

/// Streams 2 GiB through stdout with a 1 MiB cap. It took 1.1 s in a debug
/// build on a 2-core VM, with 7.7 MB peak RSS for the test binary running
/// this test alone (measured with `/usr/bin/time -v`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gib_output_bounded() {
    const TOTAL: u64 = 2 * 1024 * 1024 * 1024;
    let mut job = TestJob::shell(&format!("head -c {TOTAL} /dev/zero"));
    job.spec.timeout = Duration::from_secs(50);

    let finished = job.run().await;

    assert_eq!(finished.termination(), Termination::Exited(0));
    let stdout = finished.output.stdout.lock().unwrap().clone();
    assert_eq!(stdout.kept().len(), 1024 * 1024);
    assert_eq!(stdout.dropped(), TOTAL - 1024 * 1024);
    eprintln!("2 GiB of output took {:?}", finished.elapsed);
}

#[tokio::test]
async fn dropped_run_kills_tree() {
    let job = TestJob::shell("sleep 600 & sleep 600");
    let mark = job.mark.clone();
    let (started_sender, started_receiver) = tokio::sync::oneshot::channel();
    let output = Arc::new(LiveOutput::new(job.cap));

    let run = tokio::spawn(async move {
        run_process(
            job.spec,
            &job.limits,
            output,
            CancellationToken::new(),
            move |pid| {
                let _ = started_sender.send(pid);
            },
        )
        .await
    });
    timeout(TEST_WAIT, started_receiver)
        .await
        .expect("the job did not start in time")
        .unwrap();
    sleep(Duration::from_millis(200)).await;
    assert!(
        processes_with_mark(&mark).len() >= 2,
        "the job's shell and sleeps were not running before the abort"
    );
    run.abort();
    let _ = run.await;

    let mut left = processes_with_mark(&mark);
    for _ in 0..250 {
        if left.is_empty() {
            break;
        }
        sleep(Duration::from_millis(20)).await;
        left = processes_with_mark(&mark);
    }
    for pid in &left {
        let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    assert!(
        left.is_empty(),
        "processes outlived the dropped run: {left:?}"
    );
}

#[tokio::test]
async fn credentials_rejected_when_not_root() {
    if is_root() {
        eprintln!("skipping credentials_rejected_when_not_root: it needs a non-root user");
        return;
    }
    let mut job = TestJob::shell("exit 0");
    job.spec.credentials = Some(Credentials {
        uid: 0,
        gid: 0,
        groups: vec![],
    });

    let finished = job.run().await;

    let error = finished
        .result
        .expect_err("a non-root agent switched to uid 0");
    assert_eq!(error.source.raw_os_error(), None);
    assert!(
        error
            .to_string()
            .contains("requires the agent to run as root")
    );
    assert!(finished.started.is_empty());
}
