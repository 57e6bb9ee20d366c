//! Plugin hooks end to end: a coordinator and an agent that load the
//! fixture plugins from a sandbox policy.

mod common;

use std::path::{Path, PathBuf};

use common::{Cluster, ClusterOptions, res_cmd};
use serde_json::json;

/// Writes a policy that runs deny-dangerous and allowlist on validate, and
/// redact-secrets then json-result on post-process.
fn write_policy(dir: &Path) -> PathBuf {
    let entry = |hook: &str, name: &str, config: &str| {
        let path = runwarden_fixtures::built_plugin(name);
        let sha256 = runwarden_sandbox::plugin::file_sha256(&path).unwrap();
        format!(
            "[[{hook}]]\nname = \"{name}\"\npath = \"{}\"\nsha256 = \"{sha256}\"\nconfig = {config}\n\n",
            path.display()
        )
    };
    let text = [
        // One cache for every test, so each plugin is compiled once per run.
        format!(
            "cache_dir = \"{}\"\n\n",
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("plugin-cache")
                .display()
        ),
        entry("validate", "deny-dangerous", "{}"),
        entry("validate", "allowlist", "{ max_timeout = 120 }"),
        entry("post_process", "redact-secrets", "{}"),
        entry("post_process", "json-result", "{}"),
    ]
    .concat();
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn start_with_policy(dir: &Path) -> Cluster {
    let options = ClusterOptions {
        policy: Some(write_policy(dir)),
        ..ClusterOptions::default()
    };
    Cluster::start_with(options).await
}

#[tokio::test]
async fn dangerous_command_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_with_policy(dir.path()).await;
    let marker = dir.path().join("ran");

    let data = cluster
        .sync(json!({ "execWay": 0, "content": format!("touch {}; rm -rf /", marker.display()) }))
        .await;

    let res = res_cmd(&data);
    assert_eq!(data["list"][0]["status"], "rejected", "{data}");
    assert_eq!(data["status"], "failed");
    assert_eq!(res["code"], "rejected");
    assert_eq!(res["exitCode"], -1);
    let err = res["err"].as_str().unwrap();
    assert!(
        err.starts_with("rejected by plugin `deny-dangerous`: "),
        "{err}"
    );
    assert!(!marker.exists(), "the rejected command ran");
    cluster.stop().await;
}

#[tokio::test]
async fn secret_is_redacted_and_json_extracted() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_with_policy(dir.path()).await;
    let script = "echo 'db password=s3cr3t-value'\necho '{\"deployed\": \"v42\", \"hosts\": 3}'\necho done\n";

    let data = cluster
        .sync(json!({ "execWay": 1, "content": script }))
        .await;

    let res = res_cmd(&data);
    assert_eq!(data["list"][0]["status"], "success", "{data}");
    let stdout = res["stdout"].as_str().unwrap();
    assert!(!stdout.contains("s3cr3t-value"), "{stdout}");
    assert!(stdout.contains("db password="), "{stdout}");
    assert!(stdout.ends_with("done\n"), "{stdout}");
    let structured: serde_json::Value = serde_json::from_str(res["res"].as_str().unwrap()).unwrap();
    assert_eq!(structured, json!({ "deployed": "v42", "hosts": 3 }));
    cluster.stop().await;
}

#[tokio::test]
async fn changed_request_reaches_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_with_policy(dir.path()).await;
    let (task_id, _) = cluster
        .submit(json!({ "execWay": 0, "content": "sleep 30", "timeout": 3000 }))
        .await;
    cluster
        .wait_job_status(&task_id, "running", std::time::Duration::from_secs(5))
        .await;

    let (_, envelope) = cluster
        .post(
            "/script/peer/taskinfo",
            &json!({ "peerid": "peer-1", "taskid": task_id }),
        )
        .await;

    assert_eq!(
        envelope["data"]["req"]["content"]["timeout"], 120,
        "{envelope}"
    );
    let job_id = cluster.task_info(&task_id).await["list"][0]["jobid"]
        .as_str()
        .unwrap()
        .to_owned();
    cluster.cancel(&job_id, "test over").await;
    cluster.stop().await;
}

#[test]
fn bad_policy_fails_coordinator_start() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[validate]]\nname = \"x\"\npath = \"missing.wasm\"\nsha256 = \"00\"\n",
    )
    .unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\npolicy = \"{}\"\ndata_dir = \"{}\"\n",
            policy.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_runwarden"))
        .args(["coordinator", "--config"])
        .arg(&config)
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("validate[0] `x`"), "{stderr}");
    assert!(stderr.contains("missing.wasm"), "{stderr}");
    assert!(stderr.contains("sha256"), "{stderr}");
}

#[tokio::test]
async fn failing_post_processor_withholds_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = runwarden_fixtures::built_plugin("hostile-post");
    let sha256 = runwarden_sandbox::plugin::file_sha256(&path).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[post_process]]\nname = \"breaks\"\npath = \"{}\"\nsha256 = \"{sha256}\"\nconfig = {{ mode = \"trap\" }}\n",
            path.display()
        ),
    )
    .unwrap();
    let options = ClusterOptions {
        policy: Some(policy),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(options).await;

    let first = cluster
        .sync(json!({ "execWay": 0, "content": "echo private" }))
        .await;
    let second = cluster
        .sync(json!({ "execWay": 0, "content": "echo again" }))
        .await;

    for data in [&first, &second] {
        let res = res_cmd(data);
        assert_eq!(data["list"][0]["status"], "success", "{data}");
        assert_eq!(res["stdout"], "", "{data}");
        let err = res["err"].as_str().unwrap();
        assert!(err.contains("post-process plugin `breaks` failed"), "{err}");
        assert!(err.contains("output withheld"), "{err}");
    }
    cluster.stop().await;
}

fn plugin_test(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_runwarden"))
        .args(["plugin", "test"])
        .args(args)
        .output()
        .expect("run runwarden plugin test")
}

#[test]
fn plugin_test_prints_denial() {
    let plugin = runwarden_fixtures::built_plugin("deny-dangerous");
    let request = runwarden_fixtures::requests_dir().join("dangerous-request.json");

    let output = plugin_test(&[
        "--plugin",
        plugin.to_str().unwrap(),
        "--hook",
        "validate",
        "--request",
        request.to_str().unwrap(),
    ]);

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("verdict: deny: "), "{stdout}");
    assert!(stdout.contains("time:"), "{stdout}");
    assert!(stdout.contains("bytes peak"), "{stdout}");
}

#[test]
fn plugin_test_prints_processed_output() {
    let plugin = runwarden_fixtures::built_plugin("redact-secrets");
    let request = runwarden_fixtures::requests_dir().join("command-line.json");
    let result = runwarden_fixtures::results_dir().join("secret-and-json.json");

    let output = plugin_test(&[
        "--plugin",
        plugin.to_str().unwrap(),
        "--hook",
        "post-process",
        "--request",
        request.to_str().unwrap(),
        "--result",
        result.to_str().unwrap(),
    ]);

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("stdout (changed)"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        !stdout.contains("BEGIN RSA PRIVATE KEY-----\nVGhp"),
        "{stdout}"
    );
}

#[test]
fn plugin_test_reports_plugin_failure() {
    let plugin = runwarden_fixtures::built_plugin("hostile");
    let request = runwarden_fixtures::requests_dir().join("command-line.json");

    let output = plugin_test(&[
        "--plugin",
        plugin.to_str().unwrap(),
        "--hook",
        "validate",
        "--config",
        r#"{"mode":"loop"}"#,
        "--timeout-ms",
        "50",
        "--request",
        request.to_str().unwrap(),
    ]);

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("time limit of 50 ms"), "{stderr}");
}
