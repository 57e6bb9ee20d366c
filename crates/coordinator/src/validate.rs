//! Submit-time checks of script requests.
//!
//! These checks need nothing from the peer, so they run before any job is
//! created: a request that fails one creates no task. What only the peer can
//! check (that the user exists, that the working directory exists, that a
//! script is there and matches its hash) fails the job on that peer instead.

use std::collections::HashSet;

use runwarden_protocol::api::{CancelRequest, ExecWay, ScriptContent, ScriptRequest};
use runwarden_protocol::interpreter::inline_form;

use crate::config::CoordinatorConfig;
use crate::error::Invalid;

/// Checks a script request and returns its effective timeout in seconds.
pub fn validate_script_request(
    request: &ScriptRequest,
    config: &CoordinatorConfig,
) -> Result<u32, Invalid> {
    validate_peers(&request.peers, config.max_peers_per_task)?;
    validate_content(&request.content)?;
    effective_timeout(request.content.timeout, config)
}

fn validate_peers(peers: &[String], max: usize) -> Result<(), Invalid> {
    if peers.is_empty() {
        return Err(Invalid::PeersEmpty);
    }
    if peers.len() > max {
        return Err(Invalid::TooManyPeers {
            count: peers.len(),
            max,
        });
    }

    let mut seen = HashSet::new();
    for (index, peer) in peers.iter().enumerate() {
        if peer.is_empty() {
            return Err(Invalid::PeerIdEmpty { index });
        }
        if !seen.insert(peer.as_str()) {
            return Err(Invalid::PeerDuplicate { peer: peer.clone() });
        }
    }
    Ok(())
}

fn validate_content(content: &ScriptContent) -> Result<(), Invalid> {
    let Some(exec_way) = ExecWay::from_code(content.exec_way) else {
        return Err(Invalid::ExecWayUnknown {
            value: content.exec_way,
        });
    };
    if content.content.is_empty() {
        return Err(Invalid::ContentEmpty {
            exec_way: content.exec_way,
        });
    }

    reject_nul("content.content", &content.content)?;
    reject_nul("content.cmd", &content.cmd)?;
    reject_nul("content.path", &content.path)?;
    for (index, arg) in content.args.iter().enumerate() {
        reject_nul(&format!("content.args[{index}]"), arg)?;
    }
    for (name, value) in &content.env {
        validate_env_name(name)?;
        reject_nul(&format!("content.env.{name}"), value)?;
    }
    for (name, value) in content.secret_env.iter() {
        validate_env_name(name)?;
        if content.env.contains_key(name) {
            return Err(Invalid::EnvNameInBoth {
                name: name.to_owned(),
            });
        }
        reject_nul(&format!("content.secretEnv.{name}"), value)?;
    }

    if !content.path.is_empty() && !content.path.starts_with('/') {
        return Err(Invalid::PathNotAbsolute {
            value: content.path.clone(),
        });
    }
    if !content.user.is_empty() && !is_valid_user_name(&content.user) {
        return Err(Invalid::UserNameInvalid {
            value: content.user.clone(),
        });
    }

    match exec_way {
        ExecWay::CommandLine => {
            let cmd = if content.cmd.is_empty() {
                "/bin/sh"
            } else {
                &content.cmd
            };
            if inline_form(cmd).is_none() {
                return Err(Invalid::InterpreterNoInlineForm {
                    cmd: cmd.to_owned(),
                });
            }
        }
        ExecWay::InlineContent => {}
        ExecWay::NodeScript => validate_script_name(&content.content)?,
        ExecWay::StoredScript => {
            validate_script_name(&content.content)?;
            validate_filehash(&content.filehash)?;
        }
    }
    Ok(())
}

fn validate_env_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(Invalid::EnvNameInvalid {
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn reject_nul(field: &str, value: &str) -> Result<(), Invalid> {
    if value.contains('\0') {
        return Err(Invalid::NulByte {
            field: field.to_owned(),
        });
    }
    Ok(())
}

/// Accepts the user names `useradd` accepts by default, plus a trailing `$`
/// for machine accounts: no leading `-`, no `/`, `:`, whitespace or control
/// characters, at most 32 bytes.
fn is_valid_user_name(name: &str) -> bool {
    name.len() <= 32
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
}

/// Checks that a script name stays inside the folder it is looked up in: no
/// absolute path and no `..` component. The agent checks again with
/// capability-based lookups, which also catch symlinks that leave the folder.
pub fn validate_script_name(name: &str) -> Result<(), Invalid> {
    let escapes = name.starts_with('/') || name.split('/').any(|part| part == "..");
    if escapes {
        return Err(Invalid::ScriptNameInvalid {
            value: name.to_owned(),
        });
    }
    Ok(())
}

fn validate_filehash(filehash: &str) -> Result<(), Invalid> {
    if filehash.is_empty() {
        return Err(Invalid::FilehashMissing);
    }
    if filehash.len() != 64 || !filehash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Invalid::FilehashInvalid {
            value: filehash.to_owned(),
        });
    }
    Ok(())
}

fn effective_timeout(timeout: i32, config: &CoordinatorConfig) -> Result<u32, Invalid> {
    if timeout < 0 {
        return Err(Invalid::TimeoutNegative { value: timeout });
    }
    if timeout == 0 {
        return Ok(config.default_timeout_secs);
    }
    let seconds = timeout.unsigned_abs();
    if seconds > config.max_timeout_secs {
        return Err(Invalid::TimeoutTooLarge {
            value: timeout,
            max: config.max_timeout_secs,
        });
    }
    Ok(seconds)
}

/// Checks a cancel request: at least one item, each naming a peer and a job.
pub fn validate_cancel_request(request: &CancelRequest) -> Result<(), Invalid> {
    if request.tasks.is_empty() {
        return Err(Invalid::CancelListEmpty);
    }
    for (index, item) in request.tasks.iter().enumerate() {
        if item.peerid.is_empty() {
            return Err(Invalid::FieldEmpty {
                field: format!("tasks[{index}].peerid"),
            });
        }
        if item.jobid.is_empty() {
            return Err(Invalid::FieldEmpty {
                field: format!("tasks[{index}].jobid"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(content: ScriptContent) -> ScriptRequest {
        ScriptRequest {
            peers: vec!["p1".into()],
            content,
            ..ScriptRequest::default()
        }
    }

    fn command(text: &str) -> ScriptContent {
        ScriptContent {
            content: text.into(),
            ..ScriptContent::default()
        }
    }

    #[test]
    fn zero_timeout_uses_default() {
        let config = CoordinatorConfig::default();
        let timeout = validate_script_request(&request(command("true")), &config).unwrap();
        assert_eq!(timeout, config.default_timeout_secs);
    }

    #[test]
    fn timeout_above_max_is_rejected() {
        let config = CoordinatorConfig::default();
        let content = ScriptContent {
            timeout: config.max_timeout_secs as i32 + 1,
            ..command("true")
        };
        let error = validate_script_request(&request(content), &config).unwrap_err();
        assert!(
            matches!(error, Invalid::TimeoutTooLarge { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn script_names_that_escape_are_rejected() {
        for name in ["../etc/passwd", "/etc/passwd", "a/../../b", ".."] {
            assert!(validate_script_name(name).is_err(), "{name} was accepted");
        }
        for name in ["deploy.sh", "sub/dir/run.sh", "..hidden"] {
            assert!(validate_script_name(name).is_ok(), "{name} was rejected");
        }
    }

    #[test]
    fn stored_script_needs_hex_filehash() {
        let config = CoordinatorConfig::default();
        let content = ScriptContent {
            exec_way: 3,
            filehash: "xyz".into(),
            ..command("deploy.sh")
        };
        let error = validate_script_request(&request(content), &config).unwrap_err();
        assert!(
            matches!(error, Invalid::FilehashInvalid { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn unknown_exec_way_is_rejected() {
        let config = CoordinatorConfig::default();
        let content = ScriptContent {
            exec_way: 7,
            ..command("true")
        };
        let error = validate_script_request(&request(content), &config).unwrap_err();
        assert_eq!(error, Invalid::ExecWayUnknown { value: 7 });
    }

    #[test]
    fn env_name_with_equals_is_rejected() {
        let config = CoordinatorConfig::default();
        let mut content = command("true");
        content.env.insert("A=B".into(), "x".into());
        let error = validate_script_request(&request(content), &config).unwrap_err();
        assert!(matches!(error, Invalid::EnvNameInvalid { .. }), "{error:?}");
    }

    #[test]
    fn name_in_env_and_secret_env_is_rejected() {
        let config = CoordinatorConfig::default();
        let mut content = command("true");
        content.env.insert("TOKEN".into(), "plain".into());
        content.secret_env.insert("TOKEN", "hidden");
        let error = validate_script_request(&request(content), &config).unwrap_err();
        assert_eq!(
            error,
            Invalid::EnvNameInBoth {
                name: "TOKEN".into()
            }
        );
    }

    #[test]
    fn secret_env_name_follows_env_rules() {
        let config = CoordinatorConfig::default();
        let mut content = command("true");
        content.secret_env.insert("A=B", "x");
        let error = validate_script_request(&request(content), &config).unwrap_err();
        assert!(matches!(error, Invalid::EnvNameInvalid { .. }), "{error:?}");
    }

    #[test]
    fn secret_env_value_with_nul_names_field_only() {
        let config = CoordinatorConfig::default();
        let mut content = command("true");
        content.secret_env.insert("TOKEN", "ab\0cd");
        let error = validate_script_request(&request(content), &config).unwrap_err();
        assert_eq!(
            error,
            Invalid::NulByte {
                field: "content.secretEnv.TOKEN".into()
            }
        );
    }

    #[test]
    fn env_value_may_hold_equals_and_newline() {
        let config = CoordinatorConfig::default();
        let mut content = command("true");
        content.env.insert("A".into(), "x=y\nz".into());
        assert!(validate_script_request(&request(content), &config).is_ok());
    }
}
