//! The agent's own `[allow]` policy over the real API: each restriction
//! denies a job that breaks it, with nothing run, and lets a job that
//! complies run. The last tests run the `runwarden` binary, for the config
//! file and the warn log line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::fleet::{AgentProcess, Api, BINARY, CoordinatorProcess};
use common::{Cluster, ClusterOptions, ensure_user, is_root, res_cmd};
use runwarden_agent::config::AllowPolicy;
use serde_json::{Value, json};

async fn start_with(allow: AllowPolicy) -> Cluster {
    let options = ClusterOptions {
        agent_allow: allow,
        ..ClusterOptions::default()
    };
    Cluster::start_with(options).await
}

/// Asserts that a job ended `denied_by_agent` without running, and returns
/// its `resCmd.err`. `marker` is the file the job would have created.
fn assert_denied(data: &Value, marker: &Path) -> String {
    let res = res_cmd(data);
    assert_eq!(data["list"][0]["status"], "rejected", "{data}");
    assert_eq!(res["code"], "denied_by_agent", "{data}");
    assert_eq!(res["exitCode"], -1, "{data}");
    assert!(!marker.exists(), "the denied job ran: {data}");
    let err = res["err"].as_str().unwrap().to_owned();
    assert!(err.contains("peer `peer-1`"), "{err}");
    assert!(err.contains("ask the operator of peer `peer-1`"), "{err}");
    err
}

fn assert_succeeded(data: &Value) -> String {
    assert_eq!(data["list"][0]["status"], "success", "{data}");
    res_cmd(data)["stdout"].as_str().unwrap().to_owned()
}

fn touch(marker: &Path) -> String {
    format!("touch {}", marker.display())
}

#[tokio::test]
async fn users_restriction() {
    let allowed = if is_root() {
        ensure_user("rw-policy-user", &[]);
        "rw-policy-user".to_owned()
    } else {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name
    };
    let cluster = start_with(AllowPolicy {
        users: vec![allowed.clone()],
        ..AllowPolicy::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");

    let data = cluster
        .sync(json!({ "content": touch(&marker), "user": "nobody" }))
        .await;
    let err = assert_denied(&data, &marker);
    assert!(err.contains("user `nobody`"), "{err}");
    assert!(err.contains("allow.users"), "{err}");
    assert!(err.contains(&format!("`{allowed}`")), "{err}");

    let data = cluster
        .sync(json!({ "content": "id -un", "user": allowed }))
        .await;
    assert_eq!(assert_succeeded(&data), format!("{allowed}\n"));

    if is_root() {
        let data = cluster.sync(json!({ "content": touch(&marker) })).await;
        let err = assert_denied(&data, &marker);
        assert!(err.contains("user `root`"), "the default user: {err}");
    }
    cluster.stop().await;
}

#[tokio::test]
async fn interpreters_restriction() {
    let cluster = start_with(AllowPolicy {
        interpreters: vec![PathBuf::from("/bin/sh")],
        ..AllowPolicy::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");

    let data = cluster
        .sync(json!({ "execWay": 0, "cmd": "bash", "content": touch(&marker) }))
        .await;
    let err = assert_denied(&data, &marker);
    assert!(err.contains("interpreter `bash` (resolved to `"), "{err}");
    assert!(err.contains("allow.interpreters"), "{err}");

    let script = format!("#!/bin/bash\n{}\n", touch(&marker));
    let data = cluster
        .sync(json!({ "execWay": 1, "content": script }))
        .await;
    let err = assert_denied(&data, &marker);
    assert!(
        err.contains("interpreter `/bin/bash`"),
        "the #! line: {err}"
    );

    let data = cluster
        .sync(json!({ "execWay": 0, "content": "echo default" }))
        .await;
    assert_eq!(assert_succeeded(&data), "default\n");

    let data = cluster
        .sync(json!({ "execWay": 0, "cmd": "sh", "content": "echo by-name" }))
        .await;
    assert_eq!(assert_succeeded(&data), "by-name\n", "sh from PATH");

    let data = cluster
        .sync(json!({ "execWay": 1, "content": "#!/bin/sh\necho shebang\n" }))
        .await;
    assert_eq!(assert_succeeded(&data), "shebang\n");
    cluster.stop().await;
}

#[tokio::test]
async fn working_dirs_restriction() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let allowed = root.join("allowed");
    let outside = root.join("outside");
    std::fs::create_dir_all(allowed.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("escape")).unwrap();
    let marker = root.join("ran");
    let cluster = start_with(AllowPolicy {
        working_dirs: vec![allowed.clone()],
        ..AllowPolicy::default()
    })
    .await;

    let data = cluster
        .sync(json!({ "content": touch(&marker), "path": outside }))
        .await;
    let err = assert_denied(&data, &marker);
    assert!(
        err.contains(&format!("working directory `{}`", outside.display())),
        "{err}"
    );
    assert!(err.contains("allow.working_dirs"), "{err}");

    let data = cluster
        .sync(json!({ "content": touch(&marker), "path": allowed.join("escape") }))
        .await;
    let err = assert_denied(&data, &marker);
    assert!(err.contains("resolved to"), "a symlink out: {err}");

    let data = cluster.sync(json!({ "content": touch(&marker) })).await;
    assert_denied(&data, &marker);

    let data = cluster
        .sync(json!({ "content": "pwd", "path": allowed.join("sub") }))
        .await;
    assert_eq!(
        assert_succeeded(&data),
        format!("{}\n", allowed.join("sub").display())
    );
    cluster.stop().await;
}

#[tokio::test]
async fn max_timeout_restriction() {
    let cluster = start_with(AllowPolicy {
        max_timeout_secs: Some(30),
        ..AllowPolicy::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");

    let data = cluster
        .sync(json!({ "content": touch(&marker), "timeout": 31 }))
        .await;
    let err = assert_denied(&data, &marker);
    assert!(err.contains("timeout 31 s"), "{err}");
    assert!(err.contains("allow.max_timeout_secs is 30"), "{err}");
    assert!(err.contains("not shortened"), "{err}");

    let data = cluster.sync(json!({ "content": touch(&marker) })).await;
    let err = assert_denied(&data, &marker);
    assert!(
        err.contains("timeout 3600 s"),
        "the coordinator's default: {err}"
    );

    let data = cluster
        .sync(json!({ "content": "echo within", "timeout": 30 }))
        .await;
    assert_eq!(assert_succeeded(&data), "within\n");
    cluster.stop().await;
}

#[tokio::test]
async fn denial_logged_at_warn() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path(), "");
    let agent = AgentProcess::start(
        dir.path(),
        "peer-1",
        &coordinator.url,
        "[allow]\nmax_timeout_secs = 5\n",
    );
    let api = Api::new(&coordinator.url);
    api.wait_online("peer-1", true).await;

    let task_id = api
        .submit("peer-1", json!({ "content": "true", "timeout": 6 }))
        .await;
    let info = api.wait_final(&task_id, Duration::from_secs(30)).await;

    assert_eq!(res_cmd(&info)["code"], "denied_by_agent", "{info}");
    let job_id = info["list"][0]["jobid"].as_str().unwrap();
    let log = agent.log();
    let line = log
        .lines()
        .find(|line| line.contains("denied by this agent's [allow] policy"))
        .unwrap_or_else(|| panic!("no denial line in the agent log:\n{log}"));
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains(&format!("task_id={task_id}")), "{line}");
    assert!(line.contains(&format!("job_id={job_id}")), "{line}");
    assert!(line.contains("peer_id=peer-1"), "{line}");
}

#[test]
fn bad_allow_table_stops_agent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "data_dir = \"/tmp/rw-unused\"\n[allow]\ninterpreters = [\"sh\"]\nmax_timeout_secs = 0\n",
    )
    .unwrap();

    let output = Command::new(BINARY)
        .args(["agent", "--config"])
        .arg(&path)
        .output()
        .expect("run runwarden agent");

    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("allow.interpreters[0] `sh`"), "{stderr}");
    assert!(stderr.contains("allow.max_timeout_secs is 0"), "{stderr}");
}

#[test]
fn unknown_allow_key_stops_agent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "[allow]\nworking_dir = [\"/srv\"]\n").unwrap();

    let output = Command::new(BINARY)
        .args(["agent", "--config"])
        .arg(&path)
        .output()
        .expect("run runwarden agent");

    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("working_dir"), "{stderr}");
    assert!(stderr.contains("working_dirs"), "{stderr}");
}
