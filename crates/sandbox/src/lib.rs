//! The WebAssembly host for Runwarden plugin hooks.
//!
//! Plugins run at two hook points: [`HookPoint::Validate`], before a job is
//! dispatched and again before its process is spawned, and
//! [`HookPoint::PostProcess`], after the process ends. The sandbox policy
//! ([`policy::Policy`]) lists the plugins of each point with their limits.
//!
//! How the types relate:
//!
//! - [`Sandbox`] holds one wasmtime [`wasmtime::Engine`] (with its epoch
//!   ticker thread) and the [`plugin::LoadedPlugin`]s of each hook point, in
//!   policy order. It runs a hook's chain and applies each plugin's failure
//!   mode.
//! - A [`plugin::LoadedPlugin`] is compiled and linked once, at load. Each
//!   call instantiates it in a fresh `Store` whose data is a
//!   [`store::CallState`]: the WASI context, the memory limiter and the log
//!   limiter of that call only.
//! - [`cache::ArtifactCache`] keeps precompiled plugins on disk between
//!   starts.
//!
//! Invariant: no plugin failure reaches the caller as a panic or an error
//! that stops the host. A failing validator denies (or allows, if its policy
//! says so); a failing post-processor withholds output (or passes it).

pub mod bindings;
pub mod cache;
pub mod convert;
pub mod engine;
pub mod plugin;
pub mod policy;
pub mod sandbox;
pub mod store;

pub use policy::{HookPoint, Policy};
pub use sandbox::Sandbox;
