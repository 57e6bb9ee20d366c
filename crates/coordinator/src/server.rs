//! Starting and stopping a coordinator.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use runwarden_sandbox::{HookPoint, Policy, Sandbox};

use crate::config::CoordinatorConfig;
use crate::peers::PeerRegistry;
use crate::state::{AppState, TaskEvents};
use crate::storage::Storage;

/// A coordinator serving on its socket.
pub struct RunningCoordinator {
    /// The bound address; its port is the real one when the config asked
    /// for port 0.
    pub local_addr: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

impl RunningCoordinator {
    /// Binds the listen address and starts serving.
    ///
    /// # Errors
    ///
    /// Fails when the configuration is invalid or the address cannot be
    /// bound.
    pub async fn start(
        config: CoordinatorConfig,
        storage: Arc<dyn Storage>,
    ) -> anyhow::Result<RunningCoordinator> {
        config.validate().context("invalid coordinator config")?;

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
        let state = AppState {
            config: Arc::new(config),
            storage,
            peers: Arc::new(PeerRegistry::default()),
            task_events: Arc::new(TaskEvents::default()),
            sandbox: Arc::new(sandbox),
        };
        let router = crate::api::router(state.clone());

        let shutdown = CancellationToken::new();
        // Job results and cancels are small messages on long-lived agent
        // sockets; Nagle's algorithm would hold each one back for tens of
        // milliseconds.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "failed to set TCP_NODELAY");
            }
        });
        let server = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        );
        info!(%local_addr, "coordinator listening");

        Ok(RunningCoordinator {
            local_addr,
            state,
            shutdown,
            server,
        })
    }

    /// Returns true while an agent with this peer id is connected.
    pub fn is_peer_online(&self, peer_id: &str) -> bool {
        self.state.peers.get(peer_id).is_some()
    }

    /// Stops accepting connections and waits for the server to end.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server
            .await
            .context("coordinator server task failed")?
            .context("coordinator server failed")?;
        info!("coordinator stopped");
        Ok(())
    }

    /// Waits until the server ends by itself (it only does so on an error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.server
            .await
            .context("coordinator server task failed")?
            .context("coordinator server failed")
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
