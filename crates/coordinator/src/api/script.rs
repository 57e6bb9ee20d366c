//! The five script task calls.

use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use runwarden_protocol::api::{
    CancelItem, CancelReply, CancelRequest, CancelResponse, CancelResult, Envelope, PeerTaskInfo,
    PeerTaskInfoRequest, ResCmd, ScriptRequest, TaskCreated, TaskInfo, TaskInfoRequest,
};
use runwarden_protocol::link::{AgentMessage, CoordinatorMessage};
use runwarden_protocol::status::{JobStatus, Outcome};
use tracing::{info, warn};

use crate::auth::Caller;
use crate::body::JsonBody;
use crate::error::{ApiError, Invalid};
use crate::peers::CallError;
use crate::state::AppState;
use crate::storage::{AuditRecord, JobUpdate};
use crate::tasks::{apply_job_update, create_task, task_info as build_task_info, wait_for_task};
use crate::validate::{validate_cancel_request, validate_script_request};

pub async fn script_async(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<ScriptRequest>,
) -> Result<Json<Envelope<TaskCreated>>, ApiError> {
    let (task, _) = create_audited_task(&state, &caller, request).await?;

    Ok(Json(Envelope::ok(TaskCreated {
        taskid: task.task_id,
    })))
}

pub async fn script_sync(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<ScriptRequest>,
) -> Result<Json<Envelope<TaskInfo>>, ApiError> {
    let (task, timeout_secs) = create_audited_task(&state, &caller, request).await?;

    let limit = Duration::from_secs(u64::from(timeout_secs) + state.config.sync_grace_secs);
    let info = wait_for_task(&state, &task.task_id, limit).await?;
    Ok(Json(Envelope::ok(info)))
}

/// Validates and creates a task, and writes a `task.create` audit entry
/// whether or not that worked. Returns the task and its timeout in seconds.
async fn create_audited_task(
    state: &AppState,
    caller: &Caller,
    request: ScriptRequest,
) -> Result<(crate::storage::TaskRecord, u32), ApiError> {
    let entry = AuditRecord::new(caller, "task.create")
        .creater(request.creater.clone())
        .request(audit_view(&request));

    let created = async {
        refuse_when_shutting_down(state)?;
        let timeout_secs = validate_script_request(&request, &state.config)?;
        let task = create_task(state, request, timeout_secs).await?;
        Ok((task, timeout_secs))
    }
    .await;

    let entry = match &created {
        Ok((task, _)) => entry.target(task.task_id.clone()),
        Err(_) => entry.outcome_of(&created),
    };
    crate::audit::record(state.storage.as_ref(), entry).await;
    created
}

/// Returns the request as the audit log keeps it, with secret values
/// replaced.
fn audit_view(request: &ScriptRequest) -> serde_json::Value {
    let redacted = runwarden_protocol::secret::Redacted::new(request.clone());
    serde_json::to_value(redacted).unwrap_or(serde_json::Value::Null)
}

pub async fn task_info(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<TaskInfoRequest>,
) -> Result<Json<Envelope<TaskInfo>>, ApiError> {
    if request.taskid.is_empty() {
        return Err(field_empty("taskid"));
    }

    let task = state
        .storage
        .task(&request.taskid)
        .await?
        .ok_or(ApiError::TaskNotFound {
            taskid: request.taskid,
        })?;

    Ok(Json(Envelope::ok(build_task_info(&task))))
}

fn refuse_when_shutting_down(state: &AppState) -> Result<(), ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    Ok(())
}

fn field_empty(field: &str) -> ApiError {
    ApiError::Invalid(Invalid::FieldEmpty {
        field: field.to_owned(),
    })
}

pub async fn peer_task_info(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<PeerTaskInfoRequest>,
) -> Result<Json<Envelope<PeerTaskInfo>>, ApiError> {
    if request.peerid.is_empty() {
        return Err(field_empty("peerid"));
    }
    if request.taskid.is_empty() {
        return Err(field_empty("taskid"));
    }
    if state.storage.peer(&request.peerid).await?.is_none() {
        return Err(ApiError::PeerNotFound {
            peer: request.peerid,
        });
    }

    let timeout = Duration::from_secs(state.config.peer_query_timeout_secs);
    let answer = state
        .peers
        .call(
            &request.peerid,
            |request_id| CoordinatorMessage::QueryTask {
                request_id,
                task_id: request.taskid.clone(),
            },
            timeout,
        )
        .await;

    let mut info = PeerTaskInfo {
        peerid: request.peerid.clone(),
        req: None,
        status: None,
        value: None,
        err: String::new(),
    };
    match answer {
        Ok(AgentMessage::TaskRecord {
            record: Some(record),
            ..
        }) => {
            info.req = Some(record.req);
            info.status = Some(record.status);
            info.value = Some(record.value);
        }
        Ok(_) => {
            info.err = format!(
                "peer `{}` has no job of task `{}`; check the taskid, or the agent may have restarted since",
                request.peerid, request.taskid
            );
        }
        Err(CallError::Offline) => {
            info.err = format!(
                "peer `{}` is offline; start its agent or query /script/taskinfo for the last known state",
                request.peerid
            );
        }
        Err(CallError::Timeout) => {
            info.err = format!(
                "peer `{}` did not answer within {} s; it may be overloaded, so try again",
                request.peerid,
                timeout.as_secs()
            );
        }
    }
    Ok(Json(Envelope::ok(info)))
}

pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<CancelRequest>,
) -> Result<Json<Envelope<CancelResponse>>, ApiError> {
    let job_ids: Vec<&str> = request
        .tasks
        .iter()
        .map(|item| item.jobid.as_str())
        .collect();
    let entry = AuditRecord::new(&caller, "task.cancel")
        .target(job_ids.join(","))
        .request(serde_json::to_value(&request).unwrap_or_default());

    let canceled = async {
        validate_cancel_request(&request)?;
        let replies = request
            .tasks
            .iter()
            .cloned()
            .map(|item| cancel_job(&state, item));
        futures_util::future::try_join_all(replies).await
    }
    .await;

    crate::audit::record(state.storage.as_ref(), entry.outcome_of(&canceled)).await;
    Ok(Json(Envelope::ok(CancelResponse { list: canceled? })))
}

async fn cancel_job(state: &AppState, item: CancelItem) -> Result<CancelReply, ApiError> {
    let reply = |result: CancelResult, msg: String| CancelReply {
        peerid: item.peerid.clone(),
        jobid: item.jobid.clone(),
        msg,
        result,
    };

    let job = match state.storage.job(&item.jobid).await? {
        Some(job) if job.peer_id == item.peerid => job,
        _ => {
            let msg = format!(
                "not found: peer `{}` has no job `{}`",
                item.peerid, item.jobid
            );
            return Ok(reply(CancelResult::NotFound, msg));
        }
    };
    if job.status.is_final() {
        let msg = format!("already finished with status {}", job.status);
        return Ok(reply(CancelResult::AlreadyFinished, msg));
    }

    info!(task_id = %job.task_id, job_id = %job.job_id, peer_id = %job.peer_id, reason = %item.msg, "cancel requested");
    let timeout = Duration::from_secs(state.config.cancel_timeout_secs);
    let answer = state
        .peers
        .call(
            &item.peerid,
            |request_id| CoordinatorMessage::CancelJob {
                request_id,
                job_id: item.jobid.clone(),
                msg: item.msg.clone(),
            },
            timeout,
        )
        .await;

    match answer {
        Ok(AgentMessage::CancelDone {
            result: CancelResult::NotFound,
            ..
        }) => cancel_unreachable_job(state, &job, &item, reply, true).await,
        Err(CallError::Offline) => cancel_unreachable_job(state, &job, &item, reply, false).await,
        Ok(AgentMessage::CancelDone { result, status, .. }) => {
            let msg = match result {
                CancelResult::Canceled => "canceled: the job's process tree was killed".to_owned(),
                CancelResult::CanceledBeforeStart => {
                    "canceled before it started; nothing ran".to_owned()
                }
                CancelResult::AlreadyFinished => format!(
                    "already finished with status {}",
                    status.map_or("unknown", JobStatus::as_str)
                ),
                other => format!("{other:?}"),
            };
            Ok(reply(result, msg))
        }
        Ok(other) => {
            warn!(job_id = %item.jobid, ?other, "agent answered a cancel with an unexpected message");
            Ok(reply(
                CancelResult::PeerTimeout,
                "the peer answered the cancel with an unexpected message; query the job with /script/peer/taskinfo".to_owned(),
            ))
        }
        Err(CallError::Timeout) => Ok(reply(
            CancelResult::PeerTimeout,
            format!(
                "the peer did not confirm the cancel within {} s; query the job with /script/peer/taskinfo",
                timeout.as_secs()
            ),
        )),
    }
}

/// Cancels a job its agent cannot act on: the peer is offline, or the agent
/// does not know the job (`agent_lacks_job`). A pending job that the agent
/// never accepted, or no longer has, never started, so it ends as canceled.
/// A running job, or a pending one in the queue of the offline agent, may
/// still run, so its outcome is unknown and it stays as it is.
async fn cancel_unreachable_job(
    state: &AppState,
    job: &crate::storage::JobRecord,
    item: &CancelItem,
    reply: impl Fn(CancelResult, String) -> CancelReply,
    agent_lacks_job: bool,
) -> Result<CancelReply, ApiError> {
    if job.status == JobStatus::Pending && (agent_lacks_job || !job.accepted) {
        let err = format!("canceled before start: {}", item.msg);
        let update = JobUpdate::Finished {
            status: JobStatus::Canceled,
            res_cmd: ResCmd::not_run(Outcome::CanceledBeforeStart, err),
        };
        if apply_job_update(state, &job.job_id, update)
            .await?
            .is_some()
        {
            return Ok(reply(
                CancelResult::CanceledBeforeStart,
                "canceled before it started; nothing ran".to_owned(),
            ));
        }
        let status = state
            .storage
            .job(&job.job_id)
            .await?
            .map_or("unknown", |job| job.status.as_str());
        return Ok(reply(
            CancelResult::AlreadyFinished,
            format!("already finished with status {status}"),
        ));
    }

    Ok(reply(
        CancelResult::PeerOffline,
        format!(
            "peer `{}` is offline or lost the job; the job's outcome is unknown until the agent reports it",
            item.peerid
        ),
    ))
}
