//! Memory: the coordinator's RSS with no agent and with many idle agents,
//! and one idle agent's RSS.
//!
//! The coordinator runs alone in a child process, so its RSS contains nothing
//! of the bench itself. The idle agents run in another child: lightweight
//! WebSocket connections that speak the link protocol's `Hello` and then
//! idle as an agent does. The single agent is a full `RunningAgent` in its
//! own child. Each figure's runs are RSS readings 200 ms apart.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::child::ChildProcess;
use crate::cluster::Api;
use crate::sections::Settings;
use crate::stats::{Better, Figure, Report};

const SECTION: &str = "memory";

/// Time given to a child after it is ready and before its RSS is read, for
/// work that follows a connection (first pings, allocator settling).
const SETTLE: Duration = Duration::from_secs(2);

const READY_LIMIT: Duration = Duration::from_secs(30);

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    measure_single_agent(settings, report).await?;
    for &agents in &settings.idle_agents {
        measure_idle_agents(settings, report, agents).await?;
    }
    report.note(
        "memory: the single agent is the bench binary running one RunningAgent with the default configuration in its own process; idle agents are WebSocket connections from another process",
    );
    Ok(())
}

async fn measure_single_agent(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let coordinator = ChildProcess::spawn(
        "coordinator",
        &args(&["coordinator", "--agents", "1"]),
        READY_LIMIT,
    )
    .await?;
    let api = Api::new(coordinator.ready.clone());
    tokio::time::sleep(SETTLE).await;
    let (coordinator_alone, _) = sample_memory_mib(&coordinator, settings.rss_samples).await?;

    let data_dir = tempfile::tempdir()?;
    let agent = ChildProcess::spawn(
        "agent",
        &args(&[
            "agents",
            "--url",
            &coordinator.ready,
            "--prefix",
            "rss-agent",
            "--data-dir",
            &data_dir.path().display().to_string(),
        ]),
        READY_LIMIT,
    )
    .await?;
    wait_online(&api, "rss-agent-0").await?;
    tokio::time::sleep(SETTLE).await;
    let (agent_rss, agent_pss) = sample_memory_mib(&agent, settings.rss_samples).await?;
    agent.stop().await?;
    coordinator.stop().await?;

    report.push(Figure::new(
        "coordinator_rss_0",
        SECTION,
        "coordinator RSS, no agent",
        "MiB",
        Better::Lower,
        &coordinator_alone,
    ));
    report.push(Figure::new(
        "agent_rss_idle",
        SECTION,
        "one idle agent RSS (own process)",
        "MiB",
        Better::Lower,
        &agent_rss,
    ));
    report.push(Figure::new(
        "agent_pss_idle",
        SECTION,
        "one idle agent PSS (own process)",
        "MiB",
        Better::Lower,
        &agent_pss,
    ));
    Ok(())
}

async fn measure_idle_agents(
    settings: &Settings,
    report: &mut Report,
    agents: usize,
) -> anyhow::Result<()> {
    let agents_text = agents.to_string();
    let coordinator = ChildProcess::spawn(
        "coordinator",
        &args(&["coordinator", "--agents", &agents_text]),
        READY_LIMIT,
    )
    .await?;
    tokio::time::sleep(SETTLE).await;
    let (before, _) = sample_memory_mib(&coordinator, settings.rss_samples).await?;
    let before_median = Figure::new("x", SECTION, "x", "MiB", Better::Lower, &before).median;

    let dial_limit = READY_LIMIT + Duration::from_millis(20) * agents as u32;
    let idle = ChildProcess::spawn(
        "idle agents",
        &args(&[
            "idle-agents",
            "--url",
            &coordinator.ready,
            "--count",
            &agents_text,
            "--prefix",
            "idle",
        ]),
        dial_limit,
    )
    .await?;
    tokio::time::sleep(SETTLE).await;
    let (with_agents, with_agents_pss) =
        sample_memory_mib(&coordinator, settings.rss_samples).await?;
    idle.stop().await?;
    coordinator.stop().await?;

    let per_agent_kib: Vec<f64> = with_agents
        .iter()
        .map(|mib| (mib - before_median) * 1024.0 / agents as f64)
        .collect();
    report.push(Figure::new(
        &format!("coordinator_rss_{agents}"),
        SECTION,
        &format!("coordinator RSS, {agents} idle agents"),
        "MiB",
        Better::Lower,
        &with_agents,
    ));
    report.push(Figure::new(
        &format!("coordinator_pss_{agents}"),
        SECTION,
        &format!("coordinator PSS, {agents} idle agents"),
        "MiB",
        Better::Lower,
        &with_agents_pss,
    ));
    report.push(Figure::new(
        &format!("coordinator_rss_per_agent_{agents}"),
        SECTION,
        &format!("coordinator RSS per idle agent, at {agents}"),
        "KiB",
        Better::Lower,
        &per_agent_kib,
    ));
    Ok(())
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| (*part).to_owned()).collect()
}

/// Reads a child's RSS and PSS `samples` times, 200 ms apart, in MiB. PSS
/// splits pages shared with other processes among them, so it is the figure
/// to add up over processes, as for Salt's forked workers.
async fn sample_memory_mib(
    child: &ChildProcess,
    samples: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut rss = Vec::with_capacity(samples);
    let mut pss = Vec::with_capacity(samples);
    for n in 0..samples {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        rss.push(child.rss_kib()? as f64 / 1024.0);
        pss.push(child.pss_kib()? as f64 / 1024.0);
    }
    Ok((rss, pss))
}

async fn wait_online(api: &Api, peer_id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_LIMIT;
    while !api.is_online(peer_id).await? {
        if Instant::now() >= deadline {
            bail!("agent {peer_id} did not connect within {READY_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
