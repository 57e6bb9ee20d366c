//! Failures operators hit in other remote-execution tools, each run against
//! a real coordinator and agent: timeouts and cancels that leave processes
//! behind, run-as users with the wrong identity, stdin and output encoding,
//! huge output, and arguments reaching the shell.

mod common;

use std::time::{Duration, Instant};

use common::{
    Cluster, ClusterOptions, ensure_user, is_root, leftover_processes, new_marker, res_cmd,
    stream_bytes, zombie_children,
};
use serde_json::json;

/// Time after which a killed job's processes must be gone.
const LEFTOVER_LIMIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn timeout_kills_the_script_process() {
    let cluster = Cluster::start().await;
    let marker = new_marker();

    let started = Instant::now();
    let data = cluster
        .sync(json!({
            "execWay": 0, "content": "sleep 15", "timeout": 1,
            "env": { "RW_TEST_MARK": marker },
        }))
        .await;
    let elapsed = started.elapsed();

    assert_eq!(data["list"][0]["status"], "timeout", "{data}");
    assert_eq!(res_cmd(&data)["code"], "timeout");
    assert!(elapsed >= Duration::from_secs(1), "ended after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "ended after {elapsed:?}");
    assert_eq!(
        leftover_processes(&marker, LEFTOVER_LIMIT).await,
        Vec::<u32>::new()
    );
    cluster.stop().await;
}

#[tokio::test]
async fn cancel_kills_child_ignoring_sigterm() {
    let cluster = Cluster::start().await;
    let marker = new_marker();
    let grace = Duration::from_secs(2);

    let (task_id, job_id) = cluster
        .submit(json!({
            "execWay": 0,
            "content": "bash -c 'trap \"\" TERM INT; sleep 600' & wait",
            "env": { "RW_TEST_MARK": marker },
        }))
        .await;
    cluster
        .wait_job_status(&task_id, "running", Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let reply = cluster.cancel(&job_id, "operator stop").await;
    let elapsed = started.elapsed();

    assert_eq!(reply["result"], "canceled", "{reply}");
    assert!(
        elapsed <= grace + Duration::from_secs(1),
        "cancel took {elapsed:?}"
    );
    let info = cluster.task_info(&task_id).await;
    assert_eq!(info["list"][0]["status"], "canceled", "{info}");
    assert_eq!(res_cmd(&info)["code"], "canceled");
    assert!(
        res_cmd(&info)["err"]
            .as_str()
            .unwrap()
            .contains("operator stop")
    );
    assert_eq!(
        leftover_processes(&marker, LEFTOVER_LIMIT).await,
        Vec::<u32>::new()
    );
    cluster.stop().await;
}

#[tokio::test]
async fn run_as_user_timeout_leaves_no_zombies() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let cluster = Cluster::start().await;
    let marker = new_marker();

    let data = cluster
        .sync(json!({
            "execWay": 0, "user": "nobody", "content": "sleep 600", "timeout": 1,
            "env": { "RW_TEST_MARK": marker },
        }))
        .await;
    assert_eq!(data["list"][0]["status"], "timeout", "{data}");
    assert_eq!(
        leftover_processes(&marker, LEFTOVER_LIMIT).await,
        Vec::<u32>::new()
    );

    for batch in 0..10 {
        let jobs = (0..20).map(|index| {
            cluster.sync(json!({
                "execWay": 0, "user": "nobody", "content": format!("echo {batch}-{index}"),
            }))
        });
        for data in futures_util::future::join_all(jobs).await {
            assert_eq!(data["list"][0]["status"], "success", "{data}");
        }
    }

    // Other tests in this binary may have a child that exited a moment ago
    // and is not reaped yet, so allow a short settling time.
    let mut zombies = zombie_children();
    for _ in 0..40 {
        if zombies.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        zombies = zombie_children();
    }
    assert_eq!(
        zombies,
        Vec::<u32>::new(),
        "zombie children under the agent"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn run_as_user_gets_identity_and_groups() {
    if !is_root() {
        eprintln!("skipped: creating and switching users needs root");
        return;
    }
    ensure_user("rw-test-ops", &["rw-test-g1", "rw-test-g2"]);
    let user = nix::unistd::User::from_name("rw-test-ops")
        .unwrap()
        .unwrap();
    let g1 = nix::unistd::Group::from_name("rw-test-g1")
        .unwrap()
        .unwrap();
    let g2 = nix::unistd::Group::from_name("rw-test-g2")
        .unwrap()
        .unwrap();
    let cluster = Cluster::start().await;

    let data = cluster
        .sync(json!({
            "execWay": 0, "user": "rw-test-ops",
            "content": "echo $HOME $USER $LOGNAME; id -u; id -G",
        }))
        .await;

    assert_eq!(data["list"][0]["status"], "success", "{data}");
    let stdout = res_cmd(&data)["stdout"].as_str().unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let home = user.dir.display().to_string();
    assert_eq!(lines[0], format!("{home} rw-test-ops rw-test-ops"));
    assert_eq!(lines[1], user.uid.to_string());

    let mut groups: Vec<u32> = lines[2].split(' ').map(|g| g.parse().unwrap()).collect();
    groups.sort_unstable();
    let mut expected = vec![user.gid.as_raw(), g1.gid.as_raw(), g2.gid.as_raw()];
    expected.sort_unstable();
    assert_eq!(groups, expected, "groups of rw-test-ops");
    assert!(!groups.contains(&0), "root's group leaked into the job");
    cluster.stop().await;
}

#[tokio::test]
async fn script_sees_home() {
    let cluster = Cluster::start().await;

    let data = cluster
        .sync(json!({ "execWay": 0, "content": "test -n \"$HOME\" && echo ok" }))
        .await;

    assert_eq!(res_cmd(&data)["stdout"], "ok\n", "{data}");
    assert_eq!(res_cmd(&data)["exitCode"], 0);
    cluster.stop().await;
}

#[tokio::test]
async fn non_ascii_stdin_reaches_script() {
    let cluster = Cluster::start().await;

    let data = cluster
        .sync(json!({ "execWay": 0, "content": "cat", "input": "ò\n" }))
        .await;

    assert_eq!(stream_bytes(res_cmd(&data), "stdout"), [0xc3, 0xb2, 0x0a]);
    assert_eq!(res_cmd(&data)["exitCode"], 0);
    cluster.stop().await;
}

#[tokio::test]
async fn stdin_is_closed_after_input() {
    let cluster = Cluster::start().await;

    let started = Instant::now();
    let counted = cluster
        .sync(json!({ "execWay": 0, "content": "wc -c", "input": "abc" }))
        .await;
    let without_input = cluster
        .sync(json!({ "execWay": 0, "content": "cat" }))
        .await;
    let elapsed = started.elapsed();

    assert_eq!(res_cmd(&counted)["stdout"].as_str().unwrap().trim(), "3");
    assert_eq!(
        without_input["list"][0]["status"], "success",
        "{without_input}"
    );
    assert_eq!(res_cmd(&without_input)["stdout"], "");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    cluster.stop().await;
}

#[tokio::test]
async fn non_utf8_output_is_lossless() {
    let cluster = Cluster::start().await;

    // dash, Debian's /bin/sh, has no \x escapes in printf, so the request
    // with hex escapes names bash, and the default shell gets octal ones.
    let hex = cluster
        .sync(json!({ "execWay": 0, "cmd": "/bin/bash", "content": "printf '\\x84\\xff\\n'" }))
        .await;
    let octal = cluster
        .sync(json!({ "execWay": 0, "content": "printf '\\204\\377\\n'" }))
        .await;

    for data in [&hex, &octal] {
        assert_eq!(data["list"][0]["status"], "success", "{data}");
        assert_eq!(stream_bytes(res_cmd(data), "stdout"), [0x84, 0xff, 0x0a]);
        assert!(res_cmd(data)["stdoutBase64"].is_string());
    }
    cluster.stop().await;
}

#[tokio::test]
async fn huge_output_is_capped() {
    let cap = 1024 * 1024;
    let options = ClusterOptions {
        max_output_bytes: cap,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(options).await;

    let data = cluster
        .sync(json!({ "execWay": 0, "content": "head -c 2000000000 /dev/zero" }))
        .await;

    let res = res_cmd(&data);
    assert_eq!(data["list"][0]["status"], "success", "{data}");
    assert_eq!(stream_bytes(res, "stdout").len(), cap);
    assert_eq!(res["stdoutTruncated"], true);
    assert_eq!(res["stdoutDropped"], 2_000_000_000 - cap as u64);
    cluster.stop().await;
}

#[tokio::test]
async fn large_result_is_truncated_not_failed() {
    let cluster = Cluster::start().await;

    let data = cluster
        .sync(json!({ "execWay": 0, "content": "head -c 20000000 /dev/urandom | base64" }))
        .await;

    let res = res_cmd(&data);
    assert_eq!(data["list"][0]["status"], "success", "{data}");
    assert_eq!(res["code"], "ok");
    assert_eq!(res["stdoutTruncated"], true);
    assert!(res["stdoutDropped"].as_u64().unwrap() > 20_000_000);
    cluster.stop().await;
}

#[tokio::test]
async fn argument_with_space_stays_one() {
    let cluster = Cluster::start().await;

    let data = cluster
        .sync(json!({
            "execWay": 1, "cmd": "/bin/sh",
            "content": "printf '%s\\n' \"$#\" \"$1\"",
            "args": ["a b", "c"],
        }))
        .await;

    assert_eq!(res_cmd(&data)["stdout"], "2\na b\n", "{data}");
    cluster.stop().await;
}

#[tokio::test]
async fn argument_is_not_executed() {
    let cluster = Cluster::start().await;
    let _ = std::fs::remove_file("/tmp/rw-pwned");

    let data = cluster
        .sync(json!({
            "execWay": 0, "content": "echo \"$1\"",
            "args": ["$(touch /tmp/rw-pwned)"],
        }))
        .await;

    assert_eq!(
        res_cmd(&data)["stdout"],
        "$(touch /tmp/rw-pwned)\n",
        "{data}"
    );
    assert!(
        !std::path::Path::new("/tmp/rw-pwned").exists(),
        "the argument ran"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn timeout_above_maximum_is_rejected() {
    let options = ClusterOptions {
        max_timeout_secs: 600,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(options).await;

    let body = json!({ "peers": ["peer-1"], "content": { "execWay": 0, "content": "true", "timeout": 601 } });
    let (status, envelope) = cluster.post("/script/async", &body).await;

    assert_eq!(status, 422, "{envelope}");
    assert_eq!(envelope["code"], 42201);
    let message = envelope["message"].as_str().unwrap();
    assert!(
        message.contains("600"),
        "message does not name the maximum: {message}"
    );
    assert!(envelope["data"].is_null());
    cluster.stop().await;
}

#[tokio::test]
async fn run_as_user_reads_inline_script() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let cluster = Cluster::start().await;

    let data = cluster
        .sync(json!({ "execWay": 1, "user": "nobody", "content": "#!/bin/sh\necho hi" }))
        .await;

    assert_eq!(data["list"][0]["status"], "success", "{data}");
    assert_eq!(res_cmd(&data)["stdout"], "hi\n");
    cluster.stop().await;
}
