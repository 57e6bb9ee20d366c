//! The JSON request body extractor of the REST API.
//!
//! It reads at most `max_body_bytes`, then parses in two passes so that each
//! kind of mistake gets its own error: first as plain JSON (syntax errors),
//! then into the typed request while recording every field the type does not
//! know (unknown fields, with their full path such as `content.execway`) and
//! the path of any value of the wrong type.

use axum::extract::{FromRequest, Request};
use http_body_util::LengthLimitError;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A request body parsed from JSON, with unknown fields rejected.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        let bytes = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|error| {
                if is_length_limit(&error) {
                    ApiError::BodyTooLarge { limit }
                } else {
                    ApiError::MalformedJson {
                        detail: format!("failed to read the body: {error}"),
                    }
                }
            })?;

        parse_json(&bytes).map(JsonBody)
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// Parses `bytes` into `T`, rejecting unknown fields.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|error| ApiError::MalformedJson {
            detail: error.to_string(),
        })?;

    if !value.is_object() {
        return Err(ApiError::WrongType {
            path: "(request body)".to_owned(),
            detail: "expected a JSON object".to_owned(),
        });
    }

    let mut unknown_fields = Vec::new();
    let mut record_unknown = |path: serde_ignored::Path<'_>| {
        unknown_fields.push(field_path(&path));
    };
    let tracked = serde_ignored::Deserializer::new(value, &mut record_unknown);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(tracked);

    if let Some(path) = unknown_fields.into_iter().next() {
        return Err(ApiError::UnknownField { path });
    }

    parsed.map_err(|error| ApiError::WrongType {
        path: error.path().to_string(),
        detail: error.into_inner().to_string(),
    })
}

/// Formats a field path as clients write it (`content.env`, `tasks[0].msg`),
/// leaving out the optional and newtype layers that serde adds.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;

    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use runwarden_protocol::api::ScriptRequest;

    use super::*;

    #[test]
    fn unknown_nested_field_is_named_with_path() {
        let body = br#"{"peers":["p"],"content":{"execway":1}}"#;
        let error = parse_json::<ScriptRequest>(body).unwrap_err();
        match error {
            ApiError::UnknownField { path } => assert_eq!(path, "content.execway"),
            other => panic!("expected UnknownField, got {other:?}"),
        }
    }

    #[test]
    fn wrong_type_names_path() {
        let body = br#"{"peers":["p"],"content":{"timeout":"ten"}}"#;
        let error = parse_json::<ScriptRequest>(body).unwrap_err();
        match error {
            ApiError::WrongType { path, .. } => assert_eq!(path, "content.timeout"),
            other => panic!("expected WrongType, got {other:?}"),
        }
    }

    #[test]
    fn timeout_beyond_int32_is_wrong_type() {
        let body = br#"{"peers":["p"],"content":{"timeout":99999999999}}"#;
        let error = parse_json::<ScriptRequest>(body).unwrap_err();
        assert!(matches!(error, ApiError::WrongType { .. }), "{error:?}");
    }

    #[test]
    fn unknown_field_in_list_item_is_named_with_index() {
        let body = br#"{"tasks":[{"peerid":"p","jobid":"j","mesage":"x"}]}"#;
        let error = parse_json::<runwarden_protocol::api::CancelRequest>(body).unwrap_err();
        match error {
            ApiError::UnknownField { path } => assert_eq!(path, "tasks[0].mesage"),
            other => panic!("expected UnknownField, got {other:?}"),
        }
    }

    #[test]
    fn syntax_error_is_malformed_json() {
        let error = parse_json::<ScriptRequest>(b"{\"peers\":").unwrap_err();
        assert!(matches!(error, ApiError::MalformedJson { .. }), "{error:?}");
    }

    #[test]
    fn non_object_body_is_wrong_type() {
        let error = parse_json::<ScriptRequest>(b"[1]").unwrap_err();
        match error {
            ApiError::WrongType { path, .. } => assert_eq!(path, "(request body)"),
            other => panic!("expected WrongType, got {other:?}"),
        }
    }
}
