//! Conversions between the API's job and result types and the plugin
//! interface's records.

use runwarden_protocol::api::{JobRequest as ApiJobRequest, ResCmd, ScriptContent};
use runwarden_protocol::output::{decode_stream, encode_stream};

use crate::bindings::{JobRequest, JobResult, Processed};

/// The plugin's view of a job on `peer_id`.
pub fn job_request_to_plugin(job: &ApiJobRequest, peer_id: &str) -> JobRequest {
    let content = &job.content;
    JobRequest {
        task_id: job.taskid.clone(),
        job_id: job.jobid.clone(),
        name: job.name.clone(),
        creater: job.creater.clone(),
        peer_id: peer_id.to_owned(),
        path: content.path.clone(),
        cmd: content.cmd.clone(),
        env: content
            .env
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
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
pub fn apply_plugin_request(original: &ApiJobRequest, changed: JobRequest) -> ApiJobRequest {
    ApiJobRequest {
        taskid: original.taskid.clone(),
        jobid: original.jobid.clone(),
        name: changed.name,
        creater: changed.creater,
        content: ScriptContent {
            path: changed.path,
            cmd: changed.cmd,
            env: changed.env.into_iter().collect(),
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
