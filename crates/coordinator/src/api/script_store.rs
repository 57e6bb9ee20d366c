//! The script store: scripts that agents download for execWay 3.

use std::time::SystemTime;

use axum::Json;
use axum::extract::{Extension, Path, State};
use runwarden_protocol::api::{Envelope, ScriptList, ScriptUpload, StoredScript, StoredScriptInfo};
use sha2::{Digest as _, Sha256};
use tracing::info;

use crate::auth::Caller;
use crate::body::JsonBody;
use crate::error::{ApiError, Invalid};
use crate::state::AppState;
use crate::storage::AuditRecord;
use crate::validate::validate_script_name;

/// Longest script name accepted, in bytes; most file systems allow 255 per
/// path component, and agents cache scripts by hash, not by name.
const MAX_SCRIPT_NAME_BYTES: usize = 255;

pub async fn upload_script(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(upload): JsonBody<ScriptUpload>,
) -> Result<Json<Envelope<StoredScriptInfo>>, ApiError> {
    // The audit log keeps the script's size and hash, not its text, which
    // the script store already holds.
    let entry = AuditRecord::new(&caller, "script.upload")
        .target(upload.name.clone())
        .request(serde_json::json!({
            "name": upload.name,
            "size": upload.content.len(),
            "sha256": hex::encode(Sha256::digest(upload.content.as_bytes())),
        }));

    let stored = store_upload(&state, upload).await;
    crate::audit::record(state.storage.as_ref(), entry.outcome_of(&stored)).await;
    Ok(Json(Envelope::ok(stored?)))
}

async fn store_upload(
    state: &AppState,
    upload: ScriptUpload,
) -> Result<StoredScriptInfo, ApiError> {
    validate_upload(&upload, state.config.max_script_bytes)?;

    let info = StoredScriptInfo {
        name: upload.name,
        sha256: hex::encode(Sha256::digest(upload.content.as_bytes())),
        size: upload.content.len() as u64,
        updated_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    };
    let script = StoredScript {
        info: info.clone(),
        content: upload.content,
    };
    state.storage.put_script(script).await?;

    info!(script = %info.name, sha256 = %info.sha256, size = info.size, "script stored");
    Ok(info)
}

fn validate_upload(upload: &ScriptUpload, max_bytes: usize) -> Result<(), ApiError> {
    if upload.name.is_empty() {
        return Err(Invalid::FieldEmpty {
            field: "name".to_owned(),
        }
        .into());
    }
    if upload.name.len() > MAX_SCRIPT_NAME_BYTES
        || upload.name.contains('\0')
        || upload.name.ends_with('/')
    {
        return Err(Invalid::ScriptNameInvalid {
            value: upload.name.clone(),
        }
        .into());
    }
    validate_script_name(&upload.name)?;
    if upload.content.len() > max_bytes {
        return Err(ApiError::ScriptTooLarge {
            name: upload.name.clone(),
            size: upload.content.len(),
            limit: max_bytes,
        });
    }
    Ok(())
}

pub async fn list_scripts(
    State(state): State<AppState>,
) -> Result<Json<Envelope<ScriptList>>, ApiError> {
    let list = state.storage.list_scripts().await?;
    Ok(Json(Envelope::ok(ScriptList { list })))
}

pub async fn fetch_script(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Envelope<StoredScript>>, ApiError> {
    let script = state
        .storage
        .script(&name)
        .await?
        .ok_or(ApiError::ScriptNotFound { name })?;
    Ok(Json(Envelope::ok(script)))
}

pub async fn delete_script(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Envelope<serde_json::Value>>, ApiError> {
    let entry = AuditRecord::new(&caller, "script.delete").target(name.clone());
    let deleted = match state.storage.delete_script(&name).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::ScriptNotFound { name: name.clone() }),
        Err(error) => Err(error.into()),
    };
    crate::audit::record(state.storage.as_ref(), entry.outcome_of(&deleted)).await;
    deleted?;

    info!(script = %name, "script deleted");
    Ok(Json(Envelope::ok(
        serde_json::json!({ "name": name, "deleted": true }),
    )))
}
