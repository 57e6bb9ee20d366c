//! JSON bodies of the REST API.
//!
//! Every response is wrapped in [`Envelope`]. Fields a client may leave out
//! default to empty values, and an explicit JSON `null` counts as left out.
//!
//! These types ignore unknown fields, so that a newer peer's additions do not
//! break an older one. The coordinator's REST edge rejects unknown fields in
//! requests itself, naming the field's full path, so that a misspelt
//! `execway` is an error instead of a silently different run.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::secret::{Redact, Redacted, SecretEnv};
use crate::status::{JobStatus, Outcome, TaskStatus};

/// Response wrapper of every call: `code` 0 means success.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub code: i32,
    pub message: String,
    pub data: Option<T>,
}

impl<T> Envelope<T> {
    pub fn ok(data: T) -> Self {
        Envelope {
            code: 0,
            message: "ok".to_owned(),
            data: Some(data),
        }
    }
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Body of `POST /script/async` and `POST /script/sync`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScriptRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub creater: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub peers: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub content: ScriptContent,
}

impl ScriptRequest {
    /// Returns a copy with every `content.secretEnv` value replaced by
    /// [`REDACTED`](crate::secret::REDACTED); use it wherever the request is
    /// stored, logged or shown.
    pub fn redacted(&self) -> ScriptRequest {
        let mut copy = self.clone();
        copy.redact();
        copy
    }
}

impl Redact for ScriptRequest {
    fn redact(&mut self) {
        self.content.redact();
    }
}

/// Way of running `content.content` on the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecWay {
    /// The interpreter runs `content` as inline code (`sh -c`, `python3 -c`).
    CommandLine = 0,
    /// `content` is the script text, written to a private temporary file.
    InlineContent = 1,
    /// `content` names a script inside the agent's scripts directory.
    NodeScript = 2,
    /// `content` names a script in the coordinator's script store.
    StoredScript = 3,
}

impl ExecWay {
    pub fn from_code(code: i32) -> Option<ExecWay> {
        match code {
            0 => Some(ExecWay::CommandLine),
            1 => Some(ExecWay::InlineContent),
            2 => Some(ExecWay::NodeScript),
            3 => Some(ExecWay::StoredScript),
            _ => None,
        }
    }
}

/// The `content` object of a script request: the script and how to run it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScriptContent {
    /// Working directory on the peer; empty means the run-as user's home.
    #[serde(default, deserialize_with = "null_as_default")]
    pub path: String,
    /// Interpreter; empty means `/bin/sh` for execWay 0, and the script's
    /// `#!` line (or `/bin/sh` without one) for the other ways.
    #[serde(default, deserialize_with = "null_as_default")]
    pub cmd: String,
    /// Environment variables added on top of the run-as user's login
    /// environment.
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: BTreeMap<String, String>,
    /// Environment variables set like `env`, after it, whose values reach
    /// only the job's process. Stored and returned copies contain
    /// [`REDACTED`](crate::secret::REDACTED) in their place. A name may not
    /// also be in `env`. Left out of the JSON when empty.
    #[serde(
        rename = "secretEnv",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "SecretEnv::is_empty"
    )]
    pub secret_env: SecretEnv,
    #[serde(default, deserialize_with = "null_as_default")]
    pub content: String,
    /// Raw execWay code, kept as sent so that an unknown value can be named
    /// in the error; see [`ExecWay::from_code`].
    #[serde(rename = "execWay", default, deserialize_with = "null_as_default")]
    pub exec_way: i32,
    /// execWay 3: lower- or upper-case hex sha256 of the stored script.
    #[serde(default, deserialize_with = "null_as_default")]
    pub filehash: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub user: String,
    /// Seconds; 0 means the coordinator's default.
    #[serde(default, deserialize_with = "null_as_default")]
    pub timeout: i32,
    #[serde(default, deserialize_with = "null_as_default")]
    pub args: Vec<String>,
    /// Written to standard input, which is then closed. Empty means standard
    /// input is `/dev/null`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub input: String,
}

impl ScriptContent {
    /// Returns a copy with every `secretEnv` value replaced by
    /// [`REDACTED`](crate::secret::REDACTED). The names stay.
    pub fn redacted(&self) -> ScriptContent {
        let mut copy = self.clone();
        copy.redact();
        copy
    }
}

impl Redact for ScriptContent {
    fn redact(&mut self) {
        self.secret_env.redact();
    }
}

/// `data` of `POST /script/async`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskCreated {
    pub taskid: String,
}

/// Body of `POST /script/taskinfo`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskInfoRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    pub taskid: String,
}

/// `data` of `POST /script/taskinfo` and `POST /script/sync`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskInfo {
    pub taskid: String,
    pub status: TaskStatus,
    pub list: Vec<JobInfo>,
    pub name: String,
    pub creater: String,
    /// RFC 3339 time at which the coordinator accepted the task.
    #[serde(rename = "createdAt")]
    pub created_at: String,
}

/// One job of a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInfo {
    pub jobid: String,
    #[serde(rename = "peerId")]
    pub peer_id: String,
    pub status: JobStatus,
    #[serde(rename = "resCmd")]
    pub res_cmd: ResCmd,
}

/// Result of a job: output, exit code and outcome.
///
/// See [`crate::output`] for how the output bytes are carried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResCmd {
    pub stdout: String,
    pub stderr: String,
    /// Machine-readable outcome; empty while the job is pending or running.
    pub code: Outcome,
    /// Human-readable error; empty when there is none.
    pub err: String,
    /// Process exit code; 128+N when killed by signal N; -1 when no process
    /// ran or it has not exited yet.
    pub exit_code: i32,
    /// Output of result post-processing hooks; empty without hooks.
    pub res: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
    /// True when stdout went past the output cap and its rest was dropped.
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    /// Bytes of stdout dropped past the output cap.
    #[serde(default)]
    pub stdout_dropped: u64,
    #[serde(default)]
    pub stderr_dropped: u64,
}

impl Default for ResCmd {
    fn default() -> Self {
        ResCmd {
            stdout: String::new(),
            stderr: String::new(),
            code: Outcome::Unset,
            err: String::new(),
            exit_code: -1,
            res: String::new(),
            stdout_base64: None,
            stderr_base64: None,
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_dropped: 0,
            stderr_dropped: 0,
        }
    }
}

impl ResCmd {
    /// A result for a job that ended before any process ran.
    pub fn not_run(code: Outcome, err: impl Into<String>) -> ResCmd {
        ResCmd {
            code,
            err: err.into(),
            ..ResCmd::default()
        }
    }
}

/// Body of `POST /script/peer/taskinfo`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerTaskInfoRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    pub peerid: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub taskid: String,
}

/// `data` of `POST /script/peer/taskinfo`: the peer's own record of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerTaskInfo {
    pub peerid: String,
    /// The job request as the peer stores it, with secret values redacted;
    /// `null` when `err` is set.
    pub req: Option<Redacted<JobRequest>>,
    /// Job status on the peer; `null` when `err` is set.
    pub status: Option<JobStatus>,
    /// The peer's `resCmd`, with the output so far while the job runs.
    pub value: Option<ResCmd>,
    /// Set when the peer is offline, does not reply in time, or has no job of
    /// the task; empty otherwise.
    pub err: String,
}

/// A job as the coordinator hands it to an agent.
///
/// In [`CoordinatorMessage::RunJob`](crate::link::CoordinatorMessage::RunJob)
/// it carries the secret values. Stored and shown copies are
/// [`Redacted<JobRequest>`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub taskid: String,
    pub jobid: String,
    pub name: String,
    pub creater: String,
    /// The request's `content`, with `timeout` set to the effective value in
    /// seconds (the coordinator's default replaces 0).
    pub content: ScriptContent,
}

impl JobRequest {
    /// Returns a copy with every `content.secretEnv` value replaced by
    /// [`REDACTED`](crate::secret::REDACTED).
    pub fn redacted(&self) -> JobRequest {
        let mut copy = self.clone();
        copy.redact();
        copy
    }
}

impl Redact for JobRequest {
    fn redact(&mut self) {
        self.content.redact();
    }
}

/// Body of `POST /script/cancel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    pub tasks: Vec<CancelItem>,
}

/// One job to cancel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelItem {
    #[serde(default, deserialize_with = "null_as_default")]
    pub peerid: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub jobid: String,
    /// Reason for canceling, recorded with the job.
    #[serde(default, deserialize_with = "null_as_default")]
    pub msg: String,
}

/// `data` of `POST /script/cancel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelResponse {
    pub list: Vec<CancelReply>,
}

/// Outcome of canceling one job of a cancel request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelReply {
    pub peerid: String,
    pub jobid: String,
    /// Human-readable account of what happened.
    pub msg: String,
    /// Machine-readable form of `msg`.
    pub result: CancelResult,
}

/// Machine-readable result of canceling one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelResult {
    /// The job was running, and its process tree was killed.
    Canceled,
    /// The job had not started, and now never will.
    CanceledBeforeStart,
    /// The job had already ended; its status is unchanged.
    AlreadyFinished,
    /// No job with that id on that peer.
    NotFound,
    /// The peer is not connected, so the cancel could not be delivered.
    PeerOffline,
    /// The peer did not reply to the cancel in time.
    PeerTimeout,
}

/// Body of `POST /scripts`: a script to put in the script store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptUpload {
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub content: String,
}

/// A script store entry without its body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredScriptInfo {
    pub name: String,
    /// Lower-case hex sha256 of the body.
    pub sha256: String,
    /// Body size in bytes.
    pub size: u64,
    /// RFC 3339 time of the upload.
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

/// A script store entry with its body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredScript {
    #[serde(flatten)]
    pub info: StoredScriptInfo,
    pub content: String,
}

/// `data` of `GET /scripts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptList {
    pub list: Vec<StoredScriptInfo>,
}

/// One agent as the coordinator sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    pub peer_id: String,
    pub online: bool,
    /// RFC 3339 time of the last message from the agent.
    pub last_seen: String,
    pub agent_version: String,
}

/// `data` of `GET /peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerList {
    pub list: Vec<PeerInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_uses_original_field_names() {
        let body = r#"{"name":"n","creater":"c","peers":["p"],
            "content":{"execWay":1,"filehash":"","timeout":5,"env":{"A":"b"}}}"#;
        let request: ScriptRequest = serde_json::from_str(body).unwrap();
        assert_eq!(request.content.exec_way, 1);
        assert_eq!(request.content.timeout, 5);
        assert_eq!(request.content.env["A"], "b");
    }

    #[test]
    fn null_counts_as_absent() {
        let body = r#"{"peers":null,"content":{"env":null,"args":null}}"#;
        let request: ScriptRequest = serde_json::from_str(body).unwrap();
        assert!(request.peers.is_empty());
        assert!(request.content.env.is_empty());
    }

    #[test]
    fn secret_env_is_read_and_redacted() {
        let body = r#"{"peers":["p"],"content":{"env":{"A":"b"},"secretEnv":{"TOKEN":"v4lue"}}}"#;
        let request: ScriptRequest = serde_json::from_str(body).unwrap();
        assert_eq!(request.content.secret_env.get("TOKEN"), Some("v4lue"));

        let text = serde_json::to_string(&request.redacted()).unwrap();
        assert!(
            text.contains(r#""secretEnv":{"TOKEN":"<redacted>"}"#),
            "{text}"
        );
        assert!(!text.contains("v4lue"), "{text}");
        assert_eq!(request.redacted().content.env["A"], "b");
    }

    #[test]
    fn empty_secret_env_is_left_out() {
        let text = serde_json::to_string(&ScriptContent::default()).unwrap();
        assert!(!text.contains("secretEnv"), "{text}");
    }

    #[test]
    fn rescmd_uses_original_field_names() {
        let value = serde_json::to_value(ResCmd::not_run(Outcome::PeerOffline, "x")).unwrap();
        assert_eq!(value["exitCode"], -1);
        assert_eq!(value["code"], "peer_offline");
        assert!(value.get("stdoutBase64").is_none());
    }

    #[test]
    fn job_info_uses_peer_id_spelling() {
        let job = JobInfo {
            jobid: "j".into(),
            peer_id: "p".into(),
            status: JobStatus::Pending,
            res_cmd: ResCmd::default(),
        };
        let value = serde_json::to_value(job).unwrap();
        assert_eq!(value["peerId"], "p");
        assert!(value.get("resCmd").is_some());
    }
}
