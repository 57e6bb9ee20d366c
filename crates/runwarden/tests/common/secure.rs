//! A coordinator with authentication on, over SQLite in a temporary
//! folder, and agents that enroll with it, all in the test process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use runwarden_agent::RunningAgent;
use runwarden_agent::config::AgentConfig;
use runwarden_coordinator::auth::token::Scope;
use runwarden_coordinator::auth::{self};
use runwarden_coordinator::config::{AuthConfig, CoordinatorConfig, StorageKind};
use runwarden_coordinator::server::RunningCoordinator;
use runwarden_coordinator::storage::Storage;
use runwarden_coordinator::storage::sqlite::SqliteStorage;
use serde_json::Value;

pub struct SecureCluster {
    pub base_url: String,
    pub client: reqwest::Client,
    /// An `admin` token.
    pub admin: String,
    pub storage: Arc<dyn Storage>,
    pub work_dir: tempfile::TempDir,
    coordinator: Option<RunningCoordinator>,
    agents: HashMap<String, RunningAgent>,
}

impl SecureCluster {
    /// Starts a coordinator with authentication on; `change` may adjust its
    /// config first.
    pub async fn start(change: impl FnOnce(&mut CoordinatorConfig)) -> SecureCluster {
        let work_dir = tempfile::tempdir().expect("create work dir");
        let mut config = CoordinatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            storage: StorageKind::Sqlite,
            data_dir: work_dir.path().join("coordinator"),
            default_timeout_secs: 60,
            auth: AuthConfig {
                enabled: true,
                ..AuthConfig::default()
            },
            ..CoordinatorConfig::default()
        };
        change(&mut config);

        std::fs::create_dir_all(&config.data_dir).unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(SqliteStorage::open(&config.database_path()).expect("open database"));
        let (_, admin) = auth::create_api_token(storage.as_ref(), "admin", Scope::Admin, 0)
            .await
            .expect("create admin token");
        let coordinator = RunningCoordinator::start(config, Arc::clone(&storage))
            .await
            .expect("start coordinator");

        SecureCluster {
            base_url: format!("http://{}", coordinator.local_addr),
            client: reqwest::Client::new(),
            admin,
            storage,
            work_dir,
            coordinator: Some(coordinator),
            agents: HashMap::new(),
        }
    }

    /// Creates an API token through the API and returns it.
    pub async fn token(&self, name: &str, scope: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/tokens",
                Some(&self.admin),
                Some(serde_json::json!({ "name": name, "scope": scope })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"]["token"].as_str().unwrap().to_owned()
    }

    /// Creates an enrollment token for `peer_id` through the API.
    pub async fn enrollment(&self, peer_id: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/enrollments",
                Some(&self.admin),
                Some(serde_json::json!({ "peerId": peer_id })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"]["token"].as_str().unwrap().to_owned()
    }

    /// Makes a call with an optional bearer token and JSON body, and
    /// returns the HTTP status and the parsed envelope.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, _, body) = self
            .call_with_headers(method, path, token, body, None)
            .await;
        (status, body)
    }

    /// Like [`SecureCluster::call`], with an `Accept-Language`, returning
    /// the response headers too.
    pub async fn call_with_headers(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        lang: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(lang) = lang {
            request = request.header("Accept-Language", lang);
        }
        let response = request.send().await.expect("send request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("read body");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("response is not JSON ({error}): {text}"));
        (status, headers, value)
    }

    /// Returns the agent config for `peer_id`, with its own data folder.
    pub fn agent_config(&self, peer_id: &str, enrollment_token: &str) -> AgentConfig {
        let data_dir = self.agent_data_dir(peer_id);
        AgentConfig {
            coordinator_url: self.base_url.clone(),
            peer_id: peer_id.to_owned(),
            scripts_dir: self.work_dir.path().join("scripts"),
            data_dir,
            enrollment_token: enrollment_token.to_owned(),
            drain_timeout_ms: 500,
            kill_grace_secs: 2,
            shutdown_grace_secs: 0,
            reconnect_max_secs: 1,
            ..AgentConfig::default()
        }
    }

    pub fn agent_data_dir(&self, peer_id: &str) -> PathBuf {
        self.work_dir.path().join(format!("agent-{peer_id}"))
    }

    /// Starts an agent; it is not waited for.
    pub async fn start_agent(&mut self, name: &str, config: AgentConfig) {
        let agent = RunningAgent::start(config).await.expect("start agent");
        self.agents.insert(name.to_owned(), agent);
    }

    /// Enrolls an agent as `peer_id` with a new enrollment token, starts it
    /// under the name `peer_id`, and waits until it is online.
    pub async fn start_enrolled_agent(&mut self, peer_id: &str) -> AgentConfig {
        let enrollment = self.enrollment(peer_id).await;
        let config = self.agent_config(peer_id, &enrollment);
        self.start_agent(peer_id, config.clone()).await;
        assert!(
            self.wait_online(peer_id, true).await,
            "{peer_id} did not come online"
        );
        config
    }

    pub async fn stop_agent(&mut self, name: &str) {
        if let Some(agent) = self.agents.remove(name) {
            agent.stop().await;
        }
    }

    pub fn is_online(&self, peer_id: &str) -> bool {
        self.coordinator.as_ref().unwrap().is_peer_online(peer_id)
    }

    /// Waits up to 10 s for `peer_id` to be online (or offline), and
    /// returns whether it got there.
    pub async fn wait_online(&self, peer_id: &str, online: bool) -> bool {
        for _ in 0..400 {
            if self.is_online(peer_id) == online {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    /// Waits up to 10 s for an audit entry with `action` (and `target`,
    /// when given) and returns it.
    pub async fn wait_audit(&self, action: &str, target: Option<&str>) -> Value {
        for _ in 0..200 {
            let (status, body) = self
                .call(
                    "GET",
                    &format!("/audit?action={action}&limit=1000"),
                    Some(&self.admin),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let found = body["data"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .find(|entry| target.is_none_or(|target| entry["target"] == target))
                .cloned();
            if let Some(entry) = found {
                return entry;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no audit entry {action} for {target:?} within 10 s");
    }

    /// Stores an API token that expired a minute ago, and returns it.
    pub async fn expired_token(&self, name: &str) -> String {
        let issued = auth::token::issue(auth::token::TokenKind::Api).unwrap();
        let now = SystemTime::now();
        let record = runwarden_coordinator::storage::TokenRecord {
            token_id: issued.token_id.clone(),
            name: name.to_owned(),
            kind: auth::token::TokenKind::Api,
            scope: Some(Scope::Admin),
            peer_id: None,
            secret_hash: issued.secret_hash.clone(),
            created_at: now - Duration::from_secs(120),
            expires_at: Some(now - Duration::from_secs(60)),
            revoked_at: None,
        };
        assert!(self.storage.insert_token(record).await.unwrap());
        issued.token
    }
}

/// Returns the secret part of a token `rw?_<id>_<secret>`. The secret is
/// base64url, so it may itself contain `_`.
pub fn token_secret(token: &str) -> &str {
    token
        .trim()
        .splitn(3, '_')
        .nth(2)
        .expect("a token has three parts")
}

impl Drop for SecureCluster {
    fn drop(&mut self) {
        self.agents.clear();
    }
}
