//! A validator plugin for Runwarden: denies jobs that run as one of the
//! users listed in its config.
//!
//! Config: `{"denied_users": ["root", ...]}`. The request's `user` is empty
//! when the job runs as the agent's own user, so list `""` to deny that too.

use runwarden_plugin_sdk::{JobRequest, Validator, Verdict, export_validator, parse_config};
use serde::Deserialize;

/// The plugin's config, the policy's `config` value as JSON. Unknown keys are
/// rejected so that a misspelt key fails the load instead of being ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    denied_users: Vec<String>,
}

struct DenyUsers;

impl Validator for DenyUsers {
    fn validate_config(config: &str) -> Result<(), String> {
        parse_config::<Config>(config).map(|_| ())
    }

    fn validate(config: &str, request: JobRequest) -> Verdict {
        // The host calls validate only after validate_config accepted this
        // config, so this error path is a safeguard.
        let config: Config = match parse_config(config) {
            Ok(config) => config,
            Err(error) => return Verdict::deny(error),
        };

        if config.denied_users.contains(&request.user) {
            runwarden_plugin_sdk::info!(
                "denied job {} of task {}: user {:?}",
                request.job_id,
                request.task_id,
                request.user
            );
            return Verdict::deny(format!("jobs may not run as user {:?}", request.user));
        }
        Verdict::Allow
    }
}

export_validator!(DenyUsers);

#[cfg(test)]
mod tests {
    use super::*;

    fn request_as(user: &str) -> JobRequest {
        JobRequest {
            user: user.to_string(),
            content: "uptime".to_string(),
            ..JobRequest::default()
        }
    }

    #[test]
    fn listed_user_is_denied() {
        let verdict = DenyUsers::validate(r#"{"denied_users": ["root"]}"#, request_as("root"));
        assert_eq!(verdict, Verdict::deny("jobs may not run as user \"root\""));
    }

    #[test]
    fn other_user_is_allowed() {
        let verdict = DenyUsers::validate(r#"{"denied_users": ["root"]}"#, request_as("deploy"));
        assert_eq!(verdict, Verdict::Allow);
    }

    #[test]
    fn misspelt_key_fails_config() {
        let error = DenyUsers::validate_config(r#"{"denied_user": ["root"]}"#).unwrap_err();
        assert!(error.contains("unknown field `denied_user`"), "{error}");
    }
}
