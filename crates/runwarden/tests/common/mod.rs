//! A real coordinator and real agents on 127.0.0.1 for integration tests.
//!
//! Each test starts its own [`Cluster`] on an ephemeral port, so tests run in
//! parallel without sharing state. Agents run in the test process and run
//! real processes; the helpers here find leftover processes by a marker
//! variable in their environment and zombies by their parent pid. [`fleet`]
//! runs the `runwarden` binary instead, for tests that kill and restart
//! coordinators and agents.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

pub mod fleet;
pub mod secure;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use runwarden_agent::RunningAgent;
use runwarden_agent::config::{AgentConfig, AllowPolicy};
use runwarden_coordinator::config::CoordinatorConfig;
use runwarden_coordinator::server::RunningCoordinator;
use runwarden_coordinator::storage::memory::MemoryStorage;
use serde_json::{Value, json};

/// Settings a test may change; the rest are the defaults.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub peers: Vec<String>,
    pub kill_grace_secs: u64,
    pub max_output_bytes: usize,
    pub max_concurrent_jobs: usize,
    pub max_timeout_secs: u32,
    pub max_body_bytes: usize,
    /// Sandbox policy for the coordinator and every agent.
    pub policy: Option<PathBuf>,
    pub delivery_timeout_secs: u64,
    pub lost_after_secs: u64,
    /// The `[allow]` policy of every agent.
    pub agent_allow: AllowPolicy,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            peers: vec!["peer-1".to_owned()],
            kill_grace_secs: 2,
            max_output_bytes: 1024 * 1024,
            max_concurrent_jobs: 16,
            max_timeout_secs: 3600,
            max_body_bytes: 8 * 1024 * 1024,
            policy: None,
            delivery_timeout_secs: 60,
            lost_after_secs: 300,
            agent_allow: AllowPolicy::default(),
        }
    }
}

pub struct Cluster {
    pub base_url: String,
    pub client: reqwest::Client,
    pub scripts_dir: PathBuf,
    coordinator: Option<RunningCoordinator>,
    agents: HashMap<String, RunningAgent>,
    options: ClusterOptions,
    work_dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a coordinator and one agent with peer id `peer-1`.
    pub async fn start() -> Cluster {
        Cluster::start_with(ClusterOptions::default()).await
    }

    pub async fn start_with(options: ClusterOptions) -> Cluster {
        let work_dir = tempfile::tempdir().expect("create cluster work dir");
        let scripts_dir = work_dir.path().join("scripts");
        std::fs::create_dir_all(&scripts_dir).expect("create scripts dir");

        let config = CoordinatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_timeout_secs: options.max_timeout_secs,
            default_timeout_secs: options.max_timeout_secs.min(3600),
            max_body_bytes: options.max_body_bytes,
            max_script_bytes: options.max_body_bytes / 2,
            cancel_timeout_secs: options.kill_grace_secs + 10,
            policy: options.policy.clone(),
            delivery_timeout_secs: options.delivery_timeout_secs,
            lost_after_secs: options.lost_after_secs,
            ..CoordinatorConfig::default()
        };
        let coordinator = RunningCoordinator::start(config, Arc::new(MemoryStorage::new()))
            .await
            .expect("start coordinator");
        let base_url = format!("http://{}", coordinator.local_addr);

        let mut cluster = Cluster {
            base_url,
            client: reqwest::Client::new(),
            scripts_dir,
            coordinator: Some(coordinator),
            agents: HashMap::new(),
            options: options.clone(),
            work_dir,
        };
        for peer in &options.peers {
            cluster.start_agent(peer).await;
        }
        cluster
    }

    /// Starts an agent with `peer_id` and waits until it is connected.
    pub async fn start_agent(&mut self, peer_id: &str) {
        let config = AgentConfig {
            coordinator_url: self.base_url.clone(),
            peer_id: peer_id.to_owned(),
            scripts_dir: self.scripts_dir.clone(),
            data_dir: self.work_dir.path().join(format!("agent-{peer_id}")),
            kill_grace_secs: self.options.kill_grace_secs,
            max_output_bytes: self.options.max_output_bytes,
            max_concurrent_jobs: self.options.max_concurrent_jobs,
            drain_timeout_ms: 500,
            shutdown_grace_secs: 0,
            policy: self.options.policy.clone(),
            allow: self.options.agent_allow.clone(),
            ..AgentConfig::default()
        };
        let agent = RunningAgent::start(config).await.expect("start agent");
        self.agents.insert(peer_id.to_owned(), agent);
        self.wait_online(peer_id, true).await;
    }

    /// Stops the agent with `peer_id` and waits until the coordinator sees
    /// it offline.
    pub async fn stop_agent(&mut self, peer_id: &str) {
        let agent = self.agents.remove(peer_id).expect("agent was started");
        agent.stop().await;
        self.wait_online(peer_id, false).await;
    }

    async fn wait_online(&self, peer_id: &str, online: bool) {
        let coordinator = self.coordinator.as_ref().unwrap();
        for _ in 0..200 {
            if coordinator.is_peer_online(peer_id) == online {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("peer {peer_id} did not become online={online} within 5 s");
    }

    /// Posts `body` and returns the HTTP status and the parsed envelope.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string(), None).await
    }

    /// Posts raw bytes with an optional `Accept-Language`.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        lang: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(lang) = lang {
            request = request.header("Accept-Language", lang);
        }
        let response = request.send().await.expect("send request");
        envelope_of(response).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("send request");
        envelope_of(response).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .delete(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("send request");
        envelope_of(response).await
    }

    /// Runs `content` on `peer-1` through `/script/sync` and returns the
    /// task's `data`, after checking the call succeeded.
    pub async fn sync(&self, content: Value) -> Value {
        self.sync_on(&["peer-1"], content).await
    }

    pub async fn sync_on(&self, peers: &[&str], content: Value) -> Value {
        let body =
            json!({ "name": "test", "creater": "tests", "peers": peers, "content": content });
        let (status, envelope) = self.post("/script/sync", &body).await;
        assert_eq!(status, 200, "sync failed: {envelope}");
        assert_eq!(envelope["code"], 0, "sync failed: {envelope}");
        envelope["data"].clone()
    }

    /// Submits `content` to `peer-1` through `/script/async` and returns the
    /// task id and the job id.
    pub async fn submit(&self, content: Value) -> (String, String) {
        let body = json!({ "peers": ["peer-1"], "content": content });
        let (status, envelope) = self.post("/script/async", &body).await;
        assert_eq!(status, 200, "async failed: {envelope}");
        let task_id = envelope["data"]["taskid"].as_str().unwrap().to_owned();
        let info = self.task_info(&task_id).await;
        let job_id = info["list"][0]["jobid"].as_str().unwrap().to_owned();
        (task_id, job_id)
    }

    pub async fn task_info(&self, task_id: &str) -> Value {
        let (status, envelope) = self
            .post("/script/taskinfo", &json!({ "taskid": task_id }))
            .await;
        assert_eq!(status, 200, "taskinfo failed: {envelope}");
        envelope["data"].clone()
    }

    /// Polls `/script/taskinfo` until the task is final, for at most `limit`.
    pub async fn wait_final(&self, task_id: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let info = self.task_info(task_id).await;
            if info["status"] != "running" {
                return info;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {task_id} still running after {limit:?}: {info}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the job's status is `status`, for at most `limit`.
    pub async fn wait_job_status(&self, task_id: &str, status: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let info = self.task_info(task_id).await;
            if info["list"][0]["status"] == status {
                return info;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job of task {task_id} not {status} after {limit:?}: {info}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn cancel(&self, job_id: &str, msg: &str) -> Value {
        let body = json!({ "tasks": [{ "peerid": "peer-1", "jobid": job_id, "msg": msg }] });
        let (status, envelope) = self.post("/script/cancel", &body).await;
        assert_eq!(status, 200, "cancel failed: {envelope}");
        envelope["data"]["list"][0].clone()
    }

    pub async fn stop(mut self) {
        for (_, agent) in self.agents.drain() {
            agent.stop().await;
        }
        if let Some(coordinator) = self.coordinator.take() {
            coordinator.stop().await.expect("stop coordinator");
        }
    }
}

async fn envelope_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("read response body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("response is not JSON ({error}): {text}"));
    (status, value)
}

/// The first job's `resCmd` of a task's `data`.
pub fn res_cmd(data: &Value) -> &Value {
    &data["list"][0]["resCmd"]
}

/// The exact bytes of a stream of a `resCmd` (`"stdout"` or `"stderr"`).
pub fn stream_bytes(res_cmd: &Value, stream: &str) -> Vec<u8> {
    let text = res_cmd[stream].as_str().unwrap_or_default();
    let base64 = res_cmd[format!("{stream}Base64")].as_str();
    runwarden_protocol::output::decode_stream(text, base64).expect("valid base64")
}

/// A unique marker to put in a job's environment as `RW_TEST_MARK`, so that
/// [`processes_with_marker`] can find every process the job started.
pub fn new_marker() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Pids of live processes whose environment holds `RW_TEST_MARK=<marker>`.
/// Zombies count as gone, since they have exited.
pub fn processes_with_marker(marker: &str) -> Vec<u32> {
    let needle = format!("RW_TEST_MARK={marker}");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if process_state(pid) == Some('Z') {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|byte| *byte == 0)
            .any(|var| var == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// Waits up to `limit` for every process marked with `marker` to be gone,
/// and returns the pids still alive after that.
pub async fn leftover_processes(marker: &str, limit: Duration) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let pids = processes_with_marker(marker);
        if pids.is_empty() || tokio::time::Instant::now() >= deadline {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The state letter of a process from `/proc/PID/stat` (`R`, `S`, `Z`, ...).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.chars().next()
}

/// Zombie processes whose parent is this test process (where the agents
/// run).
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    let mut zombies = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return zombies;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&me.to_string().as_str()) {
            zombies.push(pid);
        }
    }
    zombies
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Creates a group if it does not exist yet.
pub fn ensure_group(name: &str) {
    if nix::unistd::Group::from_name(name).ok().flatten().is_some() {
        return;
    }
    let status = std::process::Command::new("groupadd")
        .arg(name)
        .status()
        .expect("run groupadd");
    // Another test binary may have created it at the same moment.
    assert!(
        status.success() || nix::unistd::Group::from_name(name).ok().flatten().is_some(),
        "groupadd {name} failed"
    );
}

/// Creates a user with a home folder and the given supplementary groups if
/// it does not exist yet.
pub fn ensure_user(name: &str, groups: &[&str]) {
    for group in groups {
        ensure_group(group);
    }
    if nix::unistd::User::from_name(name).ok().flatten().is_some() {
        return;
    }
    let mut command = std::process::Command::new("useradd");
    command.args(["--create-home", "--shell", "/bin/sh"]);
    if !groups.is_empty() {
        command.args(["--groups", &groups.join(",")]);
    }
    let status = command.arg(name).status().expect("run useradd");
    assert!(
        status.success() || nix::unistd::User::from_name(name).ok().flatten().is_some(),
        "useradd {name} failed"
    );
}

/// Writes an executable script into the agents' scripts directory.
pub fn write_node_script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;

    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
