//! Helpers for loading the fixture plugins into a sandbox.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::PathBuf;

use runwarden_protocol::api::{JobRequest, ScriptContent};
use runwarden_sandbox::plugin::file_sha256;
use runwarden_sandbox::policy::{OnError, PluginSpec};
use runwarden_sandbox::{HookPoint, Policy, Sandbox};

/// A policy entry for the fixture plugin `name` with default limits.
pub fn spec(name: &str, hook: HookPoint, config: serde_json::Value) -> PluginSpec {
    let path = runwarden_fixtures::built_plugin(name);
    let sha256 = file_sha256(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    PluginSpec {
        name: name.to_owned(),
        hook,
        path,
        sha256,
        config: config.to_string(),
        max_memory_bytes: 32 * 1024 * 1024,
        timeout_ms: 500,
        fuel: None,
        on_error: match hook {
            HookPoint::Validate => OnError::Deny,
            HookPoint::PostProcess => OnError::Withhold,
        },
        read_only_dirs: Vec::new(),
        see_secrets: false,
    }
}

/// Loads `specs` into a sandbox whose cache lives in `cache_dir`.
pub async fn load(specs: Vec<PluginSpec>, cache_dir: &std::path::Path) -> anyhow::Result<Sandbox> {
    let (validate, post_process) = specs
        .into_iter()
        .partition(|spec| spec.hook == HookPoint::Validate);
    let policy = Policy {
        cache_dir: Some(cache_dir.to_owned()),
        validate,
        post_process,
    };
    Sandbox::load(
        &policy,
        &[HookPoint::Validate, HookPoint::PostProcess],
        cache_dir,
    )
    .await
}

/// A job request running `command` with execWay 0.
pub fn job(command: &str) -> JobRequest {
    JobRequest {
        taskid: "task-1".to_owned(),
        jobid: "job-1".to_owned(),
        name: "test".to_owned(),
        creater: "tests".to_owned(),
        content: ScriptContent {
            content: command.to_owned(),
            timeout: 60,
            ..ScriptContent::default()
        },
    }
}

/// A cache folder of its own, for tests that change cache entries.
pub fn private_cache_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create cache dir")
}

/// The precompiled-plugin cache shared by the tests, so that each plugin is
/// compiled once per test run instead of once per test.
pub fn cache_dir() -> SharedCache {
    SharedCache(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache"))
}

pub struct SharedCache(PathBuf);

impl SharedCache {
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

pub fn fixture_path(name: &str) -> PathBuf {
    runwarden_fixtures::built_plugin(name)
}
