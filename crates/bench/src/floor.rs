//! The floor: the same processes spawned directly from Rust, with no
//! Runwarden in between, measured in the same run as the figures they bound.
//!
//! Each process gets what an agent gives a job: standard input from
//! `/dev/null`, and stdout and stderr on pipes that are read to the end.

use std::io::Read as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Runs `/bin/sh -c true` once and returns how long it took, from spawn to
/// exit with both pipes read.
pub async fn spawn_true() -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = Command::new("/bin/sh")
        .args(["-c", "true"])
        .stdin(Stdio::null())
        .output()
        .await
        .context("failed to spawn /bin/sh -c true")?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!("/bin/sh -c true exited with {}", output.status);
    }
    Ok(elapsed)
}

/// Runs `count` times `/bin/sh -c true`, at most `concurrency` at once, and
/// returns the time until the last one exited.
pub async fn spawn_true_batch(count: usize, concurrency: usize) -> anyhow::Result<Duration> {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let mut running = JoinSet::new();
    for _ in 0..count {
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        running.spawn(async move {
            let outcome = spawn_true().await;
            drop(slot);
            outcome
        });
    }
    while let Some(joined) = running.join_next().await {
        joined.context("a spawn task panicked")??;
    }
    Ok(started.elapsed())
}

/// Spawns `head -c BYTES /dev/zero`, reads its stdout to the end in 64 KiB
/// reads (the agent's read size) with blocking reads on a thread of its own,
/// and returns the bytes read and the time taken.
pub async fn pipe_read(bytes: u64) -> anyhow::Result<(u64, Duration)> {
    tokio::task::spawn_blocking(move || pipe_read_blocking(bytes))
        .await
        .context("the pipe reading thread panicked")?
}

fn pipe_read_blocking(bytes: u64) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut child = std::process::Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/zero"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("failed to spawn head -c N /dev/zero")?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut buffer = vec![0_u8; 64 * 1024];
    let mut total = 0_u64;
    loop {
        let read = match stdout.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(error).context("failed to read head's stdout");
            }
        };
        total += read as u64;
    }
    let status = child.wait().context("failed to wait for head")?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!("head -c {bytes} /dev/zero exited with {status}");
    }
    Ok((total, elapsed))
}
