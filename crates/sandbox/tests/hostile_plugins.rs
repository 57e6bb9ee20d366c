//! Plugins that misbehave: each fails only its own call or load, within its
//! limits, with an error that says what happened, while other calls go on.

mod common;

use std::time::{Duration, Instant};

use common::{cache_dir, job, load, spec};
use runwarden_protocol::api::ResCmd;
use runwarden_sandbox::HookPoint;
use runwarden_sandbox::plugin::LoadError;
use runwarden_sandbox::policy::OnError;
use runwarden_sandbox::sandbox::{LoadErrors, ValidateOutcome};
use serde_json::json;

fn hostile(mode: &str) -> runwarden_sandbox::policy::PluginSpec {
    let mut spec = spec("hostile", HookPoint::Validate, json!({ "mode": mode }));
    spec.timeout_ms = 200;
    spec.max_memory_bytes = 16 * 1024 * 1024;
    spec
}

async fn denial_reason(mode: &str) -> String {
    let cache = cache_dir();
    let sandbox = load(vec![hostile(mode)], cache.path()).await.unwrap();
    match sandbox.validate(&job("true"), "p1").await {
        ValidateOutcome::Deny { reason, .. } => reason,
        other => panic!("mode {mode} was allowed: {other:?}"),
    }
}

#[tokio::test]
async fn endless_loop_hits_time_limit() {
    let started = Instant::now();
    let reason = denial_reason("loop").await;

    assert!(reason.contains("time limit of 200 ms"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn endless_loop_hits_fuel_budget() {
    let cache = cache_dir();
    let mut spec = hostile("loop");
    spec.fuel = Some(5_000_000);
    spec.timeout_ms = 10_000;
    let sandbox = load(vec![spec], cache.path()).await.unwrap();

    let outcome = sandbox.validate(&job("true"), "p1").await;

    match outcome {
        ValidateOutcome::Deny { reason, .. } => {
            assert!(reason.contains("fuel budget of 5000000"), "{reason}")
        }
        other => panic!("allowed: {other:?}"),
    }
}

#[tokio::test]
async fn memory_growth_hits_memory_limit() {
    let reason = denial_reason("grow-memory").await;

    assert!(
        reason.contains("memory limit of 16777216 bytes"),
        "{reason}"
    );
}

#[tokio::test]
async fn deep_recursion_traps() {
    let reason = denial_reason("recurse").await;

    assert!(reason.contains("the plugin failed"), "{reason}");
}

#[tokio::test]
async fn trap_denies_the_job() {
    let reason = denial_reason("trap").await;

    assert!(
        reason.contains("trapped") || reason.contains("failed"),
        "{reason}"
    );
}

#[tokio::test]
async fn huge_reason_is_bounded() {
    let reason = denial_reason("huge-reason").await;

    assert!(
        reason.len() <= runwarden_sandbox::sandbox::MAX_REASON_BYTES,
        "{} bytes",
        reason.len()
    );
}

#[tokio::test]
async fn log_flood_is_rate_limited() {
    let cache = cache_dir();
    let mut spec = hostile("log-flood");
    // 100,000 host calls take longer than the default limit in a debug build.
    spec.timeout_ms = 20_000;
    let sandbox = load(vec![spec], cache.path()).await.unwrap();

    let outcome = sandbox.validate(&job("true"), "p1").await;

    assert!(
        matches!(outcome, ValidateOutcome::Allow { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn changed_ids_are_ignored() {
    let cache = cache_dir();
    let sandbox = load(vec![hostile("modify-ids")], cache.path())
        .await
        .unwrap();

    let outcome = sandbox.validate(&job("true"), "p1").await;

    match outcome {
        ValidateOutcome::Allow { request, .. } => {
            assert_eq!(request.taskid, "task-1");
            assert_eq!(request.jobid, "job-1");
        }
        other => panic!("denied: {other:?}"),
    }
}

/// `modify-ids` returns the request it saw with other ids, so the secret
/// variable comes back as the plugin saw it: `<redacted>` or the value.
/// Either way the job keeps its secret value, and it stays out of `env`.
#[tokio::test]
async fn modify_keeps_secret_value() {
    for see_secrets in [false, true] {
        let cache = cache_dir();
        let mut spec = hostile("modify-ids");
        spec.see_secrets = see_secrets;
        let sandbox = load(vec![spec], cache.path()).await.unwrap();
        let mut request = job("true");
        request
            .content
            .secret_env
            .insert("TOKEN", "kept-secret-value");

        let outcome = sandbox.validate(&request, "p1").await;

        let ValidateOutcome::Allow {
            request,
            changed_by,
        } = outcome
        else {
            panic!("see_secrets={see_secrets}: denied: {outcome:?}");
        };
        assert_eq!(changed_by, ["hostile"], "see_secrets={see_secrets}");
        assert_eq!(
            request.content.secret_env.get("TOKEN"),
            Some("kept-secret-value"),
            "see_secrets={see_secrets}"
        );
        assert!(
            !request.content.env.contains_key("TOKEN"),
            "see_secrets={see_secrets}"
        );
    }
}

#[tokio::test]
async fn failure_allows_when_policy_says_so() {
    let cache = cache_dir();
    let mut spec = hostile("trap");
    spec.on_error = OnError::Allow;
    let sandbox = load(vec![spec], cache.path()).await.unwrap();

    let outcome = sandbox.validate(&job("true"), "p1").await;

    assert!(
        matches!(outcome, ValidateOutcome::Allow { .. }),
        "{outcome:?}"
    );
}

/// Runs on one thread, so the other calls can only proceed if the looping
/// plugin yields to the runtime.
#[tokio::test]
async fn looping_plugin_does_not_stall_others() {
    let cache = cache_dir();
    // A long limit, so that the check below cannot race the limit even on
    // a loaded machine; the call is aborted once the check is made.
    let mut looping = hostile("loop");
    looping.timeout_ms = 60_000;
    let looping_sandbox = load(vec![looping], cache.path()).await.unwrap();
    // The quick plugin gets a long limit too: on a loaded machine its
    // calls can pass 200 ms, which would fail the test for the wrong reason.
    let mut quick = hostile("ok");
    quick.timeout_ms = 30_000;
    let ok_sandbox = load(vec![quick], cache.path()).await.unwrap();

    let stuck = tokio::spawn(async move { looping_sandbox.validate(&job("true"), "p1").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..20 {
        let outcome = ok_sandbox.validate(&job("true"), "p1").await;
        assert!(
            matches!(outcome, ValidateOutcome::Allow { .. }),
            "{outcome:?}"
        );
    }

    assert!(
        !stuck.is_finished(),
        "the other calls waited for the looping plugin"
    );
    stuck.abort();
}

#[tokio::test]
async fn post_process_failure_withholds_output() {
    let cache = cache_dir();
    let mut spec = spec(
        "hostile-post",
        HookPoint::PostProcess,
        json!({ "mode": "trap" }),
    );
    spec.timeout_ms = 200;
    let sandbox = load(vec![spec], cache.path()).await.unwrap();
    let mut res_cmd = ResCmd {
        stdout: "secret output".to_owned(),
        ..ResCmd::default()
    };

    sandbox
        .post_process(&job("x"), "p1", &mut res_cmd, 1024 * 1024)
        .await;

    assert_eq!(res_cmd.stdout, "");
    assert!(
        res_cmd
            .err
            .contains("post-process plugin `hostile-post` failed"),
        "{}",
        res_cmd.err
    );
    assert!(res_cmd.err.contains("output withheld"), "{}", res_cmd.err);
}

#[tokio::test]
async fn post_process_huge_output_is_a_failure() {
    let cache = cache_dir();
    let mut spec = spec(
        "hostile-post",
        HookPoint::PostProcess,
        json!({ "mode": "huge-output" }),
    );
    spec.max_memory_bytes = 256 * 1024 * 1024;
    spec.timeout_ms = 5_000;
    spec.on_error = OnError::Pass;
    let sandbox = load(vec![spec], cache.path()).await.unwrap();
    let mut res_cmd = ResCmd {
        stdout: "kept".to_owned(),
        ..ResCmd::default()
    };

    sandbox
        .post_process(&job("x"), "p1", &mut res_cmd, 1024 * 1024)
        .await;

    assert_eq!(res_cmd.stdout, "kept");
    assert!(
        res_cmd.err.contains("above the output cap"),
        "{}",
        res_cmd.err
    );
}

fn first_load_error(error: anyhow::Error) -> LoadError {
    let errors = error.downcast::<LoadErrors>().expect("a LoadErrors");
    errors.0.into_iter().next().expect("one error")
}

#[tokio::test]
async fn ungranted_import_fails_load() {
    let cache = cache_dir();

    let error = load(
        vec![spec("sockets", HookPoint::Validate, json!({}))],
        cache.path(),
    )
    .await
    .err()
    .unwrap();

    match first_load_error(error) {
        LoadError::UngrantedImport { import, .. } => {
            assert!(import.starts_with("wasi:sockets/"), "{import}")
        }
        other => panic!("expected UngrantedImport, got {other}"),
    }
}

#[tokio::test]
async fn other_interface_version_fails_load() {
    let cache = cache_dir();

    let error = load(
        vec![spec("future-version", HookPoint::Validate, json!({}))],
        cache.path(),
    )
    .await
    .err()
    .unwrap();

    let message = first_load_error(error).to_string();
    assert!(message.contains("2.0.0"), "{message}");
    assert!(message.contains("1.0.0"), "{message}");
}

#[tokio::test]
async fn hash_mismatch_fails_load() {
    let cache = cache_dir();
    let mut spec = spec("deny-dangerous", HookPoint::Validate, json!({}));
    spec.sha256 = "0".repeat(64);

    let error = load(vec![spec], cache.path()).await.err().unwrap();

    assert!(matches!(
        first_load_error(error),
        LoadError::HashMismatch { .. }
    ));
}

#[tokio::test]
async fn non_wasm_file_fails_load() {
    let cache = cache_dir();

    let error = load(
        vec![spec("not-wasm", HookPoint::Validate, json!({}))],
        cache.path(),
    )
    .await
    .err()
    .unwrap();

    assert!(matches!(first_load_error(error), LoadError::NotWasm { .. }));
}

#[tokio::test]
async fn wrong_hook_point_fails_load() {
    let cache = cache_dir();

    let error = load(
        vec![spec("redact-secrets", HookPoint::Validate, json!({}))],
        cache.path(),
    )
    .await
    .err()
    .unwrap();

    let message = first_load_error(error).to_string();
    assert!(message.contains("post-processor"), "{message}");
}

#[tokio::test]
async fn corrupted_cache_entry_is_a_miss() {
    let cache = common::private_cache_dir();
    let specs = || vec![spec("deny-dangerous", HookPoint::Validate, json!({}))];
    drop(load(specs(), cache.path()).await.unwrap());

    let mut corrupted = 0;
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "cwasm") {
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            corrupted += 1;
        }
    }
    assert_eq!(corrupted, 1, "expected one cache entry");

    let sandbox = load(specs(), cache.path()).await.unwrap();
    let outcome = sandbox.validate(&job("rm -rf /"), "p1").await;

    assert!(
        matches!(outcome, ValidateOutcome::Deny { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn every_load_failure_is_reported() {
    let cache = cache_dir();
    let specs = vec![
        spec("sockets", HookPoint::Validate, json!({})),
        spec("not-wasm", HookPoint::Validate, json!({})),
    ];

    let error = load(specs, cache.path()).await.err().unwrap();

    let errors = error.downcast::<LoadErrors>().unwrap();
    assert_eq!(errors.0.len(), 2, "{errors}");
}

async fn probe_reason(path: &std::path::Path, grant: Option<&std::path::Path>) -> String {
    let cache = cache_dir();
    let config = json!({ "mode": "read-file", "path": path });
    let mut spec = spec("hostile", HookPoint::Validate, config);
    spec.read_only_dirs = grant.map(|dir| vec![dir.to_owned()]).unwrap_or_default();
    let sandbox = load(vec![spec], cache.path()).await.unwrap();
    match sandbox.validate(&job("true"), "p1").await {
        ValidateOutcome::Deny { reason, .. } => reason,
        other => panic!("read-file mode allowed the job: {other:?}"),
    }
}

#[tokio::test]
async fn files_need_a_read_only_grant() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("granted.txt");
    std::fs::write(&file, "hello from the host").unwrap();

    let ungranted = probe_reason(&file, None).await;
    let granted = probe_reason(&file, Some(dir.path())).await;

    assert!(ungranted.contains("read: failed"), "{ungranted}");
    assert!(
        granted.contains("read: ok `hello from the host`"),
        "{granted}"
    );
    assert!(granted.contains("write: failed"), "{granted}");
    assert!(!dir.path().join("granted.txt.written-by-plugin").exists());
}
