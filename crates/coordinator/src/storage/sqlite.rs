//! Durable [`Storage`] in an embedded SQLite database.
//!
//! The database runs in WAL mode with `synchronous = FULL`, so every write
//! is on disk when its method returns: a client that got a task id, or an
//! agent whose result was acknowledged, never loses it to a crash. Requests,
//! results and script bodies are stored as JSON text in their columns, so
//! the schema does not change when the API adds a field. Requests are
//! written and read as [`Redacted`] values, so their secret environment
//! values are `<redacted>` in the file.
//!
//! All calls share one connection behind a mutex and run on tokio's
//! blocking threads. SQLite serializes writers anyway, and reads are short.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use runwarden_protocol::api::{ScriptContent, StoredScript, StoredScriptInfo};
use runwarden_protocol::secret::Redacted;
use runwarden_protocol::status::JobStatus;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::{
    AuditQuery, AuditRecord, EnrollRefusal, JobRecord, JobUpdate, PeerRecord, Storage,
    StorageError, TaskRecord, TokenRecord,
};

mod security;

/// Schema version this code writes; a database with another version is
/// refused instead of being misread. Version 2 added the tokens and audit
/// tables; a version 1 database gets them when opened.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    task_id     TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    creater     TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    content     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_ms);
CREATE TABLE IF NOT EXISTS jobs (
    job_id          TEXT PRIMARY KEY,
    task_id         TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    peer_id         TEXT NOT NULL,
    status          TEXT NOT NULL,
    res_cmd         TEXT NOT NULL,
    changed_request TEXT,
    accepted        INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_task ON jobs (task_id, position);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (status, peer_id);
CREATE TABLE IF NOT EXISTS scripts (
    name        TEXT PRIMARY KEY,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    updated_at  TEXT NOT NULL,
    content     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    peer_id        TEXT PRIMARY KEY,
    agent_version  TEXT NOT NULL,
    last_seen_ms   INTEGER NOT NULL
);
";

const OPEN_STATUSES: &str = "('pending', 'running')";

#[derive(Clone)]
pub struct SqliteStorage {
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStorage {
    /// Opens (creating if needed) the database file at `path`.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be opened or was written by another schema
    /// version.
    pub fn open(path: &Path) -> Result<SqliteStorage, StorageError> {
        let failed = |error: rusqlite::Error| StorageError {
            operation: "open the database",
            message: format!("`{}`: {error}", path.display()),
        };
        let connection = Connection::open(path).map_err(failed)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;",
            )
            .map_err(failed)?;
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(failed)?;

        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(failed)?;
        if version != 0 && version != 1 && version != SCHEMA_VERSION {
            return Err(StorageError {
                operation: "open the database",
                message: format!(
                    "`{}` has schema version {version}, but this coordinator reads version {SCHEMA_VERSION}; use a matching coordinator or a new data_dir",
                    path.display()
                ),
            });
        }
        connection.execute_batch(SCHEMA).map_err(failed)?;
        connection.execute_batch(security::SCHEMA).map_err(failed)?;
        connection
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(failed)?;

        Ok(SqliteStorage {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `work` with the connection on a blocking thread.
    async fn with_connection<T, F>(
        &self,
        operation: &'static str,
        work: F,
    ) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut connection)
        })
        .await
        .map_err(|error| StorageError {
            operation,
            message: format!("storage task failed: {error}"),
        })?
    }
}

fn sql_error(operation: &'static str) -> impl Fn(rusqlite::Error) -> StorageError {
    move |error| StorageError {
        operation,
        message: error.to_string(),
    }
}

fn json_error(operation: &'static str) -> impl Fn(serde_json::Error) -> StorageError {
    move |error| StorageError {
        operation,
        message: format!("stored JSON is invalid: {error}"),
    }
}

fn to_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn status_from_text(text: &str) -> JobStatus {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).unwrap_or(JobStatus::Lost)
}

const JOB_COLUMNS: &str =
    "job_id, task_id, peer_id, status, res_cmd, changed_request, accepted, created_ms";

/// Reads a row of [`JOB_COLUMNS`].
fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(JobRecord, String, Option<String>)> {
    let res_cmd: String = row.get(4)?;
    let changed: Option<String> = row.get(5)?;
    let status: String = row.get(3)?;
    let job = JobRecord {
        job_id: row.get(0)?,
        task_id: row.get(1)?,
        peer_id: row.get(2)?,
        status: status_from_text(&status),
        res_cmd: Default::default(),
        changed_request: None,
        accepted: row.get::<_, i64>(6)? != 0,
        created_at: from_ms(row.get(7)?),
    };
    Ok((job, res_cmd, changed))
}

fn finish_job(
    (mut job, res_cmd, changed): (JobRecord, String, Option<String>),
    operation: &'static str,
) -> Result<JobRecord, StorageError> {
    job.res_cmd = serde_json::from_str(&res_cmd).map_err(json_error(operation))?;
    job.changed_request = changed
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(json_error(operation))?;
    Ok(job)
}

fn select_jobs(
    connection: &Connection,
    operation: &'static str,
    sql_where: &str,
    values: &[&dyn rusqlite::ToSql],
) -> Result<Vec<JobRecord>, StorageError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE {sql_where}");
    let mut statement = connection
        .prepare_cached(&sql)
        .map_err(sql_error(operation))?;
    let rows = statement
        .query_map(values, job_from_row)
        .map_err(sql_error(operation))?;
    let mut jobs = Vec::new();
    for row in rows {
        jobs.push(finish_job(row.map_err(sql_error(operation))?, operation)?);
    }
    Ok(jobs)
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn insert_task(&self, task: TaskRecord) -> Result<(), StorageError> {
        const OP: &str = "insert a task";
        self.with_connection(OP, move |connection| {
            let transaction = connection.transaction().map_err(sql_error(OP))?;
            let content = serde_json::to_string(&task.content).map_err(json_error(OP))?;
            transaction
                .execute(
                    "INSERT INTO tasks (task_id, name, creater, created_ms, content) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![task.task_id, task.name, task.creater, to_ms(task.created_at), content],
                )
                .map_err(sql_error(OP))?;
            for (position, job) in task.jobs.iter().enumerate() {
                let res_cmd = serde_json::to_string(&job.res_cmd).map_err(json_error(OP))?;
                let changed = job
                    .changed_request
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(json_error(OP))?;
                transaction
                    .execute(
                        &format!("INSERT INTO jobs (position, {JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                        params![
                            position as i64,
                            job.job_id,
                            job.task_id,
                            job.peer_id,
                            job.status.as_str(),
                            res_cmd,
                            changed,
                            i64::from(job.accepted),
                            to_ms(job.created_at),
                        ],
                    )
                    .map_err(sql_error(OP))?;
            }
            transaction.commit().map_err(sql_error(OP))
        })
        .await
    }

    async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, StorageError> {
        const OP: &str = "read a task";
        let task_id = task_id.to_owned();
        self.with_connection(OP, move |connection| {
            let header = connection
                .query_row(
                    "SELECT name, creater, created_ms, content FROM tasks WHERE task_id = ?1",
                    params![task_id],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, String>(3)?,
                        ))
                    },
                )
                .optional()
                .map_err(sql_error(OP))?;
            let Some((name, creater, created_ms, content)) = header else {
                return Ok(None);
            };
            let content: Redacted<ScriptContent> =
                serde_json::from_str(&content).map_err(json_error(OP))?;
            let jobs = select_jobs(
                connection,
                OP,
                "task_id = ?1 ORDER BY position",
                &[&task_id],
            )?;
            Ok(Some(TaskRecord {
                task_id,
                name,
                creater,
                created_at: from_ms(created_ms),
                content,
                jobs,
            }))
        })
        .await
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StorageError> {
        const OP: &str = "read a job";
        let job_id = job_id.to_owned();
        self.with_connection(OP, move |connection| {
            let mut jobs = select_jobs(connection, OP, "job_id = ?1", &[&job_id])?;
            Ok(jobs.pop())
        })
        .await
    }

    async fn update_job(
        &self,
        job_id: &str,
        update: JobUpdate,
    ) -> Result<Option<JobRecord>, StorageError> {
        const OP: &str = "update a job";
        let job_id = job_id.to_owned();
        self.with_connection(OP, move |connection| {
            // Each statement applies only while the job is still in a state
            // the update may change, so racing updates cannot both apply.
            let changed = match &update {
                JobUpdate::Accepted => connection.execute(
                    "UPDATE jobs SET accepted = 1 WHERE job_id = ?1 AND status = 'pending' AND accepted = 0",
                    params![job_id],
                ),
                JobUpdate::Started => connection.execute(
                    "UPDATE jobs SET accepted = 1, status = 'running' WHERE job_id = ?1 AND status = 'pending'",
                    params![job_id],
                ),
                JobUpdate::Finished { status, res_cmd } => {
                    let res_cmd = serde_json::to_string(res_cmd).map_err(json_error(OP))?;
                    connection.execute(
                        &format!("UPDATE jobs SET status = ?2, res_cmd = ?3 WHERE job_id = ?1 AND status IN {OPEN_STATUSES}"),
                        params![job_id, status.as_str(), res_cmd],
                    )
                }
            }
            .map_err(sql_error(OP))?;

            if changed == 0 {
                return Ok(None);
            }
            let mut jobs = select_jobs(connection, OP, "job_id = ?1", &[&job_id])?;
            Ok(jobs.pop())
        })
        .await
    }

    async fn open_jobs_on_peer(&self, peer_id: &str) -> Result<Vec<JobRecord>, StorageError> {
        const OP: &str = "list open jobs of a peer";
        let peer_id = peer_id.to_owned();
        self.with_connection(OP, move |connection| {
            let filter = format!("status IN {OPEN_STATUSES} AND peer_id = ?1");
            select_jobs(connection, OP, &filter, &[&peer_id])
        })
        .await
    }

    async fn open_jobs(&self) -> Result<Vec<JobRecord>, StorageError> {
        const OP: &str = "list open jobs";
        self.with_connection(OP, move |connection| {
            select_jobs(connection, OP, &format!("status IN {OPEN_STATUSES}"), &[])
        })
        .await
    }

    async fn prune_tasks(&self, before: SystemTime) -> Result<u64, StorageError> {
        const OP: &str = "prune old tasks";
        self.with_connection(OP, move |connection| {
            let deleted = connection
                .execute(
                    &format!(
                        "DELETE FROM tasks WHERE created_ms < ?1 AND NOT EXISTS (
                             SELECT 1 FROM jobs WHERE jobs.task_id = tasks.task_id AND jobs.status IN {OPEN_STATUSES})"
                    ),
                    params![to_ms(before)],
                )
                .map_err(sql_error(OP))?;
            Ok(deleted as u64)
        })
        .await
    }

    async fn put_script(&self, script: StoredScript) -> Result<(), StorageError> {
        const OP: &str = "store a script";
        self.with_connection(OP, move |connection| {
            connection
                .execute(
                    "INSERT INTO scripts (name, sha256, size, updated_at, content) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (name) DO UPDATE SET sha256 = ?2, size = ?3, updated_at = ?4, content = ?5",
                    params![
                        script.info.name,
                        script.info.sha256,
                        script.info.size as i64,
                        script.info.updated_at,
                        script.content
                    ],
                )
                .map_err(sql_error(OP))?;
            Ok(())
        })
        .await
    }

    async fn script(&self, name: &str) -> Result<Option<StoredScript>, StorageError> {
        const OP: &str = "read a script";
        let name = name.to_owned();
        self.with_connection(OP, move |connection| {
            connection
                .query_row(
                    "SELECT name, sha256, size, updated_at, content FROM scripts WHERE name = ?1",
                    params![name],
                    |row| {
                        Ok(StoredScript {
                            info: StoredScriptInfo {
                                name: row.get(0)?,
                                sha256: row.get(1)?,
                                size: row.get::<_, i64>(2)? as u64,
                                updated_at: row.get(3)?,
                            },
                            content: row.get(4)?,
                        })
                    },
                )
                .optional()
                .map_err(sql_error(OP))
        })
        .await
    }

    async fn list_scripts(&self) -> Result<Vec<StoredScriptInfo>, StorageError> {
        const OP: &str = "list scripts";
        self.with_connection(OP, move |connection| {
            let mut statement = connection
                .prepare_cached("SELECT name, sha256, size, updated_at FROM scripts ORDER BY name")
                .map_err(sql_error(OP))?;
            let rows = statement
                .query_map([], |row| {
                    Ok(StoredScriptInfo {
                        name: row.get(0)?,
                        sha256: row.get(1)?,
                        size: row.get::<_, i64>(2)? as u64,
                        updated_at: row.get(3)?,
                    })
                })
                .map_err(sql_error(OP))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error(OP))
        })
        .await
    }

    async fn delete_script(&self, name: &str) -> Result<bool, StorageError> {
        const OP: &str = "delete a script";
        let name = name.to_owned();
        self.with_connection(OP, move |connection| {
            let deleted = connection
                .execute("DELETE FROM scripts WHERE name = ?1", params![name])
                .map_err(sql_error(OP))?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn upsert_peer(&self, peer: PeerRecord) -> Result<(), StorageError> {
        const OP: &str = "record a peer";
        self.with_connection(OP, move |connection| {
            connection
                .execute(
                    "INSERT INTO peers (peer_id, agent_version, last_seen_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (peer_id) DO UPDATE SET agent_version = ?2, last_seen_ms = ?3",
                    params![peer.peer_id, peer.agent_version, to_ms(peer.last_seen)],
                )
                .map_err(sql_error(OP))?;
            Ok(())
        })
        .await
    }

    async fn peer(&self, peer_id: &str) -> Result<Option<PeerRecord>, StorageError> {
        const OP: &str = "read a peer";
        let peer_id = peer_id.to_owned();
        self.with_connection(OP, move |connection| {
            connection
                .query_row(
                    "SELECT peer_id, agent_version, last_seen_ms FROM peers WHERE peer_id = ?1",
                    params![peer_id],
                    peer_from_row,
                )
                .optional()
                .map_err(sql_error(OP))
        })
        .await
    }

    async fn peers(&self) -> Result<Vec<PeerRecord>, StorageError> {
        const OP: &str = "list peers";
        self.with_connection(OP, move |connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT peer_id, agent_version, last_seen_ms FROM peers ORDER BY peer_id",
                )
                .map_err(sql_error(OP))?;
            let rows = statement
                .query_map([], peer_from_row)
                .map_err(sql_error(OP))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error(OP))
        })
        .await
    }

    async fn insert_token(&self, token: TokenRecord) -> Result<bool, StorageError> {
        self.with_connection("store a token", move |connection| {
            security::insert_token(connection, &token)
        })
        .await
    }

    async fn token(&self, token_id: &str) -> Result<Option<TokenRecord>, StorageError> {
        let token_id = token_id.to_owned();
        self.with_connection("read a token", move |connection| {
            security::token(connection, &token_id)
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StorageError> {
        self.with_connection("list tokens", |connection| security::tokens(connection))
            .await
    }

    async fn revoke_token(
        &self,
        name: &str,
        at: SystemTime,
    ) -> Result<Option<TokenRecord>, StorageError> {
        let name = name.to_owned();
        self.with_connection("revoke a token", move |connection| {
            security::revoke_token(connection, &name, at)
        })
        .await
    }

    async fn enroll(
        &self,
        enrollment_id: &str,
        credential: TokenRecord,
        at: SystemTime,
    ) -> Result<Result<(), EnrollRefusal>, StorageError> {
        let enrollment_id = enrollment_id.to_owned();
        self.with_connection("enroll a peer", move |connection| {
            security::enroll(connection, &enrollment_id, &credential, at)
        })
        .await
    }

    async fn insert_audit(&self, record: AuditRecord) -> Result<i64, StorageError> {
        self.with_connection("append to the audit log", move |connection| {
            security::insert_audit(connection, &record)
        })
        .await
    }

    async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        self.with_connection("read the audit log", move |connection| {
            security::audit(connection, &query)
        })
        .await
    }

    async fn prune_audit(&self, before: SystemTime) -> Result<u64, StorageError> {
        self.with_connection("prune the audit log", move |connection| {
            security::prune_audit(connection, before)
        })
        .await
    }
}

fn peer_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PeerRecord> {
    Ok(PeerRecord {
        peer_id: row.get(0)?,
        agent_version: row.get(1)?,
        last_seen: from_ms(row.get(2)?),
    })
}

#[cfg(test)]
mod tests {
    use runwarden_protocol::api::ResCmd;
    use runwarden_protocol::status::Outcome;

    use super::*;
    use crate::auth::token::{Scope, TokenKind};
    use crate::storage::memory::MemoryStorage;

    fn task(task_id: &str, created_at: SystemTime) -> TaskRecord {
        TaskRecord {
            task_id: task_id.into(),
            name: "n".into(),
            creater: "c".into(),
            created_at,
            content: Redacted::new(ScriptContent {
                content: "echo ò".into(),
                ..ScriptContent::default()
            }),
            jobs: vec![JobRecord {
                job_id: format!("{task_id}-job"),
                task_id: task_id.into(),
                peer_id: "p1".into(),
                status: JobStatus::Pending,
                res_cmd: ResCmd::default(),
                changed_request: None,
                accepted: false,
                created_at,
            }],
        }
    }

    fn finished() -> JobUpdate {
        JobUpdate::Finished {
            status: JobStatus::Success,
            res_cmd: ResCmd {
                stdout: "out".into(),
                code: Outcome::Ok,
                exit_code: 0,
                ..ResCmd::default()
            },
        }
    }

    /// Checks the behaviour every backend must share.
    async fn check_contract(storage: &dyn Storage) {
        storage
            .insert_task(task("t1", SystemTime::now()))
            .await
            .unwrap();

        let accepted = storage
            .update_job("t1-job", JobUpdate::Accepted)
            .await
            .unwrap();
        assert!(accepted.unwrap().accepted);
        assert!(
            storage
                .update_job("t1-job", JobUpdate::Accepted)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(storage.open_jobs().await.unwrap().len(), 1);

        let first = storage.update_job("t1-job", finished()).await.unwrap();
        assert_eq!(first.unwrap().res_cmd.stdout, "out");
        let again = storage.update_job("t1-job", finished()).await.unwrap();
        assert!(again.is_none(), "a final job changed again");
        assert!(storage.open_jobs().await.unwrap().is_empty());

        let stored = storage.task("t1").await.unwrap().unwrap();
        assert_eq!(stored.content.content, "echo ò");
        assert_eq!(stored.jobs[0].status, JobStatus::Success);
        assert!(
            storage
                .update_job("no-such-job", finished())
                .await
                .unwrap()
                .is_none()
        );
    }

    async fn check_prune(storage: &dyn Storage) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        storage.insert_task(task("old-done", old)).await.unwrap();
        storage.insert_task(task("old-open", old)).await.unwrap();
        storage
            .insert_task(task("new-done", SystemTime::now()))
            .await
            .unwrap();
        storage
            .update_job("old-done-job", finished())
            .await
            .unwrap();
        storage
            .update_job("new-done-job", finished())
            .await
            .unwrap();

        let cutoff = SystemTime::now() - Duration::from_secs(60);
        assert_eq!(storage.prune_tasks(cutoff).await.unwrap(), 1);

        assert!(storage.task("old-done").await.unwrap().is_none());
        assert!(storage.job("old-done-job").await.unwrap().is_none());
        assert!(
            storage.task("old-open").await.unwrap().is_some(),
            "an open task was pruned"
        );
        assert!(storage.task("new-done").await.unwrap().is_some());
    }

    fn token_record(token_id: &str, name: &str, kind: TokenKind) -> TokenRecord {
        TokenRecord {
            token_id: token_id.into(),
            name: name.into(),
            kind,
            scope: (kind == TokenKind::Api).then_some(Scope::Run),
            peer_id: (kind == TokenKind::Agent).then(|| "p1".to_owned()),
            secret_hash: "00".repeat(32),
            created_at: UNIX_EPOCH + Duration::from_secs(1_000),
            expires_at: None,
            revoked_at: None,
        }
    }

    async fn check_tokens(storage: &dyn Storage) {
        let now = SystemTime::now();
        assert!(
            storage
                .insert_token(token_record("a1", "ops", TokenKind::Api))
                .await
                .unwrap()
        );
        assert!(
            !storage
                .insert_token(token_record("a2", "ops", TokenKind::Api))
                .await
                .unwrap(),
            "two active tokens share a name"
        );
        assert_eq!(
            storage.token("a1").await.unwrap().unwrap(),
            token_record("a1", "ops", TokenKind::Api)
        );

        let revoked = storage.revoke_token("ops", now).await.unwrap().unwrap();
        assert_eq!(revoked.token_id, "a1");
        assert!(
            storage
                .token("a1")
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_some()
        );
        assert!(storage.revoke_token("ops", now).await.unwrap().is_none());
        assert!(
            storage
                .insert_token(token_record("a3", "ops", TokenKind::Api))
                .await
                .unwrap(),
            "a revoked token's name cannot be reused"
        );

        storage
            .insert_token(token_record("e1", "enroll:p1:e1", TokenKind::Enrollment))
            .await
            .unwrap();
        storage
            .insert_token(token_record("e2", "enroll:p1:e2", TokenKind::Enrollment))
            .await
            .unwrap();
        let credential = token_record("c1", "agent:p1", TokenKind::Agent);
        assert_eq!(
            storage.enroll("e1", credential.clone(), now).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            storage
                .enroll("e1", token_record("c2", "agent:p9", TokenKind::Agent), now)
                .await
                .unwrap(),
            Err(EnrollRefusal::TokenUsed)
        );
        assert_eq!(
            storage
                .enroll("e2", token_record("c3", "agent:p1", TokenKind::Agent), now)
                .await
                .unwrap(),
            Err(EnrollRefusal::PeerEnrolled)
        );
        assert!(
            storage
                .token("e2")
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_none(),
            "a refused enrollment used up its token"
        );
        assert_eq!(storage.tokens().await.unwrap().len(), 5);
    }

    async fn check_audit(storage: &dyn Storage) {
        let entry = |action: &str, token: &str, age_secs: u64| AuditRecord {
            id: 0,
            time: SystemTime::now() - Duration::from_secs(age_secs),
            action: action.into(),
            outcome: "ok".into(),
            token: token.into(),
            creater: "alice".into(),
            source: "127.0.0.1:1".into(),
            target: "t".into(),
            request: serde_json::json!({ "k": [1, 2] }),
        };
        let first = storage
            .insert_audit(entry("task.create", "a", 100))
            .await
            .unwrap();
        let second = storage
            .insert_audit(entry("task.cancel", "b", 0))
            .await
            .unwrap();
        storage
            .insert_audit(entry("task.create", "b", 0))
            .await
            .unwrap();
        assert!(second > first);

        let all = storage
            .audit(AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].request, serde_json::json!({ "k": [1, 2] }));
        let filtered = storage
            .audit(AuditQuery {
                action: Some("task.create".into()),
                token: Some("b".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(filtered.len(), 1);
        let after = storage
            .audit(AuditQuery {
                after_id: first,
                limit: 1,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].id, second);

        let pruned = storage
            .prune_audit(SystemTime::now() - Duration::from_secs(50))
            .await
            .unwrap();
        assert_eq!(pruned, 1);
    }

    #[tokio::test]
    async fn sqlite_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("db")).unwrap();
        check_contract(&storage).await;
        check_prune(&storage).await;
        check_tokens(&storage).await;
        check_audit(&storage).await;
    }

    #[tokio::test]
    async fn memory_keeps_the_contract() {
        let storage = MemoryStorage::new();
        check_contract(&storage).await;
        check_prune(&storage).await;
        check_tokens(&storage).await;
        check_audit(&storage).await;
    }

    #[tokio::test]
    async fn version_1_database_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let connection = Connection::open(&path).unwrap();
            connection.execute_batch(SCHEMA).unwrap();
            connection.pragma_update(None, "user_version", 1).unwrap();
        }

        let storage = SqliteStorage::open(&path).unwrap();

        check_tokens(&storage).await;
    }

    #[tokio::test]
    async fn sqlite_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let storage = SqliteStorage::open(&path).unwrap();
            storage
                .insert_task(task("t1", SystemTime::now()))
                .await
                .unwrap();
            storage.update_job("t1-job", finished()).await.unwrap();
            let script = StoredScript {
                info: StoredScriptInfo {
                    name: "a.sh".into(),
                    sha256: "00".into(),
                    size: 4,
                    updated_at: "now".into(),
                },
                content: "true".into(),
            };
            storage.put_script(script).await.unwrap();
        }

        let storage = SqliteStorage::open(&path).unwrap();
        let job = storage.job("t1-job").await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Success);
        assert_eq!(job.res_cmd.stdout, "out");
        assert_eq!(
            storage.script("a.sh").await.unwrap().unwrap().content,
            "true"
        );
    }

    #[tokio::test]
    async fn other_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let connection = Connection::open(&path).unwrap();
            connection.pragma_update(None, "user_version", 99).unwrap();
        }

        let error = SqliteStorage::open(&path).err().unwrap();

        assert!(error.to_string().contains("schema version 99"), "{error}");
    }
}
