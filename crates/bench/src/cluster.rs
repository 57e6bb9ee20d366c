//! A coordinator in this process on 127.0.0.1 with its agents, and a
//! client for the coordinator's REST API.
//!
//! Agents run in child processes unless a spec requests them in this
//! process. An agent forks each job's process, and the cost of a fork grows
//! with the memory of the forking process, so an agent should fork from a
//! process of an agent's size, as it does in a deployment. Several
//! agents may share a process: each has its own link, job table and data
//! folder, and each job is a real process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use futures_util::future::{join_all, try_join_all};
use runwarden_agent::RunningAgent;
use runwarden_agent::config::AgentConfig;
use runwarden_coordinator::auth::{self, token::Scope};
use runwarden_coordinator::config::{AuthConfig, CoordinatorConfig, StorageKind};
use runwarden_coordinator::server::{RunningCoordinator, open_storage};
use runwarden_coordinator::storage::Storage;
use runwarden_coordinator::storage::memory::MemoryStorage;
use serde_json::{Value, json};

use crate::child::{ChildProcess, agent_config};

/// Settings of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Number of agents, with peer ids `<peer_prefix>-<n>`.
    pub agents: usize,
    pub peer_prefix: String,
    pub storage: StorageKind,
    /// Sandbox policy for the coordinator and every agent.
    pub policy: Option<PathBuf>,
    pub max_concurrent_jobs: usize,
    /// Agents per child process; 0 runs every agent in this process, beside
    /// the coordinator.
    pub agents_per_process: usize,
    /// Turns on `[auth]`: the client sends an admin token, and each agent
    /// presents its own credential. Needs SQLite storage.
    pub auth: bool,
}

impl ClusterSpec {
    /// Returns the spec of a cluster with `agents` agents, one per child
    /// process, memory storage, no policy and the default
    /// `max_concurrent_jobs`.
    pub fn new(agents: usize, peer_prefix: &str) -> ClusterSpec {
        ClusterSpec {
            agents,
            peer_prefix: peer_prefix.to_owned(),
            storage: StorageKind::Memory,
            policy: None,
            max_concurrent_jobs: AgentConfig::default().max_concurrent_jobs,
            agents_per_process: 1,
            auth: false,
        }
    }
}

pub struct Cluster {
    pub api: Api,
    pub peers: Vec<String>,
    coordinator: Option<RunningCoordinator>,
    agents: Vec<RunningAgent>,
    agent_processes: Vec<ChildProcess>,
    work_dir: tempfile::TempDir,
}

/// Stores an admin token and one agent credential per peer, writes each
/// credential where its agent reads it (`agent-<peer>/credential` under
/// `dir`), and returns the admin token. Agents skip enrollment this way,
/// which a bench does not measure.
async fn provision_credentials(
    storage: &dyn Storage,
    peers: &[String],
    dir: &std::path::Path,
) -> anyhow::Result<String> {
    let (_, admin) = auth::create_api_token(storage, "bench-admin", Scope::Admin, 0)
        .await
        .context("failed to create the bench's admin token")?;

    for peer in peers {
        let (record, credential) = auth::new_agent_credential(peer, SystemTime::now())
            .context("failed to make a credential")?;
        storage.insert_token(record).await?;

        let agent_dir = dir.join(format!("agent-{peer}"));
        std::fs::create_dir_all(&agent_dir)
            .with_context(|| format!("failed to create {}", agent_dir.display()))?;
        std::fs::write(agent_dir.join("credential"), &credential)
            .with_context(|| format!("failed to write the credential of {peer}"))?;
    }
    Ok(admin)
}

/// Maximum wait for a child process to start its agents.
const AGENT_PROCESS_LIMIT: Duration = Duration::from_secs(60);

impl Cluster {
    /// Starts the coordinator and the agents, and waits until every agent
    /// is connected.
    pub async fn start(spec: &ClusterSpec) -> anyhow::Result<Cluster> {
        let work_dir =
            tempfile::tempdir().context("failed to create the cluster's temporary folder")?;
        let config = CoordinatorConfig {
            listen: "127.0.0.1:0".parse().expect("loopback address parses"),
            storage: spec.storage,
            data_dir: work_dir.path().join("coordinator"),
            policy: spec.policy.clone(),
            max_peers_per_task: spec.agents.max(1),
            auth: AuthConfig {
                enabled: spec.auth,
                ..AuthConfig::default()
            },
            ..CoordinatorConfig::default()
        };
        let storage: Arc<dyn Storage> = match spec.storage {
            StorageKind::Memory => Arc::new(MemoryStorage::new()),
            StorageKind::Sqlite => open_storage(&config)?,
        };
        let peers: Vec<String> = (0..spec.agents)
            .map(|n| format!("{}-{n}", spec.peer_prefix))
            .collect();
        let token = if spec.auth {
            Some(provision_credentials(storage.as_ref(), &peers, work_dir.path()).await?)
        } else {
            None
        };

        let coordinator = RunningCoordinator::start(config, storage).await?;
        let mut api = Api::new(format!("http://{}", coordinator.local_addr));
        api.token = token;
        let mut cluster = Cluster {
            api,
            peers,
            coordinator: Some(coordinator),
            agents: Vec::new(),
            agent_processes: Vec::new(),
            work_dir,
        };

        if spec.agents_per_process == 0 {
            cluster.start_agents_here(spec).await?;
        } else {
            cluster.start_agent_processes(spec).await?;
        }
        cluster.wait_all_online().await?;
        Ok(cluster)
    }

    fn agent_template(&self, spec: &ClusterSpec) -> AgentConfig {
        AgentConfig {
            coordinator_url: self.api.base_url.clone(),
            policy: spec.policy.clone(),
            max_concurrent_jobs: spec.max_concurrent_jobs,
            ..AgentConfig::default()
        }
    }

    async fn start_agents_here(&mut self, spec: &ClusterSpec) -> anyhow::Result<()> {
        let template = self.agent_template(spec);
        for peer in &self.peers {
            let config = agent_config(&template, peer, self.work_dir.path());
            let agent = RunningAgent::start(config)
                .await
                .with_context(|| format!("failed to start agent {peer}"))?;
            self.agents.push(agent);
        }
        Ok(())
    }

    async fn start_agent_processes(&mut self, spec: &ClusterSpec) -> anyhow::Result<()> {
        let per_process = spec.agents_per_process;
        let starts = (0..spec.agents).step_by(per_process).map(|first| {
            let count = per_process.min(spec.agents - first);
            let mut args = vec![
                "agents".to_owned(),
                "--url".to_owned(),
                self.api.base_url.clone(),
                "--prefix".to_owned(),
                spec.peer_prefix.clone(),
                "--first".to_owned(),
                first.to_string(),
                "--count".to_owned(),
                count.to_string(),
                "--data-dir".to_owned(),
                self.work_dir.path().display().to_string(),
                "--max-concurrent-jobs".to_owned(),
                spec.max_concurrent_jobs.to_string(),
            ];
            if let Some(policy) = &spec.policy {
                args.push("--policy".to_owned());
                args.push(policy.display().to_string());
            }
            async move { ChildProcess::spawn("agents", &args, AGENT_PROCESS_LIMIT).await }
        });
        self.agent_processes = try_join_all(starts).await?;
        Ok(())
    }

    pub fn work_dir(&self) -> &std::path::Path {
        self.work_dir.path()
    }

    /// Waits until the coordinator reports `peer_id` connected, for at most
    /// `limit`.
    pub async fn wait_online(&self, peer_id: &str, limit: Duration) -> anyhow::Result<()> {
        let coordinator = self
            .coordinator
            .as_ref()
            .expect("coordinator runs until stop");
        let deadline = Instant::now() + limit;
        while !coordinator.is_peer_online(peer_id) {
            if Instant::now() >= deadline {
                bail!("agent {peer_id} did not connect to the coordinator within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn wait_all_online(&self) -> anyhow::Result<()> {
        // Agents dial at once; a thousand of them take a few seconds on two
        // cores, so the limit grows with their number.
        let limit = Duration::from_secs(30) + Duration::from_millis(30) * self.peers.len() as u32;
        let deadline = Instant::now() + limit;
        for peer in &self.peers {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_online(peer, left).await?;
        }
        Ok(())
    }

    /// Stops every agent, all at once, then the coordinator.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let stopped = join_all(self.agent_processes.drain(..).map(ChildProcess::stop)).await;
        join_all(self.agents.drain(..).map(RunningAgent::stop)).await;
        if let Some(coordinator) = self.coordinator.take() {
            coordinator.stop().await?;
        }
        stopped.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        Ok(())
    }
}

/// A client for the coordinator's REST API.
#[derive(Clone)]
pub struct Api {
    pub base_url: String,
    client: reqwest::Client,
    /// Bearer token sent with every call, when the coordinator has `[auth]`
    /// on.
    pub token: Option<String>,
}

/// Maximum wait for one API call. Calls that wait for jobs (`/script/sync`)
/// pass their own limit.
const CALL_LIMIT: Duration = Duration::from_secs(60);

impl Api {
    pub fn new(base_url: String) -> Api {
        Api {
            base_url,
            client: reqwest::Client::new(),
            token: None,
        }
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Posts `body` to `path` and returns the envelope's `data`, failing
    /// unless the call succeeded (HTTP 200, `code` 0) within `limit`.
    pub async fn post(&self, path: &str, body: &Value, limit: Duration) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base_url);
        let call = async {
            let response = self
                .authorized(self.client.post(&url))
                .json(body)
                .send()
                .await
                .with_context(|| format!("POST {url} failed"))?;
            let status = response.status();
            let envelope: Value = response
                .json()
                .await
                .with_context(|| format!("POST {url}: the response is not JSON"))?;
            if status != reqwest::StatusCode::OK || envelope["code"] != 0 {
                bail!("POST {url} failed with HTTP {status}: {envelope}");
            }
            Ok(envelope["data"].clone())
        };
        tokio::time::timeout(limit, call)
            .await
            .with_context(|| format!("POST {url} got no answer within {limit:?}"))?
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base_url);
        let call = async {
            let response = self
                .authorized(self.client.get(&url))
                .send()
                .await
                .with_context(|| format!("GET {url} failed"))?;
            let envelope: Value = response
                .json()
                .await
                .with_context(|| format!("GET {url}: the response is not JSON"))?;
            if envelope["code"] != 0 {
                bail!("GET {url} failed: {envelope}");
            }
            Ok(envelope["data"].clone())
        };
        tokio::time::timeout(CALL_LIMIT, call)
            .await
            .with_context(|| format!("GET {url} got no answer within {CALL_LIMIT:?}"))?
    }

    /// Runs `content` on `peers` through `/script/sync` and returns the
    /// task's `data`. `limit` bounds the wait for every job to end.
    pub async fn sync(
        &self,
        peers: &[String],
        content: &Value,
        limit: Duration,
    ) -> anyhow::Result<Value> {
        let body = json!({ "name": "bench", "creater": "runwarden-bench", "peers": peers, "content": content });
        self.post("/script/sync", &body, limit).await
    }

    /// Submits `content` to `peers` through `/script/async` and returns the
    /// task id.
    pub async fn submit(&self, peers: &[String], content: &Value) -> anyhow::Result<String> {
        let body = json!({ "name": "bench", "creater": "runwarden-bench", "peers": peers, "content": content });
        let data = self.post("/script/async", &body, CALL_LIMIT).await?;
        data["taskid"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("/script/async returned no taskid: {data}"))
    }

    pub async fn task_info(&self, task_id: &str) -> anyhow::Result<Value> {
        self.post(
            "/script/taskinfo",
            &json!({ "taskid": task_id }),
            CALL_LIMIT,
        )
        .await
    }

    /// Returns true while the coordinator lists `peer_id` as online.
    pub async fn is_online(&self, peer_id: &str) -> anyhow::Result<bool> {
        let peers = self.get("/peers").await?;
        Ok(peers["list"].as_array().is_some_and(|list| {
            list.iter()
                .any(|peer| peer["peerId"] == peer_id && peer["online"] == true)
        }))
    }
}

/// Fails unless every job of a task's `data` ended with `expected` status.
pub fn check_jobs(data: &Value, expected: &str) -> anyhow::Result<()> {
    let jobs = data["list"]
        .as_array()
        .with_context(|| format!("task data has no job list: {data}"))?;
    if let Some(job) = jobs.iter().find(|job| job["status"] != expected) {
        bail!(
            "a job of task {} ended {} instead of {expected}: {}",
            data["taskid"],
            job["status"],
            job["resCmd"]
        );
    }
    Ok(())
}

/// Returns the request content that runs `/bin/sh -c true`.
pub fn true_content() -> Value {
    json!({ "execWay": 0, "content": "true" })
}
