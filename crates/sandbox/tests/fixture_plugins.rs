//! The example plugins, run through the sandbox as a policy would run them.

mod common;

use common::{cache_dir, job, load, spec};
use runwarden_protocol::api::ResCmd;
use runwarden_sandbox::HookPoint;
use runwarden_sandbox::sandbox::ValidateOutcome;
use serde_json::json;

#[tokio::test]
async fn deny_dangerous_rejects_destructive_commands() {
    let cache = cache_dir();
    let sandbox = load(
        vec![spec("deny-dangerous", HookPoint::Validate, json!({}))],
        cache.path(),
    )
    .await
    .unwrap();

    let dangerous = [
        "rm -rf /",
        "rm -fr / --no-preserve-root",
        "mkfs.ext4 /dev/sdb1",
        ":(){ :|:& };:",
        "dd if=/dev/zero of=/dev/sda bs=1M",
    ];
    for command in dangerous {
        match sandbox.validate(&job(command), "p1").await {
            ValidateOutcome::Deny { plugin, reason } => {
                assert_eq!(plugin, "deny-dangerous");
                assert!(!reason.is_empty(), "{command}: empty reason");
            }
            other => panic!("{command} was not denied: {other:?}"),
        }
    }

    for command in ["ls -la /", "rm -rf /tmp/build", "echo mkfs is a word"] {
        let outcome = sandbox.validate(&job(command), "p1").await;
        if command != "echo mkfs is a word" {
            assert!(
                matches!(outcome, ValidateOutcome::Allow { .. }),
                "{command}: {outcome:?}"
            );
        }
    }
}

#[tokio::test]
async fn deny_dangerous_takes_extra_patterns() {
    let cache = cache_dir();
    let config = json!({ "extra_patterns": ["\\bshutdown\\b"] });
    let sandbox = load(
        vec![spec("deny-dangerous", HookPoint::Validate, config)],
        cache.path(),
    )
    .await
    .unwrap();

    let outcome = sandbox.validate(&job("shutdown -h now"), "p1").await;

    assert!(
        matches!(outcome, ValidateOutcome::Deny { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn invalid_config_fails_at_load() {
    let cache = cache_dir();
    let config = json!({ "patterns": ["(unclosed"] });

    let error = load(
        vec![spec("deny-dangerous", HookPoint::Validate, config)],
        cache.path(),
    )
    .await
    .err()
    .expect("load should fail");

    let message = format!("{error:#}");
    assert!(message.contains("(unclosed"), "{message}");
    assert!(message.contains("deny-dangerous"), "{message}");
}

#[tokio::test]
async fn allowlist_denies_user_and_lowers_timeout() {
    let cache = cache_dir();
    let config = json!({ "users": ["deploy"], "max_timeout": 30 });
    let sandbox = load(
        vec![spec("allowlist", HookPoint::Validate, config)],
        cache.path(),
    )
    .await
    .unwrap();

    let mut as_root = job("id");
    as_root.content.user = "root".to_owned();
    let mut as_deploy = job("id");
    as_deploy.content.user = "deploy".to_owned();

    match sandbox.validate(&as_root, "p1").await {
        ValidateOutcome::Deny { reason, .. } => assert!(reason.contains("root"), "{reason}"),
        other => panic!("root was allowed: {other:?}"),
    }
    match sandbox.validate(&as_deploy, "p1").await {
        ValidateOutcome::Allow {
            request,
            changed_by,
        } => {
            assert_eq!(request.content.timeout, 30);
            assert_eq!(changed_by, ["allowlist"]);
            assert_eq!(request.jobid, "job-1");
        }
        other => panic!("deploy was denied: {other:?}"),
    }
}

fn result_with(stdout: &str) -> ResCmd {
    ResCmd {
        stdout: stdout.to_owned(),
        code: runwarden_protocol::status::Outcome::Ok,
        exit_code: 0,
        ..ResCmd::default()
    }
}

#[tokio::test]
async fn post_processors_redact_then_extract_json() {
    let cache = cache_dir();
    let specs = vec![
        spec("redact-secrets", HookPoint::PostProcess, json!({})),
        spec("json-result", HookPoint::PostProcess, json!({})),
    ];
    let sandbox = load(specs, cache.path()).await.unwrap();
    let stdout = "connecting with password=hunter2\n{\"ok\": false}\nprogress\n{\"ok\": true,\n \"token\": \"ghp_abcdefghijklmnopqrstuvwxyz0123456789\"}\n";
    let mut res_cmd = result_with(stdout);

    sandbox
        .post_process(&job("deploy"), "p1", &mut res_cmd, 1024 * 1024)
        .await;

    assert!(!res_cmd.stdout.contains("hunter2"), "{}", res_cmd.stdout);
    assert!(!res_cmd.stdout.contains("ghp_abcdef"), "{}", res_cmd.stdout);
    assert!(res_cmd.stdout.contains("password="), "{}", res_cmd.stdout);
    let res: serde_json::Value = serde_json::from_str(&res_cmd.res).expect("res is JSON");
    assert_eq!(res["ok"], true);
    assert!(
        !res_cmd.res.contains("ghp_abcdef"),
        "json-result saw the unredacted output"
    );
    assert_eq!(res_cmd.err, "");
}

#[tokio::test]
async fn redact_keeps_non_utf8_bytes() {
    let cache = cache_dir();
    let sandbox = load(
        vec![spec("redact-secrets", HookPoint::PostProcess, json!({}))],
        cache.path(),
    )
    .await
    .unwrap();
    let bytes = b"\x84\xff token=abc123\n".to_vec();
    let (text, base64) = runwarden_protocol::output::encode_stream(&bytes);
    let mut res_cmd = result_with(&text);
    res_cmd.stdout_base64 = base64;

    sandbox
        .post_process(&job("x"), "p1", &mut res_cmd, 1024 * 1024)
        .await;

    let out = runwarden_protocol::output::decode_stream(
        &res_cmd.stdout,
        res_cmd.stdout_base64.as_deref(),
    )
    .unwrap();
    assert!(out.starts_with(b"\x84\xff token="), "{out:?}");
    assert!(!out.windows(6).any(|w| w == b"abc123"), "{out:?}");
}
