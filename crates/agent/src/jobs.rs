//! The agent's own record of every job it was given.
//!
//! Each job moves through queued (`pending`), running and a final status.
//! The table bounds how many jobs run at once, answers live queries with the
//! output so far, cancels jobs, and keeps each final result until the
//! coordinator confirms that it stored it, so a result produced while the
//! link is down is sent again after the agent reconnects.
//!
//! # Ordering
//!
//! A job's `JobFinished` message is queued on the link before the job is
//! marked done, and a cancel answer is queued only after that. So the
//! coordinator always stores a canceled job's result before it sees the
//! cancel's answer.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runwarden_protocol::api::{CancelResult, JobRequest, ResCmd};
use runwarden_protocol::link::{AgentJobRecord, AgentMessage};
use runwarden_protocol::output::encode_stream;
use runwarden_protocol::secret::{Redact as _, Redacted};
use runwarden_protocol::status::{JobStatus, Outcome};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use runwarden_sandbox::sandbox::ValidateOutcome;
use runwarden_sandbox::{HookPoint, Sandbox};

use crate::config::AllowPolicy;
use crate::journal::{Journal, JournalEntry, JournalResult};
use crate::link::ScriptFetcher;
use crate::output::LiveOutput;
use crate::prepare::{JobFailure, PrepareContext, prepare_job};
use crate::process::{ProcessLimits, Termination, run_process};

/// Final jobs whose records are kept for live queries after the coordinator
/// stored their results; older ones are forgotten first.
const FINISHED_JOBS_KEPT: usize = 1024;

/// Agent-wide settings for running jobs.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub peer_id: String,
    pub scripts_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub max_output_bytes: usize,
    pub max_concurrent_jobs: usize,
    pub limits: ProcessLimits,
    /// The agent's `[allow]` policy, checked on every job before it starts.
    pub allow: AllowPolicy,
}

pub struct Jobs {
    settings: JobSettings,
    sandbox: Arc<Sandbox>,
    journal: Journal,
    /// Set when the agent is stopping: new jobs are not accepted, so the
    /// coordinator sends them again once an agent is back.
    draining: std::sync::atomic::AtomicBool,
    entries: Mutex<Table>,
    slots: Arc<Semaphore>,
    outgoing: mpsc::UnboundedSender<AgentMessage>,
    fetcher: ScriptFetcher,
}

#[derive(Default)]
struct Table {
    jobs: HashMap<String, JobEntry>,
    /// Final jobs in the order they ended, for pruning.
    finished: VecDeque<String>,
    /// `JobFinished` messages the coordinator has not confirmed yet.
    unacked: HashMap<String, AgentMessage>,
}

struct JobEntry {
    /// The job's request. It contains the secret values while the job is
    /// open, and is redacted once the job has ended.
    req: JobRequest,
    status: JobStatus,
    output: Arc<LiveOutput>,
    /// The final result; `None` while the job is open.
    result: Option<ResCmd>,
    cancel: CancellationToken,
    cancel_msg: Option<String>,
    done: watch::Sender<bool>,
}

impl Jobs {
    pub fn new(
        settings: JobSettings,
        outgoing: mpsc::UnboundedSender<AgentMessage>,
        fetcher: ScriptFetcher,
        sandbox: Arc<Sandbox>,
        journal: Journal,
    ) -> Arc<Jobs> {
        Arc::new(Jobs {
            sandbox,
            journal,
            draining: std::sync::atomic::AtomicBool::new(false),
            slots: Arc::new(Semaphore::new(settings.max_concurrent_jobs)),
            settings,
            entries: Mutex::new(Table::default()),
            outgoing,
            fetcher,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Accepts a job and starts it once a slot is free. A job id the agent
    /// already has is ignored, because the coordinator may send a pending
    /// job again after a reconnect.
    pub fn submit(self: &Arc<Self>, req: JobRequest) {
        let job_id = req.jobid.clone();
        let span = info_span!("job", task_id = %req.taskid, job_id = %job_id);
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            info!(parent: &span, "agent is stopping; job not accepted, the coordinator keeps it pending");
            return;
        }

        {
            let mut table = self.lock();
            if table.jobs.contains_key(&job_id) {
                tracing::debug!(parent: &span, "job already known; ignored");
                return;
            }
            table.jobs.insert(
                job_id.clone(),
                JobEntry {
                    req,
                    status: JobStatus::Pending,
                    output: Arc::new(LiveOutput::new(self.settings.max_output_bytes)),
                    result: None,
                    cancel: CancellationToken::new(),
                    cancel_msg: None,
                    done: watch::channel(false).0,
                },
            );
        }

        let entry = JournalEntry {
            req: Redacted::new(self.lock().jobs[&job_id].req.clone()),
            result: None,
        };
        if let Err(error) = self.journal.write(&entry) {
            warn!(parent: &span, %error, "failed to journal the job; it runs, but is lost if the agent dies");
        }
        let _ = self.outgoing.send(AgentMessage::JobAccepted {
            job_id: job_id.clone(),
        });
        info!(parent: &span, "job accepted");
        let jobs = Arc::clone(self);
        tokio::spawn(async move { jobs.run(job_id).await }.instrument(span));
    }

    async fn run(self: Arc<Self>, job_id: String) {
        let Some((mut req, output, cancel)) = self.with_entry(&job_id, |entry| {
            (
                entry.req.clone(),
                Arc::clone(&entry.output),
                entry.cancel.clone(),
            )
        }) else {
            return;
        };

        let permit = tokio::select! {
            permit = Arc::clone(&self.slots).acquire_owned() => permit.ok(),
            () = cancel.cancelled() => None,
        };
        if permit.is_none() {
            self.finish_canceled_before_start(&job_id);
            return;
        }

        if self.sandbox.has_plugins(HookPoint::Validate) {
            match self.sandbox.validate(&req, &self.settings.peer_id).await {
                ValidateOutcome::Allow {
                    request,
                    changed_by,
                } => {
                    if !changed_by.is_empty() {
                        info!(plugins = ?changed_by, "job request changed by plugins");
                        req = *request;
                        let held = req.clone();
                        self.with_entry(&job_id, |entry| entry.req = held);
                    }
                }
                ValidateOutcome::Deny { plugin, reason } => {
                    let failure = JobFailure {
                        outcome: Outcome::Rejected,
                        message: ValidateOutcome::rejection_message(&plugin, &reason),
                    };
                    self.finish_not_run(&job_id, failure);
                    return;
                }
            }
        }

        let context = PrepareContext {
            peer_id: &self.settings.peer_id,
            scripts_dir: &self.settings.scripts_dir,
            cache_dir: &self.settings.cache_dir,
            fetcher: &self.fetcher,
            allow: &self.settings.allow,
        };
        let prepared = tokio::select! {
            prepared = prepare_job(&req, &context) => prepared,
            () = cancel.cancelled() => {
                self.finish_canceled_before_start(&job_id);
                return;
            }
        };
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(failure) if failure.outcome == Outcome::DeniedByAgent => {
                // The job span carries task_id and job_id.
                warn!(peer_id = %self.settings.peer_id, error = %failure.message, "job denied by this agent's [allow] policy");
                self.finish_not_run(&job_id, failure);
                return;
            }
            Err(failure) => {
                warn!(code = failure.outcome.as_str(), error = %failure.message, "job failed before start");
                self.finish_not_run(&job_id, failure);
                return;
            }
        };
        if cancel.is_cancelled() {
            self.finish_canceled_before_start(&job_id);
            return;
        }

        let on_started = |pid: u32| {
            info!(pid, "job process started");
            self.with_entry(&job_id, |entry| entry.status = JobStatus::Running);
            let _ = self.outgoing.send(AgentMessage::JobStarted {
                job_id: job_id.clone(),
            });
        };
        let timeout_secs = prepared.spec.timeout.as_secs();
        let ended = run_process(
            prepared.spec.clone(),
            &self.settings.limits,
            Arc::clone(&output),
            cancel,
            on_started,
        )
        .await;
        drop(prepared);

        match ended {
            Ok(termination) => {
                let Some((status, mut res_cmd)) =
                    self.result_of(&job_id, termination, timeout_secs)
                else {
                    return;
                };
                self.sandbox
                    .post_process(
                        &req,
                        &self.settings.peer_id,
                        &mut res_cmd,
                        self.settings.max_output_bytes,
                    )
                    .await;
                self.finish(&job_id, status, res_cmd);
            }
            Err(error) => {
                let failure = JobFailure {
                    outcome: Outcome::SpawnFailed,
                    message: format!(
                        "{error}; check content.cmd and that the run-as user may use content.path"
                    ),
                };
                warn!(error = %failure.message, "job process failed to start");
                self.finish_not_run(&job_id, failure);
            }
        }
    }

    fn with_entry<T>(&self, job_id: &str, action: impl FnOnce(&mut JobEntry) -> T) -> Option<T> {
        self.lock().jobs.get_mut(job_id).map(action)
    }

    fn finish_canceled_before_start(&self, job_id: &str) {
        let reason = self
            .with_entry(job_id, |entry| entry.cancel_msg.clone())
            .flatten()
            .unwrap_or_default();
        let failure = JobFailure {
            outcome: Outcome::CanceledBeforeStart,
            message: format!("canceled before start: {reason}"),
        };
        self.finish_not_run(job_id, failure);
    }

    fn finish_not_run(&self, job_id: &str, failure: JobFailure) {
        let status = failure.outcome.job_status();
        self.finish(
            job_id,
            status,
            ResCmd::not_run(failure.outcome, failure.message),
        );
    }

    /// Builds the result of a job whose process ran, from its captured
    /// output and how it ended.
    fn result_of(
        &self,
        job_id: &str,
        termination: Termination,
        timeout_secs: u64,
    ) -> Option<(JobStatus, ResCmd)> {
        let (output, cancel_msg) = self.with_entry(job_id, |entry| {
            (Arc::clone(&entry.output), entry.cancel_msg.clone())
        })?;

        let (outcome, err) = match termination {
            Termination::Exited(0) => (Outcome::Ok, String::new()),
            Termination::Exited(code) => (Outcome::ExitNonzero, format!("exited with code {code}")),
            Termination::Signaled(signal) => (
                Outcome::ExitNonzero,
                format!("killed by signal {signal}, which the agent did not send"),
            ),
            Termination::TimedOut { signal } => (
                Outcome::Timeout,
                format!(
                    "timed out after {timeout_secs} s; the process tree was killed (the script ended on signal {signal})"
                ),
            ),
            Termination::Canceled { signal } => (
                Outcome::Canceled,
                format!(
                    "canceled: {}; the process tree was killed (the script ended on signal {signal})",
                    cancel_msg.unwrap_or_default()
                ),
            ),
        };

        let mut res_cmd = snapshot_output(&output);
        res_cmd.code = outcome;
        res_cmd.err = err;
        res_cmd.exit_code = termination.exit_code();
        Some((outcome.job_status(), res_cmd))
    }

    /// Records a job's final result and queues it for the coordinator.
    fn finish(&self, job_id: &str, status: JobStatus, res_cmd: ResCmd) {
        let message = AgentMessage::JobFinished {
            job_id: job_id.to_owned(),
            status,
            res_cmd: res_cmd.clone(),
        };
        info!(%status, code = res_cmd.code.as_str(), exit_code = res_cmd.exit_code, "job finished");

        let mut table = self.lock();
        let Some(entry) = table.jobs.get_mut(job_id) else {
            return;
        };
        entry.status = status;
        entry.result = Some(res_cmd.clone());
        // The process has ended, so the secret values are not needed any
        // more. The record kept for live queries keeps only their names.
        entry.req.redact();
        let done = entry.done.clone();
        let journaled = JournalEntry {
            req: Redacted::new(entry.req.clone()),
            result: Some(JournalResult { status, res_cmd }),
        };
        if let Err(error) = self.journal.write(&journaled) {
            warn!(job_id, %error, "failed to journal the job's result; it is lost if the agent dies before delivering it");
        }

        table.unacked.insert(job_id.to_owned(), message.clone());
        table.finished.push_back(job_id.to_owned());
        prune_finished(&mut table);
        drop(table);

        let _ = self.outgoing.send(message);
        done.send_replace(true);
    }

    /// Cancels a job and waits until it has ended, so the answer reflects the
    /// job's final state: canceled while running, canceled before start, or
    /// already finished when it ended first.
    pub async fn cancel(&self, job_id: &str, msg: &str) -> (CancelResult, Option<JobStatus>) {
        let waiting = self.with_entry(job_id, |entry| {
            if entry.status.is_final() {
                return Err(entry.status);
            }
            entry.cancel_msg = Some(msg.to_owned());
            entry.cancel.cancel();
            Ok(entry.done.subscribe())
        });

        let mut done = match waiting {
            None => return (CancelResult::NotFound, None),
            Some(Err(status)) => return (CancelResult::AlreadyFinished, Some(status)),
            Some(Ok(done)) => done,
        };
        info!(job_id, reason = msg, "cancel requested");

        let limit = self.settings.limits.kill_grace + Duration::from_secs(30);
        if tokio::time::timeout(limit, done.wait_for(|done| *done))
            .await
            .is_err()
        {
            warn!(
                job_id,
                limit_secs = limit.as_secs(),
                "job did not end after cancel in time"
            );
        }

        let ended = self.with_entry(job_id, |entry| {
            (
                entry.status,
                entry.result.as_ref().map(|result| result.code),
            )
        });
        match ended {
            Some((status, Some(Outcome::Canceled))) => (CancelResult::Canceled, Some(status)),
            Some((status, Some(Outcome::CanceledBeforeStart))) => {
                (CancelResult::CanceledBeforeStart, Some(status))
            }
            Some((status, Some(_))) => (CancelResult::AlreadyFinished, Some(status)),
            Some((status, None)) => (CancelResult::PeerTimeout, Some(status)),
            None => (CancelResult::NotFound, None),
        }
    }

    /// The agent's record of its job of `task_id`, with output so far.
    pub fn query(&self, task_id: &str) -> Option<AgentJobRecord> {
        let table = self.lock();
        let entry = table
            .jobs
            .values()
            .find(|entry| entry.req.taskid == task_id)?;
        let value = match &entry.result {
            Some(result) => result.clone(),
            None => snapshot_output(&entry.output),
        };
        Some(AgentJobRecord {
            req: Redacted::new(entry.req.clone()),
            status: entry.status,
            value,
        })
    }

    /// The coordinator stored this job's result.
    pub fn acknowledge(&self, job_id: &str) {
        self.lock().unacked.remove(job_id);
        if let Err(error) = self.journal.remove(job_id) {
            warn!(job_id, %error, "failed to drop the job from the journal; its result may be sent again");
        }
    }

    /// Loads the journal of an earlier agent process: results it had are
    /// sent again, and jobs it was still running are reported `lost`, since
    /// their processes died with it. Call before the link starts.
    pub fn restore(&self, entries: Vec<JournalEntry>) {
        for entry in entries {
            let job_id = entry.req.jobid.clone();
            let result = entry.result.unwrap_or_else(|| {
                warn!(task_id = %entry.req.taskid, job_id, "job was queued or running when the agent stopped; reporting it lost");
                JournalResult {
                    status: JobStatus::Lost,
                    res_cmd: ResCmd::not_run(
                        Outcome::Lost,
                        "the agent restarted while this job was queued or running, and its processes were killed, so its outcome is unknown",
                    ),
                }
            });
            let journaled = JournalEntry {
                req: entry.req.clone(),
                result: Some(result.clone()),
            };
            if let Err(error) = self.journal.write(&journaled) {
                warn!(job_id, %error, "failed to journal a restored result");
            }

            let message = AgentMessage::JobFinished {
                job_id: job_id.clone(),
                status: result.status,
                res_cmd: result.res_cmd.clone(),
            };
            let mut table = self.lock();
            table.jobs.insert(
                job_id.clone(),
                JobEntry {
                    req: entry.req.into_inner(),
                    status: result.status,
                    output: Arc::new(LiveOutput::new(0)),
                    result: Some(result.res_cmd),
                    cancel: CancellationToken::new(),
                    cancel_msg: None,
                    done: watch::channel(true).0,
                },
            );
            table.unacked.insert(job_id.clone(), message);
            table.finished.push_back(job_id);
        }
    }

    /// Stops accepting new jobs.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits up to `limit` until no job is queued or running.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let waiters: Vec<_> = self
            .lock()
            .jobs
            .values()
            .filter(|entry| !entry.status.is_final())
            .map(|entry| entry.done.subscribe())
            .collect();
        let all_done = async {
            for mut done in waiters {
                let _ = done.wait_for(|done| *done).await;
            }
        };
        tokio::time::timeout(limit, all_done).await.is_ok()
    }

    /// Waits up to `limit` until the coordinator has stored every result.
    pub async fn wait_delivered(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.lock().unacked.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Jobs the coordinator should consider alive: open ones and those whose
    /// results it has not confirmed.
    pub fn active_job_ids(&self) -> Vec<String> {
        let table = self.lock();
        let open = table
            .jobs
            .iter()
            .filter(|(_, entry)| !entry.status.is_final())
            .map(|(id, _)| id.clone());
        open.chain(table.unacked.keys().cloned()).collect()
    }

    pub fn unacked_results(&self) -> Vec<AgentMessage> {
        self.lock().unacked.values().cloned().collect()
    }

    /// Cancels every open job and waits up to `limit` for them to end.
    pub async fn cancel_all(&self, reason: &str, limit: Duration) {
        let waiters: Vec<_> = {
            let mut table = self.lock();
            table
                .jobs
                .values_mut()
                .filter(|entry| !entry.status.is_final())
                .map(|entry| {
                    entry.cancel_msg = Some(reason.to_owned());
                    entry.cancel.cancel();
                    entry.done.subscribe()
                })
                .collect()
        };

        let all_done = async {
            for mut done in waiters {
                let _ = done.wait_for(|done| *done).await;
            }
        };
        if tokio::time::timeout(limit, all_done).await.is_err() {
            warn!(
                limit_secs = limit.as_secs(),
                "some jobs did not end in time at shutdown"
            );
        }
    }
}

fn prune_finished(table: &mut Table) {
    while table.finished.len() > FINISHED_JOBS_KEPT {
        let Some(oldest) = table.finished.front().cloned() else {
            break;
        };
        if table.unacked.contains_key(&oldest) {
            // Keep records until the coordinator has the result.
            break;
        }
        table.finished.pop_front();
        table.jobs.remove(&oldest);
    }
}

/// A `resCmd` holding the output captured so far; outcome and exit code are
/// left unset for the caller to fill in.
fn snapshot_output(output: &LiveOutput) -> ResCmd {
    let mut res_cmd = ResCmd::default();

    {
        let stdout = output.stdout.lock().unwrap_or_else(|p| p.into_inner());
        let (text, base64) = encode_stream(stdout.kept());
        res_cmd.stdout = text;
        res_cmd.stdout_base64 = base64;
        res_cmd.stdout_dropped = stdout.dropped();
        res_cmd.stdout_truncated = stdout.dropped() > 0;
    }
    {
        let stderr = output.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let (text, base64) = encode_stream(stderr.kept());
        res_cmd.stderr = text;
        res_cmd.stderr_base64 = base64;
        res_cmd.stderr_dropped = stderr.dropped();
        res_cmd.stderr_truncated = stderr.dropped() > 0;
    }
    res_cmd
}
