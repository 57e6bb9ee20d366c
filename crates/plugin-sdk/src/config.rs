//! Parsing of the plugin configuration that the sandbox policy passes as JSON
//! text.

use serde::de::DeserializeOwned;

/// Parses the plugin's JSON configuration into `T`.
///
/// Empty or blank text counts as `{}`. The error names the path of the value
/// that failed, such as ``invalid config at `max_timeout`: invalid type:
/// string "60", expected i32 at line 1 column 20``, so it can be returned as
/// it is from `validate_config`. Put `#[serde(deny_unknown_fields)]` on `T`
/// to reject misspelt keys.
pub fn parse_config<T: DeserializeOwned>(config: &str) -> Result<T, String> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);

    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        // Syntax errors carry a line and column but no meaningful path.
        if path == "." || !error.inner().is_data() {
            format!("invalid config: {}", error.inner())
        } else {
            format!("invalid config at `{path}`: {}", error.inner())
        }
    })?;
    deserializer
        .end()
        .map_err(|error| format!("invalid config: {error}"))?;

    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::parse_config;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        #[serde(default)]
        users: Option<Vec<String>>,
        #[serde(default)]
        max_timeout: Option<i32>,
    }

    #[test]
    fn blank_config_is_empty_object() {
        let parsed: Limits = parse_config("  ").unwrap();
        assert_eq!(
            parsed,
            Limits {
                users: None,
                max_timeout: None
            }
        );
    }

    #[test]
    fn wrong_type_names_field() {
        let error = parse_config::<Limits>(r#"{"max_timeout": "60"}"#).unwrap_err();
        assert!(
            error.starts_with("invalid config at `max_timeout`: invalid type: string \"60\""),
            "{error}"
        );
    }

    #[test]
    fn wrong_list_item_names_index() {
        let error = parse_config::<Limits>(r#"{"users": ["deploy", 7]}"#).unwrap_err();
        assert!(
            error.starts_with("invalid config at `users[1]`:"),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let error = parse_config::<Limits>(r#"{"userz": []}"#).unwrap_err();
        assert!(error.contains("unknown field `userz`"), "{error}");
    }

    #[test]
    fn trailing_text_is_rejected() {
        let error = parse_config::<Limits>("{} {}").unwrap_err();
        assert!(
            error.starts_with("invalid config: trailing characters"),
            "{error}"
        );
    }

    #[test]
    fn invalid_json_is_rejected() {
        let error = parse_config::<Limits>("{users: []}").unwrap_err();
        assert!(
            error.starts_with("invalid config: key must be a string"),
            "{error}"
        );
    }
}
