//! Access control of the coordinator: API tokens with scopes, one-time
//! enrollment tokens and agent credentials, and the per-token task rate
//! limit.
//!
//! With `[auth] enabled = false` every REST caller is anonymous and agents
//! connect without credentials; the configuration allows that only on a
//! loopback listen address.

mod api;
mod rate;
pub mod token;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub use api::authenticate_api;
pub use rate::RateLimiter;

use axum::http::HeaderValue;
use std::net::SocketAddr;
use tracing::warn;

use crate::error::{
    AccessError, ENROLLMENT_TTL_EXPECTED, NAME_EXPECTED, PEER_EXPECTED, TTL_EXPECTED,
};
use crate::state::AppState;
use crate::storage::{AuditRecord, Storage, StorageError, TokenRecord};
use token::{Scope, TokenKind};

/// The caller of a REST request, as authentication found it. Handlers take
/// it from the request's extensions to fill the audit log.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Name of the token used; empty when authentication is off.
    pub token: String,
    /// IP address and port the request came from.
    pub source: String,
}

/// Maximum lifetime of an enrollment token: 7 days.
pub const MAX_ENROLLMENT_TTL_SECS: u64 = 7 * 24 * 3600;

/// Lifetime of an enrollment token whose request gives none.
pub const DEFAULT_ENROLLMENT_TTL_SECS: u64 = 3600;

/// State that authentication keeps between requests.
#[derive(Debug, Default)]
pub struct AuthState {
    pub rate: RateLimiter,
    /// When each token last got a `token.use` audit entry.
    token_use: Mutex<HashMap<String, Instant>>,
    /// Per source IP: the start of the current minute and how many
    /// `auth.denied` entries it has written in it.
    denials: Mutex<HashMap<String, (Instant, u32)>>,
}

/// Maximum denial entries (`auth.denied`, `agent.denied`) stored per source
/// IP per minute. Further
/// denials only get a log line, so a flood of bad tokens cannot fill the
/// disk.
const DENIALS_STORED_PER_MINUTE: u32 = 20;

impl AuthState {
    /// Returns true when `token` is due a `token.use` audit entry, and
    /// notes that it got one.
    pub fn token_use_due(&self, token: &str, interval: Duration) -> bool {
        let mut last = self.token_use.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match last.get(token) {
            Some(at) if now.duration_since(*at) < interval => false,
            _ => {
                last.insert(token.to_owned(), now);
                true
            }
        }
    }

    /// Returns true when a denial from `source_ip` may be stored in the
    /// audit log, false when this minute's budget for it is spent.
    pub fn denial_storable(&self, source_ip: &str) -> bool {
        let mut denials = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if denials.len() > 10_000 {
            denials.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let entry = denials.entry(source_ip.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= DENIALS_STORED_PER_MINUTE
    }
}

/// A failure to create a token: bad input, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the operating system has no random source: {0}")]
    Random(getrandom::Error),
}

/// Checks a token name: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
pub fn check_token_name(name: &str) -> Result<(), AccessError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(AccessError::InvalidField {
            field: "name",
            value: name.to_owned(),
            expected: NAME_EXPECTED,
        })
    }
}

/// Creates an API token and returns its record and the token string, which
/// is shown once and never stored. `ttl_secs` 0 means it never expires.
///
/// # Errors
///
/// Fails on an invalid name or TTL, a name already in use, or a storage
/// failure.
pub async fn create_api_token(
    storage: &dyn Storage,
    name: &str,
    scope: Scope,
    ttl_secs: i64,
) -> Result<(TokenRecord, String), IssueError> {
    check_token_name(name)?;
    if ttl_secs < 0 {
        return Err(AccessError::InvalidField {
            field: "ttlSecs",
            value: ttl_secs.to_string(),
            expected: TTL_EXPECTED,
        }
        .into());
    }

    let issued = token::issue(TokenKind::Api).map_err(IssueError::Random)?;
    let now = SystemTime::now();
    let record = TokenRecord {
        token_id: issued.token_id.clone(),
        name: name.to_owned(),
        kind: TokenKind::Api,
        scope: Some(scope),
        peer_id: None,
        secret_hash: issued.secret_hash.clone(),
        created_at: now,
        expires_at: (ttl_secs > 0).then(|| now + Duration::from_secs(ttl_secs.unsigned_abs())),
        revoked_at: None,
    };
    if !storage.insert_token(record.clone()).await? {
        return Err(AccessError::TokenNameTaken {
            name: name.to_owned(),
        }
        .into());
    }
    Ok((record, issued.token))
}

/// Creates a one-time enrollment token that lets one agent enroll as
/// `peer_id` (or as any peer id not enrolled yet when `None`) within
/// `ttl_secs`.
///
/// # Errors
///
/// Fails on an empty peer id, a TTL outside 1 s to 7 days, or a storage
/// failure.
pub async fn create_enrollment(
    storage: &dyn Storage,
    peer_id: Option<&str>,
    ttl_secs: u64,
) -> Result<(TokenRecord, String), IssueError> {
    if peer_id.is_some_and(|peer| peer.trim().is_empty()) {
        return Err(AccessError::InvalidField {
            field: "peerId",
            value: String::new(),
            expected: PEER_EXPECTED,
        }
        .into());
    }
    if !(1..=MAX_ENROLLMENT_TTL_SECS).contains(&ttl_secs) {
        return Err(AccessError::InvalidField {
            field: "ttlSecs",
            value: ttl_secs.to_string(),
            expected: ENROLLMENT_TTL_EXPECTED,
        }
        .into());
    }

    let issued = token::issue(TokenKind::Enrollment).map_err(IssueError::Random)?;
    let now = SystemTime::now();
    let record = TokenRecord {
        token_id: issued.token_id.clone(),
        // The id keeps names unique, so several enrollment tokens for one
        // peer can wait at once.
        name: format!("enroll:{}:{}", peer_id.unwrap_or("*"), issued.token_id),
        kind: TokenKind::Enrollment,
        scope: None,
        peer_id: peer_id.map(str::to_owned),
        secret_hash: issued.secret_hash.clone(),
        created_at: now,
        expires_at: Some(now + Duration::from_secs(ttl_secs)),
        revoked_at: None,
    };
    storage.insert_token(record.clone()).await?;
    Ok((record, issued.token))
}

/// Makes a new credential for the agent on `peer_id` and returns the record
/// to store and the token to hand to the agent. Nothing is stored yet.
///
/// # Errors
///
/// Fails only when the operating system has no random source.
pub fn new_agent_credential(
    peer_id: &str,
    now: SystemTime,
) -> Result<(TokenRecord, String), getrandom::Error> {
    let issued = token::issue(TokenKind::Agent)?;
    let record = TokenRecord {
        token_id: issued.token_id.clone(),
        name: agent_credential_name(peer_id),
        kind: TokenKind::Agent,
        scope: None,
        peer_id: Some(peer_id.to_owned()),
        secret_hash: issued.secret_hash.clone(),
        created_at: now,
        expires_at: None,
        revoked_at: None,
    };
    Ok((record, issued.token))
}

/// Name of the credential of the agent on `peer_id`.
pub fn agent_credential_name(peer_id: &str) -> String {
    format!("agent:{peer_id}")
}

/// Looks up a presented token string and checks its kind, secret, expiry
/// and revocation. Scopes are the caller's to check.
///
/// # Errors
///
/// Returns the [`AccessError`] the caller should get.
pub async fn verify_token(
    storage: &dyn Storage,
    presented: &str,
    kinds: &[TokenKind],
) -> Result<TokenRecord, VerifyError> {
    let Some(parsed) = token::parse(presented) else {
        return Err(AccessError::InvalidToken.into());
    };
    if !kinds.contains(&parsed.kind) {
        return Err(AccessError::InvalidToken.into());
    }
    let Some(record) = storage.token(parsed.token_id).await? else {
        return Err(AccessError::InvalidToken.into());
    };
    if record.kind != parsed.kind || !token::secret_matches(parsed.secret, &record.secret_hash) {
        return Err(AccessError::InvalidToken.into());
    }

    if record.revoked_at.is_some() {
        return Err(VerifyError::Known {
            error: AccessError::RevokedToken {
                token: record.name.clone(),
            },
            token: record.name,
        });
    }
    if let Some(expires_at) = record.expires_at
        && expires_at <= SystemTime::now()
    {
        return Err(VerifyError::Known {
            error: AccessError::ExpiredToken {
                token: record.name.clone(),
                expired_at: humantime::format_rfc3339_seconds(expires_at).to_string(),
            },
            token: record.name,
        });
    }
    Ok(record)
}

/// The reason a presented token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The store has no such token, or its secret is wrong.
    #[error(transparent)]
    Unknown(#[from] AccessError),
    /// The token is real but expired or revoked; `token` is its name, for
    /// the audit log.
    #[error("{error}")]
    Known { error: AccessError, token: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Returns the token of an `Authorization: Bearer` header.
///
/// # Errors
///
/// Returns [`AccessError::MissingToken`] without the header or with another
/// scheme, and [`AccessError::InvalidToken`] for a value that is not ASCII
/// or has no token.
pub fn bearer_token(authorization: Option<&HeaderValue>) -> Result<&str, AccessError> {
    let Some(value) = authorization else {
        return Err(AccessError::MissingToken);
    };
    let value = value.to_str().map_err(|_| AccessError::InvalidToken)?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err(AccessError::InvalidToken);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AccessError::MissingToken);
    }
    Ok(token.trim())
}

/// Writes an audit entry for a rejected call or agent link. Past
/// [`DENIALS_STORED_PER_MINUTE`] from one source IP address in a minute,
/// the denial only gets a warning line.
pub async fn record_denial(state: &AppState, entry: AuditRecord) {
    let source_ip = entry
        .source
        .parse::<SocketAddr>()
        .map(|address| address.ip().to_string())
        .unwrap_or_else(|_| entry.source.clone());
    if !state.auth.denial_storable(&source_ip) {
        warn!(
            action = %entry.action,
            source = %entry.source,
            outcome = %entry.outcome,
            "access denied; more denials from this source this minute are only logged"
        );
        return;
    }
    crate::audit::record(state.storage.as_ref(), entry).await;
}
