//! JSON bodies of the calls that manage API tokens, agent enrollment and
//! credentials, and read the audit log. All of them need an `admin` token.

use serde::{Deserialize, Serialize};

/// Body of `POST /tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenCreateRequest {
    /// 1 to 64 letters, digits, `-`, `_` or `.`; shown in the audit log.
    #[serde(default)]
    pub name: String,
    /// `read`, `run` or `admin`; each includes the ones before it.
    #[serde(default)]
    pub scope: String,
    /// Seconds until the token expires; 0 or absent means never.
    #[serde(rename = "ttlSecs", default)]
    pub ttl_secs: i64,
}

/// `data` of `POST /tokens`. `token` is shown only here, once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreated {
    pub name: String,
    pub scope: String,
    pub token: String,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "expiresAt")]
    pub expires_at: Option<String>,
}

/// One entry of `GET /tokens`; it never carries the token itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    /// `api`, `enrollment` or `agent`.
    pub kind: String,
    pub scope: Option<String>,
    #[serde(rename = "peerId")]
    pub peer_id: Option<String>,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "expiresAt")]
    pub expires_at: Option<String>,
    /// When it was revoked, or when an enrollment token was used.
    #[serde(rename = "revokedAt")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenList {
    pub list: Vec<TokenInfo>,
}

/// Body of `POST /enrollments`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnrollmentRequest {
    /// The only peer id the token may enroll; empty means any peer id that
    /// has no credential yet.
    #[serde(rename = "peerId", default)]
    pub peer_id: String,
    /// Seconds the token stays usable; 0 or absent means 3600.
    #[serde(rename = "ttlSecs", default)]
    pub ttl_secs: u64,
}

/// `data` of `POST /enrollments`. `token` is shown only here, once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentCreated {
    pub token: String,
    #[serde(rename = "peerId")]
    pub peer_id: Option<String>,
    #[serde(rename = "expiresAt")]
    pub expires_at: String,
}

/// `data` of `POST /peers/{peerId}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRevoked {
    #[serde(rename = "peerId")]
    pub peer_id: String,
    #[serde(rename = "revokedAt")]
    pub revoked_at: String,
    /// True when the agent was connected and its connection was closed.
    pub disconnected: bool,
}

/// One entry of `GET /audit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub time: String,
    pub action: String,
    pub outcome: String,
    pub token: String,
    pub creater: String,
    pub source: String,
    pub target: String,
    pub request: serde_json::Value,
}

/// `data` of `GET /audit`: entries oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditList {
    pub list: Vec<AuditEntry>,
    /// Pass this as `after` to get the next entries.
    #[serde(rename = "nextAfter")]
    pub next_after: i64,
}
