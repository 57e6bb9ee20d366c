//! Faults against real `runwarden` processes on 127.0.0.1. A coordinator or
//! an agent is killed with SIGKILL, the agent link is cut or stalled, a burst
//! of tasks arrives, peers stay away past the delivery and lost deadlines,
//! and a coordinator or an agent is stopped with SIGTERM while jobs run.
//!
//! Every test repeats its fault several times and then checks each job's
//! final status and output, that the coordinator stored each result once
//! (it logs `job finished` only when a result is stored), and, where jobs
//! append their token to a runs file, that each job ran once. Each test
//! starts its own processes in its own temporary folder.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::fleet::{AgentProcess, Api, CoordinatorProcess, LinkProxy, MarkedProcesses};
use common::{is_root, leftover_processes, new_marker, processes_with_marker};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

/// Coordinator options shared by most tests: deadlines far beyond the
/// faults, and a short silence limit so that a dead link is noticed fast.
const COORDINATOR_OPTIONS: &str = "
delivery_timeout_secs = 60
lost_after_secs = 60
peer_silence_secs = 3
shutdown_grace_secs = 5
";

/// Agent options shared by most tests.
const AGENT_OPTIONS: &str = "
max_concurrent_jobs = 32
kill_grace_secs = 1
drain_timeout_ms = 200
coordinator_silence_secs = 3
shutdown_grace_secs = 0
";

/// Maximum wait for a task to end once no fault blocks it.
const FINAL_LIMIT: Duration = Duration::from_secs(30);

/// A job submitted by a test, with what its output must be.
struct Submitted {
    task_id: String,
    peer_id: String,
    token: String,
}

/// Builds a shell command that appends `token` to `runs_file`, sleeps and
/// prints `token`, so that the runs file shows how often the job ran.
fn counted_job(token: &str, runs_file: &Path, sleep_secs: f32) -> String {
    format!(
        "echo {token} >> {}; sleep {sleep_secs}; echo {token}",
        runs_file.display()
    )
}

/// Counts how often each token appears in the runs file.
fn run_counts(runs_file: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(runs_file).unwrap_or_default();
    let mut counts = HashMap::new();
    for line in text.lines() {
        *counts.entry(line.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Waits for every task to end and checks that each one succeeded with its
/// token as its only output. Returns each task's job id.
async fn check_all_succeeded(api: &Api, submitted: &[Submitted]) -> Vec<String> {
    let mut job_ids = Vec::new();
    for job in submitted {
        let info = api.wait_final(&job.task_id, FINAL_LIMIT).await;
        let entry = &info["list"][0];
        assert_eq!(info["status"], "success", "task {}: {info}", job.task_id);
        assert_eq!(entry["status"], "success", "task {}: {info}", job.task_id);
        assert_eq!(
            entry["peerId"],
            job.peer_id.as_str(),
            "task {}",
            job.task_id
        );
        assert_eq!(
            entry["resCmd"]["stdout"],
            format!("{}\n", job.token),
            "task {}: stdout must be the token once",
            job.task_id
        );
        assert_eq!(entry["resCmd"]["exitCode"], 0, "task {}", job.task_id);
        job_ids.push(entry["jobid"].as_str().expect("jobid").to_owned());
    }
    job_ids
}

/// Checks that the coordinator logged exactly one stored result for each
/// job.
fn check_stored_once(coordinator: &CoordinatorProcess, job_ids: &[String]) {
    let log = coordinator.log();
    for job_id in job_ids {
        assert_eq!(
            CoordinatorProcess::results_stored(&log, job_id),
            1,
            "job {job_id}: the coordinator must store its result exactly once"
        );
    }
}

/// Checks that the coordinator never logged a second stored result for a
/// job. Used where the coordinator is killed with SIGKILL, which can land
/// after a result is committed but before its log line is written.
fn check_never_stored_twice(coordinator: &CoordinatorProcess, job_ids: &[String]) {
    let log = coordinator.log();
    for job_id in job_ids {
        assert!(
            CoordinatorProcess::results_stored(&log, job_id) <= 1,
            "job {job_id}: the coordinator stored a result a second time"
        );
    }
}

/// Checks that each submitted job appended its token to the runs file once.
fn check_ran_once(runs_file: &Path, submitted: &[Submitted]) {
    let counts = run_counts(runs_file);
    for job in submitted {
        assert_eq!(
            counts.get(&job.token).copied().unwrap_or(0),
            1,
            "task {}: the job must run exactly once",
            job.task_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_kill_keeps_results() {
    let dir = tempfile::tempdir().unwrap();
    let runs_file = dir.path().join("runs");
    let mut coordinator = CoordinatorProcess::start(dir.path(), COORDINATOR_OPTIONS);
    let api = Api::new(&coordinator.url);
    let mut agents = vec![
        AgentProcess::start(dir.path(), "ck-1", &coordinator.url, AGENT_OPTIONS),
        AgentProcess::start(dir.path(), "ck-2", &coordinator.url, AGENT_OPTIONS),
    ];
    for agent in &agents {
        api.wait_online(&agent.peer_id, true).await;
    }

    // The coordinator is killed while jobs are being accepted, while they
    // run, and as the first ones end (each job sleeps 2 s). Each time it
    // stays down long enough for the rest to end.
    let kill_delays = [
        Duration::from_millis(100),
        Duration::from_millis(1000),
        Duration::from_millis(1800),
    ];
    let mut all_submitted = Vec::new();
    let mut all_job_ids = Vec::new();
    for (round, kill_delay) in kill_delays.into_iter().enumerate() {
        let mut submitted = Vec::new();
        for index in 0..50 {
            let token = format!("ck-{round}-{index}-{}", new_marker());
            let peer_id = agents[index % agents.len()].peer_id.clone();
            let content = json!({ "content": counted_job(&token, &runs_file, 2.0) });
            let task_id = api.submit(&peer_id, content).await;
            submitted.push(Submitted {
                task_id,
                peer_id,
                token,
            });
        }

        tokio::time::sleep(kill_delay).await;
        coordinator.kill();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        coordinator.restart();
        for agent in &agents {
            api.wait_online(&agent.peer_id, true).await;
        }

        for job in &submitted {
            let info = api.task_info(&job.task_id).await;
            assert_eq!(
                info["taskid"],
                job.task_id.as_str(),
                "round {round}: taskinfo after restart"
            );
        }
        all_job_ids.extend(check_all_succeeded(&api, &submitted).await);
        all_submitted.extend(submitted);
    }

    check_never_stored_twice(&coordinator, &all_job_ids);
    check_ran_once(&runs_file, &all_submitted);
    for agent in &mut agents {
        assert_eq!(
            agent.wait_journal_empty(Duration::from_secs(10)).await,
            0,
            "agent {}: every result must be acknowledged",
            agent.peer_id
        );
        agent.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_reports_jobs_lost() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path(), COORDINATOR_OPTIONS);
    let api = Api::new(&coordinator.url);
    // Three slots, so that of four long jobs one waits in the agent's queue.
    let options = AGENT_OPTIONS.replace("max_concurrent_jobs = 32", "max_concurrent_jobs = 3");
    let mut agent = AgentProcess::start(dir.path(), "ak-1", &coordinator.url, &options);
    api.wait_online("ak-1", true).await;

    let mut lost_job_ids = Vec::new();
    for round in 0..3 {
        let marker = new_marker();
        let _cleanup = MarkedProcesses(marker.clone());

        let quick_token = format!("ak-quick-{round}");
        let quick = api
            .submit("ak-1", json!({ "content": format!("echo {quick_token}") }))
            .await;
        api.wait_final(&quick, FINAL_LIMIT).await;

        let mut long = Vec::new();
        for _ in 0..4 {
            let content = json!({
                "content": "echo started; sleep 30",
                "timeout": 120,
                "env": { "RW_TEST_MARK": marker },
            });
            long.push(api.submit("ak-1", content).await);
        }
        // Any three of them take the slots, because the agent does not
        // promise an order.
        let mut statuses = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            statuses.clear();
            for task_id in &long {
                let info = api.task_info(task_id).await;
                statuses.push(info["list"][0]["status"].as_str().unwrap().to_owned());
            }
            let running = statuses
                .iter()
                .filter(|status| *status == "running")
                .count();
            if running == 3 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let running = statuses
            .iter()
            .filter(|status| *status == "running")
            .count();
        let pending = statuses
            .iter()
            .filter(|status| *status == "pending")
            .count();
        assert_eq!(
            running, 3,
            "round {round}: three jobs must run: {statuses:?}"
        );
        assert_eq!(
            pending, 1,
            "round {round}: one job must wait for a slot: {statuses:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes_with_marker(&marker).len() < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            processes_with_marker(&marker).len() >= 3,
            "round {round}: the three running jobs must have live processes"
        );

        agent.kill();
        agent.restart();

        if is_root() {
            let left = leftover_processes(&marker, Duration::from_secs(5)).await;
            assert!(
                left.is_empty(),
                "round {round}: the restarted agent must kill the processes of the killed agent's jobs, left: {left:?}"
            );
        } else {
            eprintln!("skipped the leftover process check: job cgroups need root");
        }

        for (index, task_id) in long.iter().enumerate() {
            let info = api.wait_final(task_id, FINAL_LIMIT).await;
            let entry = &info["list"][0];
            let res_cmd = &entry["resCmd"];
            assert_eq!(entry["status"], "lost", "round {round} job {index}: {info}");
            assert_eq!(res_cmd["code"], "lost", "round {round} job {index}: {info}");
            assert_eq!(res_cmd["exitCode"], -1, "round {round} job {index}: {info}");
            let err = res_cmd["err"].as_str().unwrap_or_default();
            assert!(
                err.contains("agent restarted") && err.contains("outcome is unknown"),
                "round {round} job {index}: err must say why the job is lost: {err}"
            );
            lost_job_ids.push(entry["jobid"].as_str().unwrap().to_owned());
        }
        let quick_info = api.task_info(&quick).await;
        assert_eq!(
            quick_info["list"][0]["status"], "success",
            "round {round}: a job that ended before the kill keeps its result"
        );
        assert_eq!(
            quick_info["list"][0]["resCmd"]["stdout"],
            format!("{quick_token}\n"),
            "round {round}: quick job's output"
        );
        api.wait_online("ak-1", true).await;
    }

    check_stored_once(&coordinator, &lost_job_ids);
    assert_eq!(
        agent.wait_journal_empty(Duration::from_secs(10)).await,
        0,
        "the restarted agent must deliver every lost report"
    );
    agent.stop();
}

/// How the link is broken in one round of [`link_cut_delivers_results_once`].
#[derive(Debug, Clone, Copy)]
enum LinkFault {
    /// Every connection is closed, and new ones are closed at once.
    Cut,
    /// Connections stay open but carry nothing, so both ends must notice
    /// the silence by themselves.
    Stall,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_delivers_results_once() {
    let dir = tempfile::tempdir().unwrap();
    let runs_file = dir.path().join("runs");
    let options = COORDINATOR_OPTIONS.replace("peer_silence_secs = 3", "peer_silence_secs = 2");
    let coordinator = CoordinatorProcess::start(dir.path(), &options);
    let api = Api::new(&coordinator.url);
    let proxy = LinkProxy::start(coordinator.address).await;
    let agent_options = AGENT_OPTIONS.replace(
        "coordinator_silence_secs = 3",
        "coordinator_silence_secs = 2",
    );
    let mut agent = AgentProcess::start(dir.path(), "lc-1", &proxy.url(), &agent_options);
    api.wait_online("lc-1", true).await;

    let mut all_submitted = Vec::new();
    let mut job_ids = Vec::new();
    for (round, fault) in [LinkFault::Cut, LinkFault::Stall, LinkFault::Cut]
        .into_iter()
        .enumerate()
    {
        let mut submitted = Vec::new();
        for index in 0..10 {
            let token = format!("lc-{round}-{index}-{}", new_marker());
            let content = json!({ "content": counted_job(&token, &runs_file, 2.0) });
            let task_id = api.submit("lc-1", content).await;
            submitted.push(Submitted {
                task_id,
                peer_id: "lc-1".to_owned(),
                token,
            });
        }
        for job in &submitted {
            api.wait_job_status(&job.task_id, "running", FINAL_LIMIT)
                .await;
        }

        let agent_silences_before = agent.log().matches("coordinator silent too long").count();
        let broken_at = Instant::now();
        match fault {
            LinkFault::Cut => proxy.cut(),
            LinkFault::Stall => proxy.stall(),
        }
        // A job submitted while the link is down waits as pending and is
        // sent once the agent is back.
        let token = format!("lc-{round}-during-{}", new_marker());
        let content = json!({ "content": counted_job(&token, &runs_file, 0.0) });
        let task_id = api.submit("lc-1", content).await;
        submitted.push(Submitted {
            task_id,
            peer_id: "lc-1".to_owned(),
            token,
        });

        // The coordinator must notice that the peer is gone, by the closed
        // socket or by its silence, and a stalled agent must notice the
        // coordinator's silence. The jobs end while the link is down.
        api.wait_online("lc-1", false).await;
        if let LinkFault::Stall = fault {
            let deadline = Instant::now() + Duration::from_secs(10);
            while agent.log().matches("coordinator silent too long").count()
                == agent_silences_before
            {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: the agent did not drop the silent link within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep_until(broken_at + Duration::from_secs(3)).await;
        for job in &submitted {
            let info = api.task_info(&job.task_id).await;
            assert_eq!(
                info["status"], "running",
                "round {round} ({fault:?}): no result can arrive while the link is down: {info}"
            );
        }

        proxy.restore();
        api.wait_online("lc-1", true).await;
        job_ids.extend(check_all_succeeded(&api, &submitted).await);
        all_submitted.extend(submitted);
    }

    check_stored_once(&coordinator, &job_ids);
    check_ran_once(&runs_file, &all_submitted);
    assert!(
        coordinator.log().contains("agent silent too long"),
        "the coordinator must drop the stalled link for silence"
    );
    assert_eq!(
        agent.wait_journal_empty(Duration::from_secs(10)).await,
        0,
        "every result must be acknowledged"
    );
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_job_cancel_during_cut() {
    let dir = tempfile::tempdir().unwrap();
    let runs_file = dir.path().join("runs");
    let coordinator = CoordinatorProcess::start(dir.path(), COORDINATOR_OPTIONS);
    let api = Api::new(&coordinator.url);
    let proxy = LinkProxy::start(coordinator.address).await;
    // One slot, so that the second job waits in the agent's queue.
    let options = AGENT_OPTIONS.replace("max_concurrent_jobs = 32", "max_concurrent_jobs = 1");
    let _agent = AgentProcess::start(dir.path(), "qc-1", &proxy.url(), &options);
    api.wait_online("qc-1", true).await;

    let mut submitted = Vec::new();
    for round in 0..3 {
        let running_token = format!("qc-{round}-running-{}", new_marker());
        let running = api
            .submit(
                "qc-1",
                json!({ "content": counted_job(&running_token, &runs_file, 1.5) }),
            )
            .await;
        api.wait_job_status(&running, "running", FINAL_LIMIT).await;
        let queued_token = format!("qc-{round}-queued-{}", new_marker());
        let queued = api
            .submit(
                "qc-1",
                json!({ "content": counted_job(&queued_token, &runs_file, 0.0) }),
            )
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, envelope) = api
                .post(
                    "/script/peer/taskinfo",
                    &json!({ "peerid": "qc-1", "taskid": queued }),
                )
                .await;
            if envelope["data"]["status"] == "pending" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the agent did not queue the job: {envelope}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        proxy.cut();
        api.wait_online("qc-1", false).await;
        let queued_job_id = api.task_info(&queued).await["list"][0]["jobid"]
            .as_str()
            .unwrap()
            .to_owned();
        let body =
            json!({ "tasks": [{ "peerid": "qc-1", "jobid": queued_job_id, "msg": "during cut" }] });
        let (status, envelope) = api.post("/script/cancel", &body).await;
        assert_eq!(status, 200, "round {round}: {envelope}");
        assert_eq!(
            envelope["data"]["list"][0]["result"], "peer_offline",
            "round {round}: a job in the queue of an unreachable agent cannot be called canceled: {envelope}"
        );

        proxy.restore();
        api.wait_online("qc-1", true).await;
        submitted.push(Submitted {
            task_id: running,
            peer_id: "qc-1".to_owned(),
            token: running_token,
        });
        submitted.push(Submitted {
            task_id: queued,
            peer_id: "qc-1".to_owned(),
            token: queued_token,
        });
    }

    let job_ids = check_all_succeeded(&api, &submitted).await;
    check_stored_once(&coordinator, &job_ids);
    check_ran_once(&runs_file, &submitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_1000_tasks_completes_once() {
    const TASKS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path(), COORDINATOR_OPTIONS);
    let api = Api::new(&coordinator.url);
    let mut agents = Vec::new();
    for index in 1..=4 {
        let peer_id = format!("burst-{index}");
        let options = AGENT_OPTIONS.replace("max_concurrent_jobs = 32", "max_concurrent_jobs = 16");
        agents.push(AgentProcess::start(
            dir.path(),
            &peer_id,
            &coordinator.url,
            &options,
        ));
    }
    for agent in &agents {
        api.wait_online(&agent.peer_id, true).await;
    }
    let peers: Vec<String> = agents.iter().map(|agent| agent.peer_id.clone()).collect();

    let submitted: Vec<Submitted> = futures_util::stream::iter(0..TASKS)
        .map(|index| {
            let api = api.clone();
            let peer_id = peers[index % peers.len()].clone();
            async move {
                let token = format!("burst-{index}");
                let task_id = api
                    .submit(&peer_id, json!({ "content": format!("echo {token}") }))
                    .await;
                Submitted {
                    task_id,
                    peer_id,
                    token,
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(submitted.len(), TASKS, "every task must be created");

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut open: Vec<&Submitted> = submitted.iter().collect();
    let mut finals: HashMap<String, Value> = HashMap::new();
    while !open.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} of {TASKS} tasks still running after 90 s",
            open.len()
        );
        let infos: Vec<(String, Value)> = futures_util::stream::iter(open.iter())
            .map(|job| {
                let api = api.clone();
                let task_id = job.task_id.clone();
                async move {
                    let info = api.task_info(&task_id).await;
                    (task_id, info)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for (task_id, info) in infos {
            if info["status"] != "running" {
                finals.insert(task_id, info);
            }
        }
        open.retain(|job| !finals.contains_key(&job.task_id));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut job_ids = Vec::new();
    for job in &submitted {
        let info = &finals[&job.task_id];
        let entry = &info["list"][0];
        assert_eq!(info["status"], "success", "task {}: {info}", job.task_id);
        assert_eq!(
            entry["peerId"],
            job.peer_id.as_str(),
            "task {}",
            job.task_id
        );
        assert_eq!(
            entry["resCmd"]["stdout"],
            format!("{}\n", job.token),
            "task {}",
            job.task_id
        );
        job_ids.push(entry["jobid"].as_str().unwrap().to_owned());
    }
    check_stored_once(&coordinator, &job_ids);
    let stored_total = coordinator
        .log()
        .lines()
        .filter(|line| line.contains("job finished"))
        .count();
    assert_eq!(stored_total, TASKS, "one stored result per task, no more");
    for agent in &mut agents {
        assert_eq!(
            agent.wait_journal_empty(Duration::from_secs(10)).await,
            0,
            "agent {}: every result must be acknowledged",
            agent.peer_id
        );
        agent.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_peer_job_fails_after_delivery_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let options =
        COORDINATOR_OPTIONS.replace("delivery_timeout_secs = 60", "delivery_timeout_secs = 3");
    let coordinator = CoordinatorProcess::start(dir.path(), &options);
    let api = Api::new(&coordinator.url);
    let mut agent = AgentProcess::start(dir.path(), "dt-1", &coordinator.url, AGENT_OPTIONS);
    api.wait_online("dt-1", true).await;
    agent.stop();
    api.wait_online("dt-1", false).await;

    // Three jobs for the stopped peer are submitted 700 ms apart. Each must
    // stay pending for the whole delivery timeout and then fail on its own
    // clock.
    let mut submitted = Vec::new();
    for round in 0..3 {
        let before = Instant::now();
        let task_id = api
            .submit("dt-1", json!({ "content": format!("echo never-{round}") }))
            .await;
        submitted.push((task_id, before));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let mut failed_at = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while failed_at.len() < submitted.len() {
        assert!(
            Instant::now() < deadline,
            "jobs for the offline peer did not fail within 10 s"
        );
        for (task_id, _) in &submitted {
            if failed_at.contains_key(task_id) {
                continue;
            }
            let info = api.task_info(task_id).await;
            if info["status"] != "running" {
                failed_at.insert(task_id.clone(), (Instant::now(), info));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (round, (task_id, before)) in submitted.iter().enumerate() {
        let (at, info) = &failed_at[task_id];
        let waited = at.duration_since(*before);
        let entry = &info["list"][0];
        let res_cmd = &entry["resCmd"];
        assert_eq!(entry["status"], "failed", "round {round}: {info}");
        assert_eq!(res_cmd["code"], "peer_offline", "round {round}: {info}");
        assert_eq!(res_cmd["exitCode"], -1, "round {round}: {info}");
        assert!(
            res_cmd["err"]
                .as_str()
                .unwrap_or_default()
                .contains("never delivered"),
            "round {round}: err must say nothing ran: {info}"
        );
        assert!(
            waited >= Duration::from_secs(3),
            "round {round}: failed after {waited:?}, before the 3 s delivery timeout"
        );
        assert!(
            waited < Duration::from_secs(6),
            "round {round}: failed only after {waited:?}, long past the 3 s delivery timeout"
        );
    }

    // A job whose peer comes back within the timeout is delivered and runs.
    let task_id = api
        .submit("dt-1", json!({ "content": "echo delivered-late" }))
        .await;
    agent.restart();
    let info = api.wait_final(&task_id, FINAL_LIMIT).await;
    assert_eq!(info["status"], "success", "{info}");
    assert_eq!(info["list"][0]["resCmd"]["stdout"], "delivered-late\n");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_job_lost_after_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let options = COORDINATOR_OPTIONS.replace("lost_after_secs = 60", "lost_after_secs = 3");
    let coordinator = CoordinatorProcess::start(dir.path(), &options);
    let api = Api::new(&coordinator.url);
    let marker = new_marker();
    let _cleanup = MarkedProcesses(marker.clone());

    let mut agents = Vec::new();
    let mut tasks = Vec::new();
    for index in 1..=3 {
        let peer_id = format!("la-{index}");
        let agent = AgentProcess::start(dir.path(), &peer_id, &coordinator.url, AGENT_OPTIONS);
        api.wait_online(&peer_id, true).await;
        let content = json!({ "content": "sleep 30", "env": { "RW_TEST_MARK": marker } });
        let task_id = api.submit(&peer_id, content).await;
        api.wait_job_status(&task_id, "running", FINAL_LIMIT).await;
        agents.push(agent);
        tasks.push(task_id);
    }

    // The agents die 700 ms apart and none comes back. Each job must stay
    // running for the whole lost deadline and then turn lost.
    let mut killed_at = Vec::new();
    for agent in &mut agents {
        killed_at.push(Instant::now());
        agent.kill();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let mut lost_at = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lost_at.len() < tasks.len() {
        assert!(
            Instant::now() < deadline,
            "jobs of killed agents did not end within 10 s"
        );
        for task_id in &tasks {
            if lost_at.contains_key(task_id) {
                continue;
            }
            let info = api.task_info(task_id).await;
            if info["status"] != "running" {
                lost_at.insert(task_id.clone(), (Instant::now(), info));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (round, task_id) in tasks.iter().enumerate() {
        let (at, info) = &lost_at[task_id];
        let waited = at.duration_since(killed_at[round]);
        let entry = &info["list"][0];
        let res_cmd = &entry["resCmd"];
        assert_eq!(entry["status"], "lost", "round {round}: {info}");
        assert_eq!(res_cmd["code"], "lost", "round {round}: {info}");
        assert_eq!(res_cmd["exitCode"], -1, "round {round}: {info}");
        assert!(
            res_cmd["err"]
                .as_str()
                .unwrap_or_default()
                .contains("offline for over 3 s"),
            "round {round}: err must name the deadline: {info}"
        );
        assert!(
            waited >= Duration::from_secs(3),
            "round {round}: lost after {waited:?}, before the 3 s deadline"
        );
        assert!(
            waited < Duration::from_secs(6),
            "round {round}: lost only after {waited:?}, long past the 3 s deadline"
        );
    }

    // Restarted at last, each agent reports the job lost from its journal
    // and kills its processes. The coordinator's earlier verdict stays.
    for (round, agent) in agents.iter_mut().enumerate() {
        agent.restart();
        api.wait_online(&agent.peer_id, true).await;
        assert_eq!(
            agent.wait_journal_empty(Duration::from_secs(10)).await,
            0,
            "round {round}: the agent's late report must be acknowledged"
        );
        let info = api.task_info(&tasks[round]).await;
        assert!(
            info["list"][0]["resCmd"]["err"]
                .as_str()
                .unwrap_or_default()
                .contains("offline for over 3 s"),
            "round {round}: the first stored result must win over the agent's report: {info}"
        );
        agent.stop();
    }
    if is_root() {
        assert!(
            leftover_processes(&marker, Duration::from_secs(5))
                .await
                .is_empty(),
            "the restarted agents must kill the processes of the lost jobs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sigterm_drains_then_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path(), COORDINATOR_OPTIONS);
    let api = Api::new(&coordinator.url);
    let options = AGENT_OPTIONS.replace("shutdown_grace_secs = 0", "shutdown_grace_secs = 1");
    let mut agent = AgentProcess::start(dir.path(), "sg-1", &coordinator.url, &options);
    api.wait_online("sg-1", true).await;

    let mut job_ids = Vec::new();
    for round in 0..3 {
        let marker = new_marker();
        let _cleanup = MarkedProcesses(marker.clone());
        let short = api
            .submit(
                "sg-1",
                json!({ "content": format!("sleep 0.6; echo short-{round}") }),
            )
            .await;
        let long = api
            .submit(
                "sg-1",
                json!({ "content": "sleep 30", "env": { "RW_TEST_MARK": marker } }),
            )
            .await;
        api.wait_job_status(&short, "running", FINAL_LIMIT).await;
        api.wait_job_status(&long, "running", FINAL_LIMIT).await;

        let log_before = agent.log().matches("shutdown requested").count();
        agent.terminate();
        let deadline = Instant::now() + Duration::from_secs(5);
        while agent.log().matches("shutdown requested").count() == log_before {
            assert!(
                Instant::now() < deadline,
                "round {round}: the agent did not log the shutdown request"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A job sent while the agent drains is not accepted, so it waits
        // on the coordinator for the next agent start.
        let late_token = format!("late-{round}");
        let late = api
            .submit("sg-1", json!({ "content": format!("echo {late_token}") }))
            .await;

        let exit = agent.wait_exit(Duration::from_secs(10));
        assert!(exit.success(), "round {round}: agent exited with {exit}");
        assert!(
            processes_with_marker(&marker).is_empty(),
            "round {round}: the stopping agent must kill the canceled job's processes"
        );
        assert_eq!(
            agent.journal_len(),
            0,
            "round {round}: the stopping agent must deliver its results before it exits"
        );

        let short_info = api.task_info(&short).await;
        assert_eq!(
            short_info["list"][0]["status"], "success",
            "round {round}: a job that ends within the grace keeps running: {short_info}"
        );
        assert_eq!(
            short_info["list"][0]["resCmd"]["stdout"],
            format!("short-{round}\n"),
            "round {round}: short job's output"
        );
        let long_info = api.task_info(&long).await;
        let long_res = &long_info["list"][0]["resCmd"];
        assert_eq!(
            long_info["list"][0]["status"], "canceled",
            "round {round}: a job still running after the grace is canceled: {long_info}"
        );
        assert_eq!(long_res["code"], "canceled", "round {round}: {long_info}");
        assert!(
            long_res["err"]
                .as_str()
                .unwrap_or_default()
                .contains("the agent is stopping"),
            "round {round}: err must say why the job was canceled: {long_info}"
        );
        let late_info = api.task_info(&late).await;
        assert_eq!(
            late_info["list"][0]["status"], "pending",
            "round {round}: a job sent during the drain must wait: {late_info}"
        );

        agent.restart();
        let late_info = api.wait_final(&late, FINAL_LIMIT).await;
        assert_eq!(
            late_info["status"], "success",
            "round {round}: the waiting job runs on the next agent start: {late_info}"
        );
        assert_eq!(
            late_info["list"][0]["resCmd"]["stdout"],
            format!("{late_token}\n"),
            "round {round}: late job's output"
        );
        for task_id in [&short, &long, &late] {
            let info = api.task_info(task_id).await;
            job_ids.push(info["list"][0]["jobid"].as_str().unwrap().to_owned());
        }
    }

    check_stored_once(&coordinator, &job_ids);
    agent.stop();
}

/// Sends the head of an HTTP request and the first half of its body on a
/// new connection, and returns the connection with the rest of the body.
async fn start_request(
    address: std::net::SocketAddr,
    path: &str,
    body: &Value,
) -> (tokio::net::TcpStream, Vec<u8>) {
    let body = body.to_string().into_bytes();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the coordinator");
    stream.write_all(head.as_bytes()).await.unwrap();
    let half = body.len() / 2;
    stream.write_all(&body[..half]).await.unwrap();
    (stream, body[half..].to_vec())
}

/// Sends the rest of a request begun by [`start_request`] and returns the
/// response's status and envelope.
async fn finish_request(mut stream: tokio::net::TcpStream, rest: &[u8]) -> (u16, Value) {
    stream.write_all(rest).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response within 10 s")
        .expect("read the response");
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let envelope = serde_json::from_str(body)
        .unwrap_or_else(|error| panic!("response body is not JSON ({error}): {text:?}"));
    (status, envelope)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_sigterm_answers_waiting_callers() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = CoordinatorProcess::start(dir.path(), COORDINATOR_OPTIONS);
    let api = Api::new(&coordinator.url);
    let mut agent = AgentProcess::start(dir.path(), "st-1", &coordinator.url, AGENT_OPTIONS);
    api.wait_online("st-1", true).await;

    let mut job_ids = Vec::new();
    for round in 0..3 {
        let marker = new_marker();
        let token = format!("st-{round}-{marker}");
        let request = json!({
            "peers": ["st-1"],
            "content": {
                "content": format!("sleep 2; echo {token}"),
                "timeout": 60,
                "env": { "RW_TEST_MARK": marker },
            },
        });
        let sync_api = api.clone();
        let sync_call = tokio::spawn(async move { sync_api.post("/script/sync", &request).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while processes_with_marker(&marker).is_empty() {
            assert!(
                Instant::now() < deadline,
                "round {round}: the job did not start within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A request whose body is still arriving when the shutdown starts.
        let async_body = json!({ "peers": ["st-1"], "content": { "content": "echo too-late" } });
        let (in_flight, rest) =
            start_request(coordinator.address, "/script/async", &async_body).await;

        let signaled = Instant::now();
        coordinator.terminate();
        let (status, envelope) = tokio::time::timeout(Duration::from_secs(5), sync_call)
            .await
            .expect("the waiting sync caller must be answered within 5 s of SIGTERM")
            .expect("sync call task");
        let answered_after = signaled.elapsed();
        let data = &envelope["data"];
        assert_eq!(status, 200, "round {round}: {envelope}");
        assert_eq!(envelope["code"], 0, "round {round}: {envelope}");
        assert_eq!(data["status"], "running", "round {round}: {envelope}");
        assert_eq!(
            data["list"][0]["status"], "running",
            "round {round}: {envelope}"
        );
        assert!(
            answered_after < Duration::from_secs(2),
            "round {round}: the sync caller waited {answered_after:?} instead of getting the state at once"
        );

        let (status, envelope) = finish_request(in_flight, &rest).await;
        assert_eq!(status, 503, "round {round}: {envelope}");
        assert_eq!(envelope["code"], 50301, "round {round}: {envelope}");
        match api.try_post("/script/async", &async_body).await {
            Err(_) => {}
            Ok((status, envelope)) => {
                assert_eq!(
                    status, 503,
                    "round {round}: a new task during shutdown: {envelope}"
                );
                assert_eq!(envelope["code"], 50301, "round {round}: {envelope}");
            }
        }

        let exit = coordinator.wait_exit(Duration::from_secs(10));
        assert!(
            exit.success(),
            "round {round}: coordinator exited with {exit}"
        );
        coordinator.restart();

        let task_id = data["taskid"].as_str().unwrap();
        let info = api.wait_final(task_id, FINAL_LIMIT).await;
        let entry = &info["list"][0];
        assert_eq!(info["status"], "success", "round {round}: {info}");
        assert_eq!(
            entry["resCmd"]["stdout"],
            format!("{token}\n"),
            "round {round}: the result delivered after the restart"
        );
        job_ids.push(entry["jobid"].as_str().unwrap().to_owned());
    }

    check_stored_once(&coordinator, &job_ids);
    let created = coordinator
        .log()
        .lines()
        .filter(|line| line.contains("task created"))
        .count();
    assert_eq!(
        created, 3,
        "only the sync tasks may be created, none during shutdown"
    );
    assert_eq!(
        agent.wait_journal_empty(Duration::from_secs(10)).await,
        0,
        "every result must be acknowledged"
    );
    agent.stop();
}
