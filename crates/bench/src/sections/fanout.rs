//! Fan-out: one `/script/sync` task of `true` to every agent of a cluster,
//! timed until the coordinator has every result, against spawning the same
//! number of `/bin/sh -c true` all at once.
//!
//! Agents share child processes, `--fanout-agents-per-process` to each,
//! and each runs its job as a real process, so the machine does the same
//! process work as with one agent per host.

use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ClusterSpec, check_jobs, true_content};
use crate::floor;
use crate::sections::Settings;
use crate::stats::{Figure, Report};

const SECTION: &str = "fan-out";

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    for &agents in &settings.fanout_agents {
        let cluster =
            Cluster::start(&ClusterSpec::new(agents, &format!("fanout-{agents}"))).await?;
        let limit = Duration::from_secs(120) + Duration::from_millis(50) * agents as u32;

        // One task first, so that every link and agent is warm.
        timed_fanout(&cluster, limit).await?;

        let mut samples = Vec::with_capacity(settings.fanout_runs);
        let mut floor_samples = Vec::with_capacity(settings.fanout_runs);
        for _ in 0..settings.fanout_runs {
            samples.push(timed_fanout(&cluster, limit).await?);
            floor_samples.push(floor::spawn_true_batch(agents, agents).await?);
        }
        cluster.stop().await?;

        let floor = Figure::millis(
            &format!("fanout_{agents}_floor"),
            SECTION,
            &format!("floor: {agents} spawns at once"),
            &floor_samples,
        );
        report.push(
            Figure::millis(
                &format!("fanout_{agents}"),
                SECTION,
                &format!("one task `true` to {agents} agents, until all results"),
                &samples,
            )
            .with_floor(&floor),
        );
        report.push(floor);
    }
    report.note(match settings.fanout_agents_per_process {
        0 => "fan-out: every agent ran in the bench process, beside the coordinator".to_owned(),
        per_process => format!("fan-out: agents ran {per_process} to a child process"),
    });
    Ok(())
}

async fn timed_fanout(cluster: &Cluster, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let data = cluster
        .api
        .sync(&cluster.peers, &true_content(), limit)
        .await?;
    let elapsed = started.elapsed();
    check_jobs(&data, "success")?;
    Ok(elapsed)
}
