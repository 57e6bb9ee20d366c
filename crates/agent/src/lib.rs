//! The Runwarden agent: runs jobs on its machine for the coordinator.
//!
//! An agent dials the coordinator's agent link, receives jobs, runs each one
//! as the requested user in its own process group (and cgroup where the
//! machine allows), and reports output and outcome back. It keeps its own
//! record of every job, so the coordinator can ask for a job's live output.
//!
//! - [`link`]: the connection to the coordinator.
//! - [`jobs`]: the job table: queueing, cancel, live queries.
//! - [`journal`]: the on-disk record of accepted jobs and undelivered
//!   results, read again after a restart.
//! - [`prepare`]: from a job request to a process spec (user, environment,
//!   working directory, execWay).
//! - [`allow`]: the checks of the agent's own `[allow]` policy, made while a
//!   job is prepared.
//! - [`process`]: running one process tree to its end.
//! - [`sys`]: the Linux-specific parts: credentials, signals, cgroups.
//! - [`tls`]: how the agent checks the coordinator's TLS certificate.
//!
//! Start one with [`RunningAgent::start`].

pub mod allow;
pub mod config;
pub mod credential;
pub mod jobs;
pub mod journal;
pub mod link;
pub mod output;
pub mod prepare;
pub mod process;
pub mod sys;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::jobs::{JobSettings, Jobs};
use crate::journal::Journal;
use crate::link::{Link, ScriptFetcher};
use crate::process::ProcessLimits;

/// How long a stopping agent waits for the coordinator to store the results
/// of its last jobs.
const RESULT_DELIVERY_LIMIT: Duration = Duration::from_secs(5);

/// An agent connected (or connecting) to its coordinator.
pub struct RunningAgent {
    pub peer_id: String,
    jobs: Arc<Jobs>,
    shutdown: CancellationToken,
    link: JoinHandle<()>,
    kill_grace: Duration,
    shutdown_grace: Duration,
    cgroup_parent: Option<PathBuf>,
}

impl RunningAgent {
    /// Checks the configuration, prepares the agent's folders and starts
    /// dialing the coordinator. Returns before the link is up.
    ///
    /// # Errors
    ///
    /// Fails when the configuration is invalid, a TLS option cannot be used
    /// (a [`tls::TlsSetupError`] in the chain), or the data folder cannot be
    /// created.
    pub async fn start(config: AgentConfig) -> anyhow::Result<RunningAgent> {
        config.validate().context("invalid agent config")?;
        let peer_id = config.resolved_peer_id()?;
        let url = config.link_url()?;
        let tls = tls::LinkTls::from_config(&config)?;

        let cache_dir = config.data_dir.join("script-cache");
        std::fs::create_dir_all(&cache_dir).with_context(|| {
            format!(
                "failed to create the agent's data folder `{}`; create it or change data_dir",
                cache_dir.display()
            )
        })?;
        if !config.scripts_dir.is_dir() {
            warn!(scripts_dir = %config.scripts_dir.display(), "scripts directory does not exist; execWay 2 jobs will fail until it does");
        }

        let journal = Journal::open(&config.data_dir).with_context(|| {
            format!(
                "failed to open the agent's journal in `{}`; check that data_dir is writable",
                config.data_dir.display()
            )
        })?;

        let cgroup_parent = if config.use_cgroups {
            let killed = sys::cgroup::kill_stale_jobs();
            if killed > 0 {
                warn!(killed, "killed jobs left running by an agent that died");
            }
            sys::cgroup::detect_parent()
        } else {
            None
        };
        let limits = ProcessLimits {
            kill_grace: config.kill_grace(),
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
            cgroup_parent: cgroup_parent.clone(),
        };
        let settings = JobSettings {
            peer_id: peer_id.clone(),
            scripts_dir: config.scripts_dir.clone(),
            cache_dir,
            max_output_bytes: config.max_output_bytes,
            max_concurrent_jobs: config.max_concurrent_jobs,
            limits,
            allow: config.allow.clone(),
        };

        let sandbox = load_sandbox(config.policy.as_deref(), &config.data_dir).await?;

        let (outgoing, outgoing_receiver) = mpsc::unbounded_channel();
        let fetch_timeout = Duration::from_secs(config.script_fetch_timeout_secs);
        let fetcher = ScriptFetcher::new(outgoing.clone(), fetch_timeout);
        let jobs = Jobs::new(
            settings,
            outgoing.clone(),
            fetcher.clone(),
            Arc::new(sandbox),
            journal.clone(),
        );
        jobs.restore(journal.load());

        let shutdown = CancellationToken::new();
        let link = Link {
            silence_limit: Duration::from_secs(config.coordinator_silence_secs),
            url,
            credentials: credential::Credentials::new(
                config.credential_path(),
                &config.enrollment_token,
            ),
            tls,
            peer_id: peer_id.clone(),
            jobs: Arc::clone(&jobs),
            fetcher,
            outgoing,
            incoming_for_coordinator: outgoing_receiver,
            reconnect_max: Duration::from_secs(config.reconnect_max_secs),
            shutdown: shutdown.clone(),
        };
        let link = tokio::spawn(link.run());
        info!(
            peer_id,
            max_concurrent_jobs = config.max_concurrent_jobs,
            "agent started"
        );

        Ok(RunningAgent {
            peer_id,
            jobs,
            shutdown,
            link,
            kill_grace: config.kill_grace(),
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
            cgroup_parent,
        })
    }

    /// Stops gracefully: takes no new jobs, lets running ones finish for up
    /// to `shutdown_grace_secs`, cancels the rest (killing their process
    /// trees), waits briefly for the coordinator to store the results, then
    /// closes the link and removes the agent's cgroup. Results not stored by
    /// then stay in the journal and are sent by the next agent process.
    pub async fn stop(self) {
        self.jobs.start_draining();
        if !self.jobs.wait_idle(self.shutdown_grace).await {
            info!(
                grace_secs = self.shutdown_grace.as_secs(),
                "jobs still running after the shutdown grace; canceling them"
            );
        }
        let limit = self.kill_grace + Duration::from_secs(10);
        self.jobs.cancel_all("the agent is stopping", limit).await;
        if !self.jobs.wait_delivered(RESULT_DELIVERY_LIMIT).await {
            warn!(
                "some results were not delivered before stopping; the next agent start sends them"
            );
        }
        self.shutdown.cancel();
        if let Err(error) = self.link.await {
            warn!(%error, "agent link task failed");
        }
        if let Some(parent) = &self.cgroup_parent
            && let Err(error) = sys::cgroup::remove_parent(parent)
        {
            warn!(%error, "failed to remove the agent's cgroup");
        }
        info!(peer_id = %self.peer_id, "agent stopped");
    }

    /// Waits until the link loop ends (it only ends on shutdown).
    pub async fn wait(&mut self) {
        let _ = (&mut self.link).await;
    }
}

/// Loads the plugins of the policy file, if there is one.
async fn load_sandbox(
    policy: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> anyhow::Result<runwarden_sandbox::Sandbox> {
    use runwarden_sandbox::{HookPoint, Policy, Sandbox};

    let Some(path) = policy else {
        return Ok(Sandbox::empty());
    };
    let policy = Policy::from_file(path)?;
    let hooks = [HookPoint::Validate, HookPoint::PostProcess];
    Sandbox::load(&policy, &hooks, &data_dir.join("plugin-cache"))
        .await
        .with_context(|| format!("failed to load the sandbox policy `{}`", path.display()))
}
