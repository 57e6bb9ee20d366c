//! The agent's end of the link: dial the coordinator, keep the connection,
//! and route messages between it and the job table.
//!
//! The agent dials out, so it works behind NAT. When the connection drops,
//! jobs keep running; the agent redials with exponential backoff and jitter,
//! and after each `Hello` sends again every result the coordinator has not
//! confirmed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use runwarden_protocol::LINK_PROTOCOL_VERSION;
use runwarden_protocol::link::{AgentMessage, CoordinatorMessage, FetchedScript};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::credential::Credentials;
use crate::jobs::Jobs;
use crate::tls::{HandshakeError, LinkTls};

/// Largest message accepted from the coordinator, in bytes. The largest
/// message it sends is a job request, whose body the coordinator caps.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Time between WebSocket pings, which keep idle NAT mappings open and reveal
/// a dead connection.
const PING_INTERVAL: Duration = Duration::from_secs(20);

/// Time the coordinator has to reply to the agent's `Hello`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// Time one dial has for the TCP connection, the TLS handshake and the
/// WebSocket upgrade together.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Maximum characters of an HTTP error body that go into the log.
const MAX_LOGGED_BODY_CHARS: usize = 300;

/// The byte stream under the link's WebSocket: plain TCP or TLS over TCP.
pub trait LinkIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> LinkIo for T {}

/// An open agent link.
pub type LinkSocket = WebSocketStream<Box<dyn LinkIo>>;

type WsError = tokio_tungstenite::tungstenite::Error;

/// A failed dial, sorted by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("the agent link URL is not valid: {0}")]
    Request(WsError),
    #[error("failed to connect to {address}: {cause}")]
    Connect {
        address: String,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] HandshakeError),
    #[error("the coordinator responded to the WebSocket upgrade with HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    #[error("WebSocket upgrade failed: {0}")]
    Upgrade(WsError),
    #[error("no connection within {} s", DIAL_TIMEOUT.as_secs())]
    Timeout,
}

impl DialError {
    fn from_upgrade(error: WsError) -> DialError {
        let WsError::Http(response) = error else {
            return DialError::Upgrade(error);
        };

        let body = response
            .body()
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        DialError::Rejected {
            status: response.status().as_u16(),
            body: body.trim().chars().take(MAX_LOGGED_BODY_CHARS).collect(),
        }
    }
}

type PendingFetches = Arc<Mutex<HashMap<u64, oneshot::Sender<Option<FetchedScript>>>>>;

/// Fetches execWay 3 scripts from the coordinator over the link.
#[derive(Clone)]
pub struct ScriptFetcher {
    outgoing: mpsc::UnboundedSender<AgentMessage>,
    pending: PendingFetches,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
}

/// A script fetch that got no reply.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "the coordinator did not send the script within {0} s; check that the agent is connected"
    )]
    Timeout(u64),
    #[error("the agent is shutting down")]
    Closed,
}

impl ScriptFetcher {
    pub fn new(outgoing: mpsc::UnboundedSender<AgentMessage>, timeout: Duration) -> ScriptFetcher {
        ScriptFetcher {
            outgoing,
            pending: PendingFetches::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            timeout,
        }
    }

    /// Asks the coordinator's script store for `name`; `Ok(None)` means the
    /// store has no such script.
    pub async fn fetch(&self, name: &str) -> Result<Option<FetchedScript>, FetchError> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, receiver) = oneshot::channel();
        self.lock().insert(request_id, answer);

        let message = AgentMessage::FetchScript {
            request_id,
            name: name.to_owned(),
        };
        if self.outgoing.send(message).is_err() {
            self.lock().remove(&request_id);
            return Err(FetchError::Closed);
        }

        let outcome = match tokio::time::timeout(self.timeout, receiver).await {
            Ok(Ok(script)) => Ok(script),
            Ok(Err(_)) => Err(FetchError::Closed),
            Err(_) => Err(FetchError::Timeout(self.timeout.as_secs())),
        };
        self.lock().remove(&request_id);
        outcome
    }

    fn resolve(&self, request_id: u64, script: Option<FetchedScript>) {
        if let Some(answer) = self.lock().remove(&request_id) {
            let _ = answer.send(script);
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Option<FetchedScript>>>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Everything the link loop needs.
pub struct Link {
    /// Maximum time without a frame from the coordinator before the agent
    /// redials.
    pub silence_limit: Duration,
    /// The agent link URL, `ws://` or `wss://`.
    pub url: String,
    /// Token presented when dialing: the credential, or the enrollment
    /// token until the agent has one.
    pub credentials: Credentials,
    /// TLS settings, present exactly when `url` is `wss://`.
    pub tls: Option<LinkTls>,
    pub peer_id: String,
    pub jobs: Arc<Jobs>,
    pub fetcher: ScriptFetcher,
    pub outgoing: mpsc::UnboundedSender<AgentMessage>,
    pub incoming_for_coordinator: mpsc::UnboundedReceiver<AgentMessage>,
    pub reconnect_max: Duration,
    pub shutdown: CancellationToken,
}

impl Link {
    /// Dials and serves the coordinator until `shutdown` fires.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(200);

        while !self.shutdown.is_cancelled() {
            info!(url = %self.url, peer_id = %self.peer_id, "dialing coordinator");
            let dialed = tokio::select! {
                dialed = tokio::time::timeout(DIAL_TIMEOUT, self.dial()) => {
                    dialed.unwrap_or(Err(DialError::Timeout))
                }
                () = self.shutdown.cancelled() => break,
            };

            match dialed {
                Ok(socket) => {
                    // Only a welcomed connection resets the backoff, so that
                    // an agent the coordinator rejects after the upgrade
                    // (wrong peer id, used enrollment token) backs off too.
                    if self.serve(socket).await {
                        backoff = Duration::from_millis(200);
                    }
                }
                Err(DialError::Tls(error)) if error.needs_operator() => {
                    error!(%error, url = %self.url, "TLS handshake with the coordinator failed");
                }
                Err(DialError::Rejected { status: 401, body }) => {
                    let message = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|body| body["message"].as_str().map(str::to_owned))
                        .unwrap_or(body);
                    error!(reason = %message, url = %self.url, "coordinator rejected this agent's token; set enrollment_token to a new enrollment token (and delete a revoked credential_file) and restart the agent");
                }
                Err(error) => warn!(%error, url = %self.url, "failed to reach coordinator"),
            }
            if self.shutdown.is_cancelled() {
                break;
            }

            let wait = with_jitter(backoff);
            info!(
                retry_in_ms = wait.as_millis() as u64,
                "reconnecting to coordinator"
            );
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(self.reconnect_max);
        }
        info!("agent link stopped");
    }

    /// Builds the WebSocket upgrade request of the agent link. Every dial
    /// sends it, so headers added here reach the coordinator on each
    /// connection.
    ///
    /// # Errors
    ///
    /// Fails when `url` is not a valid `ws://` or `wss://` URL, or the
    /// credential file cannot be read.
    pub fn link_request(&self) -> Result<Request, WsError> {
        let mut request = self.url.as_str().into_client_request()?;

        // The agent's token: its credential, or the enrollment token until
        // it has one.
        let bearer = self
            .credentials
            .bearer()
            .map_err(|error| WsError::Io(std::io::Error::other(format!("{error:#}"))))?;
        if let Some(token) = bearer {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                WsError::Io(std::io::Error::other(format!(
                    "the agent's token is not a valid header value; check `{}` and enrollment_token",
                    self.credentials.path.display()
                )))
            })?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        Ok(request)
    }

    /// Opens the TCP connection, runs the TLS handshake for `wss://` URLs,
    /// and upgrades the connection to a WebSocket with [`Link::link_request`].
    async fn dial(&self) -> Result<LinkSocket, DialError> {
        let request = self.link_request().map_err(DialError::Request)?;
        let uri = request.uri();
        // An IPv6 host keeps its brackets in a URI, but not in a socket
        // address or a TLS server name.
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let default_port = if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        };
        let port = uri.port_u16().unwrap_or(default_port);

        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|cause| DialError::Connect {
                address: format!("{host}:{port}"),
                cause,
            })?;
        // Nagle's algorithm would hold back small messages such as job
        // results.
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, "failed to set TCP_NODELAY");
        }

        let stream: Box<dyn LinkIo> = match &self.tls {
            Some(tls) => Box::new(tls.connect(&host, tcp).await?),
            None => Box::new(tcp),
        };

        let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES));
        let (socket, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(DialError::from_upgrade)?;
        Ok(socket)
    }

    /// Serves one connection until it ends. Returns true when the
    /// coordinator welcomed the agent, false when it rejected it or the
    /// connection failed before that.
    async fn serve(&mut self, socket: LinkSocket) -> bool {
        let (mut sink, mut stream) = socket.split();

        let hello = AgentMessage::Hello {
            peer_id: self.peer_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            link_version: LINK_PROTOCOL_VERSION,
            active_jobs: self.jobs.active_job_ids(),
        };
        if send(&mut sink, &hello).await.is_err() {
            return false;
        }
        match tokio::time::timeout(WELCOME_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let Ok(CoordinatorMessage::Welcome { credential, .. }) =
                    serde_json::from_str::<CoordinatorMessage>(&text)
                else {
                    warn!(
                        "coordinator replied to hello with a message other than welcome; dialing again"
                    );
                    return false;
                };
                if let Some(credential) = credential {
                    if let Err(error) = self.credentials.save(&credential) {
                        error!(
                            error = format!("{error:#}"),
                            "enrolled, but failed to store the new credential; the enrollment token is used up, so fix the file's folder and ask an admin to revoke this peer and issue a new enrollment token"
                        );
                        return false;
                    }
                    info!(path = %self.credentials.path.display(), "enrolled with the coordinator; credential stored");
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                let reason = frame
                    .map(|frame| frame.reason.to_string())
                    .unwrap_or_default();
                error!(
                    reason,
                    "coordinator rejected this agent; fix the cause and it dials again"
                );
                return false;
            }
            other => {
                warn!(?other, "coordinator did not welcome this agent");
                return false;
            }
        }
        info!(peer_id = %self.peer_id, "connected to coordinator");

        for result in self.jobs.unacked_results() {
            if send(&mut sink, &result).await.is_err() {
                return true;
            }
        }

        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.tick().await;
        loop {
            tokio::select! {
                frame = tokio::time::timeout(self.silence_limit, stream.next()) => {
                    let Ok(frame) = frame else {
                        warn!(silence_secs = self.silence_limit.as_secs(), "coordinator silent too long; dialing again");
                        break;
                    };
                    match frame {
                        Some(Ok(Message::Text(text))) => self.handle(&text),
                        Some(Ok(Message::Close(_))) | None => break,
                        Some(Ok(_)) => {}
                        Some(Err(error)) => {
                            warn!(%error, "coordinator link read failed");
                            break;
                        }
                    }
                }
                message = self.incoming_for_coordinator.recv() => {
                    let Some(message) = message else { break };
                    if send(&mut sink, &message).await.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
                () = self.shutdown.cancelled() => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            }
        }
        warn!("disconnected from coordinator");
        true
    }

    fn handle(&self, text: &str) {
        let message = match serde_json::from_str::<CoordinatorMessage>(text) {
            Ok(message) => message,
            Err(error) => {
                warn!(%error, "coordinator sent a message that is not valid; ignored");
                return;
            }
        };

        match message {
            CoordinatorMessage::Welcome { .. } => debug!("extra welcome ignored"),
            CoordinatorMessage::RunJob { job } => self.jobs.submit(job),
            CoordinatorMessage::ResultStored { job_id } => self.jobs.acknowledge(&job_id),
            CoordinatorMessage::CancelJob {
                request_id,
                job_id,
                msg,
            } => {
                let jobs = Arc::clone(&self.jobs);
                let outgoing = self.outgoing.clone();
                tokio::spawn(async move {
                    let (result, status) = jobs.cancel(&job_id, &msg).await;
                    let answer = AgentMessage::CancelDone {
                        request_id,
                        result,
                        status,
                    };
                    let _ = outgoing.send(answer);
                });
            }
            CoordinatorMessage::QueryTask {
                request_id,
                task_id,
            } => {
                let record = self.jobs.query(&task_id);
                let _ = self
                    .outgoing
                    .send(AgentMessage::TaskRecord { request_id, record });
            }
            CoordinatorMessage::ScriptBody { request_id, script } => {
                self.fetcher.resolve(request_id, script);
            }
        }
    }
}

async fn send<S>(sink: &mut S, message: &AgentMessage) -> Result<(), ()>
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    let text = match serde_json::to_string(message) {
        Ok(text) => text,
        Err(error) => {
            error!(%error, "failed to encode a message for the coordinator; dropped");
            return Ok(());
        }
    };
    sink.send(Message::Text(text.into()))
        .await
        .map_err(|error| {
            warn!(%error, "coordinator link write failed");
        })
}

/// Adds up to 50% random-looking jitter, so that many agents cut off at once
/// do not redial in step. The clock's nanoseconds are random enough here.
fn with_jitter(base: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    let fraction = f64::from(nanos % 1000) / 2000.0;
    base + base.mul_f64(fraction)
}
