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

#[tokio::test]
async fn token_commands_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path(), "[auth]\nenabled = true");
    let config = dir.path().join("coordinator.toml");

    let admin = token_command(&config, &["create", "--name", "boot", "--scope", "admin"]);
    token_command(&config, &["enroll", "--peer", "node-1"]);
    token_command(&config, &["create", "--name", "temp", "--scope", "read"]);
    token_command(&config, &["revoke", "--name", "temp"]);

    let response = reqwest::Client::new()
        .get(format!("{}/audit", coordinator.url))
        .bearer_auth(admin.trim())
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    let entries: Vec<(String, String, String)> = body["data"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["source"] == "cli")
        .map(|entry| {
            (
                entry["action"].as_str().unwrap().to_owned(),
                entry["target"].as_str().unwrap().to_owned(),
                entry["token"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("token.create", "boot"),
        ("enrollment.create", "node-1"),
        ("token.create", "temp"),
        ("token.revoke", "temp"),
    ];
    for (action, target) in expected {
        assert!(
            entries
                .iter()
                .any(|(a, t, token)| a == action && t == target && token.is_empty()),
            "no {action} {target} entry from the command line: {entries:?}"
        );
    }
}

#[tokio::test]
async fn rejected_agent_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path(), "[auth]\nenabled = true");
    let config = dir.path().join("coordinator.toml");
    let enrollment = token_command(&config, &["enroll", "--peer", "someone-else"]);

    // The coordinator accepts the upgrade and then closes the link at
    // `Hello`, because the token is for another peer id.
    let agent = AgentProcess::start(
        dir.path(),
        "node-x",
        &coordinator.url,
        &format!("enrollment_token = \"{}\"", enrollment.trim()),
    );
    let mut waits: Vec<u64> = Vec::new();
    for _ in 0..100 {
        waits = agent
            .log()
            .lines()
            .filter_map(|line| line.split("retry_in_ms=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        if waits.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    assert!(
        waits.len() >= 4,
        "fewer than 4 redials within 10 s: {waits:?}"
    );
    assert!(
        waits[3] >= 800,
        "the fourth wait is {} ms, so the agent did not back off: {waits:?}",
        waits[3]
    );
}

#[test]
fn database_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path(), "");

    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let data_dir = coordinator.data_dir();
    assert_eq!(mode(&data_dir), 0o700, "{}", data_dir.display());
    assert_eq!(mode(&data_dir.join("coordinator.db")), 0o600);
}
