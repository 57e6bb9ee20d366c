//! Authentication, authorization and the task rate limit of REST calls.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use runwarden_protocol::link::AGENT_LINK_PATH;

use super::token::{Scope, TokenKind};
use super::{Caller, VerifyError, bearer_token, record_denial, verify_token};
use crate::error::{AccessError, ApiError};
use crate::server::ClientAddr;
use crate::state::AppState;
use crate::storage::AuditRecord;

/// Returns the scope a call needs, or `None` for calls open to everyone:
/// the health check, and the agent link, which checks agent credentials
/// itself.
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));

    if path == "/health" || path == AGENT_LINK_PATH {
        return None;
    }
    if *method == Method::POST
        && matches!(path, "/script/async" | "/script/sync" | "/script/cancel")
    {
        return Some(Scope::Run);
    }
    if under("/scripts") {
        return Some(if *method == Method::GET {
            Scope::Read
        } else {
            Scope::Admin
        });
    }
    if under("/tokens") || under("/enrollments") || under("/audit") {
        return Some(Scope::Admin);
    }
    if under("/peers") && *method != Method::GET {
        return Some(Scope::Admin);
    }
    Some(Scope::Read)
}

fn creates_task(method: &Method, path: &str) -> bool {
    *method == Method::POST && matches!(path, "/script/async" | "/script/sync")
}

/// Middleware: finds the caller, checks its scope and the task rate limit,
/// and puts a [`Caller`] in the request's extensions for the handlers.
pub async fn authenticate_api(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let source = request
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|ConnectInfo(ClientAddr(address))| *address);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();

    let caller = match authorize(&state, authorization.as_ref(), source, &method, &path).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };

    if creates_task(&method, &path)
        && let Err(error) = check_rate(&state, &caller, source)
    {
        audit_denial(&state, &caller.token, source, &method, &path, &error).await;
        return error.into_response();
    }

    request.extensions_mut().insert(caller);
    next.run(request).await
}

async fn authorize(
    state: &AppState,
    authorization: Option<&HeaderValue>,
    source: Option<SocketAddr>,
    method: &Method,
    path: &str,
) -> Result<Caller, ApiError> {
    let anonymous = Caller {
        token: String::new(),
        source: source
            .map(|address| address.to_string())
            .unwrap_or_default(),
    };
    let Some(required) = required_scope(method, path) else {
        return Ok(anonymous);
    };
    if !state.config.auth.enabled {
        return Ok(anonymous);
    }

    let presented = match bearer_token(authorization).map_err(ApiError::from) {
        Ok(presented) => presented,
        Err(error) => {
            audit_denial(state, "", source, method, path, &error).await;
            return Err(error);
        }
    };
    let record = match verify_token(state.storage.as_ref(), presented, &[TokenKind::Api]).await {
        Ok(record) => record,
        Err(VerifyError::Unknown(error)) => {
            let error = ApiError::from(error);
            audit_denial(state, "", source, method, path, &error).await;
            return Err(error);
        }
        Err(VerifyError::Known { error, token }) => {
            let error = ApiError::from(error);
            audit_denial(state, &token, source, method, path, &error).await;
            return Err(error);
        }
        Err(VerifyError::Storage(error)) => return Err(error.into()),
    };

    let scope = record.scope.unwrap_or(Scope::Read);
    if !scope.covers(required) {
        let error = ApiError::from(AccessError::ScopeTooLow {
            token: record.name.clone(),
            scope: scope.as_str(),
            required: required.as_str(),
        });
        audit_denial(state, &record.name, source, method, path, &error).await;
        return Err(error);
    }

    let caller = Caller {
        token: record.name,
        ..anonymous
    };
    let interval = Duration::from_secs(state.config.auth.token_use_audit_secs);
    if state.auth.token_use_due(&caller.token, interval) {
        let entry = AuditRecord::new(&caller, "token.use").target(format!("{method} {path}"));
        crate::audit::record(state.storage.as_ref(), entry).await;
    }
    Ok(caller)
}

fn check_rate(
    state: &AppState,
    caller: &Caller,
    source: Option<SocketAddr>,
) -> Result<(), ApiError> {
    let limit = state.config.max_tasks_per_minute;
    if limit == 0 {
        return Ok(());
    }

    // Without authentication every caller is anonymous, so the source IP
    // (without the port) is the key in place of the token.
    let key = if caller.token.is_empty() {
        source
            .map(|address| address.ip().to_string())
            .unwrap_or_default()
    } else {
        caller.token.clone()
    };
    state.auth.rate.take(&key, limit).map_err(|wait| {
        AccessError::RateLimited {
            token: key,
            limit,
            retry_after_secs: wait.as_secs().max(1),
        }
        .into()
    })
}

async fn audit_denial(
    state: &AppState,
    token: &str,
    source: Option<SocketAddr>,
    method: &Method,
    path: &str,
    error: &ApiError,
) {
    let caller = Caller {
        token: token.to_owned(),
        source: source
            .map(|address| address.to_string())
            .unwrap_or_default(),
    };
    let entry = AuditRecord::new(&caller, "auth.denied")
        .target(format!("{method} {path}"))
        .outcome(error.code().to_string());
    record_denial(state, entry).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_of_calls() {
        let cases = [
            (Method::GET, "/health", None),
            (Method::GET, AGENT_LINK_PATH, None),
            (Method::POST, "/script/async", Some(Scope::Run)),
            (Method::POST, "/script/cancel", Some(Scope::Run)),
            (Method::POST, "/script/taskinfo", Some(Scope::Read)),
            (Method::POST, "/script/peer/taskinfo", Some(Scope::Read)),
            (Method::GET, "/peers", Some(Scope::Read)),
            (Method::POST, "/peers/web-1/revoke", Some(Scope::Admin)),
            (Method::GET, "/scripts/a.sh", Some(Scope::Read)),
            (Method::POST, "/scripts", Some(Scope::Admin)),
            (Method::DELETE, "/scripts/a.sh", Some(Scope::Admin)),
            (Method::GET, "/tokens", Some(Scope::Admin)),
            (Method::POST, "/enrollments", Some(Scope::Admin)),
            (Method::GET, "/audit", Some(Scope::Admin)),
            (Method::GET, "/no/such/call", Some(Scope::Read)),
            (Method::GET, "/scriptsx", Some(Scope::Read)),
        ];
        for (method, path, expected) in cases {
            assert_eq!(required_scope(&method, path), expected, "{method} {path}");
        }
    }
}
