//! The REST API: routes, handlers and error rendering.

mod access;
mod peers;
mod script;
mod script_store;

use axum::extract::Request;
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use runwarden_protocol::api::Envelope;
use runwarden_protocol::link::AGENT_LINK_PATH;

use crate::error::ApiError;
use crate::lang::Lang;
use crate::state::AppState;

/// Builds the coordinator's HTTP router: the REST API and the agent link.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/script/async", post(script::script_async))
        .route("/script/sync", post(script::script_sync))
        .route("/script/taskinfo", post(script::task_info))
        .route("/script/peer/taskinfo", post(script::peer_task_info))
        .route("/script/cancel", post(script::cancel))
        .route(
            "/scripts",
            get(script_store::list_scripts).post(script_store::upload_script),
        )
        .route(
            "/scripts/{*name}",
            get(script_store::fetch_script).delete(script_store::delete_script),
        )
        .route("/peers", get(peers::list_peers))
        .route("/peers/{peer_id}/revoke", post(access::revoke_peer))
        .route(
            "/tokens",
            get(access::list_tokens).post(access::create_token),
        )
        .route("/tokens/{name}", delete(access::revoke_token))
        .route("/enrollments", post(access::create_enrollment))
        .route("/audit", get(access::list_audit))
        .route(AGENT_LINK_PATH, get(crate::link::agent_link))
        .fallback(route_not_found)
        .method_not_allowed_fallback(route_not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate_api,
        ))
        .layer(middleware::from_fn(render_errors))
        .with_state(state)
}

async fn health() -> Json<Envelope<serde_json::Value>> {
    Json(Envelope::ok(serde_json::json!({ "status": "ready" })))
}

async fn route_not_found(method: Method, request: Request) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: request.uri().path().to_owned(),
    }
}

impl IntoResponse for ApiError {
    /// Renders in English and attaches the error, so that [`render_errors`]
    /// can render it again in the request's language.
    fn into_response(self) -> Response {
        let mut response = self.clone().into_response_in(Lang::En);
        response.extensions_mut().insert(self);
        response
    }
}

/// Renders API errors in the language the request's `Accept-Language` asks.
async fn render_errors(request: Request, next: Next) -> Response {
    let lang = Lang::from_headers(request.headers());
    let mut response = next.run(request).await;

    match response.extensions_mut().remove::<ApiError>() {
        Some(error) if lang != Lang::En => error.into_response_in(lang),
        _ => response,
    }
}
