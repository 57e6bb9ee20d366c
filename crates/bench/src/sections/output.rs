//! Output: a job that prints many bytes to stdout (`head -c N /dev/zero`).
//! The agent runs in its own process, so its peak RSS (VmHWM, reset before
//! each run) is the agent's alone. The capture rate is the bytes over the
//! time of the whole `/script/sync` call. The floor spawns the same `head`
//! and reads its stdout in this process.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::child::ChildProcess;
use crate::cluster::{Cluster, ClusterSpec, check_jobs};
use crate::floor;
use crate::sections::Settings;
use crate::stats::{Better, Figure, Report};

const SECTION: &str = "output";

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let bytes = settings.output_bytes;
    let cluster = Cluster::start(&ClusterSpec::new(0, "output")).await?;
    let data_dir = cluster.work_dir().join("output-agent");
    let agent = ChildProcess::spawn(
        "agent",
        &[
            "agents".to_owned(),
            "--url".to_owned(),
            cluster.api.base_url.clone(),
            "--prefix".to_owned(),
            "output".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
        ],
        Duration::from_secs(30),
    )
    .await?;
    cluster
        .wait_online("output-0", Duration::from_secs(30))
        .await?;
    let idle_rss_kib = agent.rss_kib()?;

    // At least 10 MB/s, or the run counts as hung.
    let limit = Duration::from_secs(60 + bytes / 10_000_000);
    let content = json!({ "execWay": 0, "content": format!("head -c {bytes} /dev/zero") });
    let peers = vec!["output-0".to_owned()];
    let mut rates = Vec::with_capacity(settings.output_runs);
    let mut peaks = Vec::with_capacity(settings.output_runs);
    let mut floor_rates = Vec::with_capacity(settings.output_runs);
    for _ in 0..settings.output_runs {
        agent.reset_peak_rss()?;
        let started = Instant::now();
        let data = cluster.api.sync(&peers, &content, limit).await?;
        let elapsed = started.elapsed();
        check_jobs(&data, "success")?;
        check_captured(&data, bytes)?;
        rates.push(bytes as f64 / 1e6 / elapsed.as_secs_f64());
        peaks.push(agent.peak_rss_kib()? as f64 / 1024.0);

        let (read, floor_elapsed) = floor::pipe_read(bytes).await?;
        if read != bytes {
            bail!("the floor read {read} bytes from head instead of {bytes}");
        }
        floor_rates.push(bytes as f64 / 1e6 / floor_elapsed.as_secs_f64());
    }
    agent.stop().await?;
    cluster.stop().await?;

    let floor = Figure::new(
        "output_floor",
        SECTION,
        &format!("floor: read {} from a pipe in Rust", human_bytes(bytes)),
        "MB/s",
        Better::Higher,
        &floor_rates,
    );
    report.push(
        Figure::new(
            "output_rate",
            SECTION,
            &format!("capture rate, job printing {}", human_bytes(bytes)),
            "MB/s",
            Better::Higher,
            &rates,
        )
        .with_floor(&floor),
    );
    report.push(floor);
    report.push(Figure::new(
        "output_agent_peak_rss",
        SECTION,
        &format!(
            "agent peak RSS during that job (idle: {:.1} MiB)",
            idle_rss_kib as f64 / 1024.0
        ),
        "MiB",
        Better::Lower,
        &peaks,
    ));
    report.note(format!(
        "output: the agent keeps max_output_bytes (default {} bytes) of stdout and counts the rest as dropped",
        runwarden_agent::config::AgentConfig::default().max_output_bytes
    ));
    Ok(())
}

/// Fails unless the job's kept and dropped stdout bytes add up to `bytes`.
fn check_captured(data: &serde_json::Value, bytes: u64) -> anyhow::Result<()> {
    let res_cmd = &data["list"][0]["resCmd"];
    let kept_bytes = res_cmd["stdout"]
        .as_str()
        .with_context(|| format!("the job's resCmd has no stdout: {res_cmd}"))?
        .len() as u64;
    let dropped = res_cmd["stdoutDropped"].as_u64().unwrap_or(0);
    if kept_bytes + dropped != bytes {
        bail!(
            "the agent captured {kept_bytes} bytes and dropped {dropped}, which is not the {bytes} bytes the job printed"
        );
    }
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.1} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.0} MB", bytes as f64 / 1e6)
    }
}
