//! Agents connected right now, and request/answer calls to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use runwarden_protocol::link::{AgentMessage, CoordinatorMessage};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Messages queued for one agent before sends wait.
pub const SEND_QUEUE_LEN: usize = 4096;

/// One live agent connection.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    pub connection_id: u64,
    /// Time of the last frame from the agent, shared with its reader loop.
    pub last_seen: Arc<Mutex<SystemTime>>,
    pub agent_version: String,
    pub sender: mpsc::Sender<CoordinatorMessage>,
    /// Fires when the connection must close, for example because the same
    /// peer connected again.
    pub closed: CancellationToken,
}

/// Reason a call to an agent got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("peer is offline")]
    Offline,
    #[error("peer did not answer in time")]
    Timeout,
}

#[derive(Debug)]
pub struct PeerRegistry {
    connections: Mutex<HashMap<String, PeerConnection>>,
    /// When each peer that connected since start-up last disconnected.
    offline_since: Mutex<HashMap<String, SystemTime>>,
    /// When the registry was made; peers not seen since then count as
    /// offline from this moment.
    started_at: SystemTime,
    pending_calls: Mutex<HashMap<u64, PendingCall>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct PendingCall {
    connection_id: u64,
    answer: oneshot::Sender<AgentMessage>,
}

impl Default for PeerRegistry {
    fn default() -> Self {
        PeerRegistry {
            connections: Mutex::default(),
            offline_since: Mutex::default(),
            started_at: SystemTime::now(),
            pending_calls: Mutex::default(),
            next_id: AtomicU64::default(),
        }
    }
}

impl PeerRegistry {
    /// Since when `peer_id` has been offline: its last disconnect, or the
    /// registry's start when it has not connected since. `None` while it is
    /// connected.
    pub fn offline_since(&self, peer_id: &str) -> Option<SystemTime> {
        if self.get(peer_id).is_some() {
            return None;
        }
        let offline = self.offline_since.lock().unwrap_or_else(|p| p.into_inner());
        Some(offline.get(peer_id).copied().unwrap_or(self.started_at))
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Makes `connection` the live connection of `peer_id` and returns the
    /// one it replaces, which the caller should close.
    pub fn register(&self, peer_id: &str, connection: PeerConnection) -> Option<PeerConnection> {
        let mut connections = self.lock_connections();
        connections.insert(peer_id.to_owned(), connection)
    }

    /// Removes the connection of `peer_id` if it is still `connection_id`,
    /// and fails the calls waiting on it.
    pub fn unregister(&self, peer_id: &str, connection_id: u64) {
        {
            let mut connections = self.lock_connections();
            if connections
                .get(peer_id)
                .is_some_and(|live| live.connection_id == connection_id)
            {
                connections.remove(peer_id);
                self.offline_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(peer_id.to_owned(), SystemTime::now());
            }
        }

        // Dropping the answer senders wakes each waiting caller with an
        // error, which it reports as an offline peer.
        let mut calls = self.lock_calls();
        calls.retain(|_, call| call.connection_id != connection_id);
    }

    pub fn get(&self, peer_id: &str) -> Option<PeerConnection> {
        self.lock_connections().get(peer_id).cloned()
    }

    /// Sends a message built around a fresh request id and waits up to
    /// `timeout` for the agent's answer with that id.
    pub async fn call(
        &self,
        peer_id: &str,
        build: impl FnOnce(u64) -> CoordinatorMessage,
        timeout: Duration,
    ) -> Result<AgentMessage, CallError> {
        let connection = self.get(peer_id).ok_or(CallError::Offline)?;
        let request_id = self.next_id();
        let (answer, receiver) = oneshot::channel();
        self.lock_calls().insert(
            request_id,
            PendingCall {
                connection_id: connection.connection_id,
                answer,
            },
        );

        let outcome = async {
            connection
                .sender
                .send(build(request_id))
                .await
                .map_err(|_| CallError::Offline)?;
            match tokio::time::timeout(timeout, receiver).await {
                Ok(Ok(message)) => Ok(message),
                Ok(Err(_)) => Err(CallError::Offline),
                Err(_) => Err(CallError::Timeout),
            }
        }
        .await;

        self.lock_calls().remove(&request_id);
        outcome
    }

    /// Hands an agent's answer to the caller waiting for `request_id`.
    /// Returns false when no caller waits (it timed out or never existed).
    pub fn answer(&self, request_id: u64, message: AgentMessage) -> bool {
        match self.lock_calls().remove(&request_id) {
            Some(call) => call.answer.send(message).is_ok(),
            None => false,
        }
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerConnection>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PendingCall>> {
        self.pending_calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
