//! In-memory [`Storage`]: fast, and lost when the coordinator stops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use runwarden_protocol::api::{StoredScript, StoredScriptInfo};
use runwarden_protocol::status::JobStatus;

use super::{
    AuditQuery, AuditRecord, EnrollRefusal, JobRecord, JobUpdate, PeerRecord, Storage,
    StorageError, TaskRecord, TokenRecord,
};
use crate::auth::token::TokenKind;

#[derive(Debug, Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: HashMap<String, TaskRecord>,
    /// Job id to (task id, index in the task's `jobs`).
    job_index: HashMap<String, (String, usize)>,
    scripts: BTreeMap<String, StoredScript>,
    peers: BTreeMap<String, PeerRecord>,
    /// Tokens in creation order.
    tokens: Vec<TokenRecord>,
    /// Audit entries in id order.
    audit: Vec<AuditRecord>,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind, never a
        // half-applied update, because every update is a single assignment.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn active_token_named(&self, name: &str) -> Option<usize> {
        self.tokens
            .iter()
            .position(|token| token.name == name && token.revoked_at.is_none())
    }

    fn job_mut(&mut self, job_id: &str) -> Option<&mut JobRecord> {
        let (task_id, index) = self.job_index.get(job_id)?;
        self.tasks.get_mut(task_id)?.jobs.get_mut(*index)
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn insert_task(&self, task: TaskRecord) -> Result<(), StorageError> {
        let mut inner = self.lock();
        for (index, job) in task.jobs.iter().enumerate() {
            inner
                .job_index
                .insert(job.job_id.clone(), (task.task_id.clone(), index));
        }
        inner.tasks.insert(task.task_id.clone(), task);
        Ok(())
    }

    async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, StorageError> {
        Ok(self.lock().tasks.get(task_id).cloned())
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StorageError> {
        Ok(self.lock().job_mut(job_id).map(|job| job.clone()))
    }

    async fn update_job(
        &self,
        job_id: &str,
        update: JobUpdate,
    ) -> Result<Option<JobRecord>, StorageError> {
        let mut inner = self.lock();
        let Some(job) = inner.job_mut(job_id) else {
            return Ok(None);
        };

        match update {
            JobUpdate::Accepted if job.status == JobStatus::Pending && !job.accepted => {
                job.accepted = true;
            }
            JobUpdate::Started if job.status == JobStatus::Pending => {
                job.accepted = true;
                job.status = JobStatus::Running;
            }
            JobUpdate::Finished { status, res_cmd } if !job.status.is_final() => {
                job.status = status;
                job.res_cmd = res_cmd;
            }
            _ => return Ok(None),
        }
        Ok(Some(job.clone()))
    }

    async fn open_jobs_on_peer(&self, peer_id: &str) -> Result<Vec<JobRecord>, StorageError> {
        let inner = self.lock();
        let jobs = inner
            .tasks
            .values()
            .flat_map(|task| task.jobs.iter())
            .filter(|job| job.peer_id == peer_id && !job.status.is_final())
            .cloned()
            .collect();
        Ok(jobs)
    }

    async fn open_jobs(&self) -> Result<Vec<JobRecord>, StorageError> {
        let inner = self.lock();
        let jobs = inner
            .tasks
            .values()
            .flat_map(|task| task.jobs.iter())
            .filter(|job| !job.status.is_final())
            .cloned()
            .collect();
        Ok(jobs)
    }

    async fn prune_tasks(&self, before: SystemTime) -> Result<u64, StorageError> {
        let mut inner = self.lock();
        let old: Vec<String> = inner
            .tasks
            .values()
            .filter(|task| task.created_at < before)
            .filter(|task| task.jobs.iter().all(|job| job.status.is_final()))
            .map(|task| task.task_id.clone())
            .collect();
        for task_id in &old {
            if let Some(task) = inner.tasks.remove(task_id) {
                for job in task.jobs {
                    inner.job_index.remove(&job.job_id);
                }
            }
        }
        Ok(old.len() as u64)
    }

    async fn put_script(&self, script: StoredScript) -> Result<(), StorageError> {
        self.lock().scripts.insert(script.info.name.clone(), script);
        Ok(())
    }

    async fn script(&self, name: &str) -> Result<Option<StoredScript>, StorageError> {
        Ok(self.lock().scripts.get(name).cloned())
    }

    async fn list_scripts(&self) -> Result<Vec<StoredScriptInfo>, StorageError> {
        let inner = self.lock();
        Ok(inner.scripts.values().map(|s| s.info.clone()).collect())
    }

    async fn delete_script(&self, name: &str) -> Result<bool, StorageError> {
        Ok(self.lock().scripts.remove(name).is_some())
    }

    async fn upsert_peer(&self, peer: PeerRecord) -> Result<(), StorageError> {
        self.lock().peers.insert(peer.peer_id.clone(), peer);
        Ok(())
    }

    async fn peer(&self, peer_id: &str) -> Result<Option<PeerRecord>, StorageError> {
        Ok(self.lock().peers.get(peer_id).cloned())
    }

    async fn peers(&self) -> Result<Vec<PeerRecord>, StorageError> {
        Ok(self.lock().peers.values().cloned().collect())
    }

    async fn insert_token(&self, token: TokenRecord) -> Result<bool, StorageError> {
        let mut inner = self.lock();
        if inner.active_token_named(&token.name).is_some() {
            return Ok(false);
        }
        inner.tokens.push(token);
        Ok(true)
    }

    async fn token(&self, token_id: &str) -> Result<Option<TokenRecord>, StorageError> {
        let inner = self.lock();
        Ok(inner
            .tokens
            .iter()
            .find(|token| token.token_id == token_id)
            .cloned())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StorageError> {
        Ok(self.lock().tokens.clone())
    }

    async fn revoke_token(
        &self,
        name: &str,
        at: SystemTime,
    ) -> Result<Option<TokenRecord>, StorageError> {
        let mut inner = self.lock();
        let Some(index) = inner.active_token_named(name) else {
            return Ok(None);
        };
        inner.tokens[index].revoked_at = Some(at);
        Ok(Some(inner.tokens[index].clone()))
    }

    async fn enroll(
        &self,
        enrollment_id: &str,
        credential: TokenRecord,
        at: SystemTime,
    ) -> Result<Result<(), EnrollRefusal>, StorageError> {
        let mut inner = self.lock();
        let Some(enrollment) = inner.tokens.iter().position(|token| {
            token.token_id == enrollment_id
                && token.kind == TokenKind::Enrollment
                && token.revoked_at.is_none()
        }) else {
            return Ok(Err(EnrollRefusal::TokenUsed));
        };
        if inner.active_token_named(&credential.name).is_some() {
            return Ok(Err(EnrollRefusal::PeerEnrolled));
        }

        inner.tokens[enrollment].revoked_at = Some(at);
        inner.tokens.push(credential);
        Ok(Ok(()))
    }

    async fn insert_audit(&self, mut record: AuditRecord) -> Result<i64, StorageError> {
        let mut inner = self.lock();
        record.id = inner.audit.last().map_or(1, |last| last.id + 1);
        let id = record.id;
        inner.audit.push(record);
        Ok(id)
    }

    async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        let inner = self.lock();
        Ok(inner
            .audit
            .iter()
            .filter(|record| record.id > query.after_id)
            .filter(|record| {
                query
                    .action
                    .as_ref()
                    .is_none_or(|action| &record.action == action)
            })
            .filter(|record| {
                query
                    .token
                    .as_ref()
                    .is_none_or(|token| &record.token == token)
            })
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn prune_audit(&self, before: SystemTime) -> Result<u64, StorageError> {
        let mut inner = self.lock();
        let count = inner.audit.len();
        inner.audit.retain(|record| record.time >= before);
        Ok((count - inner.audit.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use runwarden_protocol::api::{ResCmd, ScriptContent};
    use runwarden_protocol::status::Outcome;

    use super::*;

    fn task_with_one_job() -> TaskRecord {
        TaskRecord {
            task_id: "t1".into(),
            name: String::new(),
            creater: String::new(),
            created_at: SystemTime::now(),
            content: runwarden_protocol::secret::Redacted::new(ScriptContent::default()),
            jobs: vec![JobRecord {
                job_id: "j1".into(),
                task_id: "t1".into(),
                peer_id: "p1".into(),
                status: JobStatus::Pending,
                res_cmd: ResCmd::default(),
                changed_request: None,
                accepted: false,
                created_at: SystemTime::now(),
            }],
        }
    }

    fn finished(status: JobStatus, code: Outcome) -> JobUpdate {
        JobUpdate::Finished {
            status,
            res_cmd: ResCmd::not_run(code, ""),
        }
    }

    #[tokio::test]
    async fn final_job_never_changes() {
        let storage = MemoryStorage::new();
        storage.insert_task(task_with_one_job()).await.unwrap();

        let first = storage
            .update_job("j1", finished(JobStatus::Canceled, Outcome::Canceled))
            .await
            .unwrap();
        assert!(first.is_some());

        let second = storage
            .update_job("j1", finished(JobStatus::Success, Outcome::Ok))
            .await
            .unwrap();
        assert!(second.is_none());

        let job = storage.job("j1").await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Canceled);
    }

    #[tokio::test]
    async fn started_applies_only_to_pending() {
        let storage = MemoryStorage::new();
        storage.insert_task(task_with_one_job()).await.unwrap();

        let done = finished(JobStatus::Success, Outcome::Ok);
        storage.update_job("j1", done).await.unwrap();
        let started = storage.update_job("j1", JobUpdate::Started).await.unwrap();
        assert!(started.is_none());
    }
}
