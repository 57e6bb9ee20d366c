//! The `runwarden` command: run a coordinator, an agent, or both at once in
//! dev mode.

mod certs;
mod dev;
mod plugin_test;
mod token;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use runwarden_agent::RunningAgent;
use runwarden_agent::config::AgentConfig;
use runwarden_coordinator::config::CoordinatorConfig;
use runwarden_coordinator::server::{RunningCoordinator, open_storage};
use tracing::error;

/// Exit status for an invalid command line or configuration (`EX_USAGE`).
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "runwarden",
    version,
    about = "Run scripts on many machines from one REST API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and the agent link.
    Coordinator {
        /// TOML configuration file; without it every option has its default.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run jobs on this machine for a coordinator.
    Agent {
        /// TOML configuration file; without it every option has its default.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a coordinator and one local agent in this process, for trying
    /// Runwarden out. State and files go under --data-dir.
    Dev(dev::DevArgs),
    /// Write a development CA and a coordinator certificate signed by it,
    /// and print the config lines that use them. For tests and first steps,
    /// not production: the CA key is stored unencrypted next to the
    /// certificates.
    Certs(certs::CertsArgs),
    /// Work with WebAssembly plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Manage API tokens and agent enrollment tokens in the coordinator's
    /// database.
    #[command(subcommand)]
    Token(token::TokenCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run one plugin once on a sample request (and result) and print its
    /// decision, time and peak memory.
    Test(plugin_test::PluginTestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            error!(%error, "failed to start the async runtime");
            return ExitCode::FAILURE;
        }
    };

    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Coordinator { config } => run_coordinator(config).await,
            Command::Agent { config } => run_agent(config).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Certs(args) => certs::run(args),
            Command::Plugin(PluginCommand::Test(args)) => plugin_test::run(args).await,
            Command::Token(command) => token::run(command).await,
        }
    });

    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(error)) => {
            eprintln!("runwarden: {error:#}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Run(error)) => {
            eprintln!("runwarden: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log targets whose trace-level events print WebSocket frames with their
/// payloads (tungstenite 0.29 logs `Sending frame` and `Received message`).
/// The agent link's `run_job` frames carry secret environment values, so
/// these events are dropped whatever `RUST_LOG` requests.
const FRAME_LOGGING_TARGETS: &[&str] = &["tungstenite", "tokio_tungstenite"];

fn init_tracing() {
    use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_frame_payloads = tracing_subscriber::filter::filter_fn(|metadata| {
        *metadata.level() != tracing::Level::TRACE || !is_frame_logging(metadata.target())
    });
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter)
        .with_filter(no_frame_payloads);
    tracing_subscriber::registry().with(output).init();
}

fn is_frame_logging(target: &str) -> bool {
    FRAME_LOGGING_TARGETS.iter().any(|prefix| {
        target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Why a command ended with an error.
pub enum Failure {
    /// The configuration or command line cannot be used (exit status 64).
    Config(anyhow::Error),
    /// Something failed while running (exit status 1).
    Run(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    /// Sorts errors from loading a sandbox policy or its plugins, or the TLS
    /// files of a configuration, as configuration errors, and everything
    /// else as run errors.
    fn from(error: anyhow::Error) -> Self {
        let is_config = error.chain().any(|cause| {
            cause.is::<runwarden_sandbox::policy::PolicyError>()
                || cause.is::<runwarden_sandbox::sandbox::LoadErrors>()
                || cause.is::<runwarden_coordinator::tls::TlsSetupError>()
                || cause.is::<runwarden_agent::tls::TlsSetupError>()
        });
        if is_config {
            Failure::Config(error)
        } else {
            Failure::Run(error)
        }
    }
}

async fn run_coordinator(config: Option<PathBuf>) -> Result<(), Failure> {
    let config = match config {
        Some(path) => CoordinatorConfig::from_file(&path).map_err(Failure::Config)?,
        None => CoordinatorConfig::default(),
    };
    let storage = open_storage(&config)?;
    let coordinator = RunningCoordinator::start(config, storage).await?;
    coordinator.run_until(shutdown_signal()).await?;
    Ok(())
}

async fn run_agent(config: Option<PathBuf>) -> Result<(), Failure> {
    let config = match config {
        Some(path) => AgentConfig::from_file(&path).map_err(Failure::Config)?,
        None => AgentConfig::default(),
    };
    config.validate().map_err(Failure::Config)?;

    let mut agent = RunningAgent::start(config).await?;
    tokio::select! {
        () = agent.wait() => {}
        () = shutdown_signal() => {}
    }
    agent.stop().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                error!(%error, "failed to listen for SIGTERM; only Ctrl-C stops this process");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
}
