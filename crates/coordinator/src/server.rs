//! Starting and stopping a coordinator.

use std::net::SocketAddr;
use std::sync::Arc;

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};

use anyhow::Context as _;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use tracing::{info, warn};

use runwarden_sandbox::{HookPoint, Policy, Sandbox};

use crate::config::{CoordinatorConfig, StorageKind};
use crate::peers::PeerRegistry;
use crate::state::{AppState, TaskEvents};
use crate::storage::Storage;
use crate::storage::memory::MemoryStorage;
use crate::storage::sqlite::SqliteStorage;
use crate::tls::TlsListener;

/// The address a request came from, for authentication and the audit log.
/// axum reads it from each accepted connection, over TLS or not.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> ClientAddr {
        ClientAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> ClientAddr {
        ClientAddr(*stream.remote_addr())
    }
}

/// A TCP listener that turns off Nagle's algorithm on every accepted
/// socket. Job results and cancels are small messages on long-lived agent
/// sockets, and Nagle's algorithm would hold each one back for tens of
/// milliseconds.
struct PlainListener(TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, address) = axum::serve::Listener::accept(&mut self.0).await;
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "failed to set TCP_NODELAY");
        }
        (tcp, address)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// A coordinator serving on its socket.
pub struct RunningCoordinator {
    /// The bound address; its port is the real one when the config asked
    /// for port 0.
    pub local_addr: SocketAddr,
    is_tls: bool,
    state: AppState,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

impl RunningCoordinator {
    /// Binds the listen address and starts serving.
    ///
    /// # Errors
    ///
    /// Fails when the configuration is invalid, the `[tls]` certificate or
    /// key cannot be used (a [`crate::tls::TlsSetupError`] in the chain), or
    /// the address cannot be bound.
    pub async fn start(
        config: CoordinatorConfig,
        storage: Arc<dyn Storage>,
    ) -> anyhow::Result<RunningCoordinator> {
        config.validate().context("invalid coordinator config")?;
        let tls = config
            .tls
            .as_ref()
            .map(crate::tls::load_server_config)
            .transpose()?;

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| {
                format!(
                    "failed to listen on {}; pick a free address with `listen` in the config or --listen",
                    config.listen
                )
            })?;
        let local_addr = listener
            .local_addr()
            .context("failed to read bound address")?;

        let sandbox = load_sandbox(config.policy.as_deref()).await?;
        let shutdown = CancellationToken::new();
        let state = AppState {
            config: Arc::new(config),
            storage,
            peers: Arc::new(PeerRegistry::default()),
            task_events: Arc::new(TaskEvents::default()),
            secrets: Arc::default(),
            sandbox: Arc::new(sandbox),
            shutdown: shutdown.clone(),
            auth: Arc::new(crate::auth::AuthState::default()),
        };
        let router = crate::api::router(state.clone());

        tokio::spawn(crate::reaper::run(state.clone()));

        let is_tls = tls.is_some();
        let service = router.into_make_service_with_connect_info::<ClientAddr>();
        let server = match tls {
            Some(tls) => {
                let listener = TlsListener::new(listener, local_addr, tls);
                tokio::spawn(
                    axum::serve(listener, service)
                        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                        .into_future(),
                )
            }
            None => tokio::spawn(
                axum::serve(PlainListener(listener), service)
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                    .into_future(),
            ),
        };
        let scheme = if is_tls { "https" } else { "http" };
        info!(
            %local_addr,
            url = %format!("{scheme}://{local_addr}"),
            auth = state.config.auth.enabled,
            "coordinator listening"
        );

        Ok(RunningCoordinator {
            local_addr,
            is_tls,
            state,
            shutdown,
            server,
        })
    }

    /// Returns true when the coordinator serves HTTPS and WSS (a `[tls]`
    /// table is configured), false for plain HTTP.
    pub fn is_tls(&self) -> bool {
        self.is_tls
    }

    /// Returns true while an agent with this peer id is connected.
    pub fn is_peer_online(&self, peer_id: &str) -> bool {
        self.state.peers.get(peer_id).is_some()
    }

    /// Shuts down gracefully: refuses new tasks (HTTP 503), answers waiting
    /// `/script/sync` callers with their task's state, closes agent links,
    /// and waits up to `shutdown_grace_secs` for requests in flight. Every
    /// stored write is already on disk, so nothing needs flushing.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        info!("coordinator shutting down");
        self.shutdown.cancel();

        let grace = Duration::from_secs(self.state.config.shutdown_grace_secs);
        match tokio::time::timeout(grace, &mut self.server).await {
            Ok(joined) => {
                joined
                    .context("coordinator server task failed")?
                    .context("coordinator server failed")?;
            }
            Err(_) => {
                warn!(
                    grace_secs = grace.as_secs(),
                    "requests still running after the shutdown grace; closing them"
                );
                self.server.abort();
            }
        }
        info!("coordinator stopped");
        Ok(())
    }

    /// Serves until `signal` resolves, then stops gracefully (see
    /// [`RunningCoordinator::stop`]). Returns early with the error if the
    /// server fails by itself.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            ended = &mut self.server => {
                ended
                    .context("coordinator server task failed")?
                    .context("coordinator server failed")?;
                anyhow::bail!("coordinator server ended unexpectedly")
            }
            () = signal => self.stop().await,
        }
    }
}

/// Opens the storage backend the configuration names.
///
/// # Errors
///
/// Fails when the data folder cannot be created or the database cannot be
/// opened.
pub fn open_storage(config: &CoordinatorConfig) -> anyhow::Result<Arc<dyn Storage>> {
    match config.storage {
        StorageKind::Memory => {
            warn!("storage is in memory: tasks and results are lost when the coordinator stops");
            Ok(Arc::new(MemoryStorage::new()))
        }
        StorageKind::Sqlite => {
            // A new data_dir is readable by the coordinator's user only: the
            // database contains job output, token hashes and the audit log.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&config.data_dir)
                .with_context(|| {
                format!(
                    "failed to create the coordinator's data_dir `{}`; create it or change data_dir",
                    config.data_dir.display()
                )
            })?;
            let path = config.database_path();
            let storage = SqliteStorage::open(&path)?;
            // SQLite creates the -wal and -shm files with the database
            // file's mode, so this covers them too.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).with_context(
                || format!("failed to make `{}` private to its owner", path.display()),
            )?;
            info!(database = %path.display(), "storage opened");
            Ok(Arc::new(storage))
        }
    }
}

/// Loads the validate plugins of the policy file, if there is one. The
/// coordinator runs no post-process plugins: those run on agents.
async fn load_sandbox(policy: Option<&std::path::Path>) -> anyhow::Result<Sandbox> {
    let Some(path) = policy else {
        return Ok(Sandbox::empty());
    };
    let policy = Policy::from_file(path)?;
    if !policy.post_process.is_empty() {
        info!(
            count = policy.post_process.len(),
            "post_process plugins in the policy run on agents, not on the coordinator"
        );
    }

    let default_cache = std::env::temp_dir().join(format!("runwarden-plugin-cache-{}", nix_euid()));
    Sandbox::load(&policy, &[HookPoint::Validate], &default_cache)
        .await
        .with_context(|| format!("failed to load the sandbox policy `{}`", path.display()))
}

fn nix_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
