//! The sandbox policy file: which plugins run at which hook point, and with
//! what limits.
//!
//! ```toml
//! cache_dir = "/var/cache/runwarden/plugins"   # optional
//!
//! [[validate]]
//! name = "deny-dangerous"
//! path = "plugins/deny_dangerous.wasm"          # relative to this file
//! sha256 = "…64 hex digits…"
//! config = { extra_patterns = ["shutdown"] }    # any TOML value; JSON to the plugin
//! max_memory_bytes = 16777216
//! timeout_ms = 100
//! fuel = 0
//! on_error = "deny"
//! read_only_dirs = []
//! see_secrets = false
//!
//! [[post_process]]
//! name = "redact-secrets"
//! path = "plugins/redact_secrets.wasm"
//! sha256 = "…"
//! on_error = "withhold"
//! ```
//!
//! Defaults, the restrictive ones first: no folders readable, secret
//! environment values shown as `<redacted>`, no fuel budget, 16 MiB of
//! memory, 100 ms per call, and failures that deny (validate) or withhold
//! output (post-process).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default memory limit per plugin instance, summed over its memories.
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 16 * 1024 * 1024;

/// Default wall-clock limit per hook call.
pub const DEFAULT_TIMEOUT_MS: u64 = 100;

/// Largest memory limit accepted, so that one policy entry cannot reserve
/// the host's address space.
pub const MAX_MEMORY_LIMIT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// A hook point's plugins, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// Decides whether a job may run, and may change its request. Runs on
    /// the coordinator before dispatch and on the agent before spawn.
    Validate,
    /// Shapes a finished job's output and structured result. Runs on the
    /// agent after the process ends.
    PostProcess,
}

impl HookPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::Validate => "validate",
            HookPoint::PostProcess => "post_process",
        }
    }
}

/// What happens when a plugin call fails (trap, timeout, bad answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Validate: reject the job (fail closed).
    Deny,
    /// Validate: let the job run as if the plugin allowed it.
    Allow,
    /// Post-process: drop the job's stdout and stderr and record the error.
    Withhold,
    /// Post-process: keep the output as it was and log the error.
    Pass,
}

/// A parsed, checked sandbox policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Folder for precompiled plugins; `None` picks the caller's default.
    pub cache_dir: Option<PathBuf>,
    pub validate: Vec<PluginSpec>,
    pub post_process: Vec<PluginSpec>,
}

/// One plugin entry of the policy.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub name: String,
    pub hook: HookPoint,
    /// Absolute path of the `.wasm` file.
    pub path: PathBuf,
    /// Lower-case hex sha256 the file must have.
    pub sha256: String,
    /// The plugin's configuration as JSON text.
    pub config: String,
    pub max_memory_bytes: u64,
    pub timeout_ms: u64,
    /// Instruction budget per call; `None` means no fuel limit.
    pub fuel: Option<u64>,
    pub on_error: OnError,
    pub read_only_dirs: Vec<PathBuf>,
    /// True when the plugin gets the values of `content.secretEnv`. False
    /// replaces each value by `<redacted>`.
    pub see_secrets: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    validate: Vec<PluginEntry>,
    #[serde(default)]
    post_process: Vec<PluginEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginEntry {
    name: String,
    path: PathBuf,
    sha256: String,
    config: Option<toml::Value>,
    max_memory_bytes: Option<u64>,
    timeout_ms: Option<u64>,
    fuel: Option<u64>,
    on_error: Option<OnError>,
    #[serde(default)]
    read_only_dirs: Vec<PathBuf>,
    #[serde(default)]
    see_secrets: bool,
}

/// A policy file that cannot be used. The message lists every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid sandbox policy `{path}`: {problems}")]
pub struct PolicyError {
    pub path: PathBuf,
    pub problems: String,
}

impl Policy {
    /// Reads and checks a policy file. Relative plugin paths and folders are
    /// taken relative to the file's folder.
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let error = |problems: String| PolicyError {
            path: path.to_owned(),
            problems,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| error(format!("cannot read it ({e}); check the path")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Policy::from_toml(&text, base).map_err(error)
    }

    /// Parses a policy from TOML text; relative paths are joined to `base`.
    /// Returns every problem found, joined by "; ".
    pub fn from_toml(text: &str, base: &Path) -> Result<Policy, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        let mut names = HashSet::new();

        let mut convert = |entries: Vec<PluginEntry>, hook: HookPoint| -> Vec<PluginSpec> {
            entries
                .into_iter()
                .enumerate()
                .filter_map(|(index, entry)| {
                    let label = format!("{}[{index}] `{}`", hook.as_str(), entry.name);
                    if !names.insert(entry.name.clone()) {
                        problems.push(format!(
                            "{label}: the name is used twice; give each plugin its own name"
                        ));
                    }
                    match check_entry(entry, hook, base) {
                        Ok(spec) => Some(spec),
                        Err(found) => {
                            problems.extend(found.into_iter().map(|p| format!("{label}: {p}")));
                            None
                        }
                    }
                })
                .collect()
        };
        let validate = convert(file.validate, HookPoint::Validate);
        let post_process = convert(file.post_process, HookPoint::PostProcess);

        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Policy {
            cache_dir: file.cache_dir.map(|dir| base.join(dir)),
            validate,
            post_process,
        })
    }

    /// The plugins of one hook point, in order.
    pub fn plugins(&self, hook: HookPoint) -> &[PluginSpec] {
        match hook {
            HookPoint::Validate => &self.validate,
            HookPoint::PostProcess => &self.post_process,
        }
    }
}

fn check_entry(
    entry: PluginEntry,
    hook: HookPoint,
    base: &Path,
) -> Result<PluginSpec, Vec<String>> {
    let mut problems = Vec::new();

    if entry.name.is_empty() {
        problems.push("`name` is empty; give the plugin a name".to_owned());
    }
    let sha256 = entry.sha256.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        problems.push(format!(
            "`sha256` `{}` is not 64 hex digits; pin the file with the output of `sha256sum`",
            entry.sha256
        ));
    }

    let max_memory_bytes = entry.max_memory_bytes.unwrap_or(DEFAULT_MAX_MEMORY_BYTES);
    if !(64 * 1024..=MAX_MEMORY_LIMIT_BYTES).contains(&max_memory_bytes) {
        problems.push(format!(
            "`max_memory_bytes` {max_memory_bytes} is outside 65536..={MAX_MEMORY_LIMIT_BYTES}"
        ));
    }
    let timeout_ms = entry.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > 60_000 {
        problems.push(format!("`timeout_ms` {timeout_ms} is outside 1..=60000"));
    }

    let on_error = match (hook, entry.on_error) {
        (HookPoint::Validate, None) => OnError::Deny,
        (HookPoint::PostProcess, None) => OnError::Withhold,
        (HookPoint::Validate, Some(mode @ (OnError::Deny | OnError::Allow)))
        | (HookPoint::PostProcess, Some(mode @ (OnError::Withhold | OnError::Pass))) => mode,
        (HookPoint::Validate, Some(other)) => {
            problems.push(format!(
                "`on_error` {other:?} does not apply to validate; use \"deny\" or \"allow\""
            ));
            OnError::Deny
        }
        (HookPoint::PostProcess, Some(other)) => {
            problems.push(format!(
                "`on_error` {other:?} does not apply to post_process; use \"withhold\" or \"pass\""
            ));
            OnError::Withhold
        }
    };

    let config_value = entry
        .config
        .unwrap_or_else(|| toml::Value::Table(toml::map::Map::new()));
    let config = match serde_json::to_string(&config_value) {
        Ok(text) => text,
        Err(error) => {
            problems.push(format!("`config` cannot be turned into JSON: {error}"));
            String::new()
        }
    };

    let path = base.join(&entry.path);
    if !path.is_file() {
        problems.push(format!(
            "`path` `{}` is not a file; fix the path (relative paths start at the policy's folder)",
            path.display()
        ));
    }
    let read_only_dirs: Vec<PathBuf> = entry.read_only_dirs.iter().map(|d| base.join(d)).collect();
    for dir in &read_only_dirs {
        if !dir.is_dir() {
            problems.push(format!(
                "`read_only_dirs` entry `{}` is not a folder",
                dir.display()
            ));
        }
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(PluginSpec {
        name: entry.name,
        hook,
        path,
        sha256,
        config,
        max_memory_bytes,
        timeout_ms,
        fuel: entry.fuel.filter(|fuel| *fuel > 0),
        on_error,
        read_only_dirs,
        see_secrets: entry.see_secrets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
            [[validate]]
            name = "a"
            path = "missing.wasm"
            sha256 = "xyz"
            timeout_ms = 0

            [[post_process]]
            name = "a"
            path = "missing.wasm"
            sha256 = "xyz"
            on_error = "deny"
        "#;
        let problems = Policy::from_toml(text, dir.path()).unwrap_err();
        assert!(problems.contains("validate[0] `a`: `sha256`"), "{problems}");
        assert!(problems.contains("`timeout_ms` 0"), "{problems}");
        assert!(problems.contains("missing.wasm"), "{problems}");
        assert!(problems.contains("used twice"), "{problems}");
        assert!(
            problems.contains("does not apply to post_process"),
            "{problems}"
        );
    }

    #[test]
    fn defaults_are_restrictive() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.wasm"), b"\0asm").unwrap();
        let text = format!(
            "[[validate]]\nname = \"p\"\npath = \"p.wasm\"\nsha256 = \"{}\"\n",
            "A".repeat(64)
        );
        let policy = Policy::from_toml(&text, dir.path()).unwrap();
        let spec = &policy.validate[0];
        assert_eq!(spec.on_error, OnError::Deny);
        assert_eq!(spec.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(spec.max_memory_bytes, DEFAULT_MAX_MEMORY_BYTES);
        assert_eq!(spec.fuel, None);
        assert!(spec.read_only_dirs.is_empty());
        assert!(!spec.see_secrets);
        assert_eq!(spec.config, "{}");
        assert_eq!(spec.sha256, "a".repeat(64));
    }

    #[test]
    fn see_secrets_is_read_per_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.wasm"), b"\0asm").unwrap();
        let pin = "0".repeat(64);
        let text = format!(
            "[[validate]]\nname = \"a\"\npath = \"p.wasm\"\nsha256 = \"{pin}\"\nsee_secrets = true\n\n[[validate]]\nname = \"b\"\npath = \"p.wasm\"\nsha256 = \"{pin}\"\n"
        );
        let policy = Policy::from_toml(&text, dir.path()).unwrap();
        assert!(policy.validate[0].see_secrets);
        assert!(!policy.validate[1].see_secrets);
    }

    #[test]
    fn config_table_becomes_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.wasm"), b"\0asm").unwrap();
        let text = format!(
            "[[post_process]]\nname = \"p\"\npath = \"p.wasm\"\nsha256 = \"{}\"\nconfig = {{ require = true, n = 3 }}\n",
            "0".repeat(64)
        );
        let policy = Policy::from_toml(&text, dir.path()).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&policy.post_process[0].config).unwrap();
        assert_eq!(config["require"], true);
        assert_eq!(config["n"], 3);
    }
}
