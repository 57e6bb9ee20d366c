//! Coordinator configuration, read from a TOML file.
//!
//! Every option has a default, so an empty file (or none) is a valid
//! configuration. Unknown keys are rejected, so a misspelt option fails at
//! start-up instead of being ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7300";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Address and port of the REST API and the agent link.
    pub listen: SocketAddr,
    /// TLS certificate and key for `listen`; none serves plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Timeout in seconds for jobs whose request leaves `timeout` at 0.
    pub default_timeout_secs: u32,
    /// Largest `timeout` in seconds a request may ask for; larger values are
    /// rejected at submit time.
    pub max_timeout_secs: u32,
    /// Largest request body in bytes; larger bodies get HTTP 413.
    pub max_body_bytes: usize,
    /// Largest script store entry in bytes.
    pub max_script_bytes: usize,
    /// Largest number of peers in one task.
    pub max_peers_per_task: usize,
    /// Seconds `/script/sync` waits past the task's timeout before it answers
    /// with the task still running.
    pub sync_grace_secs: u64,
    /// Seconds the coordinator waits for an agent to answer a live query
    /// (`/script/peer/taskinfo`).
    pub peer_query_timeout_secs: u64,
    /// Seconds the coordinator waits for an agent to confirm a cancel. The
    /// agent answers once the job's process tree is gone, which can take its
    /// kill grace period, so keep this above the agents' `kill_grace_secs`.
    pub cancel_timeout_secs: u64,
    /// Seconds a new agent connection has to send its `Hello`.
    pub hello_timeout_secs: u64,
    /// Sandbox policy file whose `[[validate]]` plugins check every job
    /// before dispatch; none means no plugins run here.
    pub policy: Option<PathBuf>,
    /// Where tasks, jobs, results, scripts and peers are kept: `sqlite`
    /// (durable, in `data_dir/coordinator.db`) or `memory` (lost on exit).
    pub storage: StorageKind,
    /// Folder of the coordinator's database.
    pub data_dir: PathBuf,
    /// Seconds a job may wait for its peer to connect and accept it; after
    /// that, with the peer still offline, it fails with `peer_offline`.
    pub delivery_timeout_secs: u64,
    /// Seconds a peer may stay offline while one of its jobs is accepted or
    /// running; after that the job is `lost`.
    pub lost_after_secs: u64,
    /// Seconds without any message or ping from an agent after which its
    /// connection is closed and the peer counts as offline.
    pub peer_silence_secs: u64,
    /// Seconds a finished task is kept; older finished tasks are deleted
    /// with their output. 0 keeps tasks forever.
    pub retention_secs: u64,
    /// Seconds an audit log entry is kept. 0 keeps entries forever.
    pub audit_retention_secs: u64,
    /// Seconds between retention passes.
    pub prune_interval_secs: u64,
    /// Seconds that in-flight requests (including `/script/sync` callers,
    /// which get the task's state at once) have to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Tasks (calls to `/script/async` and `/script/sync`) one token may
    /// create per minute; further calls get HTTP 429 until the minute's
    /// budget refills. Without authentication the limit applies per source
    /// IP address. 0 means no limit.
    pub max_tasks_per_minute: u32,
    /// API tokens and agent credentials.
    pub auth: AuthConfig,
}

/// The `[auth]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Requires an API token on every REST call except `GET /health`, and
    /// an agent credential or enrollment token on every agent link. Off is
    /// allowed only while `listen` is a loopback address.
    pub enabled: bool,
    /// Seconds between two `token.use` audit entries for one token's calls
    /// that change nothing (reads). Calls that change state always get an
    /// entry of their own. 0 writes an entry for every call.
    pub token_use_audit_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            token_use_audit_secs: 60,
        }
    }
}

/// The `[tls]` table: the coordinator serves HTTPS and WSS with this
/// certificate and key instead of plain HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the coordinator's certificate first, then any
    /// intermediate CA certificates.
    pub cert_file: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The storage backend of the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Sqlite,
    Memory,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
            tls: None,
            default_timeout_secs: 3600,
            max_timeout_secs: 86_400,
            max_body_bytes: 8 * 1024 * 1024,
            max_script_bytes: 4 * 1024 * 1024,
            max_peers_per_task: 10_000,
            sync_grace_secs: 30,
            peer_query_timeout_secs: 10,
            cancel_timeout_secs: 30,
            hello_timeout_secs: 10,
            policy: None,
            storage: StorageKind::Sqlite,
            data_dir: PathBuf::from("/var/lib/runwarden/coordinator"),
            delivery_timeout_secs: 60,
            lost_after_secs: 300,
            peer_silence_secs: 60,
            retention_secs: 30 * 24 * 3600,
            audit_retention_secs: 365 * 24 * 3600,
            prune_interval_secs: 3600,
            shutdown_grace_secs: 30,
            max_tasks_per_minute: 0,
            auth: AuthConfig::default(),
        }
    }
}

impl CoordinatorConfig {
    /// Path of the SQLite database.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("coordinator.db")
    }

    /// Reads a configuration file.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be read, is not valid TOML, has an unknown
    /// key, or breaks a rule of [`CoordinatorConfig::validate`].
    pub fn from_file(path: &Path) -> anyhow::Result<CoordinatorConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read coordinator config `{}`", path.display()))?;
        let config: CoordinatorConfig = toml::from_str(&text)
            .with_context(|| format!("invalid coordinator config `{}`", path.display()))?;
        config
            .validate()
            .with_context(|| format!("invalid coordinator config `{}`", path.display()))?;
        Ok(config)
    }

    /// Checks the rules between options, reporting every broken rule at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();

        if self.default_timeout_secs == 0 {
            problems.push("default_timeout_secs is 0; set it to at least 1".to_owned());
        }
        if self.default_timeout_secs > self.max_timeout_secs {
            problems.push(format!(
                "default_timeout_secs ({}) is above max_timeout_secs ({}); lower it or raise the maximum",
                self.default_timeout_secs, self.max_timeout_secs
            ));
        }
        if self.max_timeout_secs > i32::MAX as u32 {
            problems.push(format!(
                "max_timeout_secs ({}) is above {}, the largest timeout a request can carry",
                self.max_timeout_secs,
                i32::MAX
            ));
        }
        if self.max_body_bytes < 1024 {
            problems.push(format!(
                "max_body_bytes ({}) is below 1024; requests would not fit",
                self.max_body_bytes
            ));
        }
        if self.max_script_bytes >= self.max_body_bytes {
            problems.push(format!(
                "max_script_bytes ({}) is not below max_body_bytes ({}), so an upload near the script limit is rejected as too large a body; lower max_script_bytes",
                self.max_script_bytes, self.max_body_bytes
            ));
        }
        for (name, value) in [
            ("delivery_timeout_secs", self.delivery_timeout_secs),
            ("lost_after_secs", self.lost_after_secs),
            ("peer_silence_secs", self.peer_silence_secs),
            ("prune_interval_secs", self.prune_interval_secs),
        ] {
            if value == 0 {
                problems.push(format!("{name} is 0; set it to at least 1"));
            }
        }
        if !self.auth.enabled && !self.listen.ip().is_loopback() {
            problems.push(format!(
                "listen address {} is not a loopback address, but [auth] enabled is false, so anyone who reaches it could run commands on every peer; set `enabled = true` under [auth] and create an admin token with `runwarden token create --config <this file> --name admin --scope admin`, or listen on 127.0.0.1",
                self.listen
            ));
        }
        if self.auth.enabled && self.storage == StorageKind::Memory {
            problems.push("[auth] enabled needs storage = \"sqlite\": tokens kept in memory are lost on restart and none can be created before start; set storage = \"sqlite\"".to_owned());
        }
        if self.max_peers_per_task == 0 {
            problems.push("max_peers_per_task is 0; set it to at least 1".to_owned());
        }

        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{}", problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let config: CoordinatorConfig = toml::from_str("").unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert!(config.validate().is_ok());
    }

    #[test]
    fn unknown_key_is_rejected() {
        let error = toml::from_str::<CoordinatorConfig>("listen_addr = \"x\"").unwrap_err();
        assert!(error.to_string().contains("listen_addr"), "{error}");
    }

    #[test]
    fn open_listen_without_auth_is_rejected() {
        let config = CoordinatorConfig {
            listen: "0.0.0.0:7300".parse().unwrap(),
            ..CoordinatorConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("0.0.0.0:7300"), "{error}");
        assert!(error.contains("enabled = true"), "{error}");
    }

    #[test]
    fn open_listen_with_auth_is_accepted() {
        let config = CoordinatorConfig {
            listen: "0.0.0.0:7300".parse().unwrap(),
            auth: AuthConfig {
                enabled: true,
                ..AuthConfig::default()
            },
            ..CoordinatorConfig::default()
        };
        assert!(config.validate().is_ok());
    }

    #[test]
    fn auth_with_memory_storage_is_rejected() {
        let config: CoordinatorConfig =
            toml::from_str("storage = \"memory\"\n[auth]\nenabled = true").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("storage = \"sqlite\""), "{error}");
    }

    #[test]
    fn tls_table_is_read() {
        let text = "[tls]\ncert_file = \"/etc/rw/cert.pem\"\nkey_file = \"/etc/rw/key.pem\"\n";
        let config: CoordinatorConfig = toml::from_str(text).unwrap();
        let tls = config.tls.expect("tls is set");
        assert_eq!(tls.cert_file, PathBuf::from("/etc/rw/cert.pem"));
        assert_eq!(tls.key_file, PathBuf::from("/etc/rw/key.pem"));
    }

    #[test]
    fn tls_table_needs_key_file() {
        let text = "[tls]\ncert_file = \"/etc/rw/cert.pem\"\n";
        let error = toml::from_str::<CoordinatorConfig>(text).unwrap_err();
        assert!(error.to_string().contains("key_file"), "{error}");
    }

    #[test]
    fn default_above_max_is_rejected() {
        let config = CoordinatorConfig {
            default_timeout_secs: 10,
            max_timeout_secs: 5,
            ..CoordinatorConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("default_timeout_secs (10)"), "{error}");
    }
}
