//! Hooks: one `/script/sync` job of `true` without plugins and with the
//! fixture plugins (`deny-dangerous` validating on the coordinator and the
//! agent, `redact-secrets` and `json-result` post-processing on the agent),
//! measured in turns. The policy is the one `benches/hooks.rs` in the
//! `runwarden` crate uses for its whole-job figures.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use runwarden_sandbox::plugin::file_sha256;

use crate::cluster::{Cluster, ClusterSpec, check_jobs, true_content};
use crate::sections::Settings;
use crate::stats::{Better, Figure, Report};

const SECTION: &str = "hooks";

const WARM_UP_CALLS: usize = 3;

const SYNC_LIMIT: Duration = Duration::from_secs(60);

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("failed to create a temporary folder for the policy")?;
    let policy = write_policy(dir.path())?;
    let plain = Cluster::start(&ClusterSpec::new(1, "hooks-none")).await?;
    let hooked_spec = ClusterSpec {
        policy: Some(policy),
        ..ClusterSpec::new(1, "hooks-fixture")
    };
    let hooked = Cluster::start(&hooked_spec).await?;

    for _ in 0..WARM_UP_CALLS {
        timed_sync(&plain).await?;
        timed_sync(&hooked).await?;
    }
    let mut plain_samples = Vec::with_capacity(settings.hook_runs);
    let mut hooked_samples = Vec::with_capacity(settings.hook_runs);
    for _ in 0..settings.hook_runs {
        plain_samples.push(timed_sync(&plain).await?);
        hooked_samples.push(timed_sync(&hooked).await?);
    }
    plain.stop().await?;
    hooked.stop().await?;

    let extra: Vec<f64> = plain_samples
        .iter()
        .zip(&hooked_samples)
        .map(|(plain, hooked)| (hooked.as_secs_f64() - plain.as_secs_f64()) * 1e3)
        .collect();
    report.push(Figure::millis(
        "job_no_hooks",
        SECTION,
        "/script/sync `true`, no plugins",
        &plain_samples,
    ));
    report.push(Figure::millis(
        "job_fixture_hooks",
        SECTION,
        "/script/sync `true`, fixture plugins",
        &hooked_samples,
    ));
    report.push(Figure::new(
        "job_hook_cost",
        SECTION,
        "added by the plugins (paired difference)",
        "ms",
        Better::Lower,
        &extra,
    ));
    report.note("hooks: fixture plugins are deny-dangerous (validate, on the coordinator and the agent), redact-secrets and json-result (post_process, on the agent)");
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

/// Writes a policy with the fixture plugins and returns its path.
fn write_policy(dir: &Path) -> anyhow::Result<PathBuf> {
    let entry = |hook: &str, name: &str| -> anyhow::Result<String> {
        let path = runwarden_fixtures::built_plugin(name);
        let sha256 = file_sha256(&path)
            .with_context(|| format!("failed to read the fixture plugin `{}`", path.display()))?;
        Ok(format!(
            "[[{hook}]]\nname = \"{name}\"\npath = \"{}\"\nsha256 = \"{sha256}\"\n\n",
            path.display()
        ))
    };
    let text = [
        format!("cache_dir = \"{}\"\n\n", dir.join("cache").display()),
        entry("validate", "deny-dangerous")?,
        entry("post_process", "redact-secrets")?,
        entry("post_process", "json-result")?,
    ]
    .concat();
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).with_context(|| format!("failed to write `{}`", path.display()))?;
    Ok(path)
}
