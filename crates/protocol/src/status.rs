//! Job and task statuses, and outcome codes of finished jobs.

use serde::{Deserialize, Serialize};

/// Status of one job (one task on one peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Not yet started by the peer: waiting for dispatch or for a free slot.
    Pending,
    Running,
    /// The process exited with code 0.
    Success,
    /// Non-zero exit, or an error before or while running.
    Failed,
    Timeout,
    Canceled,
    /// A validation hook, a policy or the agent's `[allow]` policy rejected
    /// the job, so nothing ran.
    Rejected,
    /// The peer stopped responding and the job's outcome is unknown.
    Lost,
}

impl JobStatus {
    /// Returns true once the job can change no more.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Pending | JobStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
            JobStatus::Timeout => "timeout",
            JobStatus::Canceled => "canceled",
            JobStatus::Rejected => "rejected",
            JobStatus::Lost => "lost",
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of a task, derived from the statuses of its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Running,
    Success,
    Failed,
    Canceled,
}

impl TaskStatus {
    /// Derives the task status: `running` while any job is pending or
    /// running, then `success` when every job succeeded, `canceled` when
    /// every job was canceled, otherwise `failed`. A task with no jobs is
    /// `failed`, because the API never creates one.
    pub fn from_jobs(jobs: impl IntoIterator<Item = JobStatus>) -> TaskStatus {
        let mut any = false;
        let mut all_success = true;
        let mut all_canceled = true;

        for status in jobs {
            any = true;
            if !status.is_final() {
                return TaskStatus::Running;
            }
            all_success &= status == JobStatus::Success;
            all_canceled &= status == JobStatus::Canceled;
        }

        match (any, all_success, all_canceled) {
            (false, _, _) => TaskStatus::Failed,
            (true, true, _) => TaskStatus::Success,
            (true, _, true) => TaskStatus::Canceled,
            _ => TaskStatus::Failed,
        }
    }

    pub fn is_final(self) -> bool {
        self != TaskStatus::Running
    }
}

/// Machine-readable outcome of a job, carried in `resCmd.code`.
///
/// While a job is pending or running the code is the empty string
/// ([`Outcome::Unset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    #[default]
    #[serde(rename = "")]
    Unset,
    /// The process exited with code 0.
    Ok,
    /// The process exited with a non-zero code or was killed by a signal
    /// that Runwarden did not send.
    ExitNonzero,
    /// The job ran past its timeout and its process tree was killed.
    Timeout,
    /// The job was canceled while running and its process tree was killed.
    Canceled,
    /// The job was canceled before its process started, so nothing ran.
    CanceledBeforeStart,
    /// A validation hook or policy rejected the job, so nothing ran.
    Rejected,
    /// The agent's own `[allow]` policy forbids a value of the job (its
    /// user, interpreter, working directory or timeout), so nothing ran.
    DeniedByAgent,
    /// The coordinator restarted before the job reached its peer, and the
    /// job's secret environment values, which are kept in memory only, were
    /// lost, so nothing ran.
    SecretUnavailable,
    /// The run-as user does not exist on the peer.
    UserNotFound,
    /// The agent may not switch to the run-as user (it does not run as root).
    UserNotPermitted,
    /// The working directory does not exist or is not a directory.
    PathNotFound,
    /// execWay 2 or 3: the named script does not exist.
    ScriptNotFound,
    /// execWay 2: the script name leaves the scripts directory.
    ScriptOutsideDir,
    /// execWay 3: the downloaded script does not match `filehash`.
    HashMismatch,
    /// The interpreter could not be started or the request cannot be run as
    /// given (for example an interpreter with no inline-code flag).
    SpawnFailed,
    /// The job could not be delivered because its peer is not connected.
    PeerOffline,
    /// The peer stopped responding and the job's outcome is unknown.
    Lost,
    /// The agent failed for a reason unrelated to the script; `err` gives the cause.
    AgentError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unset => "",
            Outcome::Ok => "ok",
            Outcome::ExitNonzero => "exit_nonzero",
            Outcome::Timeout => "timeout",
            Outcome::Canceled => "canceled",
            Outcome::CanceledBeforeStart => "canceled_before_start",
            Outcome::Rejected => "rejected",
            Outcome::DeniedByAgent => "denied_by_agent",
            Outcome::SecretUnavailable => "secret_unavailable",
            Outcome::UserNotFound => "user_not_found",
            Outcome::UserNotPermitted => "user_not_permitted",
            Outcome::PathNotFound => "path_not_found",
            Outcome::ScriptNotFound => "script_not_found",
            Outcome::ScriptOutsideDir => "script_outside_dir",
            Outcome::HashMismatch => "hash_mismatch",
            Outcome::SpawnFailed => "spawn_failed",
            Outcome::PeerOffline => "peer_offline",
            Outcome::Lost => "lost",
            Outcome::AgentError => "agent_error",
        }
    }

    /// The job status that a job ending with this outcome gets.
    pub fn job_status(self) -> JobStatus {
        match self {
            Outcome::Unset => JobStatus::Pending,
            Outcome::Ok => JobStatus::Success,
            Outcome::Timeout => JobStatus::Timeout,
            Outcome::Canceled | Outcome::CanceledBeforeStart => JobStatus::Canceled,
            Outcome::Rejected | Outcome::DeniedByAgent => JobStatus::Rejected,
            Outcome::Lost => JobStatus::Lost,
            Outcome::ExitNonzero
            | Outcome::UserNotFound
            | Outcome::UserNotPermitted
            | Outcome::PathNotFound
            | Outcome::ScriptNotFound
            | Outcome::ScriptOutsideDir
            | Outcome::HashMismatch
            | Outcome::SpawnFailed
            | Outcome::PeerOffline
            | Outcome::SecretUnavailable
            | Outcome::AgentError => JobStatus::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_status_running_while_any_open() {
        let status = TaskStatus::from_jobs([JobStatus::Success, JobStatus::Pending]);
        assert_eq!(status, TaskStatus::Running);
    }

    #[test]
    fn task_status_success_needs_all() {
        assert_eq!(
            TaskStatus::from_jobs([JobStatus::Success, JobStatus::Success]),
            TaskStatus::Success
        );
        assert_eq!(
            TaskStatus::from_jobs([JobStatus::Success, JobStatus::Timeout]),
            TaskStatus::Failed
        );
    }

    #[test]
    fn task_status_canceled_needs_all() {
        assert_eq!(
            TaskStatus::from_jobs([JobStatus::Canceled, JobStatus::Canceled]),
            TaskStatus::Canceled
        );
        assert_eq!(
            TaskStatus::from_jobs([JobStatus::Canceled, JobStatus::Success]),
            TaskStatus::Failed
        );
    }

    #[test]
    fn outcome_serializes_as_code() {
        let text = serde_json::to_string(&Outcome::CanceledBeforeStart).unwrap();
        assert_eq!(text, "\"canceled_before_start\"");
        assert_eq!(serde_json::to_string(&Outcome::Unset).unwrap(), "\"\"");
        assert_eq!(Outcome::HashMismatch.as_str(), "hash_mismatch");
    }

    #[test]
    fn new_outcomes_serialize_as_code() {
        for outcome in [Outcome::DeniedByAgent, Outcome::SecretUnavailable] {
            let text = serde_json::to_string(&outcome).unwrap();
            assert_eq!(text, format!("\"{}\"", outcome.as_str()));
        }
        assert_eq!(Outcome::DeniedByAgent.job_status(), JobStatus::Rejected);
        assert_eq!(Outcome::SecretUnavailable.job_status(), JobStatus::Failed);
    }
}
