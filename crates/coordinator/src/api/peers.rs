//! `GET /peers`: the agents the coordinator has seen.

use axum::Json;
use axum::extract::State;
use runwarden_protocol::api::{Envelope, PeerInfo, PeerList};

use crate::error::ApiError;
use crate::state::AppState;

pub async fn list_peers(
    State(state): State<AppState>,
) -> Result<Json<Envelope<PeerList>>, ApiError> {
    let list = state
        .storage
        .peers()
        .await?
        .into_iter()
        .map(|peer| {
            let connection = state.peers.get(&peer.peer_id);
            let last_seen = connection
                .as_ref()
                .map(|live| *live.last_seen.lock().unwrap_or_else(|p| p.into_inner()))
                .unwrap_or(peer.last_seen);
            PeerInfo {
                online: connection.is_some(),
                last_seen: humantime::format_rfc3339_millis(last_seen).to_string(),
                agent_version: peer.agent_version,
                peer_id: peer.peer_id,
            }
        })
        .collect();
    Ok(Json(Envelope::ok(PeerList { list })))
}
