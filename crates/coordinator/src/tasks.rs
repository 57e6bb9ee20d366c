//! Task logic shared by the HTTP handlers and the agent link: creating and
//! dispatching tasks, applying job updates, and answering task queries.

use std::time::{Duration, SystemTime};

use runwarden_protocol::api::{ExecWay, JobInfo, ResCmd, ScriptRequest, TaskInfo};
use runwarden_protocol::link::CoordinatorMessage;
use runwarden_protocol::secret::{Redacted, SecretEnv};
use runwarden_protocol::status::{JobStatus, Outcome, TaskStatus};
use runwarden_sandbox::HookPoint;
use runwarden_sandbox::sandbox::ValidateOutcome;
use tracing::{info, warn};

use crate::error::ApiError;
use crate::secrets::SecretsUnavailable;
use crate::state::AppState;
use crate::storage::{JobRecord, JobUpdate, TaskRecord};

/// Creates a task with one pending job per peer and hands each job to its
/// agent. A job whose peer is offline waits for it up to the delivery
/// timeout.
///
/// The task is stored with its secret values redacted. The values stay in
/// [`AppState::secrets`] until each job's agent accepts it or the job ends.
///
/// # Errors
///
/// Fails, creating nothing, when a peer has never connected or an execWay 3
/// script is not in the script store.
pub async fn create_task(
    state: &AppState,
    request: ScriptRequest,
    timeout_secs: u32,
) -> Result<TaskRecord, ApiError> {
    for peer in &request.peers {
        if state.storage.peer(peer).await?.is_none() {
            return Err(ApiError::PeerNotFound { peer: peer.clone() });
        }
    }
    if ExecWay::from_code(request.content.exec_way) == Some(ExecWay::StoredScript)
        && state
            .storage
            .script(&request.content.content)
            .await?
            .is_none()
    {
        return Err(ApiError::ScriptNotFound {
            name: request.content.content.clone(),
        });
    }

    // The secret values go to memory before the task reaches the store, so
    // that an agent that connects in between finds them.
    let secret_env = request.content.secret_env.clone();
    let mut task = new_task_record(request, timeout_secs);
    for job in &task.jobs {
        state.secrets.insert(&job.job_id, secret_env.clone());
    }
    run_validate_hooks(state, &mut task, &secret_env).await;
    if let Err(error) = state.storage.insert_task(task.clone()).await {
        for job in &task.jobs {
            state.secrets.remove(&job.job_id);
        }
        return Err(error.into());
    }
    info!(
        task_id = %task.task_id,
        peers = task.jobs.len(),
        exec_way = task.content.exec_way,
        secret_variables = task.content.secret_env.len(),
        timeout_secs,
        creater = %task.creater,
        "task created"
    );

    for job in &task.jobs {
        if job.status == JobStatus::Pending {
            dispatch_job(state, &task, job).await?;
        } else {
            state.task_events.notify(&task.task_id);
        }
    }
    Ok(task)
}

/// Runs the policy's validate plugins on each job before it is stored. A
/// denied job ends `rejected` and is never sent; a changed request replaces
/// the task's request for that job only. `secret_env` is the request's
/// `content.secretEnv` with its values, which plugins see only when their
/// policy entry sets `see_secrets`.
async fn run_validate_hooks(state: &AppState, task: &mut TaskRecord, secret_env: &SecretEnv) {
    if !state.sandbox.has_plugins(HookPoint::Validate) {
        return;
    }

    for index in 0..task.jobs.len() {
        let mut request = task.job_request(&task.jobs[index]).into_inner();
        request.content.secret_env = secret_env.clone();
        let peer_id = task.jobs[index].peer_id.clone();
        let outcome = state.sandbox.validate(&request, &peer_id).await;

        let job = &mut task.jobs[index];
        match outcome {
            ValidateOutcome::Allow { changed_by, .. } if changed_by.is_empty() => {}
            ValidateOutcome::Allow {
                request,
                changed_by,
            } => {
                info!(task_id = %task.task_id, job_id = %job.job_id, plugins = ?changed_by, "job request changed by plugins");
                state
                    .secrets
                    .insert(&job.job_id, request.content.secret_env.clone());
                job.changed_request = Some(Redacted::new(*request));
            }
            ValidateOutcome::Deny { plugin, reason } => {
                state.secrets.remove(&job.job_id);
                job.status = JobStatus::Rejected;
                job.res_cmd = ResCmd::not_run(
                    Outcome::Rejected,
                    ValidateOutcome::rejection_message(&plugin, &reason),
                );
            }
        }
    }
}

fn new_task_record(request: ScriptRequest, timeout_secs: u32) -> TaskRecord {
    let task_id = uuid::Uuid::now_v7().to_string();
    let created_at = SystemTime::now();
    let jobs = request
        .peers
        .iter()
        .map(|peer| JobRecord {
            job_id: uuid::Uuid::now_v7().to_string(),
            task_id: task_id.clone(),
            peer_id: peer.clone(),
            status: JobStatus::Pending,
            res_cmd: ResCmd::default(),
            changed_request: None,
            accepted: false,
            created_at,
        })
        .collect();

    let mut content = request.content;
    content.timeout = i32::try_from(timeout_secs).unwrap_or(i32::MAX);

    TaskRecord {
        task_id,
        name: request.name,
        creater: request.creater,
        created_at,
        content: Redacted::new(content),
        jobs,
    }
}

/// Builds the result of a job that cannot be sent because its secret values
/// are gone.
fn secret_unavailable_result(peer_id: &str, missing: &SecretsUnavailable) -> ResCmd {
    ResCmd::not_run(
        Outcome::SecretUnavailable,
        format!(
            "the coordinator restarted before this job reached peer `{peer_id}`, and the values of its secret variables ({}) are never stored, so nothing ran; submit the task again",
            missing.names.join(", ")
        ),
    )
}

/// Sends a job to its peer if the peer is connected; otherwise the job waits
/// for the peer (see [`crate::reaper`]). A job whose secret values are no
/// longer in memory ends with `secret_unavailable` instead of being sent.
pub async fn dispatch_job(
    state: &AppState,
    task: &TaskRecord,
    job: &JobRecord,
) -> Result<(), ApiError> {
    let request = match state.secrets.restore(task.job_request(job)) {
        Ok(request) => request,
        Err(missing) => {
            warn!(task_id = %task.task_id, job_id = %job.job_id, peer_id = %job.peer_id, secret_variables = missing.names.len(), "secret values of the job are gone, so it is not sent");
            let update = JobUpdate::Finished {
                status: JobStatus::Failed,
                res_cmd: secret_unavailable_result(&job.peer_id, &missing),
            };
            apply_job_update(state, &job.job_id, update).await?;
            return Ok(());
        }
    };

    let message = CoordinatorMessage::RunJob { job: request };
    let sent = match state.peers.get(&job.peer_id) {
        Some(connection) => connection.sender.send(message).await.is_ok(),
        None => false,
    };

    if sent {
        tracing::debug!(task_id = %task.task_id, job_id = %job.job_id, peer_id = %job.peer_id, "job sent to agent");
    } else {
        // The job stays pending: it is sent when the peer connects, or fails
        // with `peer_offline` once the delivery timeout passes.
        info!(task_id = %task.task_id, job_id = %job.job_id, peer_id = %job.peer_id, "peer offline; job waits for it");
    }
    Ok(())
}

/// Applies a job update and wakes the task's waiters. Returns the job as it
/// is now, or `None` when the update did not apply (see
/// [`crate::storage::Storage::update_job`]).
///
/// Every update means the agent has the job or the job has ended, so the
/// job's secret values are dropped from memory whatever the result.
pub async fn apply_job_update(
    state: &AppState,
    job_id: &str,
    update: JobUpdate,
) -> Result<Option<JobRecord>, ApiError> {
    let updated = state.storage.update_job(job_id, update).await;
    state.secrets.remove(job_id);
    let updated = updated?;
    if let Some(job) = &updated {
        if job.status.is_final() {
            info!(
                task_id = %job.task_id,
                job_id = %job.job_id,
                peer_id = %job.peer_id,
                status = %job.status,
                code = job.res_cmd.code.as_str(),
                exit_code = job.res_cmd.exit_code,
                "job finished"
            );
        }
        state.task_events.notify(&job.task_id);
    }
    Ok(updated)
}

/// Builds the `/script/taskinfo` answer for a task.
pub fn task_info(task: &TaskRecord) -> TaskInfo {
    let list = task
        .jobs
        .iter()
        .map(|job| JobInfo {
            jobid: job.job_id.clone(),
            peer_id: job.peer_id.clone(),
            status: job.status,
            res_cmd: job.res_cmd.clone(),
        })
        .collect::<Vec<_>>();

    TaskInfo {
        taskid: task.task_id.clone(),
        status: TaskStatus::from_jobs(list.iter().map(|job| job.status)),
        list,
        name: task.name.clone(),
        creater: task.creater.clone(),
        created_at: humantime::format_rfc3339_millis(task.created_at).to_string(),
    }
}

/// Waits until every job of the task has ended or `limit` has passed, then
/// returns the task as it is.
pub async fn wait_for_task(
    state: &AppState,
    task_id: &str,
    limit: Duration,
) -> Result<TaskInfo, ApiError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut events = state.task_events.subscribe(task_id);

    let outcome = loop {
        let task = match state.storage.task(task_id).await {
            Ok(Some(task)) => task,
            Ok(None) => {
                break Err(ApiError::TaskNotFound {
                    taskid: task_id.to_owned(),
                });
            }
            Err(error) => break Err(error.into()),
        };
        let info = task_info(&task);
        if info.status.is_final() || state.shutdown.is_cancelled() {
            break Ok(info);
        }

        let changed = tokio::select! {
            changed = tokio::time::timeout_at(deadline, events.changed()) => changed,
            () = state.shutdown.cancelled() => continue,
        };
        match changed {
            Ok(Ok(())) => continue,
            // The sender is only dropped once no receiver is left, so this
            // arm is not expected; subscribing again keeps the wait correct.
            Ok(Err(_)) => {
                events = state.task_events.subscribe(task_id);
                continue;
            }
            Err(_) => {
                warn!(
                    task_id,
                    limit_secs = limit.as_secs(),
                    "sync wait ended before the task"
                );
                break Ok(info);
            }
        }
    };

    drop(events);
    state.task_events.release(task_id);
    outcome
}
