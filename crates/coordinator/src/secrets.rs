//! Secret environment values (`content.secretEnv`) of jobs not yet
//! delivered, kept in the coordinator's memory only.
//!
//! The store contains each request redacted, so the values live here from
//! the task's creation until the job's agent accepts it or the job ends,
//! whichever comes first. A restart loses them on purpose: a job that had
//! not reached its agent by then ends with `secret_unavailable` when the
//! coordinator tries to send it, instead of running without its secrets.

use std::collections::HashMap;
use std::sync::Mutex;

use runwarden_protocol::api::JobRequest;
use runwarden_protocol::secret::{Redacted, SecretEnv};

/// Secret values of open jobs, by job id. Jobs without secret variables
/// have no entry.
#[derive(Debug, Default)]
pub struct PendingSecrets {
    jobs: Mutex<HashMap<String, SecretEnv>>,
}

/// The stored request names secret variables whose values are gone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the values of secret variables {} are not in memory", .names.join(", "))]
pub struct SecretsUnavailable {
    /// Names of the job's secret variables.
    pub names: Vec<String>,
}

impl PendingSecrets {
    /// Keeps the secret values of `job_id`, replacing earlier ones. An empty
    /// `secret_env` removes the entry.
    pub fn insert(&self, job_id: &str, secret_env: SecretEnv) {
        let mut jobs = self.lock();
        if secret_env.is_empty() {
            jobs.remove(job_id);
        } else {
            jobs.insert(job_id.to_owned(), secret_env);
        }
    }

    /// Forgets the secret values of `job_id`, if any.
    pub fn remove(&self, job_id: &str) {
        self.lock().remove(job_id);
    }

    /// Returns the number of jobs whose secret values are in memory.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the request to send to the agent: `stored` with the job's
    /// secret values put back.
    ///
    /// # Errors
    ///
    /// Fails when `stored` names secret variables and the values in memory
    /// for its job are missing or name other variables.
    pub fn restore(&self, stored: Redacted<JobRequest>) -> Result<JobRequest, SecretsUnavailable> {
        let mut request = stored.into_inner();
        if request.content.secret_env.is_empty() {
            return Ok(request);
        }

        let in_memory = self.lock().get(&request.jobid).cloned();
        match in_memory {
            Some(values) if values.same_names(&request.content.secret_env) => {
                request.content.secret_env = values;
                Ok(request)
            }
            _ => Err(SecretsUnavailable {
                names: request
                    .content
                    .secret_env
                    .names()
                    .map(str::to_owned)
                    .collect(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SecretEnv>> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use runwarden_protocol::api::ScriptContent;

    use super::*;

    fn request_with_secret(value: &str) -> JobRequest {
        let mut content = ScriptContent {
            content: "true".into(),
            ..ScriptContent::default()
        };
        content.secret_env.insert("TOKEN", value);
        JobRequest {
            taskid: "t".into(),
            jobid: "j".into(),
            name: String::new(),
            creater: String::new(),
            content,
        }
    }

    fn secret(value: &str) -> SecretEnv {
        [("TOKEN".to_owned(), value.to_owned())]
            .into_iter()
            .collect()
    }

    #[test]
    fn restore_puts_values_back() {
        let secrets = PendingSecrets::default();
        secrets.insert("j", secret("v1"));

        let stored = Redacted::new(request_with_secret("v1"));
        let request = secrets.restore(stored).unwrap();

        assert_eq!(request.content.secret_env.get("TOKEN"), Some("v1"));
    }

    #[test]
    fn restore_fails_without_values() {
        let secrets = PendingSecrets::default();

        let error = secrets
            .restore(Redacted::new(request_with_secret("v1")))
            .unwrap_err();

        assert_eq!(error.names, ["TOKEN"]);
        assert!(!error.to_string().contains("v1"), "{error}");
    }

    #[test]
    fn request_without_secrets_needs_none() {
        let secrets = PendingSecrets::default();
        let mut request = request_with_secret("v1");
        request.content.secret_env = SecretEnv::new();

        assert!(secrets.restore(Redacted::new(request)).is_ok());
    }

    #[test]
    fn empty_insert_removes_entry() {
        let secrets = PendingSecrets::default();
        secrets.insert("j", secret("v1"));
        secrets.insert("j", SecretEnv::new());

        assert!(secrets.is_empty());
    }
}
