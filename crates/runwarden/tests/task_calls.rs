//! The task calls across agents: sync fan-out, live peer queries, every kind
//! of cancel, the script store and the peer list.

mod common;

use std::time::Duration;

use common::{Cluster, ClusterOptions, leftover_processes, new_marker, res_cmd};
use serde_json::json;

#[tokio::test]
async fn sync_runs_on_three_agents() {
    let options = ClusterOptions {
        peers: vec!["a".into(), "b".into(), "c".into()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(options).await;

    let data = cluster
        .sync_on(
            &["a", "b", "c"],
            json!({ "execWay": 0, "content": "echo done" }),
        )
        .await;

    assert_eq!(data["status"], "success", "{data}");
    let list = data["list"].as_array().unwrap();
    let mut peers: Vec<&str> = list
        .iter()
        .map(|job| job["peerId"].as_str().unwrap())
        .collect();
    peers.sort_unstable();
    assert_eq!(peers, ["a", "b", "c"]);
    for job in list {
        assert_eq!(job["status"], "success", "{job}");
        assert_eq!(job["resCmd"]["stdout"], "done\n");
    }
    assert_eq!(data["name"], "test");
    assert_eq!(data["creater"], "tests");
    cluster.stop().await;
}

#[tokio::test]
async fn task_status_is_failed_when_one_job_fails() {
    let options = ClusterOptions {
        peers: vec!["a".into(), "b".into()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(options).await;

    let data = cluster
        .sync_on(&["a", "b"], json!({ "execWay": 0, "content": "true" }))
        .await;
    assert_eq!(data["status"], "success", "{data}");

    let data = cluster
        .sync_on(&["a", "b"], json!({ "execWay": 0, "content": "exit 1" }))
        .await;
    assert_eq!(data["status"], "failed", "{data}");
    cluster.stop().await;
}

#[tokio::test]
async fn peer_taskinfo_shows_live_output() {
    let cluster = Cluster::start().await;
    let (task_id, _) = cluster
        .submit(json!({ "execWay": 0, "content": "echo first; sleep 30", "timeout": 60 }))
        .await;
    cluster
        .wait_job_status(&task_id, "running", Duration::from_secs(5))
        .await;

    let mut live = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, envelope) = cluster
            .post(
                "/script/peer/taskinfo",
                &json!({ "peerid": "peer-1", "taskid": task_id }),
            )
            .await;
        assert_eq!(status, 200, "{envelope}");
        live = envelope["data"].clone();
        if live["value"]["stdout"] == "first\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(live["peerid"], "peer-1");
    assert_eq!(live["status"], "running", "{live}");
    assert_eq!(live["value"]["stdout"], "first\n", "{live}");
    assert_eq!(live["req"]["taskid"], task_id.as_str());
    assert_eq!(live["req"]["content"]["timeout"], 60);
    assert_eq!(live["err"], "");

    let jobid = cluster.task_info(&task_id).await["list"][0]["jobid"]
        .as_str()
        .unwrap()
        .to_owned();
    cluster.cancel(&jobid, "test over").await;
    cluster.stop().await;
}

#[tokio::test]
async fn peer_taskinfo_reports_unknown_task() {
    let cluster = Cluster::start().await;

    let (status, envelope) = cluster
        .post(
            "/script/peer/taskinfo",
            &json!({ "peerid": "peer-1", "taskid": "no-such-task" }),
        )
        .await;

    assert_eq!(status, 200, "{envelope}");
    assert!(
        envelope["data"]["err"]
            .as_str()
            .unwrap()
            .contains("no-such-task")
    );
    assert!(envelope["data"]["status"].is_null());
    cluster.stop().await;
}

#[tokio::test]
async fn peer_taskinfo_reports_offline_peer() {
    let mut cluster = Cluster::start().await;
    cluster.stop_agent("peer-1").await;

    let (status, envelope) = cluster
        .post(
            "/script/peer/taskinfo",
            &json!({ "peerid": "peer-1", "taskid": "t" }),
        )
        .await;

    assert_eq!(status, 200, "{envelope}");
    assert!(
        envelope["data"]["err"]
            .as_str()
            .unwrap()
            .contains("offline"),
        "{envelope}"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn cancel_twice_is_not_an_error() {
    let cluster = Cluster::start().await;
    let marker = new_marker();
    let (task_id, job_id) = cluster
        .submit(json!({ "execWay": 0, "content": "sleep 600", "env": { "RW_TEST_MARK": marker } }))
        .await;
    cluster
        .wait_job_status(&task_id, "running", Duration::from_secs(5))
        .await;

    let first = cluster.cancel(&job_id, "first").await;
    let second = cluster.cancel(&job_id, "second").await;

    assert_eq!(first["result"], "canceled", "{first}");
    assert_eq!(second["result"], "already_finished", "{second}");
    assert!(
        second["msg"].as_str().unwrap().contains("canceled"),
        "{second}"
    );
    let info = cluster.task_info(&task_id).await;
    assert_eq!(info["status"], "canceled");
    assert_eq!(res_cmd(&info)["exitCode"], 143);
    assert_eq!(
        leftover_processes(&marker, Duration::from_secs(3)).await,
        Vec::<u32>::new()
    );
    cluster.stop().await;
}

#[tokio::test]
async fn cancel_unknown_job_is_not_found() {
    let cluster = Cluster::start().await;

    let reply = cluster.cancel("no-such-job", "x").await;

    assert_eq!(reply["result"], "not_found", "{reply}");
    assert_eq!(reply["jobid"], "no-such-job");
    assert!(reply["msg"].as_str().unwrap().contains("no-such-job"));
    cluster.stop().await;
}

#[tokio::test]
async fn cancel_queued_job_runs_nothing() {
    let options = ClusterOptions {
        max_concurrent_jobs: 1,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(options).await;
    let marker = new_marker();
    let (busy_task, busy_job) = cluster
        .submit(json!({ "execWay": 0, "content": "sleep 600", "env": { "RW_TEST_MARK": marker } }))
        .await;
    cluster
        .wait_job_status(&busy_task, "running", Duration::from_secs(5))
        .await;
    let (queued_task, queued_job) = cluster
        .submit(json!({ "execWay": 0, "content": "echo should-not-run" }))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        cluster.task_info(&queued_task).await["list"][0]["status"],
        "pending"
    );

    let reply = cluster.cancel(&queued_job, "not needed").await;

    assert_eq!(reply["result"], "canceled_before_start", "{reply}");
    let info = cluster.task_info(&queued_task).await;
    assert_eq!(info["list"][0]["status"], "canceled");
    assert_eq!(res_cmd(&info)["code"], "canceled_before_start");
    assert_eq!(res_cmd(&info)["exitCode"], -1);
    assert_eq!(res_cmd(&info)["stdout"], "");
    cluster.cancel(&busy_job, "test over").await;
    cluster.stop().await;
}

#[tokio::test]
async fn cancel_racing_completion_agrees_with_status() {
    let cluster = Cluster::start().await;

    for round in 0..30 {
        let delay_ms = round % 10;
        let (task_id, job_id) = cluster
            .submit(json!({ "execWay": 0, "content": "sleep 0.0$RANDOM_DIGIT; echo done", "env": { "RANDOM_DIGIT": (round % 5).to_string() } }))
            .await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;

        let reply = cluster.cancel(&job_id, "race").await;
        let info = cluster.wait_final(&task_id, Duration::from_secs(10)).await;
        let status = info["list"][0]["status"].as_str().unwrap().to_owned();

        match reply["result"].as_str().unwrap() {
            "canceled" | "canceled_before_start" => {
                assert_eq!(status, "canceled", "round {round}: {reply} vs {info}");
            }
            "already_finished" => {
                assert_eq!(status, "success", "round {round}: {reply} vs {info}");
                assert_eq!(res_cmd(&info)["stdout"], "done\n");
            }
            other => panic!("round {round}: unexpected cancel result {other}: {reply}"),
        }
    }
    cluster.stop().await;
}

#[tokio::test]
async fn offline_peer_job_fails_peer_offline() {
    let options = ClusterOptions {
        peers: vec!["up".into(), "down".into()],
        delivery_timeout_secs: 1,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start_with(options).await;
    cluster.stop_agent("down").await;

    let data = cluster
        .sync_on(
            &["up", "down"],
            json!({ "execWay": 0, "content": "echo hi" }),
        )
        .await;

    let jobs = data["list"].as_array().unwrap();
    let down = jobs.iter().find(|job| job["peerId"] == "down").unwrap();
    let up = jobs.iter().find(|job| job["peerId"] == "up").unwrap();
    assert_eq!(down["status"], "failed", "{data}");
    assert_eq!(down["resCmd"]["code"], "peer_offline");
    assert!(down["resCmd"]["err"].as_str().unwrap().contains("down"));
    assert_eq!(up["status"], "success");
    assert_eq!(data["status"], "failed");

    let (_, peers) = cluster.get("/peers").await;
    let list = peers["data"]["list"].as_array().unwrap();
    let down_peer = list.iter().find(|peer| peer["peerId"] == "down").unwrap();
    assert_eq!(down_peer["online"], false);
    cluster.stop().await;
}

#[tokio::test]
async fn script_store_round_trip() {
    let cluster = Cluster::start().await;

    let (status, uploaded) = cluster
        .post(
            "/scripts",
            &json!({ "name": "a/b.sh", "content": "echo 1" }),
        )
        .await;
    assert_eq!(status, 200, "{uploaded}");
    assert_eq!(uploaded["data"]["size"], 6);

    let (_, listed) = cluster.get("/scripts").await;
    assert_eq!(listed["data"]["list"][0]["name"], "a/b.sh");

    let (status, fetched) = cluster.get("/scripts/a/b.sh").await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["data"]["content"], "echo 1");
    assert_eq!(fetched["data"]["sha256"], uploaded["data"]["sha256"]);

    let (status, deleted) = cluster.delete("/scripts/a/b.sh").await;
    assert_eq!(status, 200, "{deleted}");
    let (status, missing) = cluster.get("/scripts/a/b.sh").await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["code"], 40403);
    let (status, _) = cluster.delete("/scripts/a/b.sh").await;
    assert_eq!(status, 404);
    cluster.stop().await;
}

#[tokio::test]
async fn health_and_peers_answer() {
    let cluster = Cluster::start().await;

    let (status, health) = cluster.get("/health").await;
    let (_, peers) = cluster.get("/peers").await;

    assert_eq!(status, 200);
    assert_eq!(health["code"], 0);
    let peer = &peers["data"]["list"][0];
    assert_eq!(peer["peerId"], "peer-1");
    assert_eq!(peer["online"], true);
    assert_eq!(peer["agentVersion"], env!("CARGO_PKG_VERSION"));
    assert!(peer["lastSeen"].as_str().unwrap().ends_with('Z'));
    cluster.stop().await;
}
