//! Errors of authentication, authorization, rate limits and the calls that
//! manage tokens and agent credentials.

use axum::http::StatusCode;

use crate::lang::Lang;

/// A reason a caller may not make a call, or a failure of a token or
/// enrollment call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("no bearer token")]
    MissingToken,
    #[error("bearer token is not valid")]
    InvalidToken,
    #[error("token `{token}` expired at {expired_at}")]
    ExpiredToken { token: String, expired_at: String },
    #[error("token `{token}` was revoked")]
    RevokedToken { token: String },
    #[error("agent link without a token")]
    AgentTokenMissing,
    #[error("agent link token is not valid")]
    AgentTokenInvalid,
    #[error("enrollment token `{token}` was used or revoked")]
    EnrollmentUsed { token: String },
    #[error("agent credential `{token}` was revoked")]
    CredentialRevoked { token: String },
    #[error("token `{token}` has scope {scope}, but the call needs {required}")]
    ScopeTooLow {
        token: String,
        scope: &'static str,
        required: &'static str,
    },
    #[error("token `{token}` created more than {limit} tasks in a minute")]
    RateLimited {
        token: String,
        limit: u32,
        retry_after_secs: u64,
    },
    #[error("a token named `{name}` exists")]
    TokenNameTaken { name: String },
    #[error("token `{name}` not found")]
    TokenNotFound { name: String },
    #[error("peer `{peer}` has no credential")]
    PeerNotEnrolled { peer: String },
    #[error("`{field}` is `{value}`: {expected}")]
    InvalidField {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl AccessError {
    pub fn status(&self) -> StatusCode {
        match self {
            AccessError::MissingToken
            | AccessError::InvalidToken
            | AccessError::ExpiredToken { .. }
            | AccessError::RevokedToken { .. }
            | AccessError::AgentTokenMissing
            | AccessError::AgentTokenInvalid
            | AccessError::EnrollmentUsed { .. }
            | AccessError::CredentialRevoked { .. } => StatusCode::UNAUTHORIZED,
            AccessError::ScopeTooLow { .. } => StatusCode::FORBIDDEN,
            AccessError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AccessError::TokenNameTaken { .. } => StatusCode::CONFLICT,
            AccessError::TokenNotFound { .. } | AccessError::PeerNotEnrolled { .. } => {
                StatusCode::NOT_FOUND
            }
            AccessError::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// Returns the number within the HTTP status; see
    /// [`super::ApiError::code`].
    pub fn code_within_status(&self) -> i32 {
        match self {
            AccessError::MissingToken => 1,
            AccessError::InvalidToken => 2,
            AccessError::ExpiredToken { .. } => 3,
            AccessError::RevokedToken { .. } => 4,
            AccessError::AgentTokenMissing => 1,
            AccessError::AgentTokenInvalid => 2,
            AccessError::EnrollmentUsed { .. } | AccessError::CredentialRevoked { .. } => 4,
            AccessError::ScopeTooLow { .. } => 1,
            AccessError::RateLimited { .. } => 1,
            AccessError::TokenNameTaken { .. } => 1,
            AccessError::TokenNotFound { .. } => 5,
            AccessError::PeerNotEnrolled { .. } => 6,
            AccessError::InvalidField { .. } => 2,
        }
    }

    pub fn message(&self, lang: Lang) -> String {
        match lang {
            Lang::En => self.message_en(),
            Lang::Zh => self.message_zh(),
        }
    }

    fn message_en(&self) -> String {
        match self {
            AccessError::MissingToken => "this call needs an API token; send the header `Authorization: Bearer <token>` (an admin creates tokens with `runwarden token create` or POST /tokens)".to_owned(),
            AccessError::InvalidToken => "the bearer token is not valid: it is malformed, unknown, or not an API token; check that the whole token was copied, or ask an admin for a new one".to_owned(),
            AccessError::ExpiredToken { token, expired_at } => format!(
                "token `{token}` expired at {expired_at}; ask an admin for a new token"
            ),
            AccessError::RevokedToken { token } => format!(
                "token `{token}` was revoked; ask an admin for a new token"
            ),
            AccessError::AgentTokenMissing => "this coordinator requires agents to authenticate; set enrollment_token in the agent config to an enrollment token from `runwarden token enroll` or POST /enrollments, and restart the agent".to_owned(),
            AccessError::AgentTokenInvalid => "the agent's token is not a valid enrollment token or agent credential for this coordinator (API tokens do not open agent links); set enrollment_token to a new enrollment token, delete credential_file if it is stale, and restart the agent".to_owned(),
            AccessError::EnrollmentUsed { token } => format!(
                "enrollment token `{token}` was already used or revoked; ask an admin for a new one with `runwarden token enroll`, set it as enrollment_token, and restart the agent"
            ),
            AccessError::CredentialRevoked { token } => format!(
                "agent credential `{token}` was revoked; ask an admin for a new enrollment token, delete credential_file, set enrollment_token, and restart the agent"
            ),
            AccessError::ScopeTooLow { token, scope, required } => format!(
                "token `{token}` has scope `{scope}`, but this call needs `{required}`; use a token with scope `{required}`"
            ),
            AccessError::RateLimited { token, limit, retry_after_secs } => format!(
                "token `{token}` reached its limit of {limit} tasks per minute; retry in {retry_after_secs} s, or ask an admin to raise max_tasks_per_minute"
            ),
            AccessError::TokenNameTaken { name } => format!(
                "a token named `{name}` exists and is not revoked; choose another name, or revoke the old token first with DELETE /tokens/{name}"
            ),
            AccessError::TokenNotFound { name } => format!(
                "no token named `{name}` that is not revoked; list tokens with GET /tokens"
            ),
            AccessError::PeerNotEnrolled { peer } => format!(
                "peer `{peer}` has no credential that is not revoked; list peers with GET /peers"
            ),
            AccessError::InvalidField { field, value, expected } => {
                format!("`{field}` is `{value}`; {expected}")
            }
        }
    }

    fn message_zh(&self) -> String {
        match self {
            AccessError::MissingToken => "此调用需要 API 令牌；请发送请求头 `Authorization: Bearer <令牌>`（管理员可用 `runwarden token create` 或 POST /tokens 创建令牌）".to_owned(),
            AccessError::InvalidToken => "Bearer 令牌无效：格式不对、不存在，或不是 API 令牌；请检查令牌是否完整复制，或向管理员申请新令牌".to_owned(),
            AccessError::ExpiredToken { token, expired_at } => {
                format!("令牌 `{token}` 已于 {expired_at} 过期；请向管理员申请新令牌")
            }
            AccessError::RevokedToken { token } => {
                format!("令牌 `{token}` 已被吊销；请向管理员申请新令牌")
            }
            AccessError::AgentTokenMissing => "此协调器要求 agent 进行身份认证；请在 agent 配置中把 enrollment_token 设为由 `runwarden token enroll` 或 POST /enrollments 生成的注册令牌，然后重启 agent".to_owned(),
            AccessError::AgentTokenInvalid => "agent 的令牌不是此协调器有效的注册令牌或 agent 凭据（API 令牌不能用于 agent 连接）；请把 enrollment_token 设为新的注册令牌，如凭据文件已失效则删除 credential_file，然后重启 agent".to_owned(),
            AccessError::EnrollmentUsed { token } => format!(
                "注册令牌 `{token}` 已被使用或已吊销；请向管理员申请新的注册令牌（`runwarden token enroll`），设为 enrollment_token 后重启 agent"
            ),
            AccessError::CredentialRevoked { token } => format!(
                "agent 凭据 `{token}` 已被吊销；请向管理员申请新的注册令牌，删除 credential_file，设置 enrollment_token 后重启 agent"
            ),
            AccessError::ScopeTooLow { token, scope, required } => format!(
                "令牌 `{token}` 的权限范围是 `{scope}`，此调用需要 `{required}`；请使用权限范围为 `{required}` 的令牌"
            ),
            AccessError::RateLimited { token, limit, retry_after_secs } => format!(
                "令牌 `{token}` 已达到每分钟 {limit} 个任务的上限；请在 {retry_after_secs} 秒后重试，或请管理员调大 max_tasks_per_minute"
            ),
            AccessError::TokenNameTaken { name } => format!(
                "已有名为 `{name}` 且未吊销的令牌；请换一个名称，或先用 DELETE /tokens/{name} 吊销旧令牌"
            ),
            AccessError::TokenNotFound { name } => {
                format!("没有名为 `{name}` 且未吊销的令牌；可用 GET /tokens 列出令牌")
            }
            AccessError::PeerNotEnrolled { peer } => {
                format!("节点 `{peer}` 没有未吊销的凭据；可用 GET /peers 列出节点")
            }
            AccessError::InvalidField { field, value, expected } => {
                format!("`{field}` 为 `{value}`；{}", expected_zh(expected))
            }
        }
    }
}

/// Chinese text of the `expected` phrases used with
/// [`AccessError::InvalidField`].
fn expected_zh(expected: &str) -> &'static str {
    match expected {
        SCOPE_EXPECTED => "请使用 read、run 或 admin",
        NAME_EXPECTED => "名称须为 1 到 64 个字母、数字、`-`、`_` 或 `.`",
        TTL_EXPECTED => "请填写不小于 0 的秒数（0 表示永不过期）",
        ENROLLMENT_TTL_EXPECTED => "请填写 1 到 604800（7 天）之间的秒数",
        PEER_EXPECTED => "请填写非空的节点 id",
        _ => "请修正此值",
    }
}

pub const SCOPE_EXPECTED: &str = "use read, run or admin";
pub const NAME_EXPECTED: &str = "a name is 1 to 64 letters, digits, `-`, `_` or `.`";
pub const TTL_EXPECTED: &str = "give a number of seconds of 0 or more (0: never expires)";
pub const ENROLLMENT_TTL_EXPECTED: &str = "give a number of seconds from 1 to 604800 (7 days)";
pub const PEER_EXPECTED: &str = "give a peer id that is not empty";
