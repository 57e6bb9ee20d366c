//! Timeout: a job whose shell waits for a `sleep 600` child gets a 1-second
//! timeout. Counts the job's processes still alive afterwards, found by a
//! marker variable in their environment. `scripts/bench-salt` checks Salt
//! the same way.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::cluster::{Cluster, ClusterSpec, check_jobs};
use crate::stats::{Better, Figure, Report};

const SECTION: &str = "timeout";

/// Name of the environment variable that marks the job's processes.
const MARKER_VARIABLE: &str = "RW_BENCH_MARK";

/// Time given to the job's processes to disappear after the job's result
/// arrived.
const EXIT_WAIT: Duration = Duration::from_secs(3);

pub async fn run(report: &mut Report) -> anyhow::Result<()> {
    let cluster = Cluster::start(&ClusterSpec::new(1, "timeout")).await?;
    let marker = uuid::Uuid::new_v4().to_string();
    let content = json!({
        "execWay": 0,
        "content": "sleep 600; echo done",
        "timeout": 1,
        "env": { MARKER_VARIABLE: marker },
    });

    let started = Instant::now();
    let data = cluster
        .api
        .sync(&cluster.peers, &content, Duration::from_secs(60))
        .await?;
    let reported_after = started.elapsed();
    check_jobs(&data, "timeout")?;

    let deadline = Instant::now() + EXIT_WAIT;
    let mut leftover = processes_with_marker(&marker);
    while !leftover.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        leftover = processes_with_marker(&marker);
    }
    for pid in &leftover {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    cluster.stop().await?;

    report.push(Figure::new(
        "timeout_reported_after",
        SECTION,
        "`sleep 600; echo done`, timeout 1 s: result after",
        "s",
        Better::Lower,
        &[reported_after.as_secs_f64()],
    ));
    report.push(Figure::new(
        "timeout_leftover",
        SECTION,
        "processes of that job alive 3 s after its result",
        "processes",
        Better::Lower,
        &[leftover.len() as f64],
    ));
    if !leftover.is_empty() {
        report.note(format!(
            "timeout: the timed-out job left processes {leftover:?} running; the bench killed them"
        ));
    }
    Ok(())
}

/// Returns the pids of live processes whose environment contains
/// `RW_BENCH_MARK=<marker>`. Zombies count as gone.
fn processes_with_marker(marker: &str) -> Vec<i32> {
    let needle = format!("{MARKER_VARIABLE}={marker}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let is_zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| {
                stat.rfind(')')
                    .map(|close| stat[close + 2..].starts_with('Z'))
            })
            .unwrap_or(true);
        if is_zombie {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|byte| *byte == 0)
            .any(|var| var == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}
