//! Errors the REST API returns, with their codes and messages.
//!
//! Every error is sent in the response envelope with a non-zero `code` and
//! an HTTP status of the matching class: `code` is the HTTP status times 100
//! plus a number within that status, so a client may check either. The
//! `message` names the bad value and the fix, in English or Simplified
//! Chinese as the request's `Accept-Language` asks.
//!
//! Internal failures get a generic message. The real error is logged, never
//! sent, because it may describe the coordinator's internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runwarden_protocol::api::Envelope;

use crate::lang::Lang;

mod access;

pub use access::{
    AccessError, ENROLLMENT_TTL_EXPECTED, NAME_EXPECTED, PEER_EXPECTED, SCOPE_EXPECTED,
    TTL_EXPECTED,
};

/// A rule that a script request breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    PeersEmpty,
    PeerIdEmpty {
        index: usize,
    },
    PeerDuplicate {
        peer: String,
    },
    TooManyPeers {
        count: usize,
        max: usize,
    },
    ExecWayUnknown {
        value: i32,
    },
    ContentEmpty {
        exec_way: i32,
    },
    TimeoutNegative {
        value: i32,
    },
    TimeoutTooLarge {
        value: i32,
        max: u32,
    },
    FilehashMissing,
    FilehashInvalid {
        value: String,
    },
    ScriptNameInvalid {
        value: String,
    },
    PathNotAbsolute {
        value: String,
    },
    EnvNameInvalid {
        name: String,
    },
    /// The same variable is in `content.env` and `content.secretEnv`.
    EnvNameInBoth {
        name: String,
    },
    NulByte {
        field: String,
    },
    UserNameInvalid {
        value: String,
    },
    InterpreterNoInlineForm {
        cmd: String,
    },
    FieldEmpty {
        field: String,
    },
    CancelListEmpty,
}

/// An error response of the REST API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {detail}")]
    MalformedJson { detail: String },
    #[error("unknown field `{path}`")]
    UnknownField { path: String },
    #[error("field `{path}` has the wrong type: {detail}")]
    WrongType { path: String, detail: String },
    #[error("invalid request: {0:?}")]
    Invalid(Invalid),
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("script `{name}` is {size} bytes, above the limit of {limit}")]
    ScriptTooLarge {
        name: String,
        size: usize,
        limit: usize,
    },
    #[error("peer `{peer}` not found")]
    PeerNotFound { peer: String },
    #[error("task `{taskid}` not found")]
    TaskNotFound { taskid: String },
    #[error("script `{name}` not found")]
    ScriptNotFound { name: String },
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("internal error")]
    Internal,
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Access(AccessError),
}

impl From<AccessError> for ApiError {
    fn from(error: AccessError) -> Self {
        ApiError::Access(error)
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(error: crate::storage::StorageError) -> Self {
        tracing::error!(%error, "storage failed");
        ApiError::Internal
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::Invalid(invalid)
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson { .. }
            | ApiError::UnknownField { .. }
            | ApiError::WrongType { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BodyTooLarge { .. } | ApiError::ScriptTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::PeerNotFound { .. }
            | ApiError::TaskNotFound { .. }
            | ApiError::ScriptNotFound { .. }
            | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Access(error) => error.status(),
        }
    }

    /// The envelope `code`: HTTP status times 100 plus a number within it.
    pub fn code(&self) -> i32 {
        let within = match self {
            ApiError::MalformedJson { .. } => 1,
            ApiError::UnknownField { .. } => 2,
            ApiError::WrongType { .. } => 3,
            ApiError::Invalid(_) => 1,
            ApiError::BodyTooLarge { .. } => 1,
            ApiError::ScriptTooLarge { .. } => 2,
            ApiError::PeerNotFound { .. } => 1,
            ApiError::TaskNotFound { .. } => 2,
            ApiError::ScriptNotFound { .. } => 3,
            ApiError::RouteNotFound { .. } => 4,
            ApiError::Internal => 1,
            ApiError::ShuttingDown => 1,
            ApiError::Access(error) => error.code_within_status(),
        };
        i32::from(self.status().as_u16()) * 100 + within
    }

    /// The message for clients, in `lang`.
    pub fn message(&self, lang: Lang) -> String {
        if let ApiError::Access(error) = self {
            return error.message(lang);
        }
        match lang {
            Lang::En => self.message_en(),
            Lang::Zh => self.message_zh(),
        }
    }

    fn message_en(&self) -> String {
        match self {
            ApiError::MalformedJson { detail } => {
                format!("request body is not valid JSON ({detail}); send one JSON object")
            }
            ApiError::UnknownField { path } => format!(
                "unknown field `{path}`; check its spelling against the API reference (field names are case-sensitive, e.g. `execWay`)"
            ),
            ApiError::WrongType { path, detail } => {
                format!("field `{path}` has the wrong type ({detail}); fix its value")
            }
            ApiError::Invalid(invalid) => invalid_en(invalid),
            ApiError::BodyTooLarge { limit } => format!(
                "request body is larger than {limit} bytes; send less, or raise max_body_bytes in the coordinator config"
            ),
            ApiError::ScriptTooLarge { name, size, limit } => format!(
                "script `{name}` is {size} bytes, above the limit of {limit}; shorten it or raise max_script_bytes"
            ),
            ApiError::PeerNotFound { peer } => format!(
                "peer `{peer}` not found: no agent with this id has connected; check the id with GET /peers and start its agent"
            ),
            ApiError::TaskNotFound { taskid } => {
                format!("task `{taskid}` not found; use the taskid returned by /script/async")
            }
            ApiError::ScriptNotFound { name } => {
                format!(
                    "script `{name}` not found in the script store; list scripts with GET /scripts"
                )
            }
            ApiError::RouteNotFound { method, path } => {
                format!("no API call {method} {path}; see the API reference for the calls")
            }
            ApiError::Internal => {
                "internal error in the coordinator; retry, and report it if it persists".to_owned()
            }
            ApiError::ShuttingDown => {
                "the coordinator is shutting down and takes no new tasks; retry when it is back"
                    .to_owned()
            }
            ApiError::Access(error) => error.message(Lang::En),
        }
    }

    fn message_zh(&self) -> String {
        match self {
            ApiError::MalformedJson { detail } => {
                format!("请求体不是合法的 JSON（{detail}）；请发送一个 JSON 对象")
            }
            ApiError::UnknownField { path } => format!(
                "未知字段 `{path}`；请对照 API 参考检查拼写（字段名区分大小写，例如 `execWay`）"
            ),
            ApiError::WrongType { path, detail } => {
                format!("字段 `{path}` 的类型不对（{detail}）；请修正其值")
            }
            ApiError::Invalid(invalid) => invalid_zh(invalid),
            ApiError::BodyTooLarge { limit } => {
                format!("请求体超过 {limit} 字节；请减小请求，或在协调器配置中调大 max_body_bytes")
            }
            ApiError::ScriptTooLarge { name, size, limit } => format!(
                "脚本 `{name}` 有 {size} 字节，超过上限 {limit}；请缩短脚本或调大 max_script_bytes"
            ),
            ApiError::PeerNotFound { peer } => format!(
                "找不到节点 `{peer}`：没有这个 id 的 agent 连接过；请用 GET /peers 核对 id，并启动该节点的 agent"
            ),
            ApiError::TaskNotFound { taskid } => {
                format!("找不到任务 `{taskid}`；请使用 /script/async 返回的 taskid")
            }
            ApiError::ScriptNotFound { name } => {
                format!("脚本库中找不到脚本 `{name}`；可用 GET /scripts 列出脚本")
            }
            ApiError::RouteNotFound { method, path } => {
                format!("没有 {method} {path} 这个 API；请查看 API 参考")
            }
            ApiError::Internal => "协调器内部错误；请重试，若持续出现请报告".to_owned(),
            ApiError::ShuttingDown => "协调器正在关闭，不再接受新任务；请在它恢复后重试".to_owned(),
            ApiError::Access(error) => error.message(Lang::Zh),
        }
    }

    /// Builds the response in `lang`.
    pub fn into_response_in(self, lang: Lang) -> Response {
        let body = Envelope::<()> {
            code: self.code(),
            message: self.message(lang),
            data: None,
        };
        let mut response = (self.status(), axum::Json(body)).into_response();

        let headers = response.headers_mut();
        match &self {
            ApiError::Access(
                AccessError::MissingToken
                | AccessError::InvalidToken
                | AccessError::ExpiredToken { .. }
                | AccessError::RevokedToken { .. },
            ) => {
                headers.insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
            }
            ApiError::Access(AccessError::RateLimited {
                retry_after_secs, ..
            }) => {
                headers.insert(axum::http::header::RETRY_AFTER, (*retry_after_secs).into());
            }
            _ => {}
        }
        response
    }
}

fn invalid_en(invalid: &Invalid) -> String {
    match invalid {
        Invalid::PeersEmpty => "`peers` is empty; list at least one peer id".to_owned(),
        Invalid::PeerIdEmpty { index } => {
            format!("`peers[{index}]` is an empty string; give a peer id")
        }
        Invalid::PeerDuplicate { peer } => {
            format!("peer `{peer}` is listed twice in `peers`; list each peer once")
        }
        Invalid::TooManyPeers { count, max } => format!(
            "`peers` lists {count} peers, above the limit of {max}; split the task or raise max_peers_per_task"
        ),
        Invalid::ExecWayUnknown { value } => format!(
            "`content.execWay` is {value}; use 0 (command line), 1 (inline content), 2 (script on the node) or 3 (script from the coordinator)"
        ),
        Invalid::ContentEmpty { exec_way } => {
            let what = match exec_way {
                0 => "the command line",
                1 => "the script text",
                2 => "the script's name in the agent's scripts directory",
                _ => "the script's name in the script store",
            };
            format!("`content.content` is empty; for execWay {exec_way} it must hold {what}")
        }
        Invalid::TimeoutNegative { value } => format!(
            "`content.timeout` is {value}; give seconds above 0, or 0 for the default"
        ),
        Invalid::TimeoutTooLarge { value, max } => format!(
            "`content.timeout` is {value} seconds, above the maximum of {max}; give at most {max}"
        ),
        Invalid::FilehashMissing => {
            "`content.filehash` is missing; execWay 3 needs the hex sha256 of the stored script (GET /scripts lists it)".to_owned()
        }
        Invalid::FilehashInvalid { value } => format!(
            "`content.filehash` `{value}` is not a hex sha256; give 64 hex digits"
        ),
        Invalid::ScriptNameInvalid { value } => format!(
            "script name `{value}` is not a plain relative name; remove `..` parts and leading `/`"
        ),
        Invalid::PathNotAbsolute { value } => {
            format!("`content.path` `{value}` is not an absolute path; start it with `/`")
        }
        Invalid::EnvNameInvalid { name } => format!(
            "environment variable name `{name}` is invalid; use a non-empty name without `=` or NUL"
        ),
        Invalid::EnvNameInBoth { name } => format!(
            "environment variable `{name}` is in both `content.env` and `content.secretEnv`; put it in one of them (`content.secretEnv` if its value is secret)"
        ),
        Invalid::NulByte { field } => {
            format!("`{field}` contains a NUL byte, which no process argument can carry; remove it")
        }
        Invalid::UserNameInvalid { value } => format!(
            "`content.user` `{value}` is not a valid user name; give a login name such as `deploy`"
        ),
        Invalid::InterpreterNoInlineForm { cmd } => format!(
            "interpreter `{cmd}` has no known inline-code flag for execWay 0; use one of {}, or send the script with execWay 1",
            runwarden_protocol::interpreter::KNOWN_INLINE_INTERPRETERS
        ),
        Invalid::FieldEmpty { field } => format!("`{field}` is missing or empty; give a value"),
        Invalid::CancelListEmpty => "`tasks` is empty; list at least one job to cancel".to_owned(),
    }
}

fn invalid_zh(invalid: &Invalid) -> String {
    match invalid {
        Invalid::PeersEmpty => "`peers` 为空；请至少列出一个节点 id".to_owned(),
        Invalid::PeerIdEmpty { index } => format!("`peers[{index}]` 是空字符串；请填写节点 id"),
        Invalid::PeerDuplicate { peer } => {
            format!("节点 `{peer}` 在 `peers` 中出现了两次；每个节点只列一次")
        }
        Invalid::TooManyPeers { count, max } => format!(
            "`peers` 列了 {count} 个节点，超过上限 {max}；请拆分任务或调大 max_peers_per_task"
        ),
        Invalid::ExecWayUnknown { value } => format!(
            "`content.execWay` 为 {value}；请使用 0（命令行）、1（脚本内容）、2（节点上的脚本）或 3（从协调器下载的脚本）"
        ),
        Invalid::ContentEmpty { exec_way } => {
            let what = match exec_way {
                0 => "命令行",
                1 => "脚本内容",
                2 => "agent 脚本目录中的脚本名",
                _ => "脚本库中的脚本名",
            };
            format!("`content.content` 为空；execWay {exec_way} 需要填写{what}")
        }
        Invalid::TimeoutNegative { value } => {
            format!("`content.timeout` 为 {value}；请填写大于 0 的秒数，或填 0 使用默认值")
        }
        Invalid::TimeoutTooLarge { value, max } => format!(
            "`content.timeout` 为 {value} 秒，超过上限 {max} 秒；请填写不超过 {max} 的值"
        ),
        Invalid::FilehashMissing => {
            "缺少 `content.filehash`；execWay 3 需要脚本库中脚本的十六进制 sha256（GET /scripts 可查）".to_owned()
        }
        Invalid::FilehashInvalid { value } => {
            format!("`content.filehash` `{value}` 不是十六进制 sha256；请填写 64 位十六进制数")
        }
        Invalid::ScriptNameInvalid { value } => {
            format!("脚本名 `{value}` 不是普通的相对名称；请去掉 `..` 和开头的 `/`")
        }
        Invalid::PathNotAbsolute { value } => {
            format!("`content.path` `{value}` 不是绝对路径；请以 `/` 开头")
        }
        Invalid::EnvNameInvalid { name } => {
            format!("环境变量名 `{name}` 无效；名称不能为空，也不能含 `=` 或 NUL")
        }
        Invalid::EnvNameInBoth { name } => format!(
            "环境变量 `{name}` 同时出现在 `content.env` 和 `content.secretEnv` 中；请只放在其中一个里（值需要保密时放在 `content.secretEnv`）"
        ),
        Invalid::NulByte { field } => {
            format!("`{field}` 含有 NUL 字节，进程参数无法携带；请删除")
        }
        Invalid::UserNameInvalid { value } => {
            format!("`content.user` `{value}` 不是合法的用户名；请填写登录名，例如 `deploy`")
        }
        Invalid::InterpreterNoInlineForm { cmd } => format!(
            "解释器 `{cmd}` 没有已知的内联代码参数，不能用于 execWay 0；请使用 {} 之一，或改用 execWay 1 发送脚本",
            runwarden_protocol::interpreter::KNOWN_INLINE_INTERPRETERS
        ),
        Invalid::FieldEmpty { field } => format!("`{field}` 缺失或为空；请填写"),
        Invalid::CancelListEmpty => "`tasks` 为空；请至少列出一个要取消的作业".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_matches_http_status_class() {
        let error = ApiError::Invalid(Invalid::PeersEmpty);
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.code(), 42201);
        assert_eq!(ApiError::UnknownField { path: "x".into() }.code(), 40002);
        assert_eq!(ApiError::Internal.code(), 50001);
    }

    #[test]
    fn timeout_message_names_maximum_in_both_languages() {
        let error = ApiError::Invalid(Invalid::TimeoutTooLarge {
            value: 90_000,
            max: 86_400,
        });
        assert!(error.message(Lang::En).contains("86400"));
        assert!(error.message(Lang::En).contains("90000"));
        assert!(error.message(Lang::Zh).contains("86400"));
        assert!(error.message(Lang::Zh).contains("上限"));
    }
}
