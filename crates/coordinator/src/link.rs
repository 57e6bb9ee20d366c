//! The coordinator's end of the agent link: one WebSocket per agent.
//!
//! Each connection runs two loops. The writer sends queued
//! [`CoordinatorMessage`]s; the reader handles [`AgentMessage`]s in the order
//! they arrive. Because an agent sends a job's `JobFinished` before it
//! answers a cancel of that job, a cancel caller that gets its answer finds
//! the job's result already stored.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

mod identity;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse as _;
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt as _, StreamExt as _};
use runwarden_protocol::LINK_PROTOCOL_VERSION;
use runwarden_protocol::api::ResCmd;
use runwarden_protocol::link::{AgentMessage, CoordinatorMessage, FetchedScript};
use runwarden_protocol::status::{JobStatus, Outcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::auth::Caller;
use crate::peers::{PeerConnection, SEND_QUEUE_LEN};
use crate::state::AppState;
use crate::storage::{JobUpdate, PeerRecord};
use crate::tasks::apply_job_update;
use identity::{LinkIdentity, admit_peer, authenticate_link};

/// Largest message accepted from an agent, in bytes. A job result carries
/// both output streams, each up to the agent's output cap and base64-encoded
/// when not UTF-8.
pub const MAX_LINK_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// WebSocket close code for a peer that violates the link protocol.
const CLOSE_POLICY_VIOLATION: u16 = 1008;

pub async fn agent_link(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let identity = match authenticate_link(&state, &headers, &caller).await {
        Ok(identity) => identity,
        Err(error) => return error.into_response(),
    };
    upgrade
        .max_message_size(MAX_LINK_MESSAGE_BYTES)
        .on_upgrade(move |socket| serve_agent(state, socket, identity, caller))
}

async fn serve_agent(
    state: AppState,
    mut socket: WebSocket,
    identity: LinkIdentity,
    caller: Caller,
) {
    let hello_timeout = Duration::from_secs(state.config.hello_timeout_secs);
    let hello = match tokio::time::timeout(hello_timeout, socket.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<AgentMessage>(&text).ok(),
        _ => None,
    };
    let Some(AgentMessage::Hello {
        peer_id,
        agent_version,
        link_version,
        active_jobs,
    }) = hello
    else {
        warn!("agent connection closed: no valid hello message");
        close_with(socket, "expected a hello message first").await;
        return;
    };

    if link_version != LINK_PROTOCOL_VERSION || peer_id.is_empty() {
        warn!(
            peer_id,
            link_version, "agent rejected: unsupported link version or empty peer id"
        );
        let reason = format!(
            "link version {link_version} with peer id `{peer_id}` rejected; this coordinator speaks link version {LINK_PROTOCOL_VERSION} and needs a non-empty peer id"
        );
        close_with(socket, &reason).await;
        return;
    }

    let credential = match admit_peer(&state, identity, &peer_id, &caller).await {
        Ok(credential) => credential,
        Err(reason) => {
            close_with(socket, &reason).await;
            return;
        }
    };

    let span = info_span!("agent_link", peer_id = %peer_id);
    run_connection(
        state,
        socket,
        peer_id,
        agent_version,
        active_jobs,
        credential,
    )
    .instrument(span)
    .await;
}

/// Closes the socket with `reason`, cut to the 123 bytes a close frame
/// can carry.
async fn close_with(mut socket: WebSocket, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code: CLOSE_POLICY_VIOLATION,
        reason: reason[..end].into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

async fn run_connection(
    state: AppState,
    socket: WebSocket,
    peer_id: String,
    agent_version: String,
    active_jobs: Vec<String>,
    credential: Option<String>,
) {
    let (sender, receiver) = mpsc::channel(SEND_QUEUE_LEN);
    let last_seen = Arc::new(Mutex::new(SystemTime::now()));
    let connection = PeerConnection {
        connection_id: state.peers.next_id(),
        last_seen: Arc::clone(&last_seen),
        agent_version: agent_version.clone(),
        sender: sender.clone(),
        closed: CancellationToken::new(),
    };
    if let Some(replaced) = state.peers.register(&peer_id, connection.clone()) {
        warn!("peer connected again; closing its previous connection");
        replaced.closed.cancel();
    }
    touch_peer(&state, &peer_id, &agent_version).await;
    info!(agent_version, "agent connected");

    let silence = Duration::from_secs(state.config.peer_silence_secs);
    let (sink, mut stream) = socket.split();
    tokio::spawn(
        write_messages(receiver, connection.closed.clone(), sink, silence / 3).in_current_span(),
    );

    let welcome = CoordinatorMessage::Welcome {
        coordinator_version: env!("CARGO_PKG_VERSION").to_owned(),
        credential,
    };
    let _ = sender.send(welcome).await;
    reconcile_jobs(&state, &peer_id, &active_jobs).await;

    loop {
        // Any frame, pings included, proves the agent is alive; a silent
        // one is cut off so that its peer counts as offline.
        let frame = tokio::select! {
            frame = tokio::time::timeout(silence, stream.next()) => frame,
            () = connection.closed.cancelled() => break,
            () = state.shutdown.cancelled() => break,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(_) => {
                warn!(
                    silence_secs = silence.as_secs(),
                    "agent silent too long; closing its connection"
                );
                break;
            }
        };
        *last_seen.lock().unwrap_or_else(|p| p.into_inner()) = SystemTime::now();

        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                debug!(%error, "agent link read failed");
                break;
            }
        };
        match serde_json::from_str::<AgentMessage>(&text) {
            Ok(message) => handle_message(&state, &peer_id, &sender, message).await,
            Err(error) => warn!(%error, "agent sent a message that is not valid; ignored"),
        }
    }

    connection.closed.cancel();
    state.peers.unregister(&peer_id, connection.connection_id);
    touch_peer(&state, &peer_id, &agent_version).await;
    info!("agent disconnected");
}

async fn write_messages(
    mut receiver: mpsc::Receiver<CoordinatorMessage>,
    closed: CancellationToken,
    mut sink: SplitSink<WebSocket, Message>,
    ping_every: Duration,
) {
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    loop {
        let message = tokio::select! {
            message = receiver.recv() => message,
            () = closed.cancelled() => None,
            _ = ping.tick() => {
                if let Err(error) = sink.send(Message::Ping(Vec::new().into())).await {
                    debug!(%error, "agent link ping failed");
                    closed.cancel();
                    break;
                }
                continue;
            }
        };
        let Some(message) = message else {
            break;
        };

        let text = match serde_json::to_string(&message) {
            Ok(text) => text,
            Err(error) => {
                tracing::error!(%error, "failed to encode a message for the agent; dropped");
                continue;
            }
        };
        if let Err(error) = sink.send(Message::Text(text.into())).await {
            debug!(%error, "agent link write failed");
            closed.cancel();
            break;
        }
    }
    let _ = sink.close().await;
}

async fn touch_peer(state: &AppState, peer_id: &str, agent_version: &str) {
    let record = PeerRecord {
        peer_id: peer_id.to_owned(),
        agent_version: agent_version.to_owned(),
        last_seen: SystemTime::now(),
    };
    if let Err(error) = state.storage.upsert_peer(record).await {
        warn!(%error, "failed to record peer as seen");
    }
}

/// Brings the coordinator's view of this peer's open jobs in line with what
/// the agent reports on connect. A pending job the agent never accepted is
/// sent (again): agents ignore a job id they already have. An accepted or
/// running job the agent does not know was lost with an earlier agent
/// process, so its outcome is unknown.
async fn reconcile_jobs(state: &AppState, peer_id: &str, active_jobs: &[String]) {
    let open_jobs = match state.storage.open_jobs_on_peer(peer_id).await {
        Ok(jobs) => jobs,
        Err(error) => {
            warn!(%error, "failed to list open jobs of reconnected peer");
            return;
        }
    };

    for job in open_jobs {
        if active_jobs.contains(&job.job_id) {
            continue;
        }
        if job.status == JobStatus::Pending && !job.accepted {
            let task = match state.storage.task(&job.task_id).await {
                Ok(Some(task)) => task,
                _ => continue,
            };
            info!(task_id = %job.task_id, job_id = %job.job_id, "sending pending job again after reconnect");
            if let Err(error) = crate::tasks::dispatch_job(state, &task, &job).await {
                warn!(job_id = %job.job_id, ?error, "failed to send pending job again");
            }
            continue;
        }

        warn!(task_id = %job.task_id, job_id = %job.job_id, "agent no longer knows an accepted job; marking it lost");
        let res_cmd = ResCmd::not_run(
            Outcome::Lost,
            format!(
                "the agent on peer `{peer_id}` reconnected without this job (it lost the job it had accepted), so the job's outcome is unknown"
            ),
        );
        let update = JobUpdate::Finished {
            status: JobStatus::Lost,
            res_cmd,
        };
        if let Err(error) = apply_job_update(state, &job.job_id, update).await {
            warn!(job_id = %job.job_id, ?error, "failed to mark job lost");
        }
    }
}

async fn handle_message(
    state: &AppState,
    peer_id: &str,
    sender: &mpsc::Sender<CoordinatorMessage>,
    message: AgentMessage,
) {
    match message {
        AgentMessage::Hello { .. } => warn!("agent sent a second hello; ignored"),
        AgentMessage::JobAccepted { job_id } => {
            if let Err(error) = apply_job_update(state, &job_id, JobUpdate::Accepted).await {
                warn!(job_id, ?error, "failed to record job acceptance");
            }
        }
        AgentMessage::JobStarted { job_id } => {
            if let Err(error) = apply_job_update(state, &job_id, JobUpdate::Started).await {
                warn!(job_id, ?error, "failed to record job start");
            }
        }
        AgentMessage::JobFinished {
            job_id,
            status,
            res_cmd,
        } => {
            if !status.is_final() {
                warn!(job_id, %status, "agent reported a job finished with an open status; ignored");
                return;
            }
            let update = JobUpdate::Finished { status, res_cmd };
            match apply_job_update(state, &job_id, update).await {
                Ok(Some(_)) => {}
                Ok(None) => debug!(
                    job_id,
                    "job result already stored or job unknown; kept the first"
                ),
                Err(error) => {
                    // NOTE: the agent sends unconfirmed results again only
                    // after it reconnects, so the job stays open until then.
                    warn!(
                        job_id,
                        ?error,
                        "failed to store job result; the agent sends it again after it reconnects"
                    );
                    return;
                }
            }
            let _ = sender
                .send(CoordinatorMessage::ResultStored { job_id })
                .await;
        }
        AgentMessage::TaskRecord { request_id, .. }
        | AgentMessage::CancelDone { request_id, .. } => {
            if !state.peers.answer(request_id, message) {
                debug!(
                    request_id,
                    "answer arrived after its caller stopped waiting"
                );
            }
        }
        AgentMessage::FetchScript { request_id, name } => {
            let script = match state.storage.script(&name).await {
                Ok(script) => script.map(|script| FetchedScript {
                    info: script.info,
                    content: script.content,
                }),
                Err(error) => {
                    warn!(%error, script = name, "failed to read script for agent");
                    None
                }
            };
            debug!(
                script = name,
                found = script.is_some(),
                peer_id,
                "script fetched by agent"
            );
            let _ = sender
                .send(CoordinatorMessage::ScriptBody { request_id, script })
                .await;
        }
    }
}
