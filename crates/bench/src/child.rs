//! Parts of a cluster in their own processes, so that one part's memory can
//! be measured alone and agents fork jobs from a process of an agent's size.
//!
//! The bench binary starts itself again with the hidden `child` command.
//! A child prints one line, `ready ...`, on stdout once it is up, and stops
//! when its standard input reaches end of file. The parent closes that pipe
//! to stop it, and a dropped [`ChildProcess`] kills its child by PID.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use futures_util::future::join_all;
use futures_util::{SinkExt as _, StreamExt as _};
use runwarden_agent::RunningAgent;
use runwarden_agent::config::AgentConfig;
use runwarden_coordinator::config::{CoordinatorConfig, StorageKind};
use runwarden_coordinator::server::RunningCoordinator;
use runwarden_coordinator::storage::memory::MemoryStorage;
use runwarden_protocol::LINK_PROTOCOL_VERSION;
use runwarden_protocol::link::{AGENT_LINK_PATH, AgentMessage, CoordinatorMessage};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;

/// Command of a child process.
#[derive(Debug, Clone, Subcommand)]
pub enum ChildCommand {
    /// A coordinator with memory storage on 127.0.0.1 and a free port;
    /// prints `ready http://ADDR`.
    Coordinator {
        /// Agent connections to make room for in the open-file limit.
        #[arg(long, default_value_t = 0)]
        agents: usize,
    },
    /// `count` WebSocket connections to the agent link that send `Hello`,
    /// wait for `Welcome`, then idle: they reply to pings and send one
    /// every 20 s, as an idle agent does. Prints `ready COUNT`.
    IdleAgents {
        /// Coordinator base URL, `http://HOST:PORT`.
        #[arg(long)]
        url: String,
        #[arg(long)]
        count: usize,
        /// Peer ids are `<prefix>-<n>`.
        #[arg(long)]
        prefix: String,
    },
    /// `count` agents in this one process, with peer ids
    /// `<prefix>-<first>` onwards and the default configuration except the
    /// options below; prints `ready COUNT`.
    Agents {
        /// Coordinator base URL, `http://HOST:PORT`.
        #[arg(long)]
        url: String,
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 0)]
        first: usize,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Folder for the agents' data folders and scripts directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Sandbox policy file for every agent.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        max_concurrent_jobs: Option<usize>,
    },
}

/// Interval of the pings an idle connection sends, the same as the agent's.
const IDLE_PING_INTERVAL: Duration = Duration::from_secs(20);

/// Connections that may be dialing at once in the idle-agents child.
const DIAL_CONCURRENCY: usize = 200;

/// Maximum wait for one connection's `Welcome`.
const WELCOME_LIMIT: Duration = Duration::from_secs(30);

/// Runs a child command until standard input reaches end of file.
pub async fn run(command: ChildCommand) -> anyhow::Result<()> {
    match command {
        ChildCommand::Coordinator { agents } => run_coordinator(agents).await,
        ChildCommand::IdleAgents { url, count, prefix } => {
            run_idle_agents(&url, count, &prefix).await
        }
        ChildCommand::Agents {
            url,
            prefix,
            first,
            count,
            data_dir,
            policy,
            max_concurrent_jobs,
        } => {
            let template = AgentConfig {
                coordinator_url: url,
                policy,
                max_concurrent_jobs: max_concurrent_jobs
                    .unwrap_or(AgentConfig::default().max_concurrent_jobs),
                ..AgentConfig::default()
            };
            let peers: Vec<String> = (first..first + count)
                .map(|n| format!("{prefix}-{n}"))
                .collect();
            run_agents(&template, &peers, &data_dir).await
        }
    }
}

async fn run_coordinator(agents: usize) -> anyhow::Result<()> {
    raise_open_file_limit(agents + 256)?;
    let config = CoordinatorConfig {
        listen: "127.0.0.1:0".parse().expect("loopback address parses"),
        storage: StorageKind::Memory,
        max_peers_per_task: agents.max(1),
        ..CoordinatorConfig::default()
    };
    let coordinator = RunningCoordinator::start(config, Arc::new(MemoryStorage::new())).await?;
    println!("ready http://{}", coordinator.local_addr);
    wait_for_stdin_eof().await;
    coordinator.stop().await
}

async fn run_agents(template: &AgentConfig, peers: &[String], dir: &Path) -> anyhow::Result<()> {
    // A socket, a journal and a job's pipes per agent.
    raise_open_file_limit(4 * peers.len() + 256)?;
    let mut agents = Vec::with_capacity(peers.len());
    for peer_id in peers {
        let agent = RunningAgent::start(agent_config(template, peer_id, dir))
            .await
            .with_context(|| format!("failed to start agent {peer_id}"))?;
        agents.push(agent);
    }
    println!("ready {}", agents.len());
    wait_for_stdin_eof().await;
    join_all(agents.into_iter().map(RunningAgent::stop)).await;
    Ok(())
}

/// Builds the configuration of agent `peer_id`: `template` with the peer id, a
/// data folder of its own under `dir`, the scripts directory `dir/scripts`
/// and no shutdown grace, so that stopping a bench cluster takes no time.
pub fn agent_config(template: &AgentConfig, peer_id: &str, dir: &Path) -> AgentConfig {
    AgentConfig {
        peer_id: peer_id.to_owned(),
        scripts_dir: dir.join("scripts"),
        data_dir: dir.join(format!("agent-{peer_id}")),
        shutdown_grace_secs: 0,
        ..template.clone()
    }
}

async fn run_idle_agents(url: &str, count: usize, prefix: &str) -> anyhow::Result<()> {
    raise_open_file_limit(count + 256)?;
    let link_url = format!(
        "{}{AGENT_LINK_PATH}",
        url.replacen("http://", "ws://", 1).trim_end_matches('/')
    );

    let dial_slots = Arc::new(Semaphore::new(DIAL_CONCURRENCY));
    let (connected, mut outcomes) = mpsc::unbounded_channel();
    for n in 0..count {
        let link_url = link_url.clone();
        let peer_id = format!("{prefix}-{n}");
        let dial_slots = Arc::clone(&dial_slots);
        let connected = connected.clone();
        tokio::spawn(async move {
            let slot = dial_slots.acquire_owned().await.expect("never closed");
            let dialed = connect_idle(&link_url, &peer_id).await;
            drop(slot);
            match dialed {
                Ok(socket) => {
                    let _ = connected.send(Ok(()));
                    idle(socket).await;
                }
                Err(error) => {
                    let _ = connected.send(Err(error.context(format!("idle agent {peer_id}"))));
                }
            }
        });
    }
    drop(connected);

    for _ in 0..count {
        match outcomes.recv().await {
            Some(Ok(())) => {}
            Some(Err(error)) => return Err(error),
            None => bail!("an idle agent task ended before it connected"),
        }
    }
    println!("ready {count}");
    wait_for_stdin_eof().await;
    Ok(())
}

type LinkSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Dials the agent link, sends `Hello` and waits for `Welcome`.
async fn connect_idle(link_url: &str, peer_id: &str) -> anyhow::Result<LinkSocket> {
    let (mut socket, _) = tokio_tungstenite::connect_async(link_url)
        .await
        .with_context(|| format!("failed to dial {link_url}"))?;
    let hello = AgentMessage::Hello {
        peer_id: peer_id.to_owned(),
        agent_version: "runwarden-bench idle".to_owned(),
        link_version: LINK_PROTOCOL_VERSION,
        active_jobs: Vec::new(),
    };
    socket
        .send(Message::Text(serde_json::to_string(&hello)?.into()))
        .await
        .context("failed to send hello")?;
    let answer = tokio::time::timeout(WELCOME_LIMIT, socket.next())
        .await
        .with_context(|| format!("no welcome within {WELCOME_LIMIT:?}"))?;
    match answer {
        Some(Ok(Message::Text(text))) => match serde_json::from_str::<CoordinatorMessage>(&text) {
            Ok(CoordinatorMessage::Welcome { .. }) => Ok(socket),
            _ => bail!(
                "the coordinator responded to hello with something other than welcome: {text}"
            ),
        },
        other => bail!("the coordinator did not welcome the connection: {other:?}"),
    }
}

/// Reads frames (tungstenite replies to pings while it reads) and sends a ping
/// every [`IDLE_PING_INTERVAL`], until the coordinator closes the link.
async fn idle(socket: LinkSocket) {
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(IDLE_PING_INTERVAL);
    ping.tick().await;
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
}

async fn wait_for_stdin_eof() {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0_u8; 64];
    while let Ok(read) = stdin.read(&mut buffer).await {
        if read == 0 {
            break;
        }
    }
}

/// Raises this process's soft limit of open files to at least `needed`,
/// raising the hard limit too where the process may (as root).
///
/// # Errors
///
/// Fails when the limit cannot be raised far enough.
pub fn raise_open_file_limit(needed: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    let needed = needed as u64;
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("failed to read RLIMIT_NOFILE")?;
    if soft >= needed {
        return Ok(());
    }
    if hard >= needed {
        setrlimit(Resource::RLIMIT_NOFILE, needed, hard)
            .context("failed to raise RLIMIT_NOFILE")?;
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, needed).with_context(|| {
        format!(
            "the open-file limit is {soft} (hard {hard}) and this run needs {needed}; run as root or raise the hard limit (ulimit -Hn)"
        )
    })
}

/// A child started by [`ChildProcess::spawn`].
pub struct ChildProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Kept open so that the child never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    pub pid: u32,
    /// The rest of the child's `ready` line.
    pub ready: String,
}

impl ChildProcess {
    /// Starts this binary with `child ARGS` and waits up to `limit` for its
    /// `ready` line.
    pub async fn spawn(
        name: &str,
        args: &[String],
        limit: Duration,
    ) -> anyhow::Result<ChildProcess> {
        let program = std::env::current_exe().context("failed to find this binary's path")?;
        let mut child = Command::new(&program)
            .arg("child")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {} child {args:?}", program.display()))?;
        let pid = child.id().context("the child exited at once")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));

        let mut line = String::new();
        let read = tokio::time::timeout(limit, stdout.read_line(&mut line))
            .await
            .with_context(|| format!("{name} (pid {pid}) was not ready within {limit:?}"))?
            .with_context(|| format!("failed to read the output of {name} (pid {pid})"))?;
        let Some(ready) = line.trim_end().strip_prefix("ready") else {
            bail!(
                "{name} (pid {pid}) exited or printed {line:?} instead of its ready line (read {read} bytes); see its error above"
            );
        };
        Ok(ChildProcess {
            name: name.to_owned(),
            child,
            stdin,
            _stdout: stdout,
            pid,
            ready: ready.trim().to_owned(),
        })
    }

    /// Resident set size now, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid, "VmRSS")
    }

    /// Proportional set size now, in KiB: the RSS with each page shared
    /// with N processes counted as 1/N (`Pss` of `/proc/PID/smaps_rollup`).
    pub fn pss_kib(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/smaps_rollup", self.pid);
        let rollup =
            std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
        rollup
            .lines()
            .find_map(|line| line.strip_prefix("Pss:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{path} has no Pss field"))
    }

    /// Peak resident set size since start or the last
    /// [`ChildProcess::reset_peak_rss`], in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid, "VmHWM")
    }

    /// Resets the child's peak resident set size to its current one
    /// (`echo 5 > /proc/PID/clear_refs`, Linux 4.0 and later).
    pub fn reset_peak_rss(&self) -> anyhow::Result<()> {
        let path = format!("/proc/{}/clear_refs", self.pid);
        std::fs::write(&path, "5").with_context(|| format!("failed to write {path}"))
    }

    /// Closes the child's standard input, so it stops by itself, and waits
    /// up to 60 s for it to exit. Past that, kills it by PID.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => {
                let status = status.with_context(|| format!("failed to wait for {}", self.name))?;
                if !status.success() {
                    bail!("{} (pid {}) exited with {status}", self.name, self.pid);
                }
                Ok(())
            }
            Err(_) => {
                self.child
                    .kill()
                    .await
                    .with_context(|| format!("failed to kill {}", self.name))?;
                bail!(
                    "{} (pid {}) did not stop within 60 s and was killed",
                    self.name,
                    self.pid
                )
            }
        }
    }
}

/// Reads a `kB` field of `/proc/PID/status`, such as `VmRSS` or `VmHWM`.
pub fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{path} has no {field} field"))
}
