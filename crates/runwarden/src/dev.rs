//! `runwarden dev`: a coordinator and one local agent in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use runwarden_agent::RunningAgent;
use runwarden_agent::config::AgentConfig;
use runwarden_coordinator::config::{CoordinatorConfig, DEFAULT_LISTEN};
use runwarden_coordinator::server::{RunningCoordinator, open_storage};

use crate::Failure;

/// Peer id of the dev agent, fixed so that documented examples work as
/// printed on any machine.
pub const DEV_PEER_ID: &str = "local";

/// How long dev mode waits for its agent to connect before giving up.
const AGENT_CONNECT_LIMIT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct DevArgs {
    /// Address of the REST API; loopback only, since dev mode has no
    /// authentication.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Folder for the agent's scripts directory and cache; created if
    /// missing.
    #[arg(long, default_value = "runwarden-dev")]
    data_dir: PathBuf,
}

pub async fn run(args: DevArgs) -> Result<(), Failure> {
    if !args.listen.ip().is_loopback() {
        return Err(Failure::Config(anyhow::anyhow!(
            "dev mode listens on loopback only, because it has no authentication; use --listen 127.0.0.1:PORT, or run `runwarden coordinator` with [auth] enabled for other addresses"
        )));
    }

    let scripts_dir = args.data_dir.join("scripts");
    std::fs::create_dir_all(&scripts_dir)
        .with_context(|| format!("failed to create `{}`", scripts_dir.display()))?;

    let coordinator_config = CoordinatorConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        ..CoordinatorConfig::default()
    };
    let storage = open_storage(&coordinator_config)?;
    let coordinator = RunningCoordinator::start(coordinator_config, storage).await?;
    let base_url = format!("http://{}", coordinator.local_addr);

    let agent_config = AgentConfig {
        coordinator_url: base_url.clone(),
        peer_id: DEV_PEER_ID.to_owned(),
        scripts_dir: std::path::absolute(&scripts_dir).unwrap_or(scripts_dir),
        data_dir: std::path::absolute(&args.data_dir).unwrap_or(args.data_dir),
        ..AgentConfig::default()
    };
    let mut agent = RunningAgent::start(agent_config).await?;

    wait_for_agent(&coordinator).await?;
    print_welcome(&base_url);

    tokio::select! {
        () = agent.wait() => {}
        () = crate::shutdown_signal() => {}
    }
    agent.stop().await;
    coordinator.stop().await?;
    Ok(())
}

async fn wait_for_agent(coordinator: &RunningCoordinator) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + AGENT_CONNECT_LIMIT;
    while !coordinator.is_peer_online(DEV_PEER_ID) {
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the dev agent did not connect within {} s; see the log above for the cause",
                AGENT_CONNECT_LIMIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn print_welcome(base_url: &str) {
    println!(
        r#"Runwarden dev mode is ready: coordinator at {base_url}, one agent with peer id "{DEV_PEER_ID}".
Try:

  curl -s {base_url}/script/sync -H 'Content-Type: application/json' \
    -d '{{"peers":["{DEV_PEER_ID}"],"content":{{"execWay":0,"content":"echo hello from $(hostname)"}}}}'

Press Ctrl-C to stop."#
    );
}
