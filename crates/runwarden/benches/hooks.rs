//! Cost of plugin hooks: validate calls, post-process calls on short and
//! long output, and a whole `/script/sync` job without hooks, with hooks that
//! do nothing, and with the fixture hooks.
//!
//! Run with `cargo bench -p runwarden --bench hooks`. Options, after `--`:
//!
//! - `--smoke` runs a few iterations only, which checks that the benchmark
//!   still runs without measuring anything.
//! - `--only TEXT` runs only the figures whose label contains TEXT.
//! - `--plugins DIR` takes the fixture plugins from DIR instead of
//!   `crates/fixtures/plugins/built`, for example to measure an older build.
//!
//! Prints one line per figure with the median, the 99th percentile and the
//! number of runs. With `RUST_LOG` set (for example
//! `RUST_LOG=runwarden_sandbox=debug`), it also logs to stderr, which shows
//! the time of each hook call as `elapsed_us`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runwarden_agent::RunningAgent;
use runwarden_agent::config::AgentConfig;
use runwarden_coordinator::config::CoordinatorConfig;
use runwarden_coordinator::server::RunningCoordinator;
use runwarden_coordinator::storage::memory::MemoryStorage;
use runwarden_protocol::api::{JobRequest, ResCmd, ScriptContent};
use runwarden_sandbox::plugin::file_sha256;
use runwarden_sandbox::{HookPoint, Policy, Sandbox};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|arg| arg == "--smoke");
    let only = args
        .iter()
        .position(|arg| arg == "--only")
        .and_then(|index| args.get(index + 1))
        .cloned();
    let selected = |label: &str| only.as_deref().is_none_or(|text| label.contains(text));
    let plugins = Plugins(
        args.iter()
            .position(|arg| arg == "--plugins")
            .and_then(|index| args.get(index + 1))
            .map(PathBuf::from),
    );
    let runs = if smoke { 5 } else { 2000 };
    let job_runs = if smoke { 3 } else { 300 };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }

    let runtime = tokio::runtime::Runtime::new().expect("start runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let policy_path = write_policy(
            dir.path(),
            &plugins,
            "fixture-policy.toml",
            &[
                ("validate", "deny-dangerous"),
                ("post_process", "redact-secrets"),
                ("post_process", "json-result"),
            ],
        );
        // Plugins that do nothing, at the same hook points: the cost of
        // having hooks at all.
        let minimal_policy_path = write_policy(
            dir.path(),
            &plugins,
            "minimal-policy.toml",
            &[("validate", "hostile"), ("post_process", "hostile-post")],
        );
        let policy = Policy::from_file(&policy_path).expect("fixture policy");
        let sandbox = Sandbox::load(
            &policy,
            &[HookPoint::Validate, HookPoint::PostProcess],
            dir.path(),
        )
        .await
        .expect("load fixture plugins");

        println!(
            "{:<64} {:>12} {:>12} {:>7}",
            "figure", "median", "p99", "runs"
        );
        let minimal = minimal_sandbox(dir.path(), &plugins).await;
        let request = job();
        let label = "validate call (minimal plugin: allow)";
        if selected(label) {
            bench_validate(&minimal, label, &request, runs).await;
        }
        let label = "validate call (deny-dangerous)";
        if selected(label) {
            bench_validate(&sandbox, label, &request, runs).await;
        }
        let request = long_script_job();
        let label = format!(
            "validate call (deny-dangerous; {} B script)",
            request.content.content.len()
        );
        if selected(&label) {
            bench_validate(&sandbox, &label, &request, (runs / 20).max(1)).await;
        }
        for (lines, post_runs) in [(60, runs), (48_000, (runs / 100).max(1))] {
            let stdout = bench_stdout(lines);
            let label = format!(
                "post-process chain (redact-secrets, json-result; {} B stdout)",
                stdout.len()
            );
            if selected(&label) {
                bench_post_process(&sandbox, &label, &stdout, post_runs).await;
            }
        }

        // Each loaded sandbox reserves address space for its instance pool,
        // which makes every fork of this process slower: about 0.3 ms per
        // sandbox on the machine of BENCHMARKS.md. So the job figures run
        // with only the coordinator's and the agent's sandboxes.
        drop(sandbox);
        drop(minimal);

        let label = "job via /script/sync, no hooks";
        if selected(label) {
            bench_jobs(dir.path(), None, label, job_runs).await;
        }
        let label = "job via /script/sync, minimal hooks";
        if selected(label) {
            bench_jobs(dir.path(), Some(&minimal_policy_path), label, job_runs).await;
        }
        let label = "job via /script/sync, fixture hooks";
        if selected(label) {
            bench_jobs(dir.path(), Some(&policy_path), label, job_runs).await;
        }
    });
}

/// The folder the fixture plugins are read from, or `None` for
/// `crates/fixtures/plugins/built`.
struct Plugins(Option<PathBuf>);

impl Plugins {
    fn path(&self, name: &str) -> PathBuf {
        match &self.0 {
            Some(dir) => dir.join(format!("{name}.wasm")),
            None => runwarden_fixtures::built_plugin(name),
        }
    }
}

/// Writes a policy file named `file` with each `(hook, plugin)` entry in
/// order, every plugin with its default config.
fn write_policy(dir: &Path, plugins: &Plugins, file: &str, entries: &[(&str, &str)]) -> PathBuf {
    let entry = |hook: &str, name: &str| {
        let path = plugins.path(name);
        let sha256 = file_sha256(&path).expect("read fixture plugin");
        format!(
            "[[{hook}]]\nname = \"{name}\"\npath = \"{}\"\nsha256 = \"{sha256}\"\n\n",
            path.display()
        )
    };
    let mut text = format!("cache_dir = \"{}\"\n\n", dir.join("cache").display());
    for (hook, name) in entries {
        text.push_str(&entry(hook, name));
    }
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write policy");
    path
}

fn job() -> JobRequest {
    JobRequest {
        taskid: "bench-task".into(),
        jobid: "bench-job".into(),
        name: "bench".into(),
        creater: "bench".into(),
        content: ScriptContent {
            content: "systemctl restart nginx && curl -fsS http://127.0.0.1/health".into(),
            timeout: 60,
            ..ScriptContent::default()
        },
    }
}

/// A sandbox with one plugin that allows every job and does nothing else,
/// so its cost is the host's own: a fresh store, instantiation and the call.
async fn minimal_sandbox(dir: &Path, plugins: &Plugins) -> Sandbox {
    let path = plugins.path("hostile");
    let sha256 = file_sha256(&path).expect("read fixture plugin");
    let text = format!(
        "cache_dir = \"{}\"\n[[validate]]\nname = \"allow\"\npath = \"{}\"\nsha256 = \"{sha256}\"\nconfig = {{ mode = \"ok\" }}\n",
        dir.join("cache").display(),
        path.display()
    );
    let policy = Policy::from_toml(&text, dir).expect("minimal policy");
    Sandbox::load(&policy, &[HookPoint::Validate], dir)
        .await
        .expect("load minimal plugin")
}

async fn bench_validate(sandbox: &Sandbox, label: &str, request: &JobRequest, runs: usize) {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let outcome = sandbox.validate(request, "peer").await;
        samples.push(started.elapsed());
        std::hint::black_box(outcome);
    }
    report(label, samples);
}

/// Job output of `lines` lines with one secret and one JSON object per three
/// lines.
fn bench_stdout(lines: usize) -> String {
    "restarting nginx\npassword=hunter2\n{\"status\": \"ok\", \"pid\": 4242}\n".repeat(lines / 3)
}

/// Returns a job whose shell script is 109 KB, with pipes, redirections and
/// a harmless `rm` in every block of five lines.
fn long_script_job() -> JobRequest {
    let mut request = job();
    request.content.content = "#!/bin/sh\nset -e\necho building\nmake -j4 all && make install DESTDIR=/tmp/x > /tmp/log 2>&1\nrm -f /tmp/x/junk\n".repeat(1000);
    request
}

async fn bench_post_process(sandbox: &Sandbox, label: &str, stdout: &str, runs: usize) {
    let request = job();
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut res_cmd = ResCmd {
            stdout: stdout.to_owned(),
            ..ResCmd::default()
        };
        let started = Instant::now();
        sandbox
            .post_process(&request, "peer", &mut res_cmd, 1 << 20)
            .await;
        samples.push(started.elapsed());
        std::hint::black_box(res_cmd);
    }
    report(label, samples);
}

async fn bench_jobs(dir: &Path, policy: Option<&Path>, label: &str, runs: usize) {
    let coordinator_config = CoordinatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        policy: policy.map(Path::to_owned),
        ..CoordinatorConfig::default()
    };
    let coordinator = RunningCoordinator::start(coordinator_config, Arc::new(MemoryStorage::new()))
        .await
        .expect("start coordinator");
    let base_url = format!("http://{}", coordinator.local_addr);
    let agent_dir = tempfile::tempdir_in(dir).expect("agent dir");
    let agent = RunningAgent::start(AgentConfig {
        coordinator_url: base_url.clone(),
        peer_id: "bench".into(),
        scripts_dir: agent_dir.path().to_owned(),
        data_dir: agent_dir.path().to_owned(),
        policy: policy.map(Path::to_owned),
        ..AgentConfig::default()
    })
    .await
    .expect("start agent");
    while !coordinator.is_peer_online("bench") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let client = reqwest::Client::new();
    let body =
        serde_json::json!({ "peers": ["bench"], "content": { "execWay": 0, "content": "true" } });
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let response = client
            .post(format!("{base_url}/script/sync"))
            .json(&body)
            .send()
            .await
            .expect("send sync request");
        let envelope: serde_json::Value = response.json().await.expect("JSON answer");
        samples.push(started.elapsed());
        assert_eq!(envelope["data"]["status"], "success", "{envelope}");
    }
    report(label, samples);

    agent.stop().await;
    coordinator.stop().await.expect("stop coordinator");
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let median = samples[samples.len() / 2];
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    println!(
        "{label:<64} {:>10.1}µs {:>10.1}µs {:>7}",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        samples.len()
    );
}
