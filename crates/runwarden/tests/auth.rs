//! API tokens, scopes, the task rate limit, the audit log, and agent
//! enrollment and identity, over real HTTP and WebSocket on 127.0.0.1.

mod common;

use std::time::Duration;

use common::secure::{SecureCluster, token_secret};
use serde_json::{Value, json};

fn echo_task(peer: &str) -> Value {
    json!({
        "name": "auth-test",
        "creater": "alice",
        "peers": [peer],
        "content": { "content": "echo hello", "execWay": 0 }
    })
}

#[tokio::test]
async fn missing_token_is_rejected_on_every_guarded_call() {
    let cluster = SecureCluster::start(|_| {}).await;

    let calls = [
        ("POST", "/script/async", Some(echo_task("p"))),
        ("POST", "/script/sync", Some(echo_task("p"))),
        ("POST", "/script/taskinfo", Some(json!({ "taskid": "x" }))),
        ("POST", "/script/cancel", Some(json!({ "tasks": [] }))),
        ("GET", "/peers", None),
        ("GET", "/scripts", None),
        (
            "POST",
            "/scripts",
            Some(json!({ "name": "a.sh", "content": "true" })),
        ),
        ("GET", "/tokens", None),
        ("POST", "/enrollments", Some(json!({}))),
        ("GET", "/audit", None),
        ("GET", "/no/such/call", None),
    ];
    for (method, path, body) in calls {
        let (status, headers, body) = cluster
            .call_with_headers(method, path, None, body, None)
            .await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body["code"], 40101, "{method} {path}: {body}");
        assert_eq!(headers["www-authenticate"], "Bearer", "{method} {path}");
    }
}

#[tokio::test]
async fn health_needs_no_token() {
    let cluster = SecureCluster::start(|_| {}).await;

    let (status, body) = cluster.call("GET", "/health", None, None).await;

    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn invalid_tokens_are_rejected() {
    let cluster = SecureCluster::start(|_| {}).await;
    let real = cluster.token("ops", "admin").await;
    let secret = token_secret(&real);
    let prefix = &real[..real.len() - secret.len()];
    let wrong_secret = format!("{prefix}{}", secret.chars().rev().collect::<String>());
    let enrollment = cluster.enrollment("peer-x").await;

    for token in [
        "nonsense",
        "rwt_000000000000_abcdef",
        wrong_secret.as_str(),
        enrollment.as_str(),
    ] {
        let (status, body) = cluster.call("GET", "/peers", Some(token), None).await;
        assert_eq!(status, 401, "{token}: {body}");
        assert_eq!(body["code"], 40102, "{token}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            !message.contains(secret),
            "message repeats the secret: {message}"
        );
    }
}

#[tokio::test]
async fn basic_auth_scheme_is_rejected() {
    let cluster = SecureCluster::start(|_| {}).await;

    let response = cluster
        .client
        .get(format!("{}/peers", cluster.base_url))
        .basic_auth("admin", Some(&cluster.admin))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status().as_u16(), 401);
}

#[tokio::test]
async fn expired_token_is_rejected() {
    let cluster = SecureCluster::start(|_| {}).await;
    let expired = cluster.expired_token("old").await;

    let (status, body) = cluster.call("GET", "/peers", Some(&expired), None).await;

    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], 40103, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("`old` expired"),
        "{body}"
    );
}

#[tokio::test]
async fn revoked_token_is_rejected_at_once() {
    let cluster = SecureCluster::start(|_| {}).await;
    let token = cluster.token("temp", "read").await;
    let (status, _) = cluster.call("GET", "/peers", Some(&token), None).await;
    assert_eq!(status, 200);

    let (status, body) = cluster
        .call("DELETE", "/tokens/temp", Some(&cluster.admin), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["revokedAt"].is_string(), "{body}");

    let (status, body) = cluster.call("GET", "/peers", Some(&token), None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], 40104, "{body}");
}

#[tokio::test]
async fn under_scoped_tokens_are_forbidden() {
    let cluster = SecureCluster::start(|_| {}).await;
    let read = cluster.token("reader", "read").await;
    let run = cluster.token("runner", "run").await;

    let denied = [
        (&read, "POST", "/script/async", Some(echo_task("p")), "run"),
        (
            &read,
            "POST",
            "/script/cancel",
            Some(json!({ "tasks": [] })),
            "run",
        ),
        (
            &run,
            "POST",
            "/scripts",
            Some(json!({ "name": "a.sh", "content": "true" })),
            "admin",
        ),
        (&run, "DELETE", "/scripts/a.sh", None, "admin"),
        (&run, "GET", "/tokens", None, "admin"),
        (
            &run,
            "POST",
            "/tokens",
            Some(json!({ "name": "x", "scope": "admin" })),
            "admin",
        ),
        (&run, "POST", "/enrollments", Some(json!({})), "admin"),
        (&run, "POST", "/peers/p/revoke", None, "admin"),
        (&read, "GET", "/audit", None, "admin"),
    ];
    for (token, method, path, body, required) in denied {
        let (status, body) = cluster.call(method, path, Some(token), body).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["code"], 40301, "{method} {path}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("needs `{required}`")),
            "{message}"
        );
    }

    let (status, body) = cluster.call("GET", "/peers", Some(&read), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.call("GET", "/scripts", Some(&run), None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn auth_errors_follow_accept_language() {
    let cluster = SecureCluster::start(|_| {}).await;

    let (status, _, body) = cluster
        .call_with_headers("GET", "/peers", None, None, Some("zh-CN"))
        .await;

    assert_eq!(status, 401);
    assert!(body["message"].as_str().unwrap().contains("令牌"), "{body}");
}

#[tokio::test]
async fn token_names_and_scopes_are_checked() {
    let cluster = SecureCluster::start(|_| {}).await;
    cluster.token("dup", "read").await;

    let cases = [
        (json!({ "name": "dup", "scope": "read" }), 409, 40901),
        (json!({ "name": "bad name", "scope": "read" }), 422, 42202),
        (json!({ "name": "ok", "scope": "root" }), 422, 42202),
        (
            json!({ "name": "ok", "scope": "read", "ttlSecs": -1 }),
            422,
            42202,
        ),
        (
            json!({ "name": "ok", "scope": "read", "extra": 1 }),
            400,
            40002,
        ),
    ];
    for (request, status_expected, code) in cases {
        let (status, body) = cluster
            .call(
                "POST",
                "/tokens",
                Some(&cluster.admin),
                Some(request.clone()),
            )
            .await;
        assert_eq!(status, status_expected, "{request}: {body}");
        assert_eq!(body["code"], code, "{request}: {body}");
    }
}

#[tokio::test]
async fn token_list_never_shows_secrets() {
    let cluster = SecureCluster::start(|_| {}).await;
    let token = cluster.token("listed", "run").await;
    let secret = token_secret(&token);

    let (status, body) = cluster
        .call("GET", "/tokens", Some(&cluster.admin), None)
        .await;

    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["data"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"listed"), "{names:?}");
    assert!(!body.to_string().contains(secret), "{body}");
}

#[tokio::test]
async fn task_rate_limit_is_per_token() {
    let cluster = SecureCluster::start(|config| config.max_tasks_per_minute = 2).await;
    let first = cluster.token("first", "run").await;
    let second = cluster.token("second", "run").await;

    // Calls count against the limit before they are validated, so tasks
    // for an unknown peer (404) use it up too.
    for _ in 0..2 {
        let (status, body) = cluster
            .call(
                "POST",
                "/script/async",
                Some(&first),
                Some(echo_task("nobody")),
            )
            .await;
        assert_eq!(status, 404, "{body}");
    }
    let (status, headers, body) = cluster
        .call_with_headers(
            "POST",
            "/script/async",
            Some(&first),
            Some(echo_task("nobody")),
            None,
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], 42901, "{body}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert!(
        body["message"].as_str().unwrap().contains("`first`"),
        "{body}"
    );

    let (status, body) = cluster
        .call(
            "POST",
            "/script/async",
            Some(&second),
            Some(echo_task("nobody")),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = cluster
        .call(
            "POST",
            "/script/taskinfo",
            Some(&first),
            Some(json!({ "taskid": "x" })),
        )
        .await;
    assert_eq!(status, 404, "reads are not rate limited: {body}");
}

#[tokio::test]
async fn oversized_body_is_rejected_for_a_valid_token() {
    let cluster = SecureCluster::start(|config| {
        config.max_body_bytes = 4096;
        config.max_script_bytes = 2048;
    })
    .await;
    let mut task = echo_task("p");
    task["content"]["content"] = json!("x".repeat(8192));

    let (status, body) = cluster
        .call("POST", "/script/async", Some(&cluster.admin), Some(task))
        .await;

    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], 41301, "{body}");
}

#[tokio::test]
async fn audit_log_records_who_did_what() {
    let mut cluster = SecureCluster::start(|_| {}).await;
    let runner = cluster.token("runner", "run").await;
    cluster.start_enrolled_agent("peer-a").await;

    let (status, body) = cluster
        .call(
            "POST",
            "/script/sync",
            Some(&runner),
            Some(echo_task("peer-a")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let task_id = body["data"]["taskid"].as_str().unwrap().to_owned();
    let job_id = body["data"]["list"][0]["jobid"]
        .as_str()
        .unwrap()
        .to_owned();
    let cancel = json!({ "tasks": [{ "peerid": "peer-a", "jobid": job_id }] });
    let (status, body) = cluster
        .call("POST", "/script/cancel", Some(&runner), Some(cancel))
        .await;
    assert_eq!(status, 200, "{body}");
    let upload = json!({ "name": "tools/a.sh", "content": "echo a" });
    let (status, _) = cluster
        .call("POST", "/scripts", Some(&cluster.admin), Some(upload))
        .await;
    assert_eq!(status, 200);
    let (status, _) = cluster
        .call("DELETE", "/scripts/tools/a.sh", Some(&cluster.admin), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = cluster
        .call("GET", "/peers", Some("rwt_000000000000_abc"), None)
        .await;
    assert_eq!(status, 401);

    let created = cluster.wait_audit("task.create", Some(&task_id)).await;
    assert_eq!(created["token"], "runner");
    assert_eq!(created["creater"], "alice");
    assert_eq!(created["outcome"], "ok");
    assert!(
        created["source"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{created}"
    );
    assert_eq!(created["request"]["content"]["content"], "echo hello");
    assert!(
        created["time"].as_str().unwrap().ends_with('Z'),
        "{created}"
    );

    let canceled = cluster.wait_audit("task.cancel", Some(&job_id)).await;
    assert_eq!(canceled["token"], "runner");
    let uploaded = cluster
        .wait_audit("script.upload", Some("tools/a.sh"))
        .await;
    assert_eq!(uploaded["token"], "admin");
    assert_eq!(uploaded["request"]["size"], 6);
    let deleted = cluster
        .wait_audit("script.delete", Some("tools/a.sh"))
        .await;
    assert_eq!(deleted["token"], "admin");
    let denied = cluster.wait_audit("auth.denied", Some("GET /peers")).await;
    assert_eq!(denied["outcome"], "40102");
    let enrolled = cluster.wait_audit("agent.enroll", Some("peer-a")).await;
    assert_eq!(enrolled["outcome"], "ok");
    let token_created = cluster.wait_audit("token.create", Some("runner")).await;
    assert_eq!(token_created["token"], "admin");
    let used = cluster.wait_audit("token.use", None).await;
    assert!(!used["token"].as_str().unwrap().is_empty(), "{used}");
    cluster
        .wait_audit("enrollment.create", Some("peer-a"))
        .await;

    let (_, body) = cluster
        .call(
            "GET",
            "/audit?token=runner&limit=1000",
            Some(&cluster.admin),
            None,
        )
        .await;
    let list = body["data"]["list"].as_array().unwrap();
    assert!(
        list.iter().all(|entry| entry["token"] == "runner"),
        "{body}"
    );
    assert!(!list.is_empty());
}

#[tokio::test]
async fn rejected_task_is_audited_with_its_code() {
    let cluster = SecureCluster::start(|_| {}).await;
    let mut task = echo_task("p");
    task["content"]["execWay"] = json!(9);

    let (status, _) = cluster
        .call("POST", "/script/async", Some(&cluster.admin), Some(task))
        .await;
    assert_eq!(status, 422);

    let entry = cluster.wait_audit("task.create", None).await;
    assert_eq!(entry["outcome"], "42201");
    assert_eq!(entry["target"], "");
}

#[tokio::test]
async fn audit_paging_and_bad_parameters() {
    let cluster = SecureCluster::start(|_| {}).await;
    for name in ["a", "b", "c"] {
        cluster.token(name, "read").await;
    }

    let (_, first) = cluster
        .call(
            "GET",
            "/audit?action=token.create&limit=2",
            Some(&cluster.admin),
            None,
        )
        .await;
    let after = first["data"]["nextAfter"].as_i64().unwrap();
    let (_, rest) = cluster
        .call(
            "GET",
            &format!("/audit?action=token.create&after={after}"),
            Some(&cluster.admin),
            None,
        )
        .await;
    assert_eq!(
        first["data"]["list"].as_array().unwrap().len(),
        2,
        "{first}"
    );
    assert_eq!(rest["data"]["list"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["data"]["list"][0]["target"], "c");

    let (status, body) = cluster
        .call("GET", "/audit?since=yesterday", Some(&cluster.admin), None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("since"),
        "{body}"
    );
    let (status, _) = cluster
        .call("GET", "/audit?limit=ten", Some(&cluster.admin), None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn agent_enrolls_once_and_reconnects_with_its_credential() {
    let mut cluster = SecureCluster::start(|_| {}).await;
    let enrollment = cluster.enrollment("peer-a").await;
    let config = cluster.agent_config("peer-a", &enrollment);

    cluster.start_agent("a", config.clone()).await;
    assert!(cluster.wait_online("peer-a", true).await);
    let credential = std::fs::read_to_string(config.credential_path()).unwrap();
    assert!(
        credential.starts_with("rwa_"),
        "credential file holds {} bytes",
        credential.len()
    );

    let (status, body) = cluster
        .call(
            "POST",
            "/script/sync",
            Some(&cluster.admin),
            Some(echo_task("peer-a")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["list"][0]["resCmd"]["stdout"], "hello\n",
        "{body}"
    );

    cluster.stop_agent("a").await;
    assert!(cluster.wait_online("peer-a", false).await);
    cluster.start_agent("a", config).await;
    assert!(
        cluster.wait_online("peer-a", true).await,
        "agent did not reconnect with its credential"
    );
}

#[tokio::test]
async fn enrollment_token_works_only_once() {
    let mut cluster = SecureCluster::start(|_| {}).await;
    let enrollment = {
        let (status, body) = cluster
            .call(
                "POST",
                "/enrollments",
                Some(&cluster.admin),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body["data"]["peerId"].is_null(), "{body}");
        body["data"]["token"].as_str().unwrap().to_owned()
    };
    let first = cluster.agent_config("peer-a", &enrollment);
    cluster.start_agent("a", first).await;
    assert!(cluster.wait_online("peer-a", true).await);

    let second = cluster.agent_config("peer-b", &enrollment);
    cluster.start_agent("b", second).await;

    let denied = cluster.wait_audit("agent.denied", None).await;
    assert_eq!(denied["outcome"], "40104", "{denied}");
    assert!(!cluster.is_online("peer-b"));
    assert!(!cluster.agent_data_dir("peer-b").join("credential").exists());
}

#[tokio::test]
async fn agent_cannot_claim_another_peer_id() {
    let mut cluster = SecureCluster::start(|_| {}).await;
    let enrollment = cluster.enrollment("peer-a").await;
    let genuine = cluster.agent_config("peer-a", &enrollment);
    cluster.start_agent("a", genuine.clone()).await;
    assert!(cluster.wait_online("peer-a", true).await);
    cluster.stop_agent("a").await;
    assert!(cluster.wait_online("peer-a", false).await);

    // A second machine copies peer-a's credential but calls itself peer-b.
    let mut spoofer = cluster.agent_config("peer-b", "");
    spoofer.credential_file = Some(genuine.credential_path());
    cluster.start_agent("spoofer", spoofer).await;

    let denied = cluster.wait_audit("agent.denied", Some("peer-b")).await;
    assert_eq!(denied["outcome"], "credential_for_other_peer");
    assert_eq!(denied["token"], "agent:peer-a");
    assert!(!cluster.is_online("peer-b"));
    assert!(!cluster.is_online("peer-a"));
}

#[tokio::test]
async fn enrollment_token_for_one_peer_cannot_enroll_another() {
    let mut cluster = SecureCluster::start(|_| {}).await;
    let enrollment = cluster.enrollment("peer-a").await;

    let config = cluster.agent_config("peer-b", &enrollment);
    cluster.start_agent("b", config).await;

    let denied = cluster.wait_audit("agent.denied", Some("peer-b")).await;
    assert_eq!(denied["outcome"], "enrollment_for_other_peer");
    assert!(!cluster.is_online("peer-b"));
}

#[tokio::test]
async fn enrolled_peer_id_cannot_be_taken_over() {
    let mut cluster = SecureCluster::start(|_| {}).await;
    let first = cluster.enrollment("peer-a").await;
    let config = cluster.agent_config("peer-a", &first);
    cluster.start_agent("a", config).await;
    assert!(cluster.wait_online("peer-a", true).await);

    // An intruder with a fresh enrollment token for any peer tries to
    // become peer-a, from another folder.
    let (_, body) = cluster
        .call(
            "POST",
            "/enrollments",
            Some(&cluster.admin),
            Some(json!({})),
        )
        .await;
    let any = body["data"]["token"].as_str().unwrap().to_owned();
    let mut intruder = cluster.agent_config("peer-a", &any);
    intruder.data_dir = cluster.work_dir.path().join("intruder");
    cluster.start_agent("intruder", intruder).await;

    let first_entry = cluster.wait_audit("agent.enroll", None).await;
    assert_eq!(
        first_entry["outcome"], "ok",
        "the genuine agent enrolled first"
    );
    let refused = wait_for_outcome(&cluster, "agent.denied", "peer_already_enrolled").await;
    assert_eq!(refused["target"], "peer-a");
    assert!(!cluster.work_dir.path().join("intruder/credential").exists());
}

async fn wait_for_outcome(cluster: &SecureCluster, action: &str, outcome: &str) -> Value {
    for _ in 0..200 {
        let (_, body) = cluster
            .call(
                "GET",
                &format!("/audit?action={action}&limit=1000"),
                Some(&cluster.admin),
                None,
            )
            .await;
        if let Some(entry) = body["data"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["outcome"] == outcome)
        {
            return entry.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {action} entry with outcome {outcome} within 10 s");
}

#[tokio::test]
async fn agent_without_token_is_rejected() {
    let mut cluster = SecureCluster::start(|_| {}).await;

    let config = cluster.agent_config("peer-a", "");
    cluster.start_agent("a", config).await;

    let denied = cluster.wait_audit("agent.denied", None).await;
    assert_eq!(denied["outcome"], "40101");
    assert!(!cluster.is_online("peer-a"));
}

#[tokio::test]
async fn api_token_does_not_open_an_agent_link() {
    let mut cluster = SecureCluster::start(|_| {}).await;
    let mut config = cluster.agent_config("peer-a", "");
    let credential_file = cluster.work_dir.path().join("api-token");
    std::fs::write(&credential_file, &cluster.admin).unwrap();
    config.credential_file = Some(credential_file);

    cluster.start_agent("a", config).await;

    let denied = cluster.wait_audit("agent.denied", None).await;
    assert_eq!(denied["outcome"], "40102");
    assert!(!cluster.is_online("peer-a"));
}

#[tokio::test]
async fn revoking_a_peer_cuts_its_connection() {
    let mut cluster = SecureCluster::start(|_| {}).await;
    cluster.start_enrolled_agent("peer-a").await;

    let (status, body) = cluster
        .call("POST", "/peers/peer-a/revoke", Some(&cluster.admin), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["disconnected"], true, "{body}");

    assert!(
        cluster.wait_online("peer-a", false).await,
        "revoked agent still connected"
    );
    let denied = cluster.wait_audit("agent.denied", None).await;
    assert_eq!(
        denied["outcome"], "40104",
        "the agent redials with its revoked credential: {denied}"
    );
    assert_eq!(denied["token"], "agent:peer-a");
    assert!(!cluster.is_online("peer-a"));

    let (status, body) = cluster
        .call("POST", "/peers/peer-a/revoke", Some(&cluster.admin), None)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], 40406, "{body}");
}

#[tokio::test]
async fn revoked_peer_enrolls_again() {
    let mut cluster = SecureCluster::start(|_| {}).await;
    let enrollment = cluster.enrollment("peer-a").await;
    let config = cluster.agent_config("peer-a", &enrollment);
    cluster.start_agent("a", config.clone()).await;
    assert!(cluster.wait_online("peer-a", true).await);
    cluster
        .call("POST", "/peers/peer-a/revoke", Some(&cluster.admin), None)
        .await;
    cluster.stop_agent("a").await;

    std::fs::remove_file(config.credential_path()).unwrap();
    let again = cluster.enrollment("peer-a").await;
    let config = cluster.agent_config("peer-a", &again);
    cluster.start_agent("a", config).await;

    assert!(cluster.wait_online("peer-a", true).await);
}

#[tokio::test]
async fn secret_value_stays_out_of_audit_and_store() {
    let mut cluster = SecureCluster::start(|_| {}).await;
    cluster.start_enrolled_agent("peer-a").await;
    let secret = "audit-secret-7f3e91c2";

    let task = json!({
        "creater": "alice",
        "peers": ["peer-a"],
        "content": {
            "content": "printf %s \"$API_KEY\" | wc -c",
            "execWay": 0,
            "secretEnv": { "API_KEY": secret }
        }
    });
    let (status, body) = cluster
        .call("POST", "/script/sync", Some(&cluster.admin), Some(task))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["list"][0]["resCmd"]["stdout"]
            .as_str()
            .unwrap()
            .trim(),
        secret.len().to_string()
    );
    let task_id = body["data"]["taskid"].as_str().unwrap().to_owned();

    let entry = cluster.wait_audit("task.create", Some(&task_id)).await;
    assert_eq!(
        entry["request"]["content"]["secretEnv"]["API_KEY"], "<redacted>",
        "{entry}"
    );
    let (_, audit) = cluster
        .call("GET", "/audit?limit=1000", Some(&cluster.admin), None)
        .await;
    assert!(
        !audit.to_string().contains(secret),
        "the audit log holds the secret"
    );

    for entry in std::fs::read_dir(cluster.work_dir.path().join("coordinator")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let found = bytes
            .windows(secret.len())
            .any(|window| window == secret.as_bytes());
        assert!(!found, "{} holds the secret", path.display());
    }
}
