//! Agent configuration, read from a TOML file.
//!
//! Every option has a default, so an empty file (or none) is a valid
//! configuration for an agent on the same machine as a coordinator with its
//! default listen address. Unknown keys are rejected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Base URL of the coordinator: `http://HOST:PORT` or `ws://HOST:PORT`
    /// for plain TCP, `https://HOST:PORT` or `wss://HOST:PORT` for TLS. The
    /// agent dials its agent link path.
    pub coordinator_url: String,
    /// PEM file with the CA certificates that sign the coordinator's
    /// certificate. The agent then trusts only these CAs, not the built-in
    /// roots. Needs a TLS `coordinator_url`.
    pub tls_ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the coordinator's certificate (its DER form):
    /// 64 hex digits, colons allowed, any case. The agent then accepts only
    /// that certificate, whatever its names, issuer and dates. Needs a TLS
    /// `coordinator_url` and excludes `tls_ca_file`.
    pub tls_fingerprint: Option<String>,
    /// This agent's peer id; empty means the machine's host name.
    pub peer_id: String,
    /// Folder that execWay 2 script names are resolved in. Names cannot
    /// leave it, not even through symlinks.
    pub scripts_dir: PathBuf,
    /// Folder for the agent's own files: the cache of execWay 3 scripts.
    pub data_dir: PathBuf,
    /// Jobs that may run at once; further jobs wait in a queue, `pending`.
    pub max_concurrent_jobs: usize,
    /// Seconds between SIGTERM and SIGKILL when a job times out or is
    /// canceled.
    pub kill_grace_secs: u64,
    /// Milliseconds that output is still read after a script's own process
    /// exits, for output still buffered in the pipes. Background processes
    /// of the job are killed after this.
    pub drain_timeout_ms: u64,
    /// Bytes of stdout, and separately of stderr, kept per job; the rest is
    /// dropped and counted (`stdoutDropped`, `stderrDropped`).
    pub max_output_bytes: usize,
    /// Maximum wait between reconnect attempts, in seconds.
    pub reconnect_max_secs: u64,
    /// Seconds to wait for the coordinator to send an execWay 3 script.
    pub script_fetch_timeout_secs: u64,
    /// Put each job in its own cgroup (v2) when the machine allows, so that
    /// processes that leave the job's process group are still killed.
    pub use_cgroups: bool,
    /// Seconds that running jobs may go on after SIGTERM before they are
    /// canceled and the agent stops.
    pub shutdown_grace_secs: u64,
    /// Seconds without any message or ping from the coordinator after which
    /// the agent drops the connection and dials again.
    pub coordinator_silence_secs: u64,
    /// Sandbox policy file: `[[validate]]` plugins check each job before its
    /// process starts, `[[post_process]]` plugins shape its result. None
    /// means no plugins run here.
    pub policy: Option<PathBuf>,
    /// One-time enrollment token from the coordinator's admin, used on the
    /// first connection to get this agent's own credential. Needed only
    /// when the coordinator has authentication on and `credential_file`
    /// does not exist yet.
    pub enrollment_token: String,
    /// File that keeps this agent's credential (mode 0600); empty means
    /// `credential` in `data_dir`.
    pub credential_file: Option<PathBuf>,
    /// Limits this agent puts on every job, whatever the coordinator sends.
    pub allow: AllowPolicy,
}

/// The `[allow]` table: what jobs on this agent may use. An absent key or an
/// empty list means no limit on that item. A job that breaks a limit does
/// not start and ends with `denied_by_agent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowPolicy {
    /// User names jobs may run as, checked against the run-as user after
    /// the default (the agent's own user) is applied.
    pub users: Vec<String>,
    /// Absolute paths of the interpreters jobs may run: `content.cmd`, the
    /// script's `#!` interpreter, or `/bin/sh` by default. Both sides are
    /// compared after resolving symlinks.
    pub interpreters: Vec<PathBuf>,
    /// Absolute paths of folders. A job's working directory, after the
    /// home-directory default and symlinks are resolved, must be one of them
    /// or inside one.
    pub working_dirs: Vec<PathBuf>,
    /// Largest `content.timeout`, in seconds, a job may have. A job with a
    /// larger one is denied, not run with a shorter timeout.
    pub max_timeout_secs: Option<u64>,
}

impl AllowPolicy {
    /// Returns every broken rule of the table, each naming its key.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();

        for (index, user) in self.users.iter().enumerate() {
            if user.is_empty() {
                problems.push(format!(
                    "allow.users[{index}] is empty; give a user name or remove the entry"
                ));
            }
        }
        let paths = [
            ("interpreters", &self.interpreters),
            ("working_dirs", &self.working_dirs),
        ];
        for (key, list) in paths {
            for (index, path) in list.iter().enumerate() {
                if !path.is_absolute() {
                    problems.push(format!(
                        "allow.{key}[{index}] `{}` is not an absolute path; start it with `/`",
                        path.display()
                    ));
                }
            }
        }
        if self.max_timeout_secs == Some(0) {
            problems.push(
                "allow.max_timeout_secs is 0; set it to at least 1, or remove it for no limit"
                    .to_owned(),
            );
        }
        problems
    }
}

/// Largest allowed `max_output_bytes`: a job result carries both streams in
/// one link message, which the coordinator caps at 256 MiB.
pub const MAX_OUTPUT_BYTES_LIMIT: usize = 64 * 1024 * 1024;

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            coordinator_url: "http://127.0.0.1:7300".to_owned(),
            tls_ca_file: None,
            tls_fingerprint: None,
            peer_id: String::new(),
            scripts_dir: PathBuf::from("/var/lib/runwarden/scripts"),
            data_dir: PathBuf::from("/var/lib/runwarden/agent"),
            max_concurrent_jobs: 16,
            kill_grace_secs: 10,
            drain_timeout_ms: 2000,
            max_output_bytes: 1024 * 1024,
            reconnect_max_secs: 30,
            script_fetch_timeout_secs: 30,
            use_cgroups: true,
            shutdown_grace_secs: 30,
            coordinator_silence_secs: 60,
            policy: None,
            enrollment_token: String::new(),
            credential_file: None,
            allow: AllowPolicy::default(),
        }
    }
}

impl AgentConfig {
    /// Reads a configuration file.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be read, is not valid TOML, has an unknown
    /// key, or breaks a rule of [`AgentConfig::validate`].
    pub fn from_file(path: &Path) -> anyhow::Result<AgentConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read agent config `{}`", path.display()))?;
        let config: AgentConfig = toml::from_str(&text)
            .with_context(|| format!("invalid agent config `{}`", path.display()))?;
        config
            .validate()
            .with_context(|| format!("invalid agent config `{}`", path.display()))?;
        Ok(config)
    }

    /// Checks every option, reporting all broken rules at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();

        match self.link_url() {
            Ok(url) if !url.starts_with("wss://") => {
                for (name, set) in [
                    ("tls_ca_file", self.tls_ca_file.is_some()),
                    ("tls_fingerprint", self.tls_fingerprint.is_some()),
                ] {
                    if set {
                        problems.push(format!(
                            "{name} is set, but coordinator_url `{}` does not use TLS; use an https:// or wss:// URL, or remove {name}",
                            self.coordinator_url
                        ));
                    }
                }
            }
            Ok(_) => {}
            Err(error) => problems.push(error.to_string()),
        }
        if self.tls_ca_file.is_some() && self.tls_fingerprint.is_some() {
            problems.push(
                "tls_ca_file and tls_fingerprint are both set; keep one, because tls_fingerprint pins the coordinator's certificate and ignores every CA"
                    .to_owned(),
            );
        }
        if let Some(fingerprint) = &self.tls_fingerprint
            && let Err(error) = crate::tls::parse_fingerprint(fingerprint)
        {
            problems.push(error.to_string());
        }
        if self.max_concurrent_jobs == 0 {
            problems.push("max_concurrent_jobs is 0; set it to at least 1".to_owned());
        }
        if self.max_output_bytes > MAX_OUTPUT_BYTES_LIMIT {
            problems.push(format!(
                "max_output_bytes ({}) is above {MAX_OUTPUT_BYTES_LIMIT}; lower it",
                self.max_output_bytes
            ));
        }
        if self.coordinator_silence_secs == 0 {
            problems.push("coordinator_silence_secs is 0; set it to at least 1".to_owned());
        }
        if self.reconnect_max_secs == 0 {
            problems.push("reconnect_max_secs is 0; set it to at least 1".to_owned());
        }
        problems.extend(self.allow.problems());

        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{}", problems.join("; "))
        }
    }

    /// The WebSocket URL of the coordinator's agent link: `ws://` for an
    /// `http://` or `ws://` base URL, `wss://` for `https://` or `wss://`.
    pub fn link_url(&self) -> anyhow::Result<String> {
        let base = self.coordinator_url.trim_end_matches('/');
        let url = if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if base.starts_with("ws://") || base.starts_with("wss://") {
            base.to_owned()
        } else {
            anyhow::bail!(
                "coordinator_url `{}` does not start with http://, https://, ws:// or wss://; write it like http://127.0.0.1:7300",
                self.coordinator_url
            );
        };
        Ok(format!(
            "{url}{}",
            runwarden_protocol::link::AGENT_LINK_PATH
        ))
    }

    /// Returns the file that keeps this agent's credential.
    pub fn credential_path(&self) -> PathBuf {
        self.credential_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("credential"))
    }

    /// The peer id, falling back to the host name.
    pub fn resolved_peer_id(&self) -> anyhow::Result<String> {
        if !self.peer_id.is_empty() {
            return Ok(self.peer_id.clone());
        }
        let host = nix::unistd::gethostname().context("failed to read the host name")?;
        host.into_string().map_err(|name| {
            anyhow::anyhow!("host name {name:?} is not UTF-8; set peer_id in the agent config")
        })
    }

    pub fn kill_grace(&self) -> Duration {
        Duration::from_secs(self.kill_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_url_maps_to_link_url() {
        let config = AgentConfig {
            coordinator_url: "http://127.0.0.1:9/".into(),
            ..AgentConfig::default()
        };
        assert_eq!(config.link_url().unwrap(), "ws://127.0.0.1:9/agent/link");
    }

    #[test]
    fn url_without_scheme_is_rejected() {
        let config = AgentConfig {
            coordinator_url: "127.0.0.1:9".into(),
            ..AgentConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("127.0.0.1:9"), "{error}");
    }

    #[test]
    fn https_url_maps_to_wss() {
        let config = AgentConfig {
            coordinator_url: "https://coordinator.example:7300".into(),
            ..AgentConfig::default()
        };
        assert_eq!(
            config.link_url().unwrap(),
            "wss://coordinator.example:7300/agent/link"
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn tls_options_need_tls_url() {
        let config = AgentConfig {
            coordinator_url: "http://127.0.0.1:7300".into(),
            tls_ca_file: Some(PathBuf::from("/etc/runwarden/ca.pem")),
            tls_fingerprint: Some("ab".repeat(32)),
            ..AgentConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("tls_ca_file is set"), "{error}");
        assert!(error.contains("tls_fingerprint is set"), "{error}");
    }

    #[test]
    fn ca_file_and_fingerprint_exclude() {
        let config = AgentConfig {
            coordinator_url: "wss://127.0.0.1:7300".into(),
            tls_ca_file: Some(PathBuf::from("/etc/runwarden/ca.pem")),
            tls_fingerprint: Some("ab".repeat(32)),
            ..AgentConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("both set"), "{error}");
    }

    #[test]
    fn short_fingerprint_is_rejected() {
        let config = AgentConfig {
            coordinator_url: "wss://127.0.0.1:7300".into(),
            tls_fingerprint: Some("AB:CD".into()),
            ..AgentConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("tls_fingerprint `AB:CD`"), "{error}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let error = toml::from_str::<AgentConfig>("peerid = \"x\"").unwrap_err();
        assert!(error.to_string().contains("peerid"), "{error}");
    }

    #[test]
    fn allow_table_is_read() {
        let text = r#"
            [allow]
            users = ["deploy"]
            interpreters = ["/bin/sh", "/usr/bin/python3"]
            working_dirs = ["/srv"]
            max_timeout_secs = 600
        "#;
        let config: AgentConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();

        assert_eq!(config.allow.users, ["deploy"]);
        assert_eq!(config.allow.interpreters.len(), 2);
        assert_eq!(config.allow.working_dirs, [PathBuf::from("/srv")]);
        assert_eq!(config.allow.max_timeout_secs, Some(600));
    }

    #[test]
    fn absent_allow_table_allows_everything() {
        let config: AgentConfig = toml::from_str("").unwrap();
        assert_eq!(config.allow, AllowPolicy::default());
    }

    #[test]
    fn allow_unknown_key_is_rejected() {
        let error = toml::from_str::<AgentConfig>("[allow]\nuser = [\"deploy\"]\n").unwrap_err();
        assert!(error.to_string().contains("user"), "{error}");
        assert!(error.to_string().contains("users"), "{error}");
    }

    #[test]
    fn allow_relative_paths_are_rejected() {
        let text = r#"
            [allow]
            interpreters = ["python3"]
            working_dirs = ["/srv", "srv/app"]
        "#;
        let config: AgentConfig = toml::from_str(text).unwrap();
        let error = config.validate().unwrap_err().to_string();

        assert!(error.contains("allow.interpreters[0] `python3`"), "{error}");
        assert!(error.contains("allow.working_dirs[1] `srv/app`"), "{error}");
    }

    #[test]
    fn allow_zero_timeout_and_empty_user_are_rejected() {
        let config: AgentConfig =
            toml::from_str("[allow]\nusers = [\"\"]\nmax_timeout_secs = 0\n").unwrap();
        let error = config.validate().unwrap_err().to_string();

        assert!(error.contains("allow.users[0] is empty"), "{error}");
        assert!(error.contains("allow.max_timeout_secs is 0"), "{error}");
    }
}
