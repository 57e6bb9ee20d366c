//! Cost of plugin hooks: one validate call, one post-process call, and a
//! whole `/script/sync` job with and without hooks.
//!
//! Run with `cargo bench -p runwarden --bench hooks`. Pass `--smoke` after
//! `--` for a few iterations only, which checks that the benchmark still
//! runs without measuring anything. Prints one line per figure with the
//! median, the 99th percentile and the number of runs.

use std::path::Path;
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
    let smoke = std::env::args().any(|arg| arg == "--smoke");
    let runs = if smoke { 5 } else { 2000 };
    let job_runs = if smoke { 3 } else { 300 };

    let runtime = tokio::runtime::Runtime::new().expect("start runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let policy_path = write_policy(dir.path());
        let policy = Policy::from_file(&policy_path).expect("fixture policy");
        let sandbox = Sandbox::load(
            &policy,
            &[HookPoint::Validate, HookPoint::PostProcess],
            dir.path(),
        )
        .await
        .expect("load fixture plugins");

        println!(
            "{:<44} {:>12} {:>12} {:>7}",
            "figure", "median", "p99", "runs"
        );
        bench_validate(&sandbox, runs).await;
        bench_post_process(&sandbox, runs).await;
        bench_jobs(dir.path(), None, "job via /script/sync, no hooks", job_runs).await;
        bench_jobs(
            dir.path(),
            Some(&policy_path),
            "job via /script/sync, fixture hooks",
            job_runs,
        )
        .await;
    });
}

fn write_policy(dir: &Path) -> std::path::PathBuf {
    let entry = |hook: &str, name: &str| {
        let path = runwarden_fixtures::built_plugin(name);
        let sha256 = file_sha256(&path).expect("read fixture plugin");
        format!(
            "[[{hook}]]\nname = \"{name}\"\npath = \"{}\"\nsha256 = \"{sha256}\"\n\n",
            path.display()
        )
    };
    let text = [
        format!("cache_dir = \"{}\"\n\n", dir.join("cache").display()),
        entry("validate", "deny-dangerous"),
        entry("post_process", "redact-secrets"),
        entry("post_process", "json-result"),
    ]
    .concat();
    let path = dir.join("policy.toml");
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

async fn bench_validate(sandbox: &Sandbox, runs: usize) {
    let request = job();
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let outcome = sandbox.validate(&request, "peer").await;
        samples.push(started.elapsed());
        std::hint::black_box(outcome);
    }
    report("validate call (deny-dangerous)", samples);
}

async fn bench_post_process(sandbox: &Sandbox, runs: usize) {
    let request = job();
    let stdout =
        "restarting nginx\npassword=hunter2\n{\"status\": \"ok\", \"pid\": 4242}\n".repeat(20);
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut res_cmd = ResCmd {
            stdout: stdout.clone(),
            ..ResCmd::default()
        };
        let started = Instant::now();
        sandbox
            .post_process(&request, "peer", &mut res_cmd, 1 << 20)
            .await;
        samples.push(started.elapsed());
        std::hint::black_box(res_cmd);
    }
    report(
        "post-process chain (redact-secrets, json-result; 2.6 KB stdout)",
        samples,
    );
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
        "{label:<44} {:>10.1}µs {:>10.1}µs {:>7}",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        samples.len()
    );
}
