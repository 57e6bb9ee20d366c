//! Agent identity on the link. The bearer token of a new connection is
//! checked before the WebSocket upgrade, and the peer id of its `Hello`
//! against that token after it.

use std::time::SystemTime;

use axum::http::{HeaderMap, header};
use tracing::{info, warn};

use crate::auth::token::TokenKind;
use crate::auth::{self, Caller, VerifyError, bearer_token, record_denial, verify_token};
use crate::error::{AccessError, ApiError};
use crate::state::AppState;
use crate::storage::{AuditRecord, EnrollRefusal, TokenRecord};

/// The peer ids an agent connection may use, as its token allows.
#[derive(Debug, Clone)]
pub enum LinkIdentity {
    /// Authentication is off: any peer id is taken as given.
    Open,
    /// An agent credential; the connection may only be this peer.
    Agent { peer_id: String },
    /// A one-time enrollment token, to be exchanged for a credential once
    /// the `Hello` names the peer.
    Enrollment {
        token_id: String,
        /// The only peer id the token may enroll, if it names one.
        peer_id: Option<String>,
    },
}

/// Checks the bearer token of an agent connection before the upgrade.
///
/// # Errors
///
/// Returns the error response for a missing, invalid, expired or revoked
/// token, or for an API token, which does not open agent links.
pub async fn authenticate_link(
    state: &AppState,
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<LinkIdentity, ApiError> {
    if !state.config.auth.enabled {
        return Ok(LinkIdentity::Open);
    }

    let presented = bearer_token(headers.get(header::AUTHORIZATION)).ok();
    let Some(presented) = presented else {
        let error = ApiError::from(AccessError::AgentTokenMissing);
        deny(state, caller, "", &error).await;
        return Err(error);
    };

    let kinds = [TokenKind::Agent, TokenKind::Enrollment];
    let (error, token) = match verify_token(state.storage.as_ref(), presented, &kinds).await {
        Ok(record) => return Ok(identity_of(record)),
        Err(VerifyError::Unknown(_)) => (AccessError::AgentTokenInvalid, String::new()),
        Err(VerifyError::Known { error, token }) => (link_error(error, &token), token),
        Err(VerifyError::Storage(error)) => return Err(error.into()),
    };
    let error = ApiError::from(error);
    deny(state, caller, &token, &error).await;
    Err(error)
}

/// Rewords a revoked-token error for agents: a used enrollment token and a
/// revoked credential each need their own fix.
fn link_error(error: AccessError, token: &str) -> AccessError {
    match error {
        AccessError::RevokedToken { token: name } if token.starts_with("enroll:") => {
            AccessError::EnrollmentUsed { token: name }
        }
        AccessError::RevokedToken { token: name } => AccessError::CredentialRevoked { token: name },
        other => other,
    }
}

fn identity_of(record: TokenRecord) -> LinkIdentity {
    match record.kind {
        TokenKind::Enrollment => LinkIdentity::Enrollment {
            token_id: record.token_id,
            peer_id: record.peer_id,
        },
        // verify_token only passes agent and enrollment tokens; a
        // credential without a peer (never written) matches no peer id.
        _ => LinkIdentity::Agent {
            peer_id: record.peer_id.unwrap_or_default(),
        },
    }
}

/// Checks the peer id of the `Hello` against the connection's identity,
/// enrolling the peer when the identity is an enrollment token.
///
/// Returns the new credential to send in `Welcome` (only on enrollment), or
/// the reason to close the connection with. Reasons stay under the 123
/// bytes a WebSocket close frame allows.
pub async fn admit_peer(
    state: &AppState,
    identity: LinkIdentity,
    peer_id: &str,
    caller: &Caller,
) -> Result<Option<String>, String> {
    match identity {
        LinkIdentity::Open => Ok(None),
        LinkIdentity::Agent { peer_id: bound } if bound == peer_id => Ok(None),
        LinkIdentity::Agent { peer_id: bound } => {
            warn!(peer_id, credential_peer_id = %bound, "agent rejected: its credential belongs to another peer");
            let entry = AuditRecord::new(caller, "agent.denied")
                .token(auth::agent_credential_name(&bound))
                .target(peer_id)
                .outcome("credential_for_other_peer");
            crate::audit::record(state.storage.as_ref(), entry).await;
            Err(format!(
                "this credential belongs to peer `{bound}`; use peer_id `{bound}` or enroll this peer"
            ))
        }
        LinkIdentity::Enrollment {
            token_id,
            peer_id: restricted,
        } => enroll(state, &token_id, restricted.as_deref(), peer_id, caller).await,
    }
}

async fn enroll(
    state: &AppState,
    enrollment_id: &str,
    restricted: Option<&str>,
    peer_id: &str,
    caller: &Caller,
) -> Result<Option<String>, String> {
    let token_name = format!("enroll:{}:{enrollment_id}", restricted.unwrap_or("*"));
    let enrolled = AuditRecord::new(caller, "agent.enroll")
        .token(token_name.clone())
        .target(peer_id);
    let denied = AuditRecord::new(caller, "agent.denied")
        .token(token_name)
        .target(peer_id);

    if let Some(only) = restricted
        && only != peer_id
    {
        warn!(
            peer_id,
            enrollment_peer_id = only,
            "agent rejected: enrollment token is for another peer"
        );
        crate::audit::record(
            state.storage.as_ref(),
            denied.outcome("enrollment_for_other_peer"),
        )
        .await;
        return Err(format!(
            "this enrollment token is for peer `{only}`; set peer_id to it or get a token for this peer"
        ));
    }

    let now = SystemTime::now();
    let (credential, token) = match auth::new_agent_credential(peer_id, now) {
        Ok(made) => made,
        Err(error) => {
            warn!(%error, "failed to read random bytes for an agent credential");
            return Err("coordinator failed to make a credential; retry later".to_owned());
        }
    };

    let refusal = match state.storage.enroll(enrollment_id, credential, now).await {
        Ok(Ok(())) => {
            info!(peer_id, "agent enrolled");
            crate::audit::record(state.storage.as_ref(), enrolled).await;
            return Ok(Some(token));
        }
        Ok(Err(refusal)) => refusal,
        Err(error) => {
            warn!(%error, peer_id, "failed to store an agent credential");
            return Err("coordinator failed to store the credential; retry later".to_owned());
        }
    };

    let (outcome, reason) = match refusal {
        EnrollRefusal::TokenUsed => (
            "enrollment_used",
            "this enrollment token was already used; ask an admin for a new one".to_owned(),
        ),
        EnrollRefusal::PeerEnrolled => (
            "peer_already_enrolled",
            format!(
                "peer `{peer_id}` is already enrolled; revoke it first with POST /peers/{{peerId}}/revoke"
            ),
        ),
    };
    warn!(peer_id, outcome, "agent enrollment rejected");
    crate::audit::record(state.storage.as_ref(), denied.outcome(outcome)).await;
    Err(reason)
}

async fn deny(state: &AppState, caller: &Caller, token: &str, error: &ApiError) {
    let entry = AuditRecord::new(caller, "agent.denied")
        .token(token)
        .target(runwarden_protocol::link::AGENT_LINK_PATH)
        .outcome(error.code().to_string());
    record_denial(state, entry).await;
}
