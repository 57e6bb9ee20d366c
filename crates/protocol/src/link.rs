//! Messages between an agent and the coordinator.
//!
//! Agents dial the coordinator (so they may sit behind NAT) and open a
//! WebSocket at [`AGENT_LINK_PATH`]. Every message is one JSON text frame,
//! tagged by its `type` field. The agent sends [`AgentMessage::Hello`] first;
//! the coordinator answers [`CoordinatorMessage::Welcome`] or closes the
//! socket with a reason.
//!
//! Calls that expect an answer (live task queries, cancels, script fetches)
//! carry a `request_id` chosen by the asking side, echoed in the answer.

use serde::{Deserialize, Serialize};

use crate::api::{CancelResult, JobRequest, ResCmd, StoredScriptInfo};
use crate::secret::Redacted;
use crate::status::JobStatus;

/// HTTP path of the agent WebSocket on the coordinator.
pub const AGENT_LINK_PATH: &str = "/agent/link";

/// A message from an agent to the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[expect(
    clippy::large_enum_variant,
    reason = "messages live only between decoding and handling, so boxing the result saves nothing"
)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First message on a new connection.
    Hello {
        peer_id: String,
        agent_version: String,
        link_version: u32,
        /// Jobs the agent is still running or queuing from earlier
        /// connections.
        active_jobs: Vec<String>,
    },
    /// The agent has the job (recorded in its journal) and will run it.
    JobAccepted { job_id: String },
    /// The job's process has started.
    JobStarted { job_id: String },
    /// The job ended; sent once per job, and again after a reconnect until
    /// the coordinator acknowledges it.
    JobFinished {
        job_id: String,
        status: JobStatus,
        res_cmd: ResCmd,
    },
    /// Reply to [`CoordinatorMessage::QueryTask`].
    TaskRecord {
        request_id: u64,
        /// `None` when the agent has no job of that task.
        record: Option<AgentJobRecord>,
    },
    /// Reply to [`CoordinatorMessage::CancelJob`].
    CancelDone {
        request_id: u64,
        result: CancelResult,
        /// Status of the job after the cancel, when the agent has the job.
        status: Option<JobStatus>,
    },
    /// Asks for a script body from the script store.
    FetchScript { request_id: u64, name: String },
}

/// A message from the coordinator to an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[expect(
    clippy::large_enum_variant,
    reason = "messages live only between building and sending, so boxing the job saves nothing"
)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CoordinatorMessage {
    /// The coordinator accepted the agent's `Hello`.
    Welcome {
        coordinator_version: String,
        /// The agent's new credential, sent once when the agent enrolled
        /// with a one-time enrollment token on this connection. The agent
        /// must keep it and present it on every later connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential: Option<String>,
    },
    /// Run this job. The only message that carries secret values
    /// (`content.secretEnv`).
    RunJob { job: JobRequest },
    /// The coordinator stored the result of this job, so the agent may
    /// forget it.
    ResultStored { job_id: String },
    /// Cancel this job, killing its process tree if it runs.
    CancelJob {
        request_id: u64,
        job_id: String,
        msg: String,
    },
    /// Asks for the agent's own record of a task's job.
    QueryTask { request_id: u64, task_id: String },
    /// Reply to [`AgentMessage::FetchScript`].
    ScriptBody {
        request_id: u64,
        /// `None` when the store has no script of that name.
        script: Option<FetchedScript>,
    },
}

/// The agent's record of one job, as `/script/peer/taskinfo` relays it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentJobRecord {
    /// The job's request with secret values redacted.
    pub req: Redacted<JobRequest>,
    pub status: JobStatus,
    pub value: ResCmd,
}

/// A script body sent from the script store to an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchedScript {
    pub info: StoredScriptInfo,
    pub content: String,
}
