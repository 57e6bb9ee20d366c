//! Secret environment values (`content.secretEnv`) end to end, against real
//! `runwarden` processes with SQLite storage on 127.0.0.1.
//!
//! Each job proves that it got its secret by printing the value's sha256 or
//! length, never the value. The tests then look for the value, raw and
//! hex-encoded, in three places. They search every log line of the
//! coordinator and the agent, and every API response. They also search
//! every file of both data folders: the database with its `-wal` and `-shm`
//! files, and the agent's journal and caches.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fleet::{AgentProcess, Api, CoordinatorProcess};
use common::{Cluster, res_cmd};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Maximum wait for a job to reach a status.
const LIMIT: Duration = Duration::from_secs(30);

/// Returns a value that no other test or run uses.
fn new_secret() -> String {
    format!("rw-secret-{}", uuid::Uuid::new_v4().simple())
}

/// Returns the byte strings that would show the secret: the value itself,
/// and its hex encodings, which is how some libraries log frame payloads.
fn leak_forms(secret: &str) -> Vec<Vec<u8>> {
    vec![
        secret.as_bytes().to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
    ]
}

fn contains_any(haystack: &[u8], needles: &[Vec<u8>]) -> bool {
    needles.iter().any(|needle| {
        haystack
            .windows(needle.len())
            .any(|window| window == needle.as_slice())
    })
}

/// Lists every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Lists the files under `dir` that contain the secret in any of its forms.
fn files_with_secret(dir: &Path, secret: &str) -> Vec<PathBuf> {
    let needles = leak_forms(secret);
    files_under(dir)
        .into_iter()
        .filter(|path| {
            std::fs::read(path)
                .map(|bytes| contains_any(&bytes, &needles))
                .unwrap_or(false)
        })
        .collect()
}

/// Returns the log lines that contain the secret in any of its forms.
fn log_lines_with_secret(log: &str, secret: &str) -> Vec<String> {
    let needles = leak_forms(secret);
    log.lines()
        .filter(|line| contains_any(line.as_bytes(), &needles))
        .map(str::to_owned)
        .collect()
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Writes a sandbox policy with two validate entries of the `allowlist`
/// fixture plugin. Each lowers the timeout, so each returns a changed
/// request: the first without seeing secret values, the second with
/// `see_secrets = true`.
fn write_policy(dir: &Path) -> PathBuf {
    let path = runwarden_fixtures::built_plugin("allowlist");
    let sha256 = runwarden_sandbox::plugin::file_sha256(&path).unwrap();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    let text = format!(
        "cache_dir = \"{}\"\n\n\
         [[validate]]\nname = \"blind\"\npath = \"{path}\"\nsha256 = \"{sha256}\"\nconfig = {{ max_timeout = 150 }}\n\n\
         [[validate]]\nname = \"seeing\"\npath = \"{path}\"\nsha256 = \"{sha256}\"\nconfig = {{ max_timeout = 120 }}\nsee_secrets = true\n",
        cache.display(),
        path = path.display(),
    );
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, text).unwrap();
    policy
}

/// Starts a coordinator and one agent, `peer-1`, both logging at
/// `log_filter` and both loading the policy of [`write_policy`].
async fn start_fleet(dir: &Path, log_filter: &str) -> (CoordinatorProcess, AgentProcess, Api) {
    let policy = write_policy(dir);
    let options = format!("policy = \"{}\"\n", policy.display());
    let coordinator = CoordinatorProcess::start_logged(dir, &options, log_filter);
    let agent = AgentProcess::start_logged(dir, "peer-1", &coordinator.url, &options, log_filter);
    let api = Api::new(&coordinator.url);
    api.wait_online("peer-1", true).await;
    (coordinator, agent, api)
}

fn request_body(script: &str, secret: &str) -> Value {
    json!({
        "name": "secret",
        "creater": "tests",
        "peers": ["peer-1"],
        "content": {
            "execWay": 0,
            "content": script,
            "env": { "PLAIN": "visible" },
            "secretEnv": { "TOKEN": secret },
            "timeout": 600
        }
    })
}

/// Asserts that none of `answers` contains the secret, naming the call.
fn assert_answers_clean(answers: &[(&str, &Value)], secret: &str) {
    for (call, answer) in answers {
        let text = answer.to_string();
        assert!(
            !contains_any(text.as_bytes(), &leak_forms(secret)),
            "{call} answered with the secret: {text}"
        );
    }
}

/// Asserts that the logs and data folders hold no trace of the secret.
fn assert_no_trace(coordinator: &CoordinatorProcess, agent: &AgentProcess, secret: &str) {
    let coordinator_lines = log_lines_with_secret(&coordinator.log(), secret);
    assert!(
        coordinator_lines.is_empty(),
        "coordinator log lines with the secret:\n{}",
        coordinator_lines.join("\n")
    );
    let agent_lines = log_lines_with_secret(&agent.log(), secret);
    assert!(
        agent_lines.is_empty(),
        "agent log lines with the secret:\n{}",
        agent_lines.join("\n")
    );

    let coordinator_files = files_with_secret(&coordinator.data_dir(), secret);
    assert!(
        coordinator_files.is_empty(),
        "coordinator files with the secret: {coordinator_files:?}"
    );
    let agent_files = files_with_secret(&agent.data_dir, secret);
    assert!(
        agent_files.is_empty(),
        "agent files with the secret: {agent_files:?}"
    );
}

/// Runs one async job that waits for a release file and one sync job, and
/// checks every response, log and data file on the way.
async fn check_secret_stays_hidden(log_filter: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (mut coordinator, mut agent, api) = start_fleet(dir.path(), log_filter).await;
    let secret = new_secret();
    let release = dir.path().join("release");
    let script = format!(
        "printf %s \"$TOKEN\" | sha256sum | cut -d' ' -f1; echo \"plain=$PLAIN\"; i=0; \
         while [ ! -e {} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done",
        release.display()
    );

    let (status, created) = api
        .post("/script/async", &request_body(&script, &secret))
        .await;
    assert_eq!(status, 200, "{created}");
    let task_id = created["data"]["taskid"].as_str().unwrap().to_owned();
    let running = api.wait_job_status(&task_id, "running", LIMIT).await;

    let (status, live) = api
        .post(
            "/script/peer/taskinfo",
            &json!({ "peerid": "peer-1", "taskid": task_id }),
        )
        .await;
    assert_eq!(status, 200, "{live}");
    let content = &live["data"]["req"]["content"];
    assert_eq!(content["secretEnv"]["TOKEN"], "<redacted>", "{live}");
    assert_eq!(content["env"]["PLAIN"], "visible", "{live}");
    assert_eq!(content["timeout"], 120, "both plugins changed it: {live}");
    assert_eq!(agent.journal_len(), 1, "the running job is in the journal");
    assert_no_trace(&coordinator, &agent, &secret);

    std::fs::write(&release, b"").unwrap();
    let finished = api.wait_final(&task_id, LIMIT).await;
    let res = res_cmd(&finished);
    assert_eq!(finished["status"], "success", "{finished}");
    let stdout = res["stdout"].as_str().unwrap();
    assert_eq!(
        stdout,
        format!("{}\nplain=visible\n", sha256_hex(&secret)),
        "the script did not get the secret and the plain variable"
    );

    let script = "echo ${#TOKEN}";
    let (status, synced) = api
        .post("/script/sync", &request_body(script, &secret))
        .await;
    assert_eq!(status, 200, "{synced}");
    assert_eq!(
        res_cmd(&synced["data"])["stdout"],
        format!("{}\n", secret.len()),
        "{synced}"
    );

    let (_, after) = api
        .post(
            "/script/peer/taskinfo",
            &json!({ "peerid": "peer-1", "taskid": task_id }),
        )
        .await;
    assert_eq!(
        after["data"]["req"]["content"]["secretEnv"]["TOKEN"], "<redacted>",
        "{after}"
    );
    assert_answers_clean(
        &[
            ("/script/async", &created),
            ("/script/taskinfo while running", &running),
            ("/script/peer/taskinfo while running", &live),
            ("/script/taskinfo", &finished),
            ("/script/sync", &synced),
            ("/script/peer/taskinfo after the end", &after),
        ],
        &secret,
    );
    assert_eq!(agent.wait_journal_empty(LIMIT).await, 0);

    let data_dir = coordinator.data_dir();
    for name in ["coordinator.db", "coordinator.db-wal", "coordinator.db-shm"] {
        assert!(data_dir.join(name).exists(), "{name} is missing");
    }
    assert_no_trace(&coordinator, &agent, &secret);

    agent.stop();
    coordinator.terminate();
    assert!(coordinator.wait_exit(LIMIT).success());
    assert_no_trace(&coordinator, &agent, &secret);
}

#[tokio::test]
async fn secret_hidden_at_debug_level() {
    check_secret_stays_hidden("debug").await;
}

#[tokio::test]
async fn secret_hidden_at_trace_level() {
    check_secret_stays_hidden("trace").await;
}

#[tokio::test]
async fn restart_before_delivery_ends_secret_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coordinator, mut agent, api) = start_fleet(dir.path(), "debug").await;
    agent.stop();
    api.wait_online("peer-1", false).await;
    let secret = new_secret();

    let (status, created) = api
        .post("/script/async", &request_body("echo ${#TOKEN}", &secret))
        .await;
    assert_eq!(status, 200, "{created}");
    let secret_task = created["data"]["taskid"].as_str().unwrap().to_owned();
    let plain_task = api
        .submit("peer-1", json!({ "execWay": 0, "content": "echo plain" }))
        .await;

    coordinator.kill();
    coordinator.restart();
    agent.restart();
    api.wait_online("peer-1", true).await;

    let info = api.wait_final(&secret_task, LIMIT).await;
    let res = res_cmd(&info);
    assert_eq!(info["list"][0]["status"], "failed", "{info}");
    assert_eq!(res["code"], "secret_unavailable", "{info}");
    assert_eq!(res["exitCode"], -1, "{info}");
    let err = res["err"].as_str().unwrap();
    assert!(err.contains("coordinator restarted"), "{err}");
    assert!(err.contains("never stored"), "{err}");
    assert!(err.contains("submit the task again"), "{err}");
    assert!(err.contains("TOKEN"), "{err}");

    let plain = api.wait_final(&plain_task, LIMIT).await;
    assert_eq!(plain["status"], "success", "{plain}");
    assert_eq!(res_cmd(&plain)["stdout"], "plain\n", "{plain}");
    assert_eq!(agent.journal_len(), 0, "{}", agent.log());
    assert_no_trace(&coordinator, &agent, &secret);
}

#[tokio::test]
async fn name_in_env_and_secret_env_rejected() {
    let cluster = Cluster::start().await;
    let body = json!({
        "peers": ["peer-1"],
        "content": {
            "content": "true",
            "env": { "DB_PASSWORD": "a" },
            "secretEnv": { "DB_PASSWORD": "b" }
        }
    });

    let (status, envelope) = cluster.post("/script/async", &body).await;

    assert_eq!(status, 422, "{envelope}");
    assert_eq!(envelope["code"], 42201, "{envelope}");
    let message = envelope["message"].as_str().unwrap();
    assert!(message.contains("`DB_PASSWORD`"), "{message}");
    assert!(message.contains("put it in one of them"), "{message}");
    cluster.stop().await;
}

#[tokio::test]
async fn mistyped_secret_value_not_echoed() {
    let cluster = Cluster::start().await;
    let body = json!({
        "peers": ["peer-1"],
        "content": { "content": "true", "secretEnv": { "PIN": 918_273_645 } }
    });

    let (status, envelope) = cluster.post("/script/async", &body).await;

    assert_eq!(status, 400, "{envelope}");
    assert_eq!(envelope["code"], 40003, "{envelope}");
    let message = envelope["message"].as_str().unwrap();
    assert!(message.contains("content.secretEnv.PIN"), "{message}");
    assert!(!message.contains("918273645"), "{message}");
    cluster.stop().await;
}
