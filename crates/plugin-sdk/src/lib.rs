//! Guest SDK for Runwarden's WebAssembly plugins.
//!
//! A plugin is a WebAssembly component (WASI 0.2) built for the
//! `wasm32-wasip2` target. It implements one hook, [`Validator`] or
//! [`PostProcessor`], and exports it with [`export_validator!`] or
//! [`export_post_processor!`]. The types, the hook functions and the host's
//! `log` function come from the interface in `crates/sandbox/wit/plugin.wit`
//! (package `runwarden:plugin@1.0.0`), which this crate binds with
//! `wit-bindgen`.
//!
//! ```
//! use runwarden_plugin_sdk::{JobRequest, Validator, Verdict, export_validator};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     #[serde(default)]
//!     denied_users: Vec<String>,
//! }
//!
//! struct DenyUsers;
//!
//! impl Validator for DenyUsers {
//!     fn validate_config(config: &str) -> Result<(), String> {
//!         runwarden_plugin_sdk::parse_config::<Config>(config).map(|_| ())
//!     }
//!
//!     fn validate(config: &str, request: JobRequest) -> Verdict {
//!         let config: Config = match runwarden_plugin_sdk::parse_config(config) {
//!             Ok(config) => config,
//!             Err(error) => return Verdict::deny(error),
//!         };
//!         if config.denied_users.contains(&request.user) {
//!             runwarden_plugin_sdk::info!("denied job {} for user {}", request.job_id, request.user);
//!             return Verdict::deny(format!("user `{}` may not run jobs", request.user));
//!         }
//!         Verdict::Allow
//!     }
//! }
//!
//! export_validator!(DenyUsers);
//! ```

mod config;
mod log;

pub use config::parse_config;
pub use log::log;

/// `serde`, for `#[derive(Deserialize)]` on config types.
pub use serde;
/// `serde_json`, for plugins that read or write JSON beyond their config.
pub use serde_json;

pub use bindings::validator::runwarden::plugin::host::Level;
pub use bindings::validator::runwarden::plugin::types::{
    JobRequest, JobResult, Processed, Verdict,
};

/// Generated bindings. Plugins use them through the re-exports above and the
/// export macros. The module is public only because the macros' expansions
/// name it.
#[doc(hidden)]
pub mod bindings {
    /// The `validator-plugin` world: owns the `types` and `host` bindings
    /// that the post-processor world reuses.
    pub mod validator {
        wit_bindgen::generate!({
            world: "validator-plugin",
            path: "../sandbox/wit",
            additional_derives: [PartialEq],
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "runwarden_plugin_sdk::bindings::validator",
        });
    }

    /// The `post-processor-plugin` world.
    pub mod post_processor {
        wit_bindgen::generate!({
            world: "post-processor-plugin",
            path: "../sandbox/wit",
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "runwarden_plugin_sdk::bindings::post_processor",
            with: {
                "runwarden:plugin/types@1.0.0": crate::bindings::validator::runwarden::plugin::types,
                "runwarden:plugin/host@1.0.0": crate::bindings::validator::runwarden::plugin::host,
            },
        });
    }
}

/// A plugin on the `validate` hook, which decides whether a job may run.
///
/// The host calls it on the coordinator before it sends a job to its agent,
/// and again on the agent before the job's process starts.
pub trait Validator {
    /// Checks the plugin's configuration, the JSON text of the policy's
    /// `config` value, once when the plugin is loaded. An `Err` fails the load
    /// and its text names the problem.
    fn validate_config(config: &str) -> Result<(), String>;

    /// Decides about one job. `config` is the same JSON text that
    /// [`Validator::validate_config`] accepted. The host may run each call
    /// in a fresh instance, so statics set by an earlier call may be gone.
    fn validate(config: &str, request: JobRequest) -> Verdict;
}

/// A plugin on the `post-process` hook, which shapes a finished job's output
/// on the agent.
pub trait PostProcessor {
    /// Checks the plugin's configuration, the JSON text of the policy's
    /// `config` value, once when the plugin is loaded. An `Err` fails the load
    /// and its text names the problem.
    fn validate_config(config: &str) -> Result<(), String>;

    /// Processes one finished job's output. Fields of the returned
    /// [`Processed`] that are `None` keep their value. An `Err` is handled by
    /// the policy's `on_error`: the output is withheld, or passed unchanged.
    /// As with [`Validator::validate`], each call may run in a fresh
    /// instance.
    fn post_process(
        config: &str,
        request: JobRequest,
        result: JobResult,
    ) -> Result<Processed, String>;
}

impl Verdict {
    /// Builds a [`Verdict::Deny`] with `reason`, which reaches the client in
    /// `resCmd.err`.
    pub fn deny(reason: impl Into<String>) -> Self {
        Verdict::Deny(reason.into())
    }
}

/// An empty request: every string and list empty, execWay 0, timeout 0.
/// Meant for unit tests, with struct update syntax.
impl Default for JobRequest {
    fn default() -> Self {
        JobRequest {
            task_id: String::new(),
            job_id: String::new(),
            name: String::new(),
            creater: String::new(),
            peer_id: String::new(),
            path: String::new(),
            cmd: String::new(),
            env: Vec::new(),
            content: String::new(),
            exec_way: 0,
            filehash: String::new(),
            user: String::new(),
            timeout: 0,
            args: Vec::new(),
            input: String::new(),
        }
    }
}

/// An empty result of a process that exited with 0: no output, outcome
/// `ok`, no `res`. Meant for unit tests, with struct update syntax.
impl Default for JobResult {
    fn default() -> Self {
        JobResult {
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            exit_code: 0,
            outcome: "ok".to_string(),
            res: String::new(),
        }
    }
}

/// [`Processed::unchanged`].
impl Default for Processed {
    fn default() -> Self {
        Processed::unchanged()
    }
}

impl Processed {
    /// Builds a result that keeps stdout, stderr and `res` as they are.
    pub fn unchanged() -> Self {
        Processed {
            stdout: None,
            stderr: None,
            res: None,
        }
    }

    /// Returns true when every field is `None`, so the result changes
    /// nothing.
    pub fn is_unchanged(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none() && self.res.is_none()
    }
}

/// Items that the export macros expand to. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::post_processor::exports::runwarden::plugin::post_processor::Guest as PostProcessorGuest;
    pub use crate::bindings::validator::exports::runwarden::plugin::validator::Guest as ValidatorGuest;

    /// Installs, once, a panic hook that sends the panic message to the host
    /// log at level `error` before the panic traps the call. Only on wasm32,
    /// where the host import exists.
    pub fn install_panic_hook() {
        #[cfg(target_arch = "wasm32")]
        {
            static INSTALL: std::sync::Once = std::sync::Once::new();
            INSTALL.call_once(|| {
                std::panic::set_hook(Box::new(|info| {
                    crate::log(crate::Level::Error, &format!("plugin panicked: {info}"));
                }));
            });
        }
    }
}

/// Exports a type that implements [`Validator`] as the plugin's `validator`
/// interface. Use it once per plugin crate, at module level.
///
/// ```
/// # use runwarden_plugin_sdk::{JobRequest, Validator, Verdict};
/// struct AllowAll;
///
/// impl Validator for AllowAll {
///     fn validate_config(_config: &str) -> Result<(), String> {
///         Ok(())
///     }
///
///     fn validate(_config: &str, _request: JobRequest) -> Verdict {
///         Verdict::Allow
///     }
/// }
///
/// runwarden_plugin_sdk::export_validator!(AllowAll);
/// ```
#[macro_export]
macro_rules! export_validator {
    ($plugin:ty) => {
        const _: () = {
            struct RunwardenValidatorExport;

            impl $crate::__private::ValidatorGuest for RunwardenValidatorExport {
                fn validate_config(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::install_panic_hook();
                    <$plugin as $crate::Validator>::validate_config(&config)
                }

                fn validate(
                    config: ::std::string::String,
                    request: $crate::JobRequest,
                ) -> $crate::Verdict {
                    $crate::__private::install_panic_hook();
                    <$plugin as $crate::Validator>::validate(&config, request)
                }
            }

            $crate::bindings::validator::export!(
                RunwardenValidatorExport with_types_in $crate::bindings::validator
            );
        };
    };
}

/// Exports a type that implements [`PostProcessor`] as the plugin's
/// `post-processor` interface. Use it once per plugin crate, at module level.
///
/// ```
/// # use runwarden_plugin_sdk::{JobRequest, JobResult, PostProcessor, Processed};
/// struct KeepAll;
///
/// impl PostProcessor for KeepAll {
///     fn validate_config(_config: &str) -> Result<(), String> {
///         Ok(())
///     }
///
///     fn post_process(
///         _config: &str,
///         _request: JobRequest,
///         _result: JobResult,
///     ) -> Result<Processed, String> {
///         Ok(Processed::unchanged())
///     }
/// }
///
/// runwarden_plugin_sdk::export_post_processor!(KeepAll);
/// ```
#[macro_export]
macro_rules! export_post_processor {
    ($plugin:ty) => {
        const _: () = {
            struct RunwardenPostProcessorExport;

            impl $crate::__private::PostProcessorGuest for RunwardenPostProcessorExport {
                fn validate_config(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::install_panic_hook();
                    <$plugin as $crate::PostProcessor>::validate_config(&config)
                }

                fn post_process(
                    config: ::std::string::String,
                    request: $crate::JobRequest,
                    result: $crate::JobResult,
                ) -> ::core::result::Result<$crate::Processed, ::std::string::String> {
                    $crate::__private::install_panic_hook();
                    <$plugin as $crate::PostProcessor>::post_process(&config, request, result)
                }
            }

            $crate::bindings::post_processor::export!(
                RunwardenPostProcessorExport with_types_in $crate::bindings::post_processor
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::{JobRequest, JobResult, Level, Processed, Verdict};

    #[test]
    fn deny_builds_deny_verdict() {
        assert_eq!(Verdict::deny("no"), Verdict::Deny("no".to_string()));
    }

    #[test]
    fn unchanged_processed_is_all_none() {
        let processed = Processed::unchanged();
        assert!(processed.is_unchanged());
        assert_eq!(processed, Processed::default());
    }

    #[test]
    fn processed_with_res_is_changed() {
        let processed = Processed {
            res: Some("{}".to_string()),
            ..Processed::unchanged()
        };
        assert!(!processed.is_unchanged());
    }

    #[test]
    fn default_request_is_empty() {
        let request = JobRequest::default();
        assert_eq!(request.exec_way, 0);
        assert_eq!(request.timeout, 0);
        assert!(request.user.is_empty());
        assert!(request.args.is_empty());
        assert!(request.env.is_empty());
    }

    #[test]
    fn default_result_is_ok() {
        let result = JobResult::default();
        assert_eq!(result.outcome, "ok");
        assert_eq!(result.exit_code, 0);
        assert!(result.stdout.is_empty());
        assert!(result.res.is_empty());
    }

    #[test]
    fn native_log_does_not_panic() {
        crate::log(Level::Info, "native log line");
        crate::warn!("formatted {}", 42);
    }
}
