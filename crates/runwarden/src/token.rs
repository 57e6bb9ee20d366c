//! `runwarden token`: create, list and revoke API tokens, and create agent
//! enrollment tokens, straight in the coordinator's database. This is how
//! the first admin token is made; later ones can also be made through the
//! REST API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use runwarden_coordinator::auth::Caller;
use runwarden_coordinator::auth::token::Scope;
use runwarden_coordinator::auth::{self, IssueError};
use runwarden_coordinator::config::{CoordinatorConfig, StorageKind};
use runwarden_coordinator::server::open_storage;
use runwarden_coordinator::storage::{AuditRecord, Storage};

use crate::Failure;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token and print it once.
    Create(CreateArgs),
    /// List tokens, enrollment tokens and agent credentials (never their
    /// secrets).
    List(ConfigArg),
    /// Revoke a token or an agent credential (`agent:<peer id>`) by name.
    Revoke(RevokeArgs),
    /// Create a one-time enrollment token for an agent and print it once.
    Enroll(EnrollArgs),
}

#[derive(Args)]
pub struct ConfigArg {
    /// The coordinator's TOML configuration file; its `data_dir` locates
    /// the database.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Name shown in the audit log: 1 to 64 letters, digits, `-`, `_`, `.`.
    #[arg(long)]
    name: String,
    /// read, run or admin; each includes the ones before it.
    #[arg(long)]
    scope: String,
    /// How long the token is valid, such as `30d` or `12h`; without it the
    /// token never expires.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
}

#[derive(Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long)]
    name: String,
}

#[derive(Args)]
pub struct EnrollArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The only peer id the token may enroll; without it, any peer id that
    /// has no credential yet.
    #[arg(long)]
    peer: Option<String>,
    /// How long the token stays usable, up to 7 days.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    ttl: Duration,
}

pub async fn run(command: TokenCommand) -> Result<(), Failure> {
    match command {
        TokenCommand::Create(args) => create(args).await,
        TokenCommand::List(args) => list(args).await,
        TokenCommand::Revoke(args) => revoke(args).await,
        TokenCommand::Enroll(args) => enroll(args).await,
    }
}

fn open(
    arg: &ConfigArg,
) -> Result<std::sync::Arc<dyn runwarden_coordinator::storage::Storage>, Failure> {
    let config = match &arg.config {
        Some(path) => CoordinatorConfig::from_file(path).map_err(Failure::Config)?,
        None => CoordinatorConfig::default(),
    };
    if config.storage != StorageKind::Sqlite {
        return Err(Failure::Config(anyhow::anyhow!(
            "the coordinator config has storage = \"memory\", which keeps no tokens; set storage = \"sqlite\""
        )));
    }
    Ok(open_storage(&config)?)
}

/// Appends an audit entry for a change made by this command. The caller has
/// no token and no address, so the entry's source is `cli`.
async fn audit(storage: &dyn Storage, action: &str, target: &str, request: serde_json::Value) {
    let caller = Caller {
        token: String::new(),
        source: "cli".to_owned(),
    };
    let entry = AuditRecord::new(&caller, action)
        .target(target)
        .request(request);
    runwarden_coordinator::audit::record(storage, entry).await;
}

fn issue_failure(error: IssueError) -> Failure {
    match error {
        IssueError::Access(error) => Failure::Config(anyhow::anyhow!(
            "{}",
            error.message(runwarden_coordinator::lang::Lang::En)
        )),
        other => Failure::Run(other.into()),
    }
}

async fn create(args: CreateArgs) -> Result<(), Failure> {
    let scope = Scope::parse(&args.scope).ok_or_else(|| {
        Failure::Config(anyhow::anyhow!(
            "--scope is `{}`; use read, run or admin",
            args.scope
        ))
    })?;
    let storage = open(&args.config)?;

    let ttl_secs = args
        .ttl
        .map_or(0, |ttl| i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    let (record, token) = auth::create_api_token(storage.as_ref(), &args.name, scope, ttl_secs)
        .await
        .map_err(issue_failure)?;
    let request =
        serde_json::json!({ "name": args.name, "scope": scope.as_str(), "ttlSecs": ttl_secs });
    audit(storage.as_ref(), "token.create", &record.name, request).await;

    eprintln!(
        "created token `{}` with scope {}{}; it is shown only now:",
        record.name,
        scope.as_str(),
        record
            .expires_at
            .map(|at| format!(", valid until {}", humantime::format_rfc3339_seconds(at)))
            .unwrap_or_default()
    );
    println!("{token}");
    Ok(())
}

async fn list(args: ConfigArg) -> Result<(), Failure> {
    let storage = open(&args)?;
    let tokens = storage.tokens().await.context("failed to list tokens")?;

    println!(
        "{:<40} {:<11} {:<6} {:<22} {:<22}",
        "NAME", "KIND", "SCOPE", "EXPIRES", "REVOKED"
    );
    for token in tokens {
        let time = |at: Option<std::time::SystemTime>| {
            at.map(|at| humantime::format_rfc3339_seconds(at).to_string())
                .unwrap_or_else(|| "-".to_owned())
        };
        println!(
            "{:<40} {:<11} {:<6} {:<22} {:<22}",
            token.name,
            token.kind.as_str(),
            token.scope.map_or("-", Scope::as_str),
            time(token.expires_at),
            time(token.revoked_at)
        );
    }
    Ok(())
}

async fn revoke(args: RevokeArgs) -> Result<(), Failure> {
    let storage = open(&args.config)?;
    let revoked = storage
        .revoke_token(&args.name, std::time::SystemTime::now())
        .await
        .context("failed to revoke the token")?;
    match revoked {
        Some(record) => {
            audit(
                storage.as_ref(),
                "token.revoke",
                &record.name,
                serde_json::Value::Null,
            )
            .await;
            eprintln!(
                "revoked `{}`; a running coordinator rejects it from its next request (an agent already connected stays connected until POST /peers/{{peerId}}/revoke or its next reconnect)",
                record.name
            );
            Ok(())
        }
        None => Err(Failure::Config(anyhow::anyhow!(
            "no token named `{}` that is not revoked; list them with `runwarden token list`",
            args.name
        ))),
    }
}

async fn enroll(args: EnrollArgs) -> Result<(), Failure> {
    let storage = open(&args.config)?;
    let (record, token) =
        auth::create_enrollment(storage.as_ref(), args.peer.as_deref(), args.ttl.as_secs())
            .await
            .map_err(issue_failure)?;
    let request = serde_json::json!({ "peerId": args.peer, "ttlSecs": args.ttl.as_secs() });
    audit(
        storage.as_ref(),
        "enrollment.create",
        args.peer.as_deref().unwrap_or(""),
        request,
    )
    .await;

    eprintln!(
        "created a one-time enrollment token for {}, valid until {}; put it in the agent config as enrollment_token:",
        record
            .peer_id
            .as_deref()
            .map_or("any new peer".to_owned(), |peer| format!("peer `{peer}`")),
        record
            .expires_at
            .map(|at| humantime::format_rfc3339_seconds(at).to_string())
            .unwrap_or_default()
    );
    println!("{token}");
    Ok(())
}
