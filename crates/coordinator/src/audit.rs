//! The audit log: who did what, from where, and whether it worked.
//!
//! Every entry is stored (see [`crate::storage::AuditRecord`]) and written
//! as an `info` log line with target `runwarden::audit`. Requests are
//! stored with secret values already replaced, and never with a token.

use std::time::SystemTime;

use tracing::{error, info};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::storage::{AuditRecord, Storage};

/// Maximum length of the request JSON written into an audit log line; the stored entry
/// keeps the whole request.
const LOGGED_REQUEST_BYTES: usize = 2048;

impl AuditRecord {
    /// Starts an entry for `action` by `caller`, with outcome `ok` and no
    /// request.
    pub fn new(caller: &Caller, action: &str) -> AuditRecord {
        AuditRecord {
            id: 0,
            time: SystemTime::now(),
            action: action.to_owned(),
            outcome: "ok".to_owned(),
            token: caller.token.clone(),
            creater: String::new(),
            source: caller.source.clone(),
            target: String::new(),
            request: serde_json::Value::Null,
        }
    }

    pub fn token(mut self, token: impl Into<String>) -> AuditRecord {
        self.token = token.into();
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> AuditRecord {
        self.target = target.into();
        self
    }

    pub fn creater(mut self, creater: impl Into<String>) -> AuditRecord {
        self.creater = creater.into();
        self
    }

    /// Sets the request. The caller must have replaced secret values.
    pub fn request(mut self, request: serde_json::Value) -> AuditRecord {
        self.request = request;
        self
    }

    /// Sets the outcome from a handler's result: `ok`, or the error code.
    pub fn outcome_of<T>(mut self, result: &Result<T, ApiError>) -> AuditRecord {
        if let Err(error) = result {
            self.outcome = error.code().to_string();
        }
        self
    }

    pub fn outcome(mut self, outcome: impl Into<String>) -> AuditRecord {
        self.outcome = outcome.into();
        self
    }
}

/// Writes `record` as a log line and stores it. A storage failure is
/// logged and swallowed, because the action it describes already happened;
/// the log line still contains the entry.
pub async fn record(storage: &dyn Storage, record: AuditRecord) {
    let mut request = record.request.to_string();
    if request.len() > LOGGED_REQUEST_BYTES {
        let mut end = LOGGED_REQUEST_BYTES;
        while !request.is_char_boundary(end) {
            end -= 1;
        }
        request.truncate(end);
        request.push_str("…(truncated)");
    }
    info!(
        target: "runwarden::audit",
        action = %record.action,
        outcome = %record.outcome,
        token = %record.token,
        creater = %record.creater,
        source = %record.source,
        target_id = %record.target,
        request = %request,
        "audit"
    );

    let action = record.action.clone();
    if let Err(error) = storage.insert_audit(record).await {
        error!(%error, action, "failed to store an audit entry; it is only in this log");
    }
}
