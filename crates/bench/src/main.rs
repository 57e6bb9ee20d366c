//! `runwarden-bench`: measures a whole Runwarden cluster on this machine
//! (coordinator and agents on 127.0.0.1) against the machine's floor, the
//! same processes spawned directly from Rust in the same run.
//!
//! Prints one table with each figure's median, p95, p99 and number of runs.
//! `--json FILE` also writes the figures for `scripts/bench-salt`, which sets
//! them beside Salt's. `--smoke` runs every section with tiny counts, which
//! checks that the harness still works. It fails when something breaks or
//! hangs past a generous limit, never on a timing figure.

mod child;
mod cluster;
mod floor;
mod sections;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::child::ChildCommand;
use crate::sections::Settings;
use crate::stats::Report;

#[derive(Parser)]
#[command(
    name = "runwarden-bench",
    about = "Measure a Runwarden coordinator and agents on this machine against spawning the same processes directly",
    after_help = "The agents' data folders, and so their job journals, go in a temporary folder under TMPDIR (default /tmp), so TMPDIR picks the disk that the agents' fsyncs go to."
)]
struct Cli {
    /// Run every section with tiny counts, to check that the harness works.
    /// Fails when something breaks, never on a timing figure.
    #[arg(long)]
    smoke: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Run only these sections, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "SECTIONS")]
    only: Vec<Section>,
    /// Sequential /script/sync calls per storage kind [default: 500; smoke: 5].
    #[arg(long, value_name = "N")]
    latency_runs: Option<usize>,
    /// Tasks per throughput run [default: 1000; smoke: 20].
    #[arg(long, value_name = "N")]
    throughput_jobs: Option<usize>,
    /// Throughput runs per agent count [default: 3; smoke: 1].
    #[arg(long, value_name = "N")]
    throughput_runs: Option<usize>,
    /// Agent counts to fan one task out to, comma-separated [default: 100,1000; smoke: 3,10].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    fanout_agents: Vec<usize>,
    /// Fan-out runs per agent count [default: 5; smoke: 1].
    #[arg(long, value_name = "N")]
    fanout_runs: Option<usize>,
    /// Fan-out agents per child process; 0 runs them all in the bench
    /// process beside the coordinator [default: 50; smoke: 5].
    #[arg(long, value_name = "N")]
    fanout_agents_per_process: Option<usize>,
    /// Idle agent counts for the coordinator's memory, comma-separated [default: 1000,10000; smoke: 10,50].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    idle_agents: Vec<usize>,
    /// RSS readings per memory figure, 200 ms apart [default: 10; smoke: 2].
    #[arg(long, value_name = "N")]
    rss_samples: Option<usize>,
    /// Bytes the output job prints to stdout [default: 2000000000; smoke: 20000000].
    #[arg(long, value_name = "BYTES")]
    output_bytes: Option<u64>,
    /// Output runs [default: 3; smoke: 1].
    #[arg(long, value_name = "N")]
    output_runs: Option<usize>,
    /// /script/sync calls with and without plugins [default: 300; smoke: 3].
    #[arg(long, value_name = "N")]
    hook_runs: Option<usize>,
    #[command(subcommand)]
    child: Option<Hidden>,
}

#[derive(Subcommand)]
enum Hidden {
    /// Run one part of a cluster for the memory and output sections.
    #[command(subcommand, hide = true)]
    Child(ChildCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    Latency,
    Throughput,
    Fanout,
    Memory,
    Output,
    Hooks,
    Timeout,
}

impl Cli {
    fn settings(&self) -> Settings {
        let pick = |flag: Option<usize>, full: usize, smoke: usize| {
            flag.unwrap_or(if self.smoke { smoke } else { full })
        };
        let pick_list = |flag: &[usize], full: &[usize], smoke: &[usize]| {
            if !flag.is_empty() {
                flag.to_vec()
            } else if self.smoke {
                smoke.to_vec()
            } else {
                full.to_vec()
            }
        };
        Settings {
            latency_runs: pick(self.latency_runs, 500, 5),
            throughput_jobs: pick(self.throughput_jobs, 1000, 20),
            throughput_runs: pick(self.throughput_runs, 3, 1),
            fanout_agents: pick_list(&self.fanout_agents, &[100, 1000], &[3, 10]),
            fanout_runs: pick(self.fanout_runs, 5, 1),
            fanout_agents_per_process: pick(self.fanout_agents_per_process, 50, 5),
            idle_agents: pick_list(&self.idle_agents, &[1000, 10_000], &[10, 50]),
            rss_samples: pick(self.rss_samples, 10, 2),
            output_bytes: self.output_bytes.unwrap_or(if self.smoke {
                20_000_000
            } else {
                2_000_000_000
            }),
            output_runs: pick(self.output_runs, 3, 1),
            hook_runs: pick(self.hook_runs, 300, 3),
        }
    }

    fn runs(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("runwarden-bench: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };

    let outcome = runtime.block_on(async {
        match &cli.child {
            Some(Hidden::Child(command)) => child::run(command.clone()).await,
            None => run_bench(&cli).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("runwarden-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_bench(cli: &Cli) -> anyhow::Result<()> {
    let settings = cli.settings();
    // The coordinator in this process keeps a socket per fan-out agent, and
    // with --fanout-agents-per-process 0 the agents' sockets, journals and
    // job pipes are here too.
    let largest_fanout = settings.fanout_agents.iter().copied().max().unwrap_or(0);
    child::raise_open_file_limit(4 * largest_fanout + 1024)?;

    let mut report = Report::new(cli.smoke);
    report.note("agents ran in child processes of the bench binary, one agent to a process except in the fan-out section, with the coordinator in the bench process");
    let outcome = run_sections(cli, &settings, &mut report).await;

    print!("{}", report.table());
    if let Some(path) = &cli.json {
        report.write_json(path)?;
        eprintln!("runwarden-bench: wrote {}", path.display());
    }
    outcome
}

async fn run_sections(cli: &Cli, settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let steps: [(Section, &str); 7] = [
        (Section::Latency, "latency"),
        (Section::Throughput, "throughput"),
        (Section::Fanout, "fan-out"),
        (Section::Memory, "memory"),
        (Section::Output, "output"),
        (Section::Hooks, "hooks"),
        (Section::Timeout, "timeout"),
    ];
    for (section, name) in steps {
        if !cli.runs(section) {
            continue;
        }
        eprintln!("runwarden-bench: running {name}");
        let outcome = match section {
            Section::Latency => sections::latency::run(settings, report).await,
            Section::Throughput => sections::throughput::run(settings, report).await,
            Section::Fanout => sections::fanout::run(settings, report).await,
            Section::Memory => sections::memory::run(settings, report).await,
            Section::Output => sections::output::run(settings, report).await,
            Section::Hooks => sections::hooks::run(settings, report).await,
            Section::Timeout => sections::timeout::run(report).await,
        };
        if let Err(error) = outcome {
            return Err(error.context(format!("the {name} section failed")));
        }
    }
    Ok(())
}
