//! Real `runwarden coordinator` and `runwarden agent` processes for fault
//! tests, and a TCP proxy that can cut the agent link.
//!
//! Each process reads a config file in the test's temporary folder, listens
//! or dials on 127.0.0.1 only, and appends its log to a file next to the
//! config, so that a restarted process keeps one log. A dropped handle kills
//! its process with SIGKILL, so a failing test leaves no server behind.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const BINARY: &str = env!("CARGO_BIN_EXE_runwarden");

/// Maximum wait for a process to listen, connect or exit.
const PROCESS_LIMIT: Duration = Duration::from_secs(20);

/// Returns a free address on 127.0.0.1.
///
/// The port is picked below the kernel's ephemeral range where that range
/// leaves room, so that an outgoing connection cannot take the port of a
/// coordinator while the test restarts it.
pub fn free_address() -> SocketAddr {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 11_000 {
        let span = u128::from(ephemeral_low - 10_000);
        for _ in 0..200 {
            let port = 10_000 + (uuid::Uuid::new_v4().as_u128() % span) as u16;
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            if std::net::TcpListener::bind(address).is_ok() {
                return address;
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("read the bound address")
}

/// Log filter (`RUST_LOG`) of processes started without one of their own.
const DEFAULT_LOG_FILTER: &str = "info";

/// Starts the binary with `args`, appending its standard error to `log`,
/// with `log_filter` as `RUST_LOG`.
fn spawn_logged(args: &[&str], config: &Path, log: &Path, log_filter: &str) -> Child {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the process log");
    Command::new(BINARY)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", log_filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|error| panic!("failed to start {BINARY} {args:?}: {error}"))
}

/// Returns the last `count` lines of a log file, for failure messages.
fn log_tail(log: &Path, count: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// One child process with its config and log, which can be killed,
/// signaled and started again with the same config.
struct Managed {
    name: String,
    args: Vec<&'static str>,
    config: PathBuf,
    log: PathBuf,
    log_filter: String,
    child: Option<Child>,
}

impl Managed {
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.child = Some(spawn_logged(
            &self.args,
            &self.config,
            &self.log,
            &self.log_filter,
        ));
    }

    fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("process is running");
        Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"))
    }

    /// Panics with the log's tail when the process has exited.
    fn assert_alive(&mut self) {
        let child = self.child.as_mut().expect("process was started");
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{} exited with {status}; log tail:\n{}",
                self.name,
                log_tail(&self.log, 30)
            );
        }
    }

    fn kill(&mut self) {
        let mut child = self.child.take().expect("process is running");
        child.kill().expect("send SIGKILL");
        child.wait().expect("reap the killed process");
    }

    fn terminate(&self) {
        kill(self.pid(), Signal::SIGTERM).expect("send SIGTERM");
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("process was started");
        loop {
            if let Some(status) = child.try_wait().expect("poll the process") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}; log tail:\n{}",
                self.name,
                log_tail(&self.log, 30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `runwarden coordinator` process with SQLite storage in its own
/// `data_dir`.
pub struct CoordinatorProcess {
    pub address: SocketAddr,
    pub url: String,
    process: Managed,
}

impl CoordinatorProcess {
    /// Writes a config with a free `listen` address, `storage = "sqlite"`,
    /// a `data_dir` under `dir` and the TOML lines in `options`, then starts
    /// the coordinator and waits until it listens.
    pub fn start(dir: &Path, options: &str) -> CoordinatorProcess {
        CoordinatorProcess::start_logged(dir, options, DEFAULT_LOG_FILTER)
    }

    /// Like [`CoordinatorProcess::start`], with `log_filter` as `RUST_LOG`
    /// for this run and every restart.
    pub fn start_logged(dir: &Path, options: &str, log_filter: &str) -> CoordinatorProcess {
        let address = free_address();
        let data_dir = dir.join("coordinator-data");
        let config = dir.join("coordinator.toml");
        let text = format!(
            "listen = \"{address}\"\nstorage = \"sqlite\"\ndata_dir = \"{}\"\n{options}\n",
            data_dir.display()
        );
        std::fs::write(&config, text).expect("write the coordinator config");

        let mut coordinator = CoordinatorProcess {
            address,
            url: format!("http://{address}"),
            process: Managed {
                name: "coordinator".to_owned(),
                args: vec!["coordinator"],
                config,
                log: dir.join("coordinator.log"),
                log_filter: log_filter.to_owned(),
                child: None,
            },
        };
        coordinator.restart();
        coordinator
    }

    /// Starts the coordinator again with the same config, port and
    /// `data_dir`, and waits until it listens.
    pub fn restart(&mut self) {
        self.process.spawn();
        let deadline = Instant::now() + PROCESS_LIMIT;
        while std::net::TcpStream::connect(self.address).is_err() {
            self.process.assert_alive();
            assert!(
                Instant::now() < deadline,
                "coordinator did not listen on {} within {PROCESS_LIMIT:?}",
                self.address
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the coordinator with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Sends SIGTERM, which starts a graceful shutdown.
    pub fn terminate(&self) {
        self.process.terminate();
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.process.wait_exit(limit)
    }

    /// Everything the coordinator processes logged so far, restarts included.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }

    /// Returns the coordinator's `data_dir`, which contains its database
    /// files.
    pub fn data_dir(&self) -> PathBuf {
        self.process
            .config
            .parent()
            .expect("the config is in the test's folder")
            .join("coordinator-data")
    }

    /// Counts how many times the coordinator logged that it stored a final
    /// result for `job_id`, over all its runs.
    pub fn results_stored(log: &str, job_id: &str) -> usize {
        let field = format!("job_id={job_id}");
        log.lines()
            .filter(|line| line.contains("job finished") && line.contains(&field))
            .count()
    }
}

/// A `runwarden agent` process.
pub struct AgentProcess {
    pub peer_id: String,
    pub data_dir: PathBuf,
    process: Managed,
}

impl AgentProcess {
    /// Writes a config for `peer_id` and starts the agent. The agent dials
    /// `coordinator_url`, keeps its files in a folder of its own under `dir`
    /// and redials at least once a second, and `options` adds TOML lines.
    /// Call [`Api::wait_online`] to wait until it is connected.
    pub fn start(dir: &Path, peer_id: &str, coordinator_url: &str, options: &str) -> AgentProcess {
        AgentProcess::start_logged(dir, peer_id, coordinator_url, options, DEFAULT_LOG_FILTER)
    }

    /// Like [`AgentProcess::start`], with `log_filter` as `RUST_LOG` for this
    /// run and every restart.
    pub fn start_logged(
        dir: &Path,
        peer_id: &str,
        coordinator_url: &str,
        options: &str,
        log_filter: &str,
    ) -> AgentProcess {
        let data_dir = dir.join(format!("agent-{peer_id}"));
        let scripts_dir = data_dir.join("scripts");
        std::fs::create_dir_all(&scripts_dir).expect("create the agent's scripts folder");
        let config = dir.join(format!("agent-{peer_id}.toml"));
        let text = format!(
            "coordinator_url = \"{coordinator_url}\"\npeer_id = \"{peer_id}\"\nscripts_dir = \"{}\"\ndata_dir = \"{}\"\nreconnect_max_secs = 1\n{options}\n",
            scripts_dir.display(),
            data_dir.display()
        );
        std::fs::write(&config, text).expect("write the agent config");

        let mut agent = AgentProcess {
            peer_id: peer_id.to_owned(),
            data_dir,
            process: Managed {
                name: format!("agent {peer_id}"),
                args: vec!["agent"],
                config,
                log: dir.join(format!("agent-{peer_id}.log")),
                log_filter: log_filter.to_owned(),
                child: None,
            },
        };
        agent.restart();
        agent
    }

    /// Starts the agent again with the same config and `data_dir`.
    pub fn restart(&mut self) {
        self.process.spawn();
    }

    /// Kills the agent with SIGKILL and reaps it. Its job processes live
    /// on until an agent starts again and kills them through their cgroups.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Sends SIGTERM, which starts a graceful stop.
    pub fn terminate(&self) {
        self.process.terminate();
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.process.wait_exit(limit)
    }

    /// Stops the agent with SIGTERM and checks that it exits with status 0.
    pub fn stop(&mut self) {
        self.terminate();
        let status = self.wait_exit(PROCESS_LIMIT);
        assert!(
            status.success(),
            "agent {} exited with {status} after SIGTERM",
            self.peer_id
        );
    }

    /// Everything the agent processes logged so far, restarts included.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }

    /// Jobs in the agent's journal: accepted jobs whose result the
    /// coordinator has not stored yet.
    pub fn journal_len(&self) -> usize {
        std::fs::read_dir(self.data_dir.join("journal"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "json"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Waits up to `limit` until the journal is empty, which means the
    /// coordinator acknowledged every result, and returns what is left.
    pub async fn wait_journal_empty(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = self.journal_len();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The REST API of a coordinator, through a client that opens a new
/// connection per request, so that no pooled connection outlives a
/// coordinator that was killed.
#[derive(Clone)]
pub struct Api {
    pub base_url: String,
    client: reqwest::Client,
    /// Bearer token sent with every call, for coordinators with
    /// authentication on.
    token: Option<String>,
}

impl Api {
    pub fn new(base_url: &str) -> Api {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("build the HTTP client");
        Api {
            base_url: base_url.to_owned(),
            client,
            token: None,
        }
    }

    /// Returns this client sending `token` as its bearer token.
    pub fn with_token(mut self, token: &str) -> Api {
        self.token = Some(token.trim().to_owned());
        self
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Posts `body` and returns the HTTP status and the envelope, or the
    /// transport error (such as a refused connection).
    pub async fn try_post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let response = self
            .authorized(self.client.post(format!("{}{path}", self.base_url)))
            .json(body)
            .send()
            .await
            .map_err(|error| format!("{error:?}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|error| error.to_string())?;
        let envelope = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("response is not JSON ({error}): {text}"));
        Ok((status, envelope))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.try_post(path, body)
            .await
            .unwrap_or_else(|error| panic!("POST {path} failed: {error}"))
    }

    /// Submits `content` to `peer` with `/script/async` and returns the task
    /// id.
    pub async fn submit(&self, peer: &str, content: Value) -> String {
        let body =
            json!({ "name": "fault", "creater": "tests", "peers": [peer], "content": content });
        let (status, envelope) = self.post("/script/async", &body).await;
        assert_eq!(status, 200, "async failed: {envelope}");
        assert_eq!(envelope["code"], 0, "async failed: {envelope}");
        envelope["data"]["taskid"]
            .as_str()
            .expect("taskid is a string")
            .to_owned()
    }

    pub async fn task_info(&self, task_id: &str) -> Value {
        let (status, envelope) = self
            .post("/script/taskinfo", &json!({ "taskid": task_id }))
            .await;
        assert_eq!(status, 200, "taskinfo of {task_id} failed: {envelope}");
        assert_eq!(
            envelope["code"], 0,
            "taskinfo of {task_id} failed: {envelope}"
        );
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
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until the first job of the task has `status`, for at most
    /// `limit`.
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
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns whether `GET /peers` lists `peer_id` as online.
    pub async fn is_online(&self, peer_id: &str) -> bool {
        let Ok(response) = self
            .authorized(self.client.get(format!("{}/peers", self.base_url)))
            .send()
            .await
        else {
            return false;
        };
        let Ok(envelope) = response.json::<Value>().await else {
            return false;
        };
        envelope["data"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|peer| peer["peerId"] == peer_id && peer["online"] == true)
    }

    /// Waits up to 20 s until the coordinator lists `peer_id` as
    /// `online` (or as offline when `online` is false).
    pub async fn wait_online(&self, peer_id: &str, online: bool) {
        let deadline = tokio::time::Instant::now() + PROCESS_LIMIT;
        while self.is_online(peer_id).await != online {
            assert!(
                tokio::time::Instant::now() < deadline,
                "peer {peer_id} did not become online={online} within {PROCESS_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Kills, by pid, every process marked with `RW_TEST_MARK=<marker>` when
/// dropped: the job processes that a killed agent left behind.
pub struct MarkedProcesses(pub String);

impl Drop for MarkedProcesses {
    fn drop(&mut self) {
        for pid in super::processes_with_marker(&self.0) {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// What the proxy does with connections, and which connections are still
/// current.
#[derive(Debug, Clone, Copy)]
struct ProxyState {
    /// Bumped to close every connection opened before.
    epoch: u64,
    /// New connections are forwarded; otherwise they are closed at once.
    accepting: bool,
    /// Bytes are forwarded; otherwise they wait in the socket buffers.
    forwarding: bool,
}

/// A TCP proxy on 127.0.0.1 in front of a coordinator, for agents to dial,
/// that can cut or stall the agent link on demand.
pub struct LinkProxy {
    pub address: SocketAddr,
    state: watch::Sender<ProxyState>,
    accept_loop: JoinHandle<()>,
}

impl LinkProxy {
    pub async fn start(upstream: SocketAddr) -> LinkProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let address = listener.local_addr().expect("read the proxy address");
        let (state, _) = watch::channel(ProxyState {
            epoch: 0,
            accepting: true,
            forwarding: true,
        });
        let accept_loop = tokio::spawn(accept_connections(listener, upstream, state.clone()));
        LinkProxy {
            address,
            state,
            accept_loop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Closes every proxied connection and closes new ones at once, until
    /// [`LinkProxy::restore`].
    pub fn cut(&self) {
        self.state.send_modify(|state| {
            state.epoch += 1;
            state.accepting = false;
            state.forwarding = false;
        });
    }

    /// Keeps proxied connections open but forwards nothing on them, and
    /// closes new ones at once, until [`LinkProxy::restore`]. Both ends see
    /// a silent link, as with a dead network path.
    pub fn stall(&self) {
        self.state.send_modify(|state| {
            state.accepting = false;
            state.forwarding = false;
        });
    }

    /// Closes connections left from a cut or stall and forwards new ones.
    pub fn restore(&self) {
        self.state.send_modify(|state| {
            state.epoch += 1;
            state.accepting = true;
            state.forwarding = true;
        });
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
        self.cut();
    }
}

async fn accept_connections(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Sender<ProxyState>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // An accept error such as EMFILE can repeat, so wait instead of
            // spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let current = *state.borrow();
        if !current.accepting {
            drop(client);
            continue;
        }
        let receiver = state.subscribe();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let upward = forward(client_read, server_write, receiver.clone(), current.epoch);
            let downward = forward(server_read, client_write, receiver, current.epoch);
            tokio::join!(upward, downward);
        });
    }
}

/// Copies bytes one way until either end closes or the proxy's epoch moves
/// past `epoch`, pausing while the proxy stalls.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<ProxyState>,
    epoch: u64,
) {
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let current = *state.borrow_and_update();
        if current.epoch != epoch {
            return;
        }
        if !current.forwarding {
            if state.changed().await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            read = from.read(&mut buffer) => {
                let count = match read {
                    Ok(0) | Err(_) => return,
                    Ok(count) => count,
                };
                if to.write_all(&buffer[..count]).await.is_err() {
                    return;
                }
            }
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
