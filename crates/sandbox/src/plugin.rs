//! One loaded plugin: checked, compiled, linked, and ready to call.
//!
//! Loading checks, in order: the file's sha256 against its pin, that the file
//! is a WebAssembly component, that the plugin exports the hook interface of
//! a supported version, and that every import is one the sandbox grants.
//! Then it calls `validate-config` once, so a bad configuration fails at
//! start-up, not on the first job.
//!
//! Every call gets a fresh [`Store`] from the cached [`InstancePre`]-based
//! bindings, with the plugin's memory limit, a wall-clock deadline enforced
//! by epoch interruption, and its fuel budget if it has one.
//!
//! [`InstancePre`]: wasmtime::component::InstancePre

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{Deterministic, FsPerms, WasiCtxBuilder};

use crate::bindings::post_processor::{PostProcessorPlugin, PostProcessorPluginPre};
use crate::bindings::validator::{ValidatorPlugin, ValidatorPluginPre};
use crate::bindings::{JobRequest, JobResult, Processed, Verdict};
use crate::cache::ArtifactCache;
use crate::policy::{HookPoint, PluginSpec};
use crate::store::{CallState, CountingClock, FixedWallClock, LogLimiter, MemoryLimiter};

/// The plugin interface version this host implements.
pub const INTERFACE_VERSION: &str = "1.0.0";

/// Interface name prefixes a plugin may import. The WASI file system
/// interfaces are allowed so that code using `std::fs` loads, but a plugin
/// can open no folder unless the policy grants `read_only_dirs`.
const GRANTED_IMPORTS: &[&str] = &[
    "runwarden:plugin/host@1.",
    "runwarden:plugin/types@1.",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
];

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin `{plugin}`: cannot read `{path}`: {source}")]
    Read {
        plugin: String,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "plugin `{plugin}`: `{path}` has sha256 {actual}, but the policy pins {expected}; update the pin only if you trust the new file"
    )]
    HashMismatch {
        plugin: String,
        path: String,
        expected: String,
        actual: String,
    },
    #[error(
        "plugin `{plugin}`: `{path}` is not a WebAssembly file; build the plugin for wasm32-wasip2"
    )]
    NotWasm { plugin: String, path: String },
    #[error(
        "plugin `{plugin}`: `{path}` is a core WebAssembly module, not a component; build it for wasm32-wasip2"
    )]
    CoreModule { plugin: String, path: String },
    #[error("plugin `{plugin}`: failed to compile: {message}")]
    Compile { plugin: String, message: String },
    #[error(
        "plugin `{plugin}`: imports `{import}`, which the sandbox does not grant; plugins may import only runwarden:plugin/host and WASI io, clocks, random, cli and filesystem (no sockets or HTTP)"
    )]
    UngrantedImport { plugin: String, import: String },
    #[error(
        "plugin `{plugin}`: targets plugin interface {found}, but this host supports {supported}; rebuild it against interface {supported}"
    )]
    IncompatibleVersion {
        plugin: String,
        found: String,
        supported: &'static str,
    },
    #[error(
        "plugin `{plugin}`: exports no `runwarden:plugin/{expected}` interface, so it cannot run at the {hook} hook point; {hint}"
    )]
    MissingExport {
        plugin: String,
        expected: &'static str,
        hook: &'static str,
        hint: String,
    },
    #[error("plugin `{plugin}`: failed to link: {message}")]
    Link { plugin: String, message: String },
    #[error("plugin `{plugin}`: rejected its configuration: {message}; fix `config` in the policy")]
    ConfigRejected { plugin: String, message: String },
    #[error("plugin `{plugin}`: validate-config failed: {message}")]
    ConfigCallFailed { plugin: String, message: String },
}

/// Time and memory that one call used.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallReport {
    pub elapsed: Duration,
    /// Peak memory of the instance, summed over its memories and tables.
    pub peak_memory_bytes: usize,
}

enum Bindings {
    Validator(ValidatorPluginPre<CallState>),
    PostProcessor(PostProcessorPluginPre<CallState>),
}

pub struct LoadedPlugin {
    pub spec: PluginSpec,
    engine: Engine,
    bindings: Bindings,
    uses_fuel: bool,
}

impl LoadedPlugin {
    /// Loads and checks a plugin; see the module docs for the checks. Blocks
    /// while compiling, so call it from a blocking context.
    pub fn load(
        engine: &Engine,
        spec: PluginSpec,
        cache: Option<&ArtifactCache>,
        uses_fuel: bool,
    ) -> Result<LoadedPlugin, LoadError> {
        let plugin = spec.name.clone();
        let path_text = spec.path.display().to_string();

        let bytes = std::fs::read(&spec.path).map_err(|source| LoadError::Read {
            plugin: plugin.clone(),
            path: path_text.clone(),
            source,
        })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != spec.sha256 {
            return Err(LoadError::HashMismatch {
                plugin,
                path: path_text,
                expected: spec.sha256.clone(),
                actual,
            });
        }
        check_component_header(&bytes, &plugin, &path_text)?;

        let component = compile(engine, &bytes, &spec.sha256, cache, &plugin)?;
        // The version check comes first: a plugin built for another interface
        // version also imports that version's `types`, and "incompatible
        // version" is the more useful message.
        check_exports(engine, &component, spec.hook, &plugin)?;
        check_imports(engine, &component, &plugin)?;

        let bindings = link(engine, &component, spec.hook, &plugin)?;
        let loaded = LoadedPlugin {
            spec,
            engine: engine.clone(),
            bindings,
            uses_fuel,
        };
        Ok(loaded)
    }

    /// Calls `validate-config` once with the policy's configuration.
    pub async fn check_config(&self) -> Result<(), LoadError> {
        let plugin = self.spec.name.clone();
        let config = self.spec.config.clone();
        let failed = |message: String| LoadError::ConfigCallFailed {
            plugin: plugin.clone(),
            message,
        };

        let mut store = self.new_store().map_err(|e| failed(e.to_string()))?;
        let answer = match &self.bindings {
            Bindings::Validator(pre) => {
                let call = async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    instance
                        .runwarden_plugin_validator()
                        .call_validate_config(&mut store, &config)
                        .await
                };
                self.bounded(call).await
            }
            Bindings::PostProcessor(pre) => {
                let call = async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    instance
                        .runwarden_plugin_post_processor()
                        .call_validate_config(&mut store, &config)
                        .await
                };
                self.bounded(call).await
            }
        };

        match answer {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(LoadError::ConfigRejected { plugin, message }),
            Err(error) => Err(failed(self.describe_failure(&store, &error))),
        }
    }

    /// Runs the plugin's `validate` on one job request.
    ///
    /// # Errors
    ///
    /// Returns a message naming the failure (trap, time limit, memory limit,
    /// fuel) when the call does not complete.
    pub async fn validate(&self, request: &JobRequest) -> (Result<Verdict, String>, CallReport) {
        let Bindings::Validator(pre) = &self.bindings else {
            return (
                Err("not a validator plugin".to_owned()),
                CallReport::default(),
            );
        };
        let started = Instant::now();
        let mut store = match self.new_store() {
            Ok(store) => store,
            Err(error) => return (Err(error.to_string()), CallReport::default()),
        };

        let call = async {
            let instance: ValidatorPlugin = pre.instantiate_async(&mut store).await?;
            instance
                .runwarden_plugin_validator()
                .call_validate(&mut store, &self.spec.config, request)
                .await
        };
        let outcome = self.bounded(call).await;

        let report = self.report(&store, started);
        let outcome = outcome.map_err(|error| self.describe_failure(&store, &error));
        (outcome, report)
    }

    /// Runs the plugin's `post-process` on one finished job.
    pub async fn post_process(
        &self,
        request: &JobRequest,
        result: &JobResult,
    ) -> (Result<Processed, String>, CallReport) {
        let Bindings::PostProcessor(pre) = &self.bindings else {
            return (
                Err("not a post-processor plugin".to_owned()),
                CallReport::default(),
            );
        };
        let started = Instant::now();
        let mut store = match self.new_store() {
            Ok(store) => store,
            Err(error) => return (Err(error.to_string()), CallReport::default()),
        };

        let call = async {
            let instance: PostProcessorPlugin = pre.instantiate_async(&mut store).await?;
            instance
                .runwarden_plugin_post_processor()
                .call_post_process(&mut store, &self.spec.config, request, result)
                .await
        };
        let outcome = self.bounded(call).await;

        let report = self.report(&store, started);
        let outcome = match outcome {
            Ok(Ok(processed)) => Ok(processed),
            Ok(Err(message)) => Err(format!("returned an error: {message}")),
            Err(error) => Err(self.describe_failure(&store, &error)),
        };
        (outcome, report)
    }

    /// Makes the fresh store of one call: no environment, arguments or
    /// standard input, output discarded, clocks and randomness that reveal
    /// nothing about the host, no network, and only the granted folders.
    fn new_store(&self) -> wasmtime::Result<Store<CallState>> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.wall_clock(FixedWallClock)
            .monotonic_clock(CountingClock::default())
            .secure_random(Deterministic::new(vec![0x52, 0x57, 0x61, 0x72]))
            .insecure_random(Deterministic::new(vec![0x64, 0x65, 0x6e]))
            .insecure_random_seed(0)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for dir in &self.spec.read_only_dirs {
            let guest_path = dir.to_string_lossy();
            wasi.preopened_dir(dir, guest_path.as_ref(), FsPerms::ReadOnly)?;
        }

        let timeout = Duration::from_millis(self.spec.timeout_ms);
        let state = CallState {
            plugin: self.spec.name.clone(),
            wasi: wasi.build(),
            table: ResourceTable::new(),
            memory: MemoryLimiter::new(self.spec.max_memory_bytes),
            log: LogLimiter::default(),
            deadline: Instant::now() + timeout,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);

        if self.uses_fuel {
            store.set_fuel(self.spec.fuel.unwrap_or(u64::MAX))?;
        }
        // Check the deadline at every tick, yielding to the async runtime in
        // between, so a long call never holds a worker thread for more than
        // one tick at a time.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|context| {
            if Instant::now() >= context.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok(store)
    }

    /// Runs `call` under an outer timeout, a second line of defence should
    /// the epoch deadline not fire (for example inside a long host call).
    async fn bounded<T>(
        &self,
        call: impl Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        let limit = Duration::from_millis(self.spec.timeout_ms) + Duration::from_secs(1);
        match tokio::time::timeout(limit, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Trap::Interrupt.into()),
        }
    }

    fn report(&self, store: &Store<CallState>, started: Instant) -> CallReport {
        let dropped = store.data().log.dropped;
        if dropped > 0 {
            tracing::warn!(plugin = %self.spec.name, dropped, "plugin log lines dropped by the rate limit");
        }
        CallReport {
            elapsed: started.elapsed(),
            peak_memory_bytes: store.data().memory.peak_bytes,
        }
    }

    /// Names the limit a failed call ran into, or the trap it hit.
    fn describe_failure(&self, store: &Store<CallState>, error: &wasmtime::Error) -> String {
        if store.data().memory.hit_limit {
            return format!(
                "exceeded its memory limit of {} bytes ({error})",
                self.spec.max_memory_bytes
            );
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                format!("ran past its time limit of {} ms", self.spec.timeout_ms)
            }
            Some(Trap::OutOfFuel) => format!(
                "used up its fuel budget of {}",
                self.spec.fuel.unwrap_or_default()
            ),
            Some(Trap::StackOverflow) => "exhausted its stack".to_owned(),
            Some(trap) => format!("trapped: {trap}"),
            None => format!("failed: {error:#}"),
        }
    }
}

fn check_component_header(bytes: &[u8], plugin: &str, path: &str) -> Result<(), LoadError> {
    if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
        return Err(LoadError::NotWasm {
            plugin: plugin.to_owned(),
            path: path.to_owned(),
        });
    }
    // Bytes 4..8 are the version and layer: 1 0 0 0 for a core module,
    // 0x0d 0 1 0 for a component.
    if bytes[6..8] == [0, 0] {
        return Err(LoadError::CoreModule {
            plugin: plugin.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn compile(
    engine: &Engine,
    bytes: &[u8],
    sha256: &str,
    cache: Option<&ArtifactCache>,
    plugin: &str,
) -> Result<Component, LoadError> {
    if let Some(component) = cache.and_then(|cache| cache.load(engine, sha256)) {
        tracing::debug!(plugin, "plugin loaded from the precompiled cache");
        return Ok(component);
    }

    let compile_error = |error: wasmtime::Error| LoadError::Compile {
        plugin: plugin.to_owned(),
        message: format!("{error:#}"),
    };
    let started = Instant::now();
    let precompiled = engine.precompile_component(bytes).map_err(compile_error)?;
    // SAFETY: `precompiled` was produced a moment ago by this engine from
    // the pinned bytes and has not left this process's memory.
    let component =
        unsafe { Component::deserialize(engine, &precompiled) }.map_err(compile_error)?;
    tracing::info!(
        plugin,
        compile_ms = started.elapsed().as_millis() as u64,
        "plugin compiled"
    );

    if let Some(cache) = cache {
        cache.store(engine, sha256, &precompiled);
    }
    Ok(component)
}

fn check_imports(engine: &Engine, component: &Component, plugin: &str) -> Result<(), LoadError> {
    for (name, _) in component.component_type().imports(engine) {
        if !GRANTED_IMPORTS
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            return Err(LoadError::UngrantedImport {
                plugin: plugin.to_owned(),
                import: name.to_owned(),
            });
        }
    }
    Ok(())
}

fn check_exports(
    engine: &Engine,
    component: &Component,
    hook: HookPoint,
    plugin: &str,
) -> Result<(), LoadError> {
    let (expected, other) = match hook {
        HookPoint::Validate => ("validator", "post-processor"),
        HookPoint::PostProcess => ("post-processor", "validator"),
    };
    let expected_prefix = format!("runwarden:plugin/{expected}@");
    let other_prefix = format!("runwarden:plugin/{other}@");
    let supported_major = INTERFACE_VERSION.split('.').next().unwrap_or_default();

    let mut other_found = false;
    for (name, _) in component.component_type().exports(engine) {
        if let Some(version) = name.strip_prefix(&expected_prefix) {
            if version.split('.').next() != Some(supported_major) {
                return Err(LoadError::IncompatibleVersion {
                    plugin: plugin.to_owned(),
                    found: version.to_owned(),
                    supported: INTERFACE_VERSION,
                });
            }
            return Ok(());
        }
        other_found |= name.starts_with(&other_prefix);
    }

    let hint = if other_found {
        format!("it exports `{other}`, so list it under the other hook point")
    } else {
        "build it with the runwarden plugin SDK".to_owned()
    };
    Err(LoadError::MissingExport {
        plugin: plugin.to_owned(),
        expected,
        hook: hook.as_str(),
        hint,
    })
}

fn link(
    engine: &Engine,
    component: &Component,
    hook: HookPoint,
    plugin: &str,
) -> Result<Bindings, LoadError> {
    let link_error = |error: wasmtime::Error| LoadError::Link {
        plugin: plugin.to_owned(),
        message: format!("{error:#}"),
    };

    let mut linker: Linker<CallState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_error)?;
    let bindings = match hook {
        HookPoint::Validate => {
            ValidatorPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
                .map_err(link_error)?;
            let pre = linker.instantiate_pre(component).map_err(link_error)?;
            Bindings::Validator(ValidatorPluginPre::new(pre).map_err(link_error)?)
        }
        HookPoint::PostProcess => {
            PostProcessorPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
                .map_err(link_error)?;
            let pre = linker.instantiate_pre(component).map_err(link_error)?;
            Bindings::PostProcessor(PostProcessorPluginPre::new(pre).map_err(link_error)?)
        }
    };
    Ok(bindings)
}

/// Returns the lower-case hex sha256 of a file, for pinning it.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}
