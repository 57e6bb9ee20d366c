//! Authentication through the `runwarden` binary: the refusal to listen
//! beyond loopback without it, the `runwarden token` commands, and audit
//! lines in the coordinator's log.

mod common;

use std::path::Path;
use std::process::Command;

use common::fleet::{AgentProcess, Api, CoordinatorProcess, free_address};
use common::secure::token_secret;
use serde_json::json;

const BINARY: &str = env!("CARGO_BIN_EXE_runwarden");

/// Runs `runwarden token ARGS --config CONFIG` and returns its stdout,
/// after checking it succeeded.
fn token_command(config: &Path, args: &[&str]) -> String {
    let output = Command::new(BINARY)
        .arg("token")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run runwarden token");
    assert!(
        output.status.success(),
        "runwarden token {args:?}: {output:?}"
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn coordinator_refuses_public_listen_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    let port = free_address().port();
    std::fs::write(
        &config,
        format!(
            "listen = \"0.0.0.0:{port}\"\ndata_dir = \"{}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();

    let output = Command::new(BINARY)
        .args(["coordinator", "--config"])
        .arg(&config)
        .output()
        .expect("run runwarden coordinator");

    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("0.0.0.0:{port}")), "{stderr}");
    assert!(stderr.contains("enabled = true"), "{stderr}");
    assert!(stderr.contains("runwarden token create"), "{stderr}");
}

#[test]
fn token_command_rejects_memory_storage() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(&config, "storage = \"memory\"\n").unwrap();

    let output = Command::new(BINARY)
        .args(["token", "list", "--config"])
        .arg(&config)
        .output()
        .expect("run runwarden token list");

    assert_eq!(output.status.code(), Some(64), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("storage = \"sqlite\""));
}

#[tokio::test]
async fn token_commands_bootstrap_a_secured_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = CoordinatorProcess::start(dir.path(), "[auth]\nenabled = true");
    let config = dir.path().join("coordinator.toml");

    let admin = token_command(&config, &["create", "--name", "boot", "--scope", "admin"]);
    let enrollment = token_command(&config, &["enroll", "--peer", "node-1", "--ttl", "10m"]);
    assert!(
        admin.starts_with("rwt_"),
        "token output has {} bytes",
        admin.len()
    );
    assert!(enrollment.starts_with("rwe_"));

    let anonymous = Api::new(&coordinator.url);
    let (status, body) = anonymous
        .post("/script/taskinfo", &json!({ "taskid": "x" }))
        .await;
    assert_eq!(status, 401, "{body}");

    let api = Api::new(&coordinator.url).with_token(&admin);
    let agent = AgentProcess::start(
        dir.path(),
        "node-1",
        &coordinator.url,
        &format!("enrollment_token = \"{}\"", enrollment.trim()),
    );
    api.wait_online("node-1", true).await;
    let task_id = api
        .submit("node-1", json!({ "content": "echo secured", "execWay": 0 }))
        .await;
    let task = api
        .wait_final(&task_id, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(task["list"][0]["resCmd"]["stdout"], "secured\n", "{task}");

    let listed = token_command(&config, &["list"]);
    assert!(listed.contains("agent:node-1"), "{listed}");
    assert!(listed.contains("boot"), "{listed}");
    assert!(!listed.contains(token_secret(&admin)), "{listed}");

    token_command(&config, &["revoke", "--name", "boot"]);
    let (status, body) = api
        .post("/script/taskinfo", &json!({ "taskid": task_id }))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], 40104, "{body}");

    coordinator.terminate();
    coordinator.wait_exit(std::time::Duration::from_secs(20));
    let log = coordinator.log();
    let audit_lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("runwarden::audit"))
        .collect();
    assert!(
        audit_lines
            .iter()
            .any(|line| line.contains("task.create") && line.contains("token=boot")),
        "{audit_lines:#?}"
    );
    assert!(
        audit_lines.iter().any(|line| line.contains("agent.enroll")),
        "{audit_lines:#?}"
    );
    assert!(
        audit_lines
            .iter()
            .any(|line| line.contains("auth.denied") && line.contains("outcome=40101")),
        "{audit_lines:#?}"
    );
    assert!(
        !log.contains(admin.trim()),
        "the coordinator log holds a token"
    );
    assert!(
        !log.contains(enrollment.trim()),
        "the coordinator log holds an enrollment token"
    );

    let credential = std::fs::read_to_string(agent.data_dir.join("credential")).unwrap();
    let agent_log = agent.log();
    assert!(agent_log.contains("credential stored"), "{agent_log}");
    assert!(
        !agent_log.contains(enrollment.trim()),
        "the agent log holds its enrollment token"
    );
    assert!(
        !agent_log.contains(credential.trim()),
        "the agent log holds its credential"
    );
    assert!(
        !log.contains(credential.trim()),
        "the coordinator log holds an agent credential"
    );
}
