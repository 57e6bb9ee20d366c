//! The sample requests and scripts in the fixtures crate, which the docs
//! show, run as documented.

mod common;

use common::{Cluster, ClusterOptions, res_cmd};
use serde_json::Value;

fn load_request(name: &str) -> Value {
    let path = runwarden_fixtures::requests_dir().join(name);
    let text = std::fs::read_to_string(&path).expect("read fixture request");
    serde_json::from_str(&text).expect("fixture request is JSON")
}

/// Starts a cluster whose agent is `local`, like dev mode, with the fixture
/// scripts in its scripts directory.
async fn start_local() -> Cluster {
    let options = ClusterOptions {
        peers: vec!["local".into()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(options).await;
    for entry in std::fs::read_dir(runwarden_fixtures::scripts_dir()).unwrap() {
        let entry = entry.unwrap();
        let body = std::fs::read_to_string(entry.path()).unwrap();
        common::write_node_script(
            &cluster.scripts_dir,
            entry.file_name().to_str().unwrap(),
            &body,
        );
    }
    cluster
}

async fn run_fixture(cluster: &Cluster, name: &str) -> Value {
    let (status, envelope) = cluster.post("/script/sync", &load_request(name)).await;
    assert_eq!(status, 200, "{name}: {envelope}");
    envelope["data"].clone()
}

#[tokio::test]
async fn fixture_requests_succeed() {
    let cluster = start_local().await;
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();

    let command_line = run_fixture(&cluster, "command-line.json").await;
    let inline = run_fixture(&cluster, "inline-script.json").await;
    let node = run_fixture(&cluster, "node-script.json").await;

    assert_eq!(command_line["status"], "success", "{command_line}");
    assert_eq!(
        res_cmd(&inline)["stdout"],
        "['--dry-run', 'two words'] canary\nFROM STDIN\n",
        "{inline}"
    );
    assert_eq!(
        res_cmd(&node)["stdout"],
        format!("hello operator from {host}\n"),
        "{node}"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn disk_report_prints_json() {
    let cluster = start_local().await;
    let request = serde_json::json!({ "execWay": 2, "content": "disk-report.sh" });

    let data = cluster.sync_on(&["local"], request).await;

    let stdout = res_cmd(&data)["stdout"].as_str().unwrap();
    let report: Value = serde_json::from_str(stdout.trim()).expect("disk report is JSON");
    assert!(report["used_percent"].as_u64().unwrap() <= 100, "{report}");
    cluster.stop().await;
}

#[tokio::test]
async fn cancel_fixture_parses() {
    let cluster = start_local().await;

    let (status, envelope) = cluster
        .post("/script/cancel", &load_request("cancel.json"))
        .await;

    assert_eq!(status, 200, "{envelope}");
    assert_eq!(envelope["data"]["list"][0]["result"], "not_found");
    cluster.stop().await;
}
