//! How each execWay runs, and how arguments, environment, stdin and output
//! reach and leave the script.

mod common;

use std::time::Duration;

use common::{Cluster, ClusterOptions, res_cmd, stream_bytes, write_node_script};
use serde_json::json;
use sha2::{Digest as _, Sha256};

#[tokio::test]
async fn command_line_uses_interpreter_flags() {
    let cluster = Cluster::start().await;

    let shell = cluster
        .sync(
            json!({ "execWay": 0, "cmd": "/bin/bash", "content": "echo \"$0|$1\"", "args": ["x"] }),
        )
        .await;
    let python = cluster
        .sync(json!({ "execWay": 0, "cmd": "python3", "content": "import sys; print(sys.argv[1:])", "args": ["a b", "c"] }))
        .await;
    let perl = cluster
        .sync(json!({ "execWay": 0, "cmd": "perl", "content": "print join('|', @ARGV), \"\\n\"", "args": ["p", "q"] }))
        .await;

    assert_eq!(res_cmd(&shell)["stdout"], "/bin/bash|x\n", "{shell}");
    assert_eq!(res_cmd(&python)["stdout"], "['a b', 'c']\n", "{python}");
    assert_eq!(res_cmd(&perl)["stdout"], "p|q\n", "{perl}");
    cluster.stop().await;
}

#[tokio::test]
async fn inline_content_runs_from_private_file() {
    let cluster = Cluster::start().await;

    let with_shebang = cluster
        .sync(json!({ "execWay": 1, "content": "#!/bin/bash\necho \"bash $BASH_VERSION\" | cut -c1-4\nstat -c %a \"$0\" \"$(dirname \"$0\")\"" }))
        .await;
    let with_cmd = cluster
        .sync(json!({ "execWay": 1, "cmd": "python3", "content": "import sys\nprint(len(sys.argv) - 1)", "args": ["1", "2"] }))
        .await;
    let no_shebang = cluster
        .sync(json!({ "execWay": 1, "content": "echo plain \"$1\"", "args": ["sh"] }))
        .await;

    assert_eq!(
        res_cmd(&with_shebang)["stdout"],
        "bash\n700\n700\n",
        "{with_shebang}"
    );
    assert_eq!(res_cmd(&with_cmd)["stdout"], "2\n", "{with_cmd}");
    assert_eq!(res_cmd(&no_shebang)["stdout"], "plain sh\n", "{no_shebang}");
    cluster.stop().await;
}

#[tokio::test]
async fn inline_script_file_is_removed() {
    let cluster = Cluster::start().await;

    let data = cluster
        .sync(json!({ "execWay": 1, "content": "#!/bin/sh\necho \"$0\"" }))
        .await;

    let script_path = res_cmd(&data)["stdout"].as_str().unwrap().trim().to_owned();
    assert!(script_path.contains("runwarden-job-"), "{script_path}");
    assert!(
        !std::path::Path::new(&script_path).exists(),
        "{script_path} left behind"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn node_script_runs_from_scripts_dir() {
    let cluster = Cluster::start().await;
    write_node_script(
        &cluster.scripts_dir,
        "ops/hello.sh",
        "#!/bin/sh\necho \"hello $1\"\n",
    );

    let data = cluster
        .sync(json!({ "execWay": 2, "content": "ops/hello.sh", "args": ["node"] }))
        .await;

    assert_eq!(data["list"][0]["status"], "success", "{data}");
    assert_eq!(res_cmd(&data)["stdout"], "hello node\n");
    cluster.stop().await;
}

#[tokio::test]
async fn node_script_cannot_leave_scripts_dir() {
    let cluster = Cluster::start().await;
    let outside = tempfile::tempdir().unwrap();
    write_node_script(outside.path(), "secret.sh", "#!/bin/sh\necho secret\n");
    std::os::unix::fs::symlink(
        outside.path().join("secret.sh"),
        cluster.scripts_dir.join("link.sh"),
    )
    .unwrap();

    let by_link = cluster
        .sync(json!({ "execWay": 2, "content": "link.sh" }))
        .await;
    let missing = cluster
        .sync(json!({ "execWay": 2, "content": "missing.sh" }))
        .await;

    assert_eq!(by_link["list"][0]["status"], "failed", "{by_link}");
    assert_eq!(res_cmd(&by_link)["code"], "script_outside_dir");
    assert_eq!(res_cmd(&by_link)["stdout"], "");
    assert_eq!(res_cmd(&by_link)["exitCode"], -1);
    assert_eq!(res_cmd(&missing)["code"], "script_not_found", "{missing}");
    assert!(
        res_cmd(&missing)["err"]
            .as_str()
            .unwrap()
            .contains("missing.sh")
    );
    cluster.stop().await;
}

#[tokio::test]
async fn stored_script_is_verified_and_run() {
    let cluster = Cluster::start().await;
    let body = "#!/bin/sh\necho stored \"$1\"\n";
    let (status, upload) = cluster
        .post(
            "/scripts",
            &json!({ "name": "deploy/run.sh", "content": body }),
        )
        .await;
    assert_eq!(status, 200, "{upload}");
    let sha256 = hex::encode(Sha256::digest(body.as_bytes()));
    assert_eq!(upload["data"]["sha256"], sha256);

    let first = cluster
        .sync(json!({ "execWay": 3, "content": "deploy/run.sh", "filehash": sha256, "args": ["one"] }))
        .await;
    let cached = cluster
        .sync(json!({ "execWay": 3, "content": "deploy/run.sh", "filehash": sha256.to_uppercase(), "args": ["two"] }))
        .await;

    assert_eq!(res_cmd(&first)["stdout"], "stored one\n", "{first}");
    assert_eq!(res_cmd(&cached)["stdout"], "stored two\n", "{cached}");
    cluster.stop().await;
}

#[tokio::test]
async fn stored_script_hash_mismatch_runs_nothing() {
    let cluster = Cluster::start().await;
    let marker_file = tempfile::tempdir().unwrap().path().join("ran");
    let body = format!("#!/bin/sh\ntouch {}\n", marker_file.display());
    cluster
        .post("/scripts", &json!({ "name": "touch.sh", "content": body }))
        .await;
    let wrong_hash = "0".repeat(64);

    let data = cluster
        .sync(json!({ "execWay": 3, "content": "touch.sh", "filehash": wrong_hash }))
        .await;

    assert_eq!(data["list"][0]["status"], "failed", "{data}");
    assert_eq!(res_cmd(&data)["code"], "hash_mismatch");
    assert!(
        res_cmd(&data)["err"]
            .as_str()
            .unwrap()
            .contains(&wrong_hash)
    );
    assert!(!marker_file.exists(), "the script ran despite the mismatch");
    cluster.stop().await;
}

#[tokio::test]
async fn arguments_keep_quotes_and_unicode() {
    let cluster = Cluster::start().await;
    let args = [
        "a b",
        "it's \"quoted\"",
        "中文 ñ",
        "$HOME",
        "",
        "--flag=x y",
    ];

    let data = cluster
        .sync(json!({ "execWay": 0, "content": "for a in \"$@\"; do printf '[%s]\\n' \"$a\"; done", "args": args }))
        .await;

    let expected: String = args.iter().map(|arg| format!("[{arg}]\n")).collect();
    assert_eq!(res_cmd(&data)["stdout"], expected, "{data}");
    cluster.stop().await;
}

#[tokio::test]
async fn env_values_keep_equals_and_newlines() {
    let cluster = Cluster::start().await;

    let data = cluster
        .sync(json!({
            "execWay": 0,
            "content": "printf '%s|' \"$A\" \"$B\" \"$HOME_OVERRIDE\"",
            "env": { "A": "x=y=z", "B": "line1\nline2", "HOME_OVERRIDE": "中" },
        }))
        .await;

    assert_eq!(res_cmd(&data)["stdout"], "x=y=z|line1\nline2|中|", "{data}");
    cluster.stop().await;
}

#[tokio::test]
async fn agent_environment_does_not_leak() {
    let cluster = Cluster::start().await;

    let data = cluster
        .sync(json!({ "execWay": 0, "content": "env | cut -d= -f1 | sort" }))
        .await;

    let names: Vec<&str> = res_cmd(&data)["stdout"].as_str().unwrap().lines().collect();
    for required in ["HOME", "LOGNAME", "PATH", "SHELL", "USER"] {
        assert!(
            names.contains(&required),
            "{required} missing from {names:?}"
        );
    }
    assert!(
        !names.contains(&"CARGO_MANIFEST_DIR"),
        "agent environment leaked: {names:?}"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn stdin_larger_than_pipe_buffer() {
    let cluster = Cluster::start().await;
    let input: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let expected = hex::encode(Sha256::digest(input.as_bytes()));

    let data = cluster
        .sync(json!({ "execWay": 0, "content": "sha256sum | cut -d' ' -f1", "input": input }))
        .await;

    assert_eq!(
        res_cmd(&data)["stdout"].as_str().unwrap().trim(),
        expected,
        "{data}"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn both_streams_fill_at_once() {
    let cap = 1024 * 1024;
    let options = ClusterOptions {
        max_output_bytes: cap,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(options).await;
    let size = 50 * 1024 * 1024;

    let data = cluster
        .sync(json!({ "execWay": 0, "content": format!("head -c {size} /dev/zero >&2 & head -c {size} /dev/zero; wait") }))
        .await;

    let res = res_cmd(&data);
    assert_eq!(data["list"][0]["status"], "success", "{data}");
    for stream in ["stdout", "stderr"] {
        assert_eq!(stream_bytes(res, stream).len(), cap, "{stream}");
        assert_eq!(
            res[format!("{stream}Dropped")],
            (size - cap) as u64,
            "{stream}"
        );
        assert_eq!(res[format!("{stream}Truncated")], true, "{stream}");
    }
    cluster.stop().await;
}

#[tokio::test]
async fn working_directory_is_used() {
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();

    let data = cluster
        .sync(json!({ "execWay": 0, "content": "pwd", "path": path }))
        .await;
    let missing = cluster
        .sync(json!({ "execWay": 0, "content": "pwd", "path": "/no/such/dir" }))
        .await;

    assert_eq!(
        res_cmd(&data)["stdout"].as_str().unwrap().trim(),
        path,
        "{data}"
    );
    assert_eq!(missing["list"][0]["status"], "failed", "{missing}");
    assert_eq!(res_cmd(&missing)["code"], "path_not_found");
    assert!(
        res_cmd(&missing)["err"]
            .as_str()
            .unwrap()
            .contains("/no/such/dir")
    );
    cluster.stop().await;
}

#[tokio::test]
async fn exit_code_and_signal_are_reported() {
    let cluster = Cluster::start().await;

    let nonzero = cluster
        .sync(json!({ "execWay": 0, "content": "exit 7" }))
        .await;
    let signaled = cluster
        .sync(json!({ "execWay": 0, "content": "kill -9 $$" }))
        .await;

    assert_eq!(nonzero["list"][0]["status"], "failed");
    assert_eq!(res_cmd(&nonzero)["exitCode"], 7);
    assert_eq!(res_cmd(&nonzero)["code"], "exit_nonzero");
    assert_eq!(res_cmd(&signaled)["exitCode"], 137, "{signaled}");
    assert_eq!(res_cmd(&signaled)["code"], "exit_nonzero");
    cluster.stop().await;
}

#[tokio::test]
async fn background_child_does_not_hold_job() {
    let cluster = Cluster::start().await;
    let marker = common::new_marker();

    let started = std::time::Instant::now();
    let data = cluster
        .sync(json!({ "execWay": 0, "content": "sleep 600 & echo started", "env": { "RW_TEST_MARK": marker } }))
        .await;

    assert_eq!(data["list"][0]["status"], "success", "{data}");
    assert_eq!(res_cmd(&data)["stdout"], "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let left = common::leftover_processes(&marker, Duration::from_secs(3)).await;
    assert_eq!(left, Vec::<u32>::new());
    cluster.stop().await;
}
