//! Host bindings generated from `wit/plugin.wit`.
//!
//! Both worlds share the `types` and `host` interfaces; the post-processor
//! bindings reuse the validator's, so one Rust type serves both.

pub mod validator {
    wasmtime::component::bindgen!({
        world: "validator-plugin",
        path: "wit",
        exports: { default: async },
    });
}

pub mod post_processor {
    wasmtime::component::bindgen!({
        world: "post-processor-plugin",
        path: "wit",
        exports: { default: async },
        with: {
            "runwarden:plugin/types": super::validator::runwarden::plugin::types,
            "runwarden:plugin/host": super::validator::runwarden::plugin::host,
        },
    });
}

pub use validator::runwarden::plugin::host::Level;
pub use validator::runwarden::plugin::types::{JobRequest, JobResult, Processed, Verdict};
