//! Latency of one `/script/sync` call that runs `true` on one agent, with
//! memory storage, with SQLite storage, and with SQLite storage and
//! authentication on, against spawning `/bin/sh -c true` directly.
//!
//! The three are measured in turns (one call each, then again), so that
//! noise from the rest of the machine falls on all of them alike.

use std::time::{Duration, Instant};

use runwarden_coordinator::config::StorageKind;

use crate::cluster::{Cluster, ClusterSpec, check_jobs, true_content};
use crate::floor;
use crate::sections::Settings;
use crate::stats::{Figure, Report};

const SECTION: &str = "latency";

/// Calls made before measuring, so that connections, caches and the
/// database file are warm.
const WARM_UP_CALLS: usize = 5;

const SYNC_LIMIT: Duration = Duration::from_secs(60);

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let memory = Cluster::start(&ClusterSpec::new(1, "latency-memory")).await?;
    let sqlite_spec = ClusterSpec {
        storage: StorageKind::Sqlite,
        ..ClusterSpec::new(1, "latency-sqlite")
    };
    let sqlite = Cluster::start(&sqlite_spec).await?;
    let auth_spec = ClusterSpec {
        storage: StorageKind::Sqlite,
        auth: true,
        ..ClusterSpec::new(1, "latency-auth")
    };
    let auth = Cluster::start(&auth_spec).await?;

    for _ in 0..WARM_UP_CALLS {
        timed_sync(&memory).await?;
        timed_sync(&sqlite).await?;
        timed_sync(&auth).await?;
        floor::spawn_true().await?;
    }

    let runs = settings.latency_runs;
    let mut memory_samples = Vec::with_capacity(runs);
    let mut sqlite_samples = Vec::with_capacity(runs);
    let mut auth_samples = Vec::with_capacity(runs);
    let mut floor_samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        memory_samples.push(timed_sync(&memory).await?);
        sqlite_samples.push(timed_sync(&sqlite).await?);
        auth_samples.push(timed_sync(&auth).await?);
        floor_samples.push(floor::spawn_true().await?);
    }
    memory.stop().await?;
    sqlite.stop().await?;
    auth.stop().await?;

    let floor = Figure::millis(
        "sync_floor",
        SECTION,
        "floor: spawn /bin/sh -c true from Rust, wait, read pipes",
        &floor_samples,
    );
    report.push(
        Figure::millis(
            "sync_latency_memory",
            SECTION,
            "/script/sync `true`, 1 agent, memory storage",
            &memory_samples,
        )
        .with_floor(&floor),
    );
    report.push(
        Figure::millis(
            "sync_latency_sqlite",
            SECTION,
            "/script/sync `true`, 1 agent, SQLite storage",
            &sqlite_samples,
        )
        .with_floor(&floor),
    );
    report.push(
        Figure::millis(
            "sync_latency_sqlite_auth",
            SECTION,
            "/script/sync `true`, 1 agent, SQLite storage, [auth] on (token check and audit entry)",
            &auth_samples,
        )
        .with_floor(&floor),
    );
    report.push(floor);
    Ok(())
}

async fn timed_sync(cluster: &Cluster) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let data = cluster
        .api
        .sync(&cluster.peers, &true_content(), SYNC_LIMIT)
        .await?;
    let elapsed = started.elapsed();
    check_jobs(&data, "success")?;
    Ok(elapsed)
}
