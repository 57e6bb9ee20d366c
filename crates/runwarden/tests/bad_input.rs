//! Bad requests: each gets its documented code and HTTP status, a message
//! that names the bad value, and leaves the coordinator and agent serving.

mod common;

use common::{Cluster, ClusterOptions, is_root, res_cmd};
use serde_json::{Value, json};

/// Posts a script request with `content` to `/script/async`.
async fn submit_content(cluster: &Cluster, content: Value) -> (u16, Value) {
    cluster
        .post(
            "/script/async",
            &json!({ "peers": ["peer-1"], "content": content }),
        )
        .await
}

fn message(envelope: &Value) -> &str {
    envelope["message"].as_str().unwrap_or_default()
}

/// Checks that the coordinator still serves and the agent still runs jobs.
async fn assert_still_serving(cluster: &Cluster) {
    let data = cluster
        .sync(json!({ "execWay": 0, "content": "echo alive" }))
        .await;
    assert_eq!(res_cmd(&data)["stdout"], "alive\n", "{data}");
}

#[tokio::test]
async fn malformed_json_is_rejected() {
    let cluster = Cluster::start().await;

    let (status, envelope) = cluster
        .post_raw("/script/async", "{\"peers\": [", None)
        .await;

    assert_eq!(status, 400, "{envelope}");
    assert_eq!(envelope["code"], 40001);
    assert!(envelope["data"].is_null());
    assert_still_serving(&cluster).await;
    cluster.stop().await;
}

#[tokio::test]
async fn unknown_fields_are_named() {
    let cluster = Cluster::start().await;

    let cases = [
        (
            json!({ "peers": ["peer-1"], "content": { "execway": 0, "content": "true" } }),
            "content.execway",
        ),
        (
            json!({ "peers": ["peer-1"], "Name": "x", "content": { "content": "true" } }),
            "Name",
        ),
        (
            json!({ "tasks": [{ "peerid": "p", "jobid": "j", "reason": "x" }] }),
            "tasks[0].reason",
        ),
    ];
    for (index, (body, field)) in cases.iter().enumerate() {
        let path = if index == 2 {
            "/script/cancel"
        } else {
            "/script/async"
        };
        let (status, envelope) = cluster.post(path, body).await;
        assert_eq!(status, 400, "{envelope}");
        assert_eq!(envelope["code"], 40002);
        assert!(
            message(&envelope).contains(field),
            "{field} not named: {envelope}"
        );
    }
    cluster.stop().await;
}

#[tokio::test]
async fn wrong_types_are_named() {
    let cluster = Cluster::start().await;

    let cases = [
        (
            json!({ "execWay": "0", "content": "true" }),
            "content.execWay",
        ),
        (
            json!({ "content": "true", "timeout": 99_999_999_999_i64 }),
            "content.timeout",
        ),
        (json!({ "content": "true", "args": "a b" }), "content.args"),
        (
            json!({ "content": "true", "env": { "A": 1 } }),
            "content.env",
        ),
    ];
    for (content, field) in cases {
        let (status, envelope) = submit_content(&cluster, content).await;
        assert_eq!(status, 400, "{envelope}");
        assert_eq!(envelope["code"], 40003);
        assert!(
            message(&envelope).contains(field),
            "{field} not named: {envelope}"
        );
    }

    let (status, envelope) = cluster.post_raw("/script/async", "[1, 2]", None).await;
    assert_eq!(status, 400, "{envelope}");
    assert_eq!(envelope["code"], 40003);
    cluster.stop().await;
}

#[tokio::test]
async fn invalid_values_are_named() {
    let cluster = Cluster::start().await;

    let cases: Vec<(Value, &str)> = vec![
        (json!({ "execWay": 9, "content": "true" }), "9"),
        (json!({ "execWay": 0 }), "content.content"),
        (json!({ "execWay": 1, "content": "" }), "content.content"),
        (json!({ "content": "true", "timeout": -5 }), "-5"),
        (json!({ "content": "true", "timeout": 999_999_999 }), "3600"),
        (
            json!({ "execWay": 2, "content": "../../etc/passwd" }),
            "../../etc/passwd",
        ),
        (
            json!({ "execWay": 3, "content": "/etc/shadow", "filehash": "0".repeat(64) }),
            "/etc/shadow",
        ),
        (
            json!({ "execWay": 3, "content": "x.sh" }),
            "content.filehash",
        ),
        (
            json!({ "execWay": 3, "content": "x.sh", "filehash": "abc" }),
            "abc",
        ),
        (
            json!({ "content": "true", "path": "relative/dir" }),
            "relative/dir",
        ),
        (json!({ "content": "true", "user": "bad user" }), "bad user"),
        (json!({ "content": "true", "env": { "A=B": "x" } }), "A=B"),
        (
            json!({ "content": "true", "args": ["a\u{0}b"] }),
            "content.args[0]",
        ),
        (
            json!({ "content": "BEGIN{}", "cmd": "/usr/bin/awk" }),
            "/usr/bin/awk",
        ),
    ];
    for (content, named) in cases {
        let (status, envelope) = submit_content(&cluster, content.clone()).await;
        assert_eq!(status, 422, "{content}: {envelope}");
        assert_eq!(envelope["code"], 42201, "{content}");
        assert!(
            message(&envelope).contains(named),
            "{named} not named: {envelope}"
        );
    }
    assert_still_serving(&cluster).await;
    cluster.stop().await;
}

#[tokio::test]
async fn peer_list_problems_are_rejected() {
    let cluster = Cluster::start().await;
    let content = json!({ "content": "true" });

    let (status, empty) = cluster
        .post("/script/async", &json!({ "peers": [], "content": content }))
        .await;
    assert_eq!(status, 422, "{empty}");
    assert!(message(&empty).contains("peers"));

    let (status, missing) = cluster
        .post("/script/async", &json!({ "content": content }))
        .await;
    assert_eq!(status, 422, "{missing}");

    let body = json!({ "peers": ["peer-1", "peer-1"], "content": content });
    let (status, twice) = cluster.post("/script/async", &body).await;
    assert_eq!(status, 422, "{twice}");
    assert!(message(&twice).contains("peer-1"));

    let body = json!({ "peers": ["peer-1", "nobody-here"], "content": content });
    let (status, unknown) = cluster.post("/script/sync", &body).await;
    assert_eq!(status, 404, "{unknown}");
    assert_eq!(unknown["code"], 40401);
    assert!(message(&unknown).contains("nobody-here"));
    cluster.stop().await;
}

#[tokio::test]
async fn stored_script_must_exist() {
    let cluster = Cluster::start().await;

    let content = json!({ "execWay": 3, "content": "absent.sh", "filehash": "a".repeat(64) });
    let (status, envelope) = submit_content(&cluster, content).await;

    assert_eq!(status, 404, "{envelope}");
    assert_eq!(envelope["code"], 40403);
    assert!(message(&envelope).contains("absent.sh"));
    cluster.stop().await;
}

#[tokio::test]
async fn oversized_body_is_rejected() {
    let options = ClusterOptions {
        max_body_bytes: 64 * 1024,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(options).await;
    let input = "x".repeat(100 * 1024);

    let (status, envelope) =
        submit_content(&cluster, json!({ "content": "cat", "input": input })).await;

    assert_eq!(status, 413, "{envelope}");
    assert_eq!(envelope["code"], 41301);
    assert!(message(&envelope).contains("65536"), "{envelope}");
    assert_still_serving(&cluster).await;
    cluster.stop().await;
}

#[tokio::test]
async fn unknown_user_runs_nothing() {
    let cluster = Cluster::start().await;
    let marker = tempfile::tempdir().unwrap().path().join("ran");

    let data = cluster
        .sync(json!({ "execWay": 0, "user": "rw-no-such-user", "content": format!("touch {}", marker.display()) }))
        .await;

    assert_eq!(data["list"][0]["status"], "failed", "{data}");
    assert_eq!(res_cmd(&data)["code"], "user_not_found");
    assert_eq!(res_cmd(&data)["exitCode"], -1);
    assert!(
        res_cmd(&data)["err"]
            .as_str()
            .unwrap()
            .contains("rw-no-such-user")
    );
    assert!(!marker.exists());
    cluster.stop().await;
}

#[tokio::test]
async fn missing_interpreter_fails_spawn() {
    let cluster = Cluster::start().await;

    let data = cluster
        .sync(json!({ "execWay": 1, "cmd": "/no/such/interpreter", "content": "x" }))
        .await;

    assert_eq!(data["list"][0]["status"], "failed", "{data}");
    assert_eq!(res_cmd(&data)["code"], "spawn_failed");
    assert!(
        res_cmd(&data)["err"]
            .as_str()
            .unwrap()
            .contains("/no/such/interpreter")
    );
    assert_still_serving(&cluster).await;
    cluster.stop().await;
}

#[tokio::test]
async fn task_queries_need_known_ids() {
    let cluster = Cluster::start().await;

    let (status, empty) = cluster.post("/script/taskinfo", &json!({})).await;
    assert_eq!(status, 422, "{empty}");
    assert!(message(&empty).contains("taskid"));

    let (status, unknown) = cluster
        .post("/script/taskinfo", &json!({ "taskid": "nope" }))
        .await;
    assert_eq!(status, 404, "{unknown}");
    assert_eq!(unknown["code"], 40402);
    assert!(message(&unknown).contains("nope"));

    let body = json!({ "peerid": "ghost", "taskid": "t" });
    let (status, ghost) = cluster.post("/script/peer/taskinfo", &body).await;
    assert_eq!(status, 404, "{ghost}");
    assert!(message(&ghost).contains("ghost"));

    let (status, no_tasks) = cluster
        .post("/script/cancel", &json!({ "tasks": [] }))
        .await;
    assert_eq!(status, 422, "{no_tasks}");

    let body = json!({ "tasks": [{ "peerid": "peer-1" }] });
    let (status, no_job) = cluster.post("/script/cancel", &body).await;
    assert_eq!(status, 422, "{no_job}");
    assert!(message(&no_job).contains("tasks[0].jobid"));
    cluster.stop().await;
}

#[tokio::test]
async fn unknown_routes_use_envelope() {
    let cluster = Cluster::start().await;

    let (status, missing) = cluster.post("/script/nothing", &json!({})).await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["code"], 40404);

    let (status, wrong_method) = cluster.get("/script/async").await;
    assert_eq!(status, 404, "{wrong_method}");
    assert!(message(&wrong_method).contains("GET /script/async"));
    cluster.stop().await;
}

#[tokio::test]
async fn errors_follow_accept_language() {
    let cluster = Cluster::start().await;
    let body = json!({ "peers": [], "content": { "content": "true" } }).to_string();

    let (_, chinese) = cluster
        .post_raw("/script/async", body.clone(), Some("zh-CN,zh;q=0.9"))
        .await;
    let (_, english) = cluster
        .post_raw("/script/async", body.clone(), Some("en-US"))
        .await;
    let (_, fallback) = cluster.post_raw("/script/async", body, Some("fr")).await;

    assert!(message(&chinese).contains("节点"), "{chinese}");
    assert!(message(&english).contains("at least one peer"), "{english}");
    assert_eq!(message(&fallback), message(&english));
    assert_eq!(chinese["code"], english["code"]);
    cluster.stop().await;
}

#[tokio::test]
async fn agent_not_root_cannot_switch_user() {
    if is_root() {
        eprintln!("skipped: the agent runs as root here, so it may switch users");
        return;
    }
    let cluster = Cluster::start().await;

    let data = cluster
        .sync(json!({ "execWay": 0, "user": "root", "content": "id" }))
        .await;

    assert_eq!(res_cmd(&data)["code"], "user_not_permitted", "{data}");
    assert!(res_cmd(&data)["err"].as_str().unwrap().contains("not root"));
    cluster.stop().await;
}
