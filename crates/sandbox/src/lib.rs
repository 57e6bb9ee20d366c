//! The WebAssembly host for Runwarden plugin hooks.
//!
//! Plugins will run at two hook points: [`HookPoint::Validate`], before a
//! job is dispatched and again before its process is spawned, and
//! [`HookPoint::PostProcess`], after the process ends. Each runs in a
//! wasmtime sandbox whose memory, CPU time and capabilities a sandbox policy
//! limits.
//!
//! TODO: this crate only names the hook points so far. The wasmtime host,
//! the plugin interface and the policy file are not built yet, and no hook
//! runs on any job.

/// A point in a job's life at which plugins run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// Decides whether a job may run, and may change its request.
    Validate,
    /// Shapes a finished job's output and structured result.
    PostProcess,
}
