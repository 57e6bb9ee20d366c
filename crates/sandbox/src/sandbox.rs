//! A loaded policy: the plugin chains of each hook point.

use std::path::Path;
use std::sync::Arc;

use runwarden_protocol::api::{JobRequest as ApiJobRequest, ResCmd};
use tokio::sync::Semaphore;
use wasmtime::Engine;

use crate::bindings::Verdict;
use crate::cache::ArtifactCache;
use crate::convert;
use crate::engine::{EpochTicker, MAX_CONCURRENT_INSTANCES, build_engine};
use crate::plugin::{LoadError, LoadedPlugin};
use crate::policy::{HookPoint, OnError, Policy};
use crate::store::truncate_utf8;

/// Maximum length of a denial reason passed on, in bytes; longer ones are
/// cut.
pub const MAX_REASON_BYTES: usize = 4096;

/// The plugins of a policy, loaded and ready to run.
pub struct Sandbox {
    validate: Vec<LoadedPlugin>,
    post_process: Vec<LoadedPlugin>,
    /// Bounds live instances to what the pooling allocator holds.
    slots: Arc<Semaphore>,
    _ticker: Option<EpochTicker>,
}

/// Every plugin that failed to load, each with its reason.
#[derive(Debug, thiserror::Error)]
#[error("{} plugin(s) failed to load: {}", .0.len(), join_errors(.0))]
pub struct LoadErrors(pub Vec<LoadError>);

fn join_errors(errors: &[LoadError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the validate chain decided.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidateOutcome {
    /// Run the job with `request`, which plugins named in `changed_by` may
    /// have changed.
    Allow {
        request: Box<ApiJobRequest>,
        changed_by: Vec<String>,
    },
    /// Do not run the job.
    Deny { plugin: String, reason: String },
}

impl ValidateOutcome {
    /// The `resCmd.err` text of a denied job.
    pub fn rejection_message(plugin: &str, reason: &str) -> String {
        format!("rejected by plugin `{plugin}`: {reason}")
    }
}

impl Sandbox {
    /// A sandbox with no plugins, which allows every job and changes no
    /// result.
    pub fn empty() -> Sandbox {
        Sandbox {
            validate: Vec::new(),
            post_process: Vec::new(),
            slots: Arc::new(Semaphore::new(1)),
            _ticker: None,
        }
    }

    /// Loads the plugins of `hooks` from `policy`, compiling each (or taking
    /// it from the cache) and checking its configuration.
    ///
    /// # Errors
    ///
    /// Fails with every plugin that could not be loaded, so one start-up
    /// reports all of them.
    pub async fn load(
        policy: &Policy,
        hooks: &[HookPoint],
        default_cache_dir: &Path,
    ) -> anyhow::Result<Sandbox> {
        let specs: Vec<_> = hooks
            .iter()
            .flat_map(|hook| policy.plugins(*hook).iter().cloned())
            .collect();
        if specs.is_empty() {
            return Ok(Sandbox::empty());
        }

        let max_memory = specs.iter().map(|s| s.max_memory_bytes).max().unwrap_or(0);
        let uses_fuel = specs.iter().any(|spec| spec.fuel.is_some());
        let engine = build_engine(max_memory, uses_fuel)?;
        let ticker = EpochTicker::start(engine.clone());
        let cache_dir = policy
            .cache_dir
            .as_deref()
            .unwrap_or(default_cache_dir)
            .to_owned();

        let loaded = {
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || load_all(&engine, specs, &cache_dir, uses_fuel))
                .await??
        };
        let mut errors = Vec::new();
        for plugin in &loaded {
            if let Err(error) = plugin.check_config().await {
                errors.push(error);
            }
        }
        if !errors.is_empty() {
            return Err(LoadErrors(errors).into());
        }

        let (validate, post_process) = loaded
            .into_iter()
            .partition(|plugin| plugin.spec.hook == HookPoint::Validate);
        let sandbox = Sandbox {
            validate,
            post_process,
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_INSTANCES as usize)),
            _ticker: Some(ticker),
        };
        tracing::info!(
            validate = sandbox.validate.len(),
            post_process = sandbox.post_process.len(),
            "sandbox policy loaded"
        );
        Ok(sandbox)
    }

    pub fn has_plugins(&self, hook: HookPoint) -> bool {
        match hook {
            HookPoint::Validate => !self.validate.is_empty(),
            HookPoint::PostProcess => !self.post_process.is_empty(),
        }
    }

    /// Runs the validate chain for a job on `peer_id`. Each plugin sees the
    /// request as the previous one left it, with secret values redacted
    /// unless its policy entry sets `see_secrets`.
    pub async fn validate(&self, job: &ApiJobRequest, peer_id: &str) -> ValidateOutcome {
        let mut current = job.clone();
        let mut changed_by = Vec::new();

        for plugin in &self.validate {
            let name = plugin.spec.name.clone();
            let request =
                convert::job_request_to_plugin(&current, peer_id, plugin.spec.see_secrets);
            let _slot = self.slots.acquire().await;
            let (outcome, report) = plugin.validate(&request).await;
            tracing::debug!(plugin = %name, job_id = %job.jobid, elapsed_us = report.elapsed.as_micros() as u64, "validate hook ran");

            let failure = match outcome {
                Ok(Verdict::Allow) => continue,
                Ok(Verdict::Deny(reason)) => {
                    let reason = truncate_utf8(&reason, MAX_REASON_BYTES).to_owned();
                    tracing::info!(plugin = %name, job_id = %job.jobid, reason, "job rejected by plugin");
                    return ValidateOutcome::Deny {
                        plugin: name,
                        reason,
                    };
                }
                Ok(Verdict::Modify(changed)) => match convert::check_plugin_request(&changed) {
                    Ok(()) => {
                        current = convert::apply_plugin_request(&current, changed);
                        changed_by.push(name);
                        continue;
                    }
                    Err(problem) => format!("returned a request that cannot run: {problem}"),
                },
                Err(message) => message,
            };

            tracing::warn!(plugin = %name, job_id = %job.jobid, error = %failure, on_error = ?plugin.spec.on_error, "validate plugin failed");
            if plugin.spec.on_error == OnError::Deny {
                return ValidateOutcome::Deny {
                    plugin: name,
                    reason: format!(
                        "the plugin failed ({failure}), and its policy denies on failure"
                    ),
                };
            }
        }

        ValidateOutcome::Allow {
            request: Box::new(current),
            changed_by,
        }
    }

    /// Runs the post-process chain on a finished job's result, changing
    /// `res_cmd` in place. Output a plugin returns past `max_output_bytes`
    /// counts as a failure of that plugin.
    pub async fn post_process(
        &self,
        job: &ApiJobRequest,
        peer_id: &str,
        res_cmd: &mut ResCmd,
        max_output_bytes: usize,
    ) {
        if self.post_process.is_empty() {
            return;
        }
        let redacted_view = convert::job_request_to_plugin(job, peer_id, false);
        let full_view = convert::job_request_to_plugin(job, peer_id, true);
        let mut result = convert::res_cmd_to_plugin(res_cmd);

        for plugin in &self.post_process {
            let name = plugin.spec.name.clone();
            let request = if plugin.spec.see_secrets {
                &full_view
            } else {
                &redacted_view
            };
            let _slot = self.slots.acquire().await;
            let (outcome, report) = plugin.post_process(request, &result).await;
            tracing::debug!(plugin = %name, job_id = %job.jobid, elapsed_us = report.elapsed.as_micros() as u64, "post-process hook ran");

            let failure = match outcome {
                Ok(processed) => match oversized(&processed, max_output_bytes) {
                    None => {
                        convert::apply_processed(&mut result, processed);
                        continue;
                    }
                    Some(problem) => problem,
                },
                Err(message) => message,
            };

            tracing::warn!(plugin = %name, job_id = %job.jobid, error = %failure, on_error = ?plugin.spec.on_error, "post-process plugin failed");
            let note = if plugin.spec.on_error == OnError::Withhold {
                result.stdout.clear();
                result.stderr.clear();
                res_cmd.stdout_truncated = false;
                res_cmd.stderr_truncated = false;
                format!("post-process plugin `{name}` failed ({failure}); output withheld")
            } else {
                format!(
                    "post-process plugin `{name}` failed ({failure}); output passed on unchanged"
                )
            };
            append_err(res_cmd, &note);
            if plugin.spec.on_error == OnError::Withhold {
                break;
            }
        }

        convert::write_back(res_cmd, &result);
    }
}

fn load_all(
    engine: &Engine,
    specs: Vec<crate::policy::PluginSpec>,
    cache_dir: &Path,
    uses_fuel: bool,
) -> Result<Vec<LoadedPlugin>, LoadErrors> {
    let cache = ArtifactCache::open(cache_dir);
    let mut loaded = Vec::new();
    let mut errors = Vec::new();

    for spec in specs {
        match LoadedPlugin::load(engine, spec, cache.as_ref(), uses_fuel) {
            Ok(plugin) => loaded.push(plugin),
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(LoadErrors(errors))
    }
}

fn oversized(processed: &crate::bindings::Processed, max_bytes: usize) -> Option<String> {
    for (stream, bytes) in [("stdout", &processed.stdout), ("stderr", &processed.stderr)] {
        if let Some(bytes) = bytes
            && bytes.len() > max_bytes
        {
            return Some(format!(
                "returned {} bytes of {stream}, above the output cap of {max_bytes}",
                bytes.len()
            ));
        }
    }
    None
}

fn append_err(res_cmd: &mut ResCmd, note: &str) {
    if res_cmd.err.is_empty() {
        res_cmd.err = note.to_owned();
    } else {
        res_cmd.err = format!("{}; {note}", res_cmd.err);
    }
}
