//! Linux-specific process control for the job runner: cgroup v2, the work a
//! child does between `fork` and `exec`, signalling a job's process tree and
//! waiting for a child to exit without reaping it.

pub mod cgroup;
pub(crate) mod exit;
pub(crate) mod kill;
pub(crate) mod pre_exec;
