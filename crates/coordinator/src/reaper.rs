//! Background upkeep of the coordinator's state: jobs whose peer stays away
//! too long, and old tasks.
//!
//! - A pending job its peer never accepted fails with `peer_offline` once
//!   the peer has been offline for `delivery_timeout_secs` since the job was
//!   created (or since the peer went away, whichever is later).
//! - An accepted or running job becomes `lost` once its peer has been
//!   offline for `lost_after_secs`. If the agent reports the job's result
//!   later, the result is ignored, because the job is final.
//! - Finished tasks older than `retention_secs` are deleted with their
//!   output, every `prune_interval_secs`.

use std::time::{Duration, SystemTime};

use runwarden_protocol::api::ResCmd;
use runwarden_protocol::status::{JobStatus, Outcome};
use tracing::{info, warn};

use crate::state::AppState;
use crate::storage::{JobRecord, JobUpdate};
use crate::tasks::apply_job_update;

/// Runs the upkeep passes until the coordinator shuts down.
pub async fn run(state: AppState) {
    let config = &state.config;
    let shortest = config.delivery_timeout_secs.min(config.lost_after_secs);
    let check_every = Duration::from_millis((shortest * 1000 / 4).clamp(100, 5000));
    let prune_every = Duration::from_secs(config.prune_interval_secs);

    let mut check = tokio::time::interval(check_every);
    let mut prune = tokio::time::interval(prune_every);
    loop {
        tokio::select! {
            _ = check.tick() => expire_jobs(&state).await,
            _ = prune.tick() => prune_tasks(&state).await,
            () = state.shutdown.cancelled() => break,
        }
    }
}

async fn expire_jobs(state: &AppState) {
    let jobs = match state.storage.open_jobs().await {
        Ok(jobs) => jobs,
        Err(error) => {
            warn!(%error, "failed to list open jobs; retrying at the next pass");
            return;
        }
    };
    let now = SystemTime::now();

    for job in jobs {
        let Some(offline_since) = state.peers.offline_since(&job.peer_id) else {
            continue;
        };
        if let Some((status, res_cmd)) = expiry(&job, offline_since, now, state) {
            let update = JobUpdate::Finished { status, res_cmd };
            if let Err(error) = apply_job_update(state, &job.job_id, update).await {
                warn!(job_id = %job.job_id, ?error, "failed to expire job");
            }
        }
    }
}

/// The final status of a job whose peer is offline, once its deadline has
/// passed.
fn expiry(
    job: &JobRecord,
    offline_since: SystemTime,
    now: SystemTime,
    state: &AppState,
) -> Option<(JobStatus, ResCmd)> {
    let config = &state.config;
    let waited = |since: SystemTime| now.duration_since(since).unwrap_or_default();

    // NOTE: `accepted` stays false until the agent's confirmation arrives. If
    // the link broke after the job reached the agent but before that, the
    // agent runs the job although it ends here as never delivered, and its
    // result is then ignored.
    if job.status == JobStatus::Pending && !job.accepted {
        let since = offline_since.max(job.created_at);
        let limit = Duration::from_secs(config.delivery_timeout_secs);
        if waited(since) < limit {
            return None;
        }
        let err = format!(
            "peer `{}` stayed offline for {} s, so the job was never delivered and nothing ran; start its agent and submit again",
            job.peer_id,
            limit.as_secs()
        );
        return Some((
            JobStatus::Failed,
            ResCmd::not_run(Outcome::PeerOffline, err),
        ));
    }

    let limit = Duration::from_secs(config.lost_after_secs);
    if waited(offline_since) < limit {
        return None;
    }
    let err = format!(
        "peer `{}` has been offline for over {} s while the job was accepted or running, so its outcome is unknown; check the machine before running it again",
        job.peer_id,
        limit.as_secs()
    );
    Some((JobStatus::Lost, ResCmd::not_run(Outcome::Lost, err)))
}

async fn prune_tasks(state: &AppState) {
    let retention = state.config.retention_secs;
    if retention > 0 {
        let before = SystemTime::now() - Duration::from_secs(retention);
        match state.storage.prune_tasks(before).await {
            Ok(0) => {}
            Ok(count) => info!(count, retention_secs = retention, "pruned old tasks"),
            Err(error) => warn!(%error, "failed to prune old tasks; retrying at the next pass"),
        }
    }

    let retention = state.config.audit_retention_secs;
    if retention == 0 {
        return;
    }
    let before = SystemTime::now() - Duration::from_secs(retention);
    match state.storage.prune_audit(before).await {
        Ok(0) => {}
        Ok(count) => info!(
            count,
            retention_secs = retention,
            "pruned old audit entries"
        ),
        Err(error) => warn!(%error, "failed to prune old audit entries; retrying at the next pass"),
    }
}
