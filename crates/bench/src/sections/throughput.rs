//! Async jobs per second through one coordinator with 1 and with 4 agents:
//! submit N tasks of `true` through `/script/async`, spread over the agents
//! in turn, and wait until every task is final. The floor spawns the same
//! number of `/bin/sh -c true` with the same concurrency as the agents'
//! `max_concurrent_jobs` together.

use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{StreamExt as _, TryStreamExt as _};

use crate::cluster::{Cluster, ClusterSpec, true_content};
use crate::floor;
use crate::sections::Settings;
use crate::stats::{Better, Figure, Report};

const SECTION: &str = "throughput";

/// `/script/async` requests in flight at once.
const SUBMIT_CONCURRENCY: usize = 16;

/// Pause between two polls of a task that is still running.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let jobs = settings.throughput_jobs;
    let one_agent_cluster = Cluster::start(&ClusterSpec::new(1, "throughput-1")).await?;
    let four_agent_cluster = Cluster::start(&ClusterSpec::new(4, "throughput-4")).await?;
    let per_agent = ClusterSpec::new(1, "x").max_concurrent_jobs;

    // One small batch each first, so that connections and allocations are
    // warm before the measured runs.
    async_batch(&one_agent_cluster, jobs.min(50)).await?;
    async_batch(&four_agent_cluster, jobs.min(50)).await?;

    let mut samples: [Vec<f64>; 4] = Default::default();
    for _ in 0..settings.throughput_runs {
        samples[0].push(rate(jobs, async_batch(&one_agent_cluster, jobs).await?));
        samples[1].push(rate(jobs, floor::spawn_true_batch(jobs, per_agent).await?));
        samples[2].push(rate(jobs, async_batch(&four_agent_cluster, jobs).await?));
        samples[3].push(rate(
            jobs,
            floor::spawn_true_batch(jobs, 4 * per_agent).await?,
        ));
    }
    one_agent_cluster.stop().await?;
    four_agent_cluster.stop().await?;

    let [one_agent, floor_one, four_agents, floor_four] = samples;
    let floor_one = Figure::new(
        "throughput_floor_1",
        SECTION,
        &format!("floor: {jobs} spawns, {per_agent} at once"),
        "jobs/s",
        Better::Higher,
        &floor_one,
    );
    let floor_four = Figure::new(
        "throughput_floor_4",
        SECTION,
        &format!("floor: {jobs} spawns, {} at once", 4 * per_agent),
        "jobs/s",
        Better::Higher,
        &floor_four,
    );
    report.push(
        Figure::new(
            "throughput_1_agent",
            SECTION,
            &format!("{jobs} async jobs `true`, 1 agent"),
            "jobs/s",
            Better::Higher,
            &one_agent,
        )
        .with_floor(&floor_one),
    );
    report.push(floor_one);
    report.push(
        Figure::new(
            "throughput_4_agents",
            SECTION,
            &format!("{jobs} async jobs `true`, 4 agents"),
            "jobs/s",
            Better::Higher,
            &four_agents,
        )
        .with_floor(&floor_four),
    );
    report.push(floor_four);
    report.note(format!(
        "throughput: tasks are submitted {SUBMIT_CONCURRENCY} requests at a time and polled in submission order through /script/taskinfo; each agent runs up to {per_agent} jobs at once (max_concurrent_jobs)"
    ));
    Ok(())
}

fn rate(jobs: usize, elapsed: Duration) -> f64 {
    jobs as f64 / elapsed.as_secs_f64()
}

/// Submits `jobs` tasks of `true`, one peer each, and waits until every one
/// is final. Returns the time from the first submit to the last final task.
async fn async_batch(cluster: &Cluster, jobs: usize) -> anyhow::Result<Duration> {
    let content = true_content();
    let started = Instant::now();
    let task_ids: Vec<String> = futures_util::stream::iter(0..jobs)
        .map(|n| {
            let api = cluster.api.clone();
            let peer = cluster.peers[n % cluster.peers.len()].clone();
            let content = content.clone();
            async move { api.submit(&[peer], &content).await }
        })
        .buffered(SUBMIT_CONCURRENCY)
        .try_collect()
        .await?;

    // Tasks end roughly in submission order, so polling the oldest one that
    // is not final costs about one request per task.
    let limit = Duration::from_secs(60) + Duration::from_millis(50) * jobs as u32;
    for task_id in &task_ids {
        loop {
            let info = cluster.api.task_info(task_id).await?;
            match info["status"].as_str() {
                Some("running") => {}
                Some("success") => break,
                _ => bail!("task {task_id} did not succeed: {info}"),
            }
            if started.elapsed() > limit {
                bail!("task {task_id} still running {limit:?} after the batch started");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    Ok(started.elapsed())
}
