//! `runwarden plugin test`: run one plugin once on a sample request (and
//! result), and print what it decided, how long it took and its peak memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use runwarden_protocol::api::{JobRequest, ResCmd, ScriptRequest};
use runwarden_sandbox::bindings::Verdict;
use runwarden_sandbox::engine::{EpochTicker, build_engine};
use runwarden_sandbox::plugin::{LoadedPlugin, file_sha256};
use runwarden_sandbox::policy::{
    DEFAULT_MAX_MEMORY_BYTES, DEFAULT_TIMEOUT_MS, OnError, PluginSpec,
};
use runwarden_sandbox::{HookPoint, convert};

use crate::Failure;

/// Timeout given to a sample request that leaves `timeout` at 0, as the
/// coordinator's default would.
const SAMPLE_TIMEOUT_SECS: i32 = 3600;

#[derive(clap::Args)]
pub struct PluginTestArgs {
    /// The plugin's `.wasm` file.
    #[arg(long)]
    plugin: PathBuf,
    /// Hook point to run: `validate` or `post-process`.
    #[arg(long, value_parser = ["validate", "post-process"])]
    hook: String,
    /// The plugin's configuration as JSON text.
    #[arg(long, default_value = "{}")]
    config: String,
    /// A script request body as the REST API takes it; its first peer is
    /// the job's peer.
    #[arg(long)]
    request: PathBuf,
    /// post-process only: a `resCmd` object (stdout, stderr, exitCode,
    /// code, ...) as the job's result.
    #[arg(long)]
    result: Option<PathBuf>,
    /// Memory limit in bytes, summed over the plugin's memories.
    #[arg(long, default_value_t = DEFAULT_MAX_MEMORY_BYTES)]
    max_memory_bytes: u64,
    /// Wall-clock limit of the call in milliseconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
    /// Instruction budget of the call; 0 means none.
    #[arg(long, default_value_t = 0)]
    fuel: u64,
    /// Show the plugin the values of the request's `content.secretEnv`, as
    /// `see_secrets = true` in a policy does. Without it, they are
    /// `<redacted>`.
    #[arg(long)]
    see_secrets: bool,
}

pub async fn run(args: PluginTestArgs) -> Result<(), Failure> {
    let hook = match args.hook.as_str() {
        "validate" => HookPoint::Validate,
        _ => HookPoint::PostProcess,
    };
    if hook == HookPoint::PostProcess && args.result.is_none() {
        return Err(Failure::Config(anyhow::anyhow!(
            "--hook post-process needs --result FILE with a resCmd object"
        )));
    }
    serde_json::from_str::<serde_json::Value>(&args.config)
        .with_context(|| format!("--config `{}` is not valid JSON", args.config))
        .map_err(Failure::Config)?;

    let (job, peer_id) = read_request(&args.request).map_err(Failure::Config)?;
    let spec = plugin_spec(&args, hook)?;
    println!(
        "plugin:  {} ({}), sha256 {}",
        spec.name,
        hook.as_str(),
        spec.sha256
    );

    let engine = build_engine(spec.max_memory_bytes, spec.fuel.is_some())?;
    let _ticker = EpochTicker::start(engine.clone());
    let uses_fuel = spec.fuel.is_some();
    let loaded = {
        let engine = engine.clone();
        let started = Instant::now();
        let loaded =
            tokio::task::spawn_blocking(move || LoadedPlugin::load(&engine, spec, None, uses_fuel))
                .await
                .context("plugin load task failed")?
                .map_err(anyhow::Error::from)?;
        println!(
            "load:    {:.1} ms (compile and checks)",
            started.elapsed().as_secs_f64() * 1000.0
        );
        loaded
    };
    loaded.check_config().await.map_err(anyhow::Error::from)?;

    match hook {
        HookPoint::Validate => run_validate(&loaded, &job, &peer_id).await,
        HookPoint::PostProcess => {
            let result_path = args.result.as_deref().unwrap_or(Path::new(""));
            let res_cmd = read_result(result_path).map_err(Failure::Config)?;
            run_post_process(&loaded, &job, &peer_id, &res_cmd).await
        }
    }
}

fn plugin_spec(args: &PluginTestArgs, hook: HookPoint) -> Result<PluginSpec, Failure> {
    let sha256 = file_sha256(&args.plugin)
        .with_context(|| format!("cannot read plugin `{}`", args.plugin.display()))
        .map_err(Failure::Config)?;
    let name = args.plugin.file_stem().map_or_else(
        || "plugin".to_owned(),
        |stem| stem.to_string_lossy().into_owned(),
    );

    Ok(PluginSpec {
        name,
        hook,
        path: args.plugin.clone(),
        sha256,
        config: args.config.clone(),
        max_memory_bytes: args.max_memory_bytes,
        timeout_ms: args.timeout_ms,
        fuel: (args.fuel > 0).then_some(args.fuel),
        on_error: match hook {
            HookPoint::Validate => OnError::Deny,
            HookPoint::PostProcess => OnError::Withhold,
        },
        read_only_dirs: Vec::new(),
        see_secrets: args.see_secrets,
    })
}

fn read_request(path: &Path) -> anyhow::Result<(JobRequest, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read request file `{}`", path.display()))?;
    let request: ScriptRequest = serde_json::from_str(&text)
        .with_context(|| format!("request file `{}` is not a script request", path.display()))?;

    let peer_id = request
        .peers
        .first()
        .cloned()
        .unwrap_or_else(|| "local".to_owned());
    let mut content = request.content;
    if content.timeout == 0 {
        content.timeout = SAMPLE_TIMEOUT_SECS;
    }
    let job = JobRequest {
        taskid: "plugin-test-task".to_owned(),
        jobid: "plugin-test-job".to_owned(),
        name: request.name,
        creater: request.creater,
        content,
    };
    Ok((job, peer_id))
}

fn read_result(path: &Path) -> anyhow::Result<ResCmd> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read result file `{}`", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("result file `{}` is not a resCmd object", path.display()))
}

async fn run_validate(
    plugin: &LoadedPlugin,
    job: &JobRequest,
    peer_id: &str,
) -> Result<(), Failure> {
    let request = convert::job_request_to_plugin(job, peer_id, plugin.spec.see_secrets);
    let (outcome, report) = plugin.validate(&request).await;

    match outcome {
        Ok(Verdict::Allow) => println!("verdict: allow"),
        Ok(Verdict::Deny(reason)) => println!("verdict: deny: {reason}"),
        Ok(Verdict::Modify(changed)) => {
            let changed = convert::apply_plugin_request(job, changed);
            let text =
                serde_json::to_string_pretty(&changed.content.redacted()).unwrap_or_default();
            println!("verdict: modify; the job would run with this content:\n{text}");
        }
        Err(message) => {
            print_report(report);
            return Err(Failure::Run(anyhow::anyhow!("plugin {message}")));
        }
    }
    print_report(report);
    Ok(())
}

async fn run_post_process(
    plugin: &LoadedPlugin,
    job: &JobRequest,
    peer_id: &str,
    res_cmd: &ResCmd,
) -> Result<(), Failure> {
    let request = convert::job_request_to_plugin(job, peer_id, plugin.spec.see_secrets);
    let mut result = convert::res_cmd_to_plugin(res_cmd);
    let (outcome, report) = plugin.post_process(&request, &result).await;

    let processed = match outcome {
        Ok(processed) => processed,
        Err(message) => {
            print_report(report);
            return Err(Failure::Run(anyhow::anyhow!("plugin {message}")));
        }
    };
    let changed = [
        ("stdout", processed.stdout.is_some()),
        ("stderr", processed.stderr.is_some()),
        ("res", processed.res.is_some()),
    ];
    convert::apply_processed(&mut result, processed);

    for (field, was_changed) in changed {
        let text = match field {
            "stdout" => String::from_utf8_lossy(&result.stdout).into_owned(),
            "stderr" => String::from_utf8_lossy(&result.stderr).into_owned(),
            _ => result.res.clone(),
        };
        let mark = if was_changed { "changed" } else { "unchanged" };
        println!("{field} ({mark}):\n{text}");
    }
    print_report(report);
    Ok(())
}

fn print_report(report: runwarden_sandbox::plugin::CallReport) {
    println!(
        "time:    {:.1} µs (instantiate and call)\nmemory:  {} bytes peak",
        report.elapsed.as_secs_f64() * 1e6,
        report.peak_memory_bytes
    );
}
