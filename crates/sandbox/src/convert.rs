//! Conversions between the API's job and result types and the plugin
//! interface's records.

use std::collections::BTreeMap;

use runwarden_protocol::api::{JobRequest as ApiJobRequest, ResCmd, ScriptContent};
use runwarden_protocol::output::{decode_stream, encode_stream};
use runwarden_protocol::secret::{REDACTED, SecretEnv};

use crate::bindings::{JobRequest, JobResult, Processed};

/// Builds the plugin's view of a job on `peer_id`.
///
/// The plugin interface has one `env` list, so the secret variables
/// (`content.secretEnv`) appear in it beside the plain ones, in name order.
/// Their values are [`REDACTED`] unless `see_secrets` is true, which a
/// plugin's policy entry grants.
pub fn job_request_to_plugin(job: &ApiJobRequest, peer_id: &str, see_secrets: bool) -> JobRequest {
    let content = &job.content;
    let mut env: BTreeMap<&str, &str> = content
        .env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    for (name, value) in content.secret_env.iter() {
        env.insert(name, if see_secrets { value } else { REDACTED });
    }

    JobRequest {
        task_id: job.taskid.clone(),
        job_id: job.jobid.clone(),
        name: job.name.clone(),
        creater: job.creater.clone(),
        peer_id: peer_id.to_owned(),
        path: content.path.clone(),
        cmd: content.cmd.clone(),
        env: env
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
        content: content.content.clone(),
        exec_way: content.exec_way,
        filehash: content.filehash.clone(),
        user: content.user.clone(),
        timeout: content.timeout,
        args: content.args.clone(),
        input: content.input.clone(),
    }
}

/// Applies a plugin's changed request to `original`. The task, job and peer
/// ids cannot change, so the plugin's values for them are ignored.
///
/// A returned variable whose name is a secret variable of `original` stays
/// secret. If its value is [`REDACTED`], the plugin did not change it, so the
/// original value is kept. A secret variable the plugin left out is removed.
/// Every other variable goes to `env`.
pub fn apply_plugin_request(original: &ApiJobRequest, changed: JobRequest) -> ApiJobRequest {
    let secrets = &original.content.secret_env;
    let mut env = BTreeMap::new();
    let mut secret_env = SecretEnv::new();
    for (name, value) in changed.env {
        match secrets.get(&name) {
            Some(kept) if value == REDACTED => {
                secret_env.insert(name, kept);
            }
            Some(_) => {
                secret_env.insert(name, value);
            }
            None => {
                env.insert(name, value);
            }
        }
    }

    ApiJobRequest {
        taskid: original.taskid.clone(),
        jobid: original.jobid.clone(),
        name: changed.name,
        creater: changed.creater,
        content: ScriptContent {
            path: changed.path,
            cmd: changed.cmd,
            env,
            secret_env,
            content: changed.content,
            exec_way: changed.exec_way,
            filehash: changed.filehash,
            user: changed.user,
            timeout: changed.timeout,
            args: changed.args,
            input: changed.input,
        },
    }
}

/// Checks the parts of a changed request that would make it impossible to
/// run, returning what is wrong.
pub fn check_plugin_request(request: &JobRequest) -> Result<(), String> {
    if !(0..=3).contains(&request.exec_way) {
        return Err(format!("exec-way {} is not 0, 1, 2 or 3", request.exec_way));
    }
    if request.timeout < 1 {
        return Err(format!("timeout {} is below 1 second", request.timeout));
    }
    if request.content.is_empty() {
        return Err("content is empty".to_owned());
    }
    let texts = [&request.content, &request.cmd, &request.path, &request.user];
    let has_nul = texts.iter().any(|text| text.contains('\0'))
        || request.args.iter().any(|arg| arg.contains('\0'))
        || request.env.iter().any(|(name, value)| {
            name.is_empty() || name.contains(['=', '\0']) || value.contains('\0')
        });
    if has_nul {
        return Err("a field holds a NUL byte or an invalid environment name".to_owned());
    }
    Ok(())
}

/// The plugin's view of a finished job's result, with the exact output bytes.
pub fn res_cmd_to_plugin(res_cmd: &ResCmd) -> JobResult {
    let stdout = decode_stream(&res_cmd.stdout, res_cmd.stdout_base64.as_deref())
        .unwrap_or_else(|_| res_cmd.stdout.clone().into_bytes());
    let stderr = decode_stream(&res_cmd.stderr, res_cmd.stderr_base64.as_deref())
        .unwrap_or_else(|_| res_cmd.stderr.clone().into_bytes());
    JobResult {
        stdout,
        stderr,
        stdout_truncated: res_cmd.stdout_truncated,
        stderr_truncated: res_cmd.stderr_truncated,
        exit_code: res_cmd.exit_code,
        outcome: res_cmd.code.as_str().to_owned(),
        res: res_cmd.res.clone(),
    }
}

/// Applies what a post-processor returned to the plugin-side result.
pub fn apply_processed(result: &mut JobResult, processed: Processed) {
    if let Some(stdout) = processed.stdout {
        result.stdout = stdout;
    }
    if let Some(stderr) = processed.stderr {
        result.stderr = stderr;
    }
    if let Some(res) = processed.res {
        result.res = res;
    }
}

/// Writes the post-processed output and `res` back into `res_cmd`.
pub fn write_back(res_cmd: &mut ResCmd, result: &JobResult) {
    let (stdout, stdout_base64) = encode_stream(&result.stdout);
    let (stderr, stderr_base64) = encode_stream(&result.stderr);
    res_cmd.stdout = stdout;
    res_cmd.stdout_base64 = stdout_base64;
    res_cmd.stderr = stderr;
    res_cmd.stderr_base64 = stderr_base64;
    res_cmd.res = result.res.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_with_secret() -> ApiJobRequest {
        let mut content = ScriptContent {
            content: "true".into(),
            timeout: 60,
            ..ScriptContent::default()
        };
        content.env.insert("PLAIN".into(), "visible".into());
        content.secret_env.insert("TOKEN", "hunter2-value");
        ApiJobRequest {
            taskid: "t".into(),
            jobid: "j".into(),
            name: String::new(),
            creater: String::new(),
            content,
        }
    }

    fn env_of(request: &JobRequest) -> BTreeMap<String, String> {
        request.env.iter().cloned().collect()
    }

    #[test]
    fn plugin_sees_redacted_secret_by_default() {
        let view = job_request_to_plugin(&job_with_secret(), "p1", false);

        let env = env_of(&view);
        assert_eq!(env["TOKEN"], REDACTED);
        assert_eq!(env["PLAIN"], "visible");
        assert!(!format!("{view:?}").contains("hunter2-value"));
    }

    #[test]
    fn plugin_with_see_secrets_sees_value() {
        let view = job_request_to_plugin(&job_with_secret(), "p1", true);

        assert_eq!(env_of(&view)["TOKEN"], "hunter2-value");
    }

    #[test]
    fn redacted_value_returned_keeps_secret() {
        let original = job_with_secret();
        let mut view = job_request_to_plugin(&original, "p1", false);
        view.user = "deploy".into();

        let applied = apply_plugin_request(&original, view);

        assert_eq!(
            applied.content.secret_env.get("TOKEN"),
            Some("hunter2-value")
        );
        assert_eq!(applied.content.env["PLAIN"], "visible");
        assert!(!applied.content.env.contains_key("TOKEN"));
        assert_eq!(applied.content.user, "deploy");
    }

    #[test]
    fn changed_secret_stays_secret() {
        let original = job_with_secret();
        let mut view = job_request_to_plugin(&original, "p1", true);
        for (name, value) in &mut view.env {
            if name == "TOKEN" {
                *value = "rotated".into();
            }
        }

        let applied = apply_plugin_request(&original, view);

        assert_eq!(applied.content.secret_env.get("TOKEN"), Some("rotated"));
        assert!(!applied.content.env.contains_key("TOKEN"));
    }

    #[test]
    fn secret_left_out_is_removed() {
        let original = job_with_secret();
        let mut view = job_request_to_plugin(&original, "p1", false);
        view.env.retain(|(name, _)| name != "TOKEN");

        let applied = apply_plugin_request(&original, view);

        assert!(applied.content.secret_env.is_empty());
    }
}
