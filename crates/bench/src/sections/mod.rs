//! The benchmark's sections. Each one starts what it measures, adds its
//! figures to the report, and stops everything it started.

pub mod fanout;
pub mod hooks;
pub mod latency;
pub mod memory;
pub mod output;
pub mod throughput;
pub mod timeout;

/// Counts for every section, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sequential `/script/sync` calls per storage, and direct spawns.
    pub latency_runs: usize,
    /// Tasks submitted through `/script/async` per throughput run.
    pub throughput_jobs: usize,
    pub throughput_runs: usize,
    /// Agent counts to fan one task out to.
    pub fanout_agents: Vec<usize>,
    pub fanout_runs: usize,
    /// Fan-out agents per child process; 0 puts them all in the bench
    /// process.
    pub fanout_agents_per_process: usize,
    /// Idle agent counts to measure the coordinator's memory with.
    pub idle_agents: Vec<usize>,
    /// RSS readings per memory figure, 200 ms apart.
    pub rss_samples: usize,
    /// Bytes the output job prints to stdout.
    pub output_bytes: u64,
    pub output_runs: usize,
    /// `/script/sync` calls per hook setting.
    pub hook_runs: usize,
}
