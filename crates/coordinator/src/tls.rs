//! TLS for the REST API and the agent link: loading the `[tls]` certificate
//! and key, and a listener that runs TLS handshakes off the accept path.
//!
//! [`TlsListener`] accepts TCP connections in a task of its own and runs each
//! handshake in a spawned task with a deadline, so a client that stalls in
//! its handshake cannot hold up other connections. Finished handshakes reach
//! `axum::serve` through a channel. A client that sends plain HTTP to the TLS
//! port gets a short `400 Bad Request` whose body names `https://` as the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use crate::config::TlsConfig;

/// Time a client has from TCP accept to a finished TLS handshake (or, for a
/// plain HTTP client, to the end of its request head).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes that may run at once. Further connections wait in the kernel's
/// accept queue until one ends.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Finished handshakes that may wait for `axum::serve` to take them.
const ACCEPTED_QUEUE: usize = 64;

/// First byte of every TLS connection: the record type of a handshake
/// message (RFC 8446, section 5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Maximum bytes of a plain HTTP request head read before the 400 response.
const MAX_PLAIN_REQUEST_HEAD: usize = 8 * 1024;

/// Time to read what a plain HTTP client still sends after the 400 response,
/// so the kernel closes with FIN and not RST, which could discard the
/// response before the client reads it.
const PLAIN_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Body of the response to plain HTTP on the TLS port.
pub const PLAIN_HTTP_BODY: &str = "This port serves HTTPS (TLS) only. Use https:// instead of http:// in the URL (agents: wss:// instead of ws://).\n";

/// A `[tls]` certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(
        "failed to read the TLS {what} file `{path}` ([tls] {key}): {source}; point {key} at a readable PEM file, or remove [tls] to serve plain HTTP"
    )]
    Read {
        what: &'static str,
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the TLS {what} file `{path}` ([tls] {key}) is not valid PEM: {source}; point {key} at a PEM file"
    )]
    Pem {
        what: &'static str,
        key: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "the TLS certificate file `{0}` ([tls] cert_file) contains no PEM certificate (-----BEGIN CERTIFICATE-----); point cert_file at the coordinator's certificate chain"
    )]
    NoCertificate(PathBuf),
    #[error(
        "the TLS key file `{0}` ([tls] key_file) contains no PEM private key (PKCS#8, PKCS#1 or SEC1); point key_file at the private key of the certificate"
    )]
    NoKey(PathBuf),
    #[error(
        "the TLS certificate `{cert}` and key `{key}` cannot be used: {source}; check that key_file holds the private key of the first certificate in cert_file"
    )]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Reads the certificate chain and key of `config` and builds the server
/// side TLS settings: TLS 1.2 and 1.3 with the `ring` provider, ALPN
/// `http/1.1`, no client certificates.
///
/// # Errors
///
/// Fails when a file cannot be read, contains no certificate or key, or the key
/// does not belong to the first certificate.
pub fn load_server_config(config: &TlsConfig) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let certs = read_certificates(&config.cert_file)?;
    let key = read_private_key(&config.key_file)?;

    let rejected = |source| TlsSetupError::Rejected {
        cert: config.cert_file.clone(),
        key: config.key_file.clone(),
        source,
    };
    let mut server_config = ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rejected)?;

    // The router serves HTTP/1.1 only, which the WebSocket upgrade of the
    // agent link needs anyway.
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server_config))
}

/// The `ring` crypto provider, the only one the workspace builds.
// NOTE: rustls 0.23.48 deprecates it because ring has no post-quantum key
// exchange, so connections use X25519 or the NIST curves only.
#[allow(
    deprecated,
    reason = "the workspace enables rustls' ring provider only, not aws-lc-rs"
)]
fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
        what: "certificate",
        key: "cert_file",
        path: path.to_owned(),
        source,
    })?;

    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsSetupError::Pem {
            what: "certificate",
            key: "cert_file",
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
        what: "key",
        key: "key_file",
        path: path.to_owned(),
        source,
    })?;

    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            Err(TlsSetupError::NoKey(path.to_owned()))
        }
        Err(source) => Err(TlsSetupError::Pem {
            what: "key",
            key: "key_file",
            path: path.to_owned(),
            source,
        }),
    }
}

/// A listener for `axum::serve` that yields connections whose TLS handshake
/// has finished. Dropping it stops accepting and closes the port. Handshakes
/// still running then end without a connection.
pub struct TlsListener {
    local_addr: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_loop: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener`, bound to `local_addr`, with the TLS
    /// settings `config`.
    pub fn new(
        listener: TcpListener,
        local_addr: SocketAddr,
        config: Arc<ServerConfig>,
    ) -> TlsListener {
        let (sender, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        let accept_loop = tokio::spawn(accept_connections(
            listener,
            TlsAcceptor::from(config),
            sender,
        ));
        TlsListener {
            local_addr,
            accepted,
            accept_loop,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept loop ends only when this listener is dropped, so
            // this branch is not reached while `self` exists.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// Accepts TCP connections and starts a handshake task for each, until the
/// receiving [`TlsListener`] is gone.
async fn accept_connections(
    mut listener: TcpListener,
    acceptor: TlsAcceptor,
    accepted: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&handshakes).acquire_owned() => permit,
            () = accepted.closed() => return,
        };
        let Ok(permit) = permit else { return };

        // axum's `Listener` for `TcpListener` retries accept errors itself.
        let (tcp, peer) = tokio::select! {
            connection = axum::serve::Listener::accept(&mut listener) => connection,
            () = accepted.closed() => return,
        };

        // Job results and cancels are small messages on long-lived agent
        // sockets; Nagle's algorithm would hold each one back for tens of
        // milliseconds.
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, %peer, "failed to set TCP_NODELAY");
        }

        let acceptor = acceptor.clone();
        let accepted = accepted.clone();
        tokio::spawn(async move {
            if let Some(stream) = handshake(tcp, peer, &acceptor).await {
                // A send error means the server stopped; the connection
                // closes when `stream` drops.
                let _ = accepted.send((stream, peer)).await;
            }
            drop(permit);
        });
    }
}

/// Runs the TLS handshake on `tcp` within [`HANDSHAKE_TIMEOUT`], or responds
/// to plain HTTP with a 400. Returns the stream when the handshake finished.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
) -> Option<TlsStream<TcpStream>> {
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate(tcp, acceptor)).await;

    match outcome {
        Ok(Ok(Negotiated::Tls(stream))) => Some(*stream),
        Ok(Ok(Negotiated::PlainHttp)) => {
            debug!(%peer, "plain HTTP on the TLS port; sent a 400 response and closed");
            None
        }
        Ok(Ok(Negotiated::Closed)) => {
            debug!(%peer, "connection closed before the TLS handshake");
            None
        }
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
            // rustls reports protocol errors, such as an alert from a client
            // that does not trust the certificate, as InvalidData.
            warn!(%error, %peer, "TLS handshake failed");
            None
        }
        Ok(Err(error)) => {
            debug!(%error, %peer, "connection failed during the TLS handshake");
            None
        }
        Err(_) => {
            debug!(
                %peer,
                timeout_secs = HANDSHAKE_TIMEOUT.as_secs(),
                "TLS handshake timed out; connection closed"
            );
            None
        }
    }
}

enum Negotiated {
    Tls(Box<TlsStream<TcpStream>>),
    PlainHttp,
    Closed,
}

async fn negotiate(tcp: TcpStream, acceptor: &TlsAcceptor) -> std::io::Result<Negotiated> {
    let mut first = [0_u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Ok(Negotiated::Closed);
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        reject_plain_http(tcp).await?;
        return Ok(Negotiated::PlainHttp);
    }

    let stream = acceptor.accept(tcp).await?;
    Ok(Negotiated::Tls(Box::new(stream)))
}

/// Reads the request head (up to [`MAX_PLAIN_REQUEST_HEAD`] bytes), responds
/// `400 Bad Request` with [`PLAIN_HTTP_BODY`] and closes the connection.
async fn reject_plain_http(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0_u8; 1024];
    while head.len() < MAX_PLAIN_REQUEST_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let count = tcp.read(&mut buffer).await?;
        if count == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..count]);
    }

    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PLAIN_HTTP_BODY}",
        PLAIN_HTTP_BODY.len()
    );
    tcp.write_all(response.as_bytes()).await?;
    tcp.shutdown().await?;

    let drain = async {
        let mut total = 0_usize;
        while total < 64 * 1024 {
            match tcp.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(count) => total += count,
            }
        }
    };
    let _ = tokio::time::timeout(PLAIN_DRAIN_TIMEOUT, drain).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_config(dir: &Path, cert: &str, key: &str) -> TlsConfig {
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        TlsConfig {
            cert_file,
            key_file,
        }
    }

    #[test]
    fn missing_cert_file_names_file() {
        let config = TlsConfig {
            cert_file: PathBuf::from("/nonexistent/runwarden/cert.pem"),
            key_file: PathBuf::from("/nonexistent/runwarden/key.pem"),
        };
        let error = load_server_config(&config).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/runwarden/cert.pem"), "{error}");
        assert!(error.contains("cert_file"), "{error}");
    }

    #[test]
    fn file_without_certificate_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let config = tls_config(dir.path(), "not a certificate\n", "");
        let error = load_server_config(&config).unwrap_err();
        assert!(matches!(error, TlsSetupError::NoCertificate(_)), "{error}");
    }
}
