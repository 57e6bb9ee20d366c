//! Calls that manage API tokens, agent enrollment and credentials, and
//! read the audit log. The router lets only `admin` tokens reach them.

use std::collections::HashMap;
use std::time::SystemTime;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use runwarden_protocol::access::{
    AuditEntry, AuditList, EnrollmentCreated, EnrollmentRequest, PeerRevoked, TokenCreateRequest,
    TokenCreated, TokenInfo, TokenList,
};
use runwarden_protocol::api::Envelope;
use tracing::{error, info};

use crate::auth::token::{Scope, TokenKind};
use crate::auth::{self, Caller, IssueError};
use crate::body::JsonBody;
use crate::error::{AccessError, ApiError, SCOPE_EXPECTED};
use crate::state::AppState;
use crate::storage::{AuditQuery, AuditRecord, TokenRecord};

/// Most audit entries one `GET /audit` returns.
const MAX_AUDIT_PAGE: usize = 1000;

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

impl From<IssueError> for ApiError {
    fn from(issue: IssueError) -> Self {
        match issue {
            IssueError::Access(error) => error.into(),
            IssueError::Storage(error) => error.into(),
            IssueError::Random(cause) => {
                error!(%cause, "failed to read random bytes for a token");
                ApiError::Internal
            }
        }
    }
}

pub async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<TokenCreateRequest>,
) -> Result<Json<Envelope<TokenCreated>>, ApiError> {
    let entry = AuditRecord::new(&caller, "token.create")
        .target(request.name.clone())
        .request(serde_json::to_value(&request).unwrap_or_default());

    let created = async {
        let scope = Scope::parse(&request.scope).ok_or_else(|| AccessError::InvalidField {
            field: "scope",
            value: request.scope.clone(),
            expected: SCOPE_EXPECTED,
        })?;
        let created = auth::create_api_token(
            state.storage.as_ref(),
            &request.name,
            scope,
            request.ttl_secs,
        )
        .await?;
        Ok::<_, ApiError>(created)
    }
    .await;
    crate::audit::record(state.storage.as_ref(), entry.outcome_of(&created)).await;

    let (record, token) = created?;
    info!(token = %record.name, scope = request.scope, "API token created");
    Ok(Json(Envelope::ok(TokenCreated {
        name: record.name,
        scope: request.scope,
        token,
        created_at: rfc3339(record.created_at),
        expires_at: record.expires_at.map(rfc3339),
    })))
}

pub async fn list_tokens(
    State(state): State<AppState>,
) -> Result<Json<Envelope<TokenList>>, ApiError> {
    let list = state
        .storage
        .tokens()
        .await?
        .into_iter()
        .map(token_info)
        .collect();
    Ok(Json(Envelope::ok(TokenList { list })))
}

fn token_info(record: TokenRecord) -> TokenInfo {
    TokenInfo {
        name: record.name,
        kind: record.kind.as_str().to_owned(),
        scope: record.scope.map(|scope| scope.as_str().to_owned()),
        peer_id: record.peer_id,
        created_at: rfc3339(record.created_at),
        expires_at: record.expires_at.map(rfc3339),
        revoked_at: record.revoked_at.map(rfc3339),
    }
}

pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Envelope<TokenInfo>>, ApiError> {
    let entry = AuditRecord::new(&caller, "token.revoke").target(name.clone());

    let revoked = match state.storage.revoke_token(&name, SystemTime::now()).await {
        Ok(Some(record)) if record.kind == TokenKind::Agent => {
            // An agent credential may have an open connection; close it.
            if let Some(peer_id) = &record.peer_id {
                disconnect_peer(&state, peer_id);
            }
            Ok(record)
        }
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(AccessError::TokenNotFound { name: name.clone() }.into()),
        Err(error) => Err(ApiError::from(error)),
    };
    crate::audit::record(state.storage.as_ref(), entry.outcome_of(&revoked)).await;

    let record = revoked?;
    info!(token = %record.name, "token revoked");
    Ok(Json(Envelope::ok(token_info(record))))
}

pub async fn create_enrollment(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<EnrollmentRequest>,
) -> Result<Json<Envelope<EnrollmentCreated>>, ApiError> {
    let entry = AuditRecord::new(&caller, "enrollment.create")
        .target(request.peer_id.clone())
        .request(serde_json::to_value(&request).unwrap_or_default());

    let peer_id = (!request.peer_id.is_empty()).then_some(request.peer_id.as_str());
    let ttl_secs = match request.ttl_secs {
        0 => auth::DEFAULT_ENROLLMENT_TTL_SECS,
        ttl => ttl,
    };
    let created = auth::create_enrollment(state.storage.as_ref(), peer_id, ttl_secs)
        .await
        .map_err(ApiError::from);
    crate::audit::record(state.storage.as_ref(), entry.outcome_of(&created)).await;

    let (record, token) = created?;
    info!(peer_id = peer_id.unwrap_or("*"), "enrollment token created");
    Ok(Json(Envelope::ok(EnrollmentCreated {
        token,
        peer_id: record.peer_id,
        expires_at: record.expires_at.map(rfc3339).unwrap_or_default(),
    })))
}

/// `POST /peers/{peerId}/revoke`: revokes the peer's agent credential and
/// closes its connection. The agent cannot connect again until it enrolls
/// with a new enrollment token.
pub async fn revoke_peer(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(peer_id): Path<String>,
) -> Result<Json<Envelope<PeerRevoked>>, ApiError> {
    let entry = AuditRecord::new(&caller, "agent.revoke").target(peer_id.clone());
    let now = SystemTime::now();

    let revoked = match state
        .storage
        .revoke_token(&auth::agent_credential_name(&peer_id), now)
        .await
    {
        Ok(Some(_)) => Ok(disconnect_peer(&state, &peer_id)),
        Ok(None) => Err(AccessError::PeerNotEnrolled {
            peer: peer_id.clone(),
        }
        .into()),
        Err(error) => Err(ApiError::from(error)),
    };
    crate::audit::record(state.storage.as_ref(), entry.outcome_of(&revoked)).await;

    let disconnected = revoked?;
    info!(peer_id, disconnected, "agent credential revoked");
    Ok(Json(Envelope::ok(PeerRevoked {
        peer_id,
        revoked_at: rfc3339(now),
        disconnected,
    })))
}

/// Closes the agent link of `peer_id`, if it is connected, and returns
/// whether it was.
fn disconnect_peer(state: &AppState, peer_id: &str) -> bool {
    match state.peers.get(peer_id) {
        Some(connection) => {
            connection.closed.cancel();
            true
        }
        None => false,
    }
}

/// `GET /audit?after=ID&limit=N&action=A&token=T`: audit entries oldest
/// first.
pub async fn list_audit(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Envelope<AuditList>>, ApiError> {
    let query = audit_query(params)?;
    let after_id = query.after_id;

    let list: Vec<AuditEntry> = state
        .storage
        .audit(query)
        .await?
        .into_iter()
        .map(|record| AuditEntry {
            id: record.id,
            time: humantime::format_rfc3339_millis(record.time).to_string(),
            action: record.action,
            outcome: record.outcome,
            token: record.token,
            creater: record.creater,
            source: record.source,
            target: record.target,
            request: record.request,
        })
        .collect();
    let next_after = list.last().map_or(after_id, |entry| entry.id);
    Ok(Json(Envelope::ok(AuditList { list, next_after })))
}

fn audit_query(params: HashMap<String, String>) -> Result<AuditQuery, ApiError> {
    let mut query = AuditQuery {
        limit: 100,
        ..AuditQuery::default()
    };
    for (name, value) in params {
        let number = |value: &str| {
            value.parse::<i64>().map_err(|error| ApiError::WrongType {
                path: name.clone(),
                detail: format!("`{value}` is not a whole number: {error}"),
            })
        };
        match name.as_str() {
            "after" => query.after_id = number(&value)?,
            "limit" => {
                let limit = number(&value)?;
                query.limit = usize::try_from(limit.clamp(1, MAX_AUDIT_PAGE as i64)).unwrap_or(1);
            }
            "action" => query.action = Some(value),
            "token" => query.token = Some(value),
            _ => return Err(ApiError::UnknownField { path: name }),
        }
    }
    Ok(query)
}
