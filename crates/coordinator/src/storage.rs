//! The coordinator's state store: tasks, jobs, stored scripts and peers.
//!
//! Handlers talk only to the [`Storage`] trait, so a durable backend can
//! replace [`memory::MemoryStorage`] without touching them. Implementations
//! must make each method atomic: in particular [`Storage::update_job`] must
//! never let a final job change again, because a cancel and a normal end can
//! race and the first to land decides the job's result.
//!
//! Requests are stored redacted: [`TaskRecord::content`] and
//! [`JobRecord::changed_request`] are [`Redacted`] values, which can only be
//! built by replacing every secret value with `<redacted>`, so no backend
//! can be handed a secret. The values wait in
//! [`crate::secrets::PendingSecrets`] instead.

pub mod memory;
pub mod sqlite;

use std::time::SystemTime;

use async_trait::async_trait;
use runwarden_protocol::api::{JobRequest, ResCmd, ScriptContent, StoredScript, StoredScriptInfo};
use runwarden_protocol::secret::Redacted;
use runwarden_protocol::status::JobStatus;

use crate::auth::token::{Scope, TokenKind};

/// A task with its jobs.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub task_id: String,
    pub name: String,
    pub creater: String,
    pub created_at: SystemTime,
    /// The request's `content` with the effective timeout filled in and
    /// secret values redacted.
    pub content: Redacted<ScriptContent>,
    pub jobs: Vec<JobRecord>,
}

impl TaskRecord {
    /// Builds the redacted request of one job of this task: the task's,
    /// unless a validate plugin changed it for this job.
    /// [`crate::secrets::PendingSecrets::restore`] puts the secret values
    /// back before the job is sent.
    pub fn job_request(&self, job: &JobRecord) -> Redacted<JobRequest> {
        if let Some(changed) = &job.changed_request {
            return changed.clone();
        }
        Redacted::new(JobRequest {
            taskid: self.task_id.clone(),
            jobid: job.job_id.clone(),
            name: self.name.clone(),
            creater: self.creater.clone(),
            content: (*self.content).clone(),
        })
    }
}

/// One job: one task on one peer.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub job_id: String,
    pub task_id: String,
    pub peer_id: String,
    pub status: JobStatus,
    pub res_cmd: ResCmd,
    /// The job's request, redacted, when a validate plugin changed it;
    /// `None` means the task's request.
    pub changed_request: Option<Redacted<JobRequest>>,
    /// True once the peer's agent confirmed it has the job (queued or
    /// running); a pending job that was never accepted may be sent again.
    pub accepted: bool,
    /// When the task, and so the job, was created.
    pub created_at: SystemTime,
}

/// A change to a job.
#[derive(Debug, Clone)]
pub enum JobUpdate {
    /// The peer's agent has the job. Applies only to a pending job.
    Accepted,
    /// The peer started the job's process. Applies only to a pending job.
    Started,
    /// The job ended. Applies only to a job that is not final yet.
    Finished { status: JobStatus, res_cmd: ResCmd },
}

/// An agent the coordinator has seen.
#[derive(Debug, Clone)]
pub struct PeerRecord {
    pub peer_id: String,
    pub agent_version: String,
    pub last_seen: SystemTime,
}

/// A stored token: an API token, an enrollment token or an agent
/// credential. The secret itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    /// Public id, the middle part of the token string.
    pub token_id: String,
    /// Name shown in the audit log: chosen by the admin for API tokens,
    /// `enroll:<peer or *>` for enrollment tokens and `agent:<peer>` for
    /// agent credentials. No two tokens that are not revoked share a name.
    pub name: String,
    pub kind: TokenKind,
    /// Level of an API token; `None` for the other kinds.
    pub scope: Option<Scope>,
    /// The peer an agent credential belongs to, or the only peer an
    /// enrollment token may enroll (`None`: any peer).
    pub peer_id: Option<String>,
    /// Hex SHA-256 of the token's secret part.
    pub secret_hash: String,
    pub created_at: SystemTime,
    pub expires_at: Option<SystemTime>,
    /// When the token was revoked, or when an enrollment token was used.
    pub revoked_at: Option<SystemTime>,
}

/// Why [`Storage::enroll`] did not enroll a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollRefusal {
    /// The enrollment token is unknown, or was already used or revoked.
    TokenUsed,
    /// The peer already has a credential that is not revoked.
    PeerEnrolled,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Increasing id assigned by the store; ignored on insert.
    pub id: i64,
    pub time: SystemTime,
    /// Name of the action, such as `task.create` or `auth.denied`.
    pub action: String,
    /// `ok`, or the error code the caller got.
    pub outcome: String,
    /// Name of the token used; empty when authentication is off or no
    /// valid token was presented.
    pub token: String,
    /// The `creater` the request named, if any.
    pub creater: String,
    /// The caller's IP address and port.
    pub source: String,
    /// Object of the action: a task id, script name, token name or peer
    /// id.
    pub target: String,
    /// The request with secret values replaced; `null` when there is none.
    pub request: serde_json::Value,
}

/// Filter and page of an audit log listing, oldest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries with an id above this one.
    pub after_id: i64,
    pub action: Option<String>,
    pub token: Option<String>,
    pub limit: usize,
}

/// A failure of the storage backend itself (not a missing record).
#[derive(Debug, thiserror::Error)]
#[error("storage failed to {operation}: {message}")]
pub struct StorageError {
    pub operation: &'static str,
    pub message: String,
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Stores a new task with its jobs.
    async fn insert_task(&self, task: TaskRecord) -> Result<(), StorageError>;

    async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, StorageError>;

    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StorageError>;

    /// Applies `update` to a job and returns the job as it is now, or `None`
    /// when the job is unknown or the update does not apply (a `Started` for
    /// a job that is no longer pending, or a `Finished` for a final job).
    async fn update_job(
        &self,
        job_id: &str,
        update: JobUpdate,
    ) -> Result<Option<JobRecord>, StorageError>;

    /// Jobs on `peer_id` that are pending or running.
    async fn open_jobs_on_peer(&self, peer_id: &str) -> Result<Vec<JobRecord>, StorageError>;

    /// Every job that is pending or running, on any peer.
    async fn open_jobs(&self) -> Result<Vec<JobRecord>, StorageError>;

    /// Deletes tasks created before `before` whose jobs are all final, with
    /// their jobs and output, and returns how many tasks it deleted.
    async fn prune_tasks(&self, before: SystemTime) -> Result<u64, StorageError>;

    /// Stores a script, replacing any script of the same name.
    async fn put_script(&self, script: StoredScript) -> Result<(), StorageError>;

    async fn script(&self, name: &str) -> Result<Option<StoredScript>, StorageError>;

    /// Lists stored scripts by name.
    async fn list_scripts(&self) -> Result<Vec<StoredScriptInfo>, StorageError>;

    /// Deletes a script and returns whether it existed.
    async fn delete_script(&self, name: &str) -> Result<bool, StorageError>;

    /// Records that an agent connected or sent a message.
    async fn upsert_peer(&self, peer: PeerRecord) -> Result<(), StorageError>;

    async fn peer(&self, peer_id: &str) -> Result<Option<PeerRecord>, StorageError>;

    /// Lists known peers by id.
    async fn peers(&self) -> Result<Vec<PeerRecord>, StorageError>;

    /// Stores a new token. Returns false, storing nothing, when a token
    /// with the same name exists and is not revoked.
    async fn insert_token(&self, token: TokenRecord) -> Result<bool, StorageError>;

    async fn token(&self, token_id: &str) -> Result<Option<TokenRecord>, StorageError>;

    /// Lists every token, revoked ones included, by creation time.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StorageError>;

    /// Revokes the token of this name that is not revoked yet, and returns
    /// it as it is now, or `None` when there is none.
    async fn revoke_token(
        &self,
        name: &str,
        at: SystemTime,
    ) -> Result<Option<TokenRecord>, StorageError>;

    /// In one step: marks the enrollment token used, checks that `peer_id`
    /// has no credential that is not revoked, and stores `credential`.
    /// Expiry and the token's peer restriction are checked by the caller.
    async fn enroll(
        &self,
        enrollment_id: &str,
        credential: TokenRecord,
        at: SystemTime,
    ) -> Result<Result<(), EnrollRefusal>, StorageError>;

    /// Appends an entry to the audit log and returns its id.
    async fn insert_audit(&self, record: AuditRecord) -> Result<i64, StorageError>;

    async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, StorageError>;

    /// Deletes audit entries older than `before` and returns how many.
    async fn prune_audit(&self, before: SystemTime) -> Result<u64, StorageError>;
}
