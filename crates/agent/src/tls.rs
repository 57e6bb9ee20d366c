//! TLS for the agent link: which coordinator certificates the agent
//! accepts, and the client side of the handshake.
//!
//! The agent checks the coordinator's certificate in one of three ways,
//! chosen by its configuration ([`ServerTrust`]):
//!
//! - neither `tls_ca_file` nor `tls_fingerprint`: the chain must lead to one
//!   of Mozilla's root CAs, built in through the `webpki-roots` crate (the
//!   operating system's certificate store is not read), and the certificate
//!   must name the host of `coordinator_url`;
//! - `tls_ca_file`: the same checks, with only the CAs of that file as roots;
//! - `tls_fingerprint`: the SHA-256 digest of the certificate's DER form must
//!   equal the fingerprint. Names, issuer and dates are not checked.
//!
//! In every case the handshake signature is verified with the certificate's
//! public key, so a server needs the certificate's private key to pass.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::AgentConfig;

/// Length of a SHA-256 certificate fingerprint in bytes.
pub const FINGERPRINT_BYTES: usize = 32;

/// A SHA-256 digest of a certificate's DER form.
pub type Fingerprint = [u8; FINGERPRINT_BYTES];

/// Computes the SHA-256 fingerprint of a DER certificate.
pub fn certificate_fingerprint(der: &[u8]) -> Fingerprint {
    Sha256::digest(der).into()
}

/// Formats a fingerprint as upper-case hex pairs joined by colons, the form
/// `openssl x509 -fingerprint -sha256` prints.
pub fn format_fingerprint(fingerprint: &Fingerprint) -> String {
    let pairs: Vec<String> = fingerprint
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect();
    pairs.join(":")
}

/// A `tls_fingerprint` value that is not a SHA-256 fingerprint.
#[derive(Debug, thiserror::Error)]
#[error(
    "tls_fingerprint `{value}` is not a SHA-256 fingerprint: {reason}; write the 64 hex digits that `runwarden certs` or `openssl x509 -noout -fingerprint -sha256` prints, colons allowed"
)]
pub struct InvalidFingerprint {
    value: String,
    reason: String,
}

/// Parses a fingerprint: 64 hex digits in any case, with or without colons
/// between them.
///
/// # Errors
///
/// Fails on any other character or on a digit count other than 64.
pub fn parse_fingerprint(text: &str) -> Result<Fingerprint, InvalidFingerprint> {
    let invalid = |reason: String| InvalidFingerprint {
        value: text.to_owned(),
        reason,
    };

    let digits: String = text.chars().filter(|c| *c != ':').collect();
    if let Some(bad) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(invalid(format!("{bad:?} is not a hex digit")));
    }
    if digits.len() != 2 * FINGERPRINT_BYTES {
        return Err(invalid(format!(
            "it has {} hex digits instead of {}",
            digits.len(),
            2 * FINGERPRINT_BYTES
        )));
    }

    let mut fingerprint = [0_u8; FINGERPRINT_BYTES];
    hex::decode_to_slice(&digits, &mut fingerprint).map_err(|error| invalid(error.to_string()))?;
    Ok(fingerprint)
}

/// TLS options of the agent config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(
        "failed to read tls_ca_file `{path}`: {cause}; point tls_ca_file at a readable PEM file with the CA certificates"
    )]
    ReadCaFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "tls_ca_file `{path}` is not valid PEM: {cause}; point tls_ca_file at a PEM file with the CA certificates"
    )]
    CaFilePem {
        path: PathBuf,
        cause: rustls_pki_types::pem::Error,
    },
    #[error(
        "tls_ca_file `{0}` contains no PEM certificate (-----BEGIN CERTIFICATE-----); point it at the CA that signs the coordinator's certificate, such as ca.pem from `runwarden certs`"
    )]
    NoCaCertificate(PathBuf),
    #[error(
        "tls_ca_file `{path}` has a certificate that cannot be a trust anchor: {cause}; keep only CA certificates in it"
    )]
    BadCaCertificate { path: PathBuf, cause: rustls::Error },
    #[error(transparent)]
    Fingerprint(#[from] InvalidFingerprint),
    #[error("failed to set up TLS: {0}")]
    Rustls(rustls::Error),
}

/// The rule by which the agent accepts the coordinator's certificate.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// A chain to one of the root CAs built in through `webpki-roots`.
    BuiltInRoots,
    /// A chain to one of the CAs in this PEM file.
    CaFile(PathBuf),
    /// Exactly the certificate with this fingerprint.
    Fingerprint(Fingerprint),
}

impl fmt::Display for ServerTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerTrust::BuiltInRoots => f.write_str(
                "the agent trusts the built-in public root CAs, because tls_ca_file is not set",
            ),
            ServerTrust::CaFile(path) => {
                write!(f, "the agent trusts only the CAs in `{}`", path.display())
            }
            ServerTrust::Fingerprint(fingerprint) => write!(
                f,
                "the agent accepts only the certificate {}",
                format_fingerprint(fingerprint)
            ),
        }
    }
}

/// Client TLS settings for a `wss://` agent link.
#[derive(Clone)]
pub struct LinkTls {
    connector: TlsConnector,
    trust: ServerTrust,
}

impl LinkTls {
    /// Builds the TLS settings of `config`, or returns `None` when its
    /// `coordinator_url` does not use TLS. Reads `tls_ca_file` now, so a bad
    /// file fails at start-up.
    ///
    /// # Errors
    ///
    /// Fails when `tls_ca_file` cannot be read or contains no usable CA
    /// certificate, or `tls_fingerprint` is not a fingerprint.
    pub fn from_config(config: &AgentConfig) -> Result<Option<LinkTls>, TlsSetupError> {
        let uses_tls = config.link_url().is_ok_and(|url| url.starts_with("wss://"));
        if !uses_tls {
            return Ok(None);
        }

        let trust = match (&config.tls_fingerprint, &config.tls_ca_file) {
            (Some(fingerprint), _) => ServerTrust::Fingerprint(parse_fingerprint(fingerprint)?),
            (None, Some(path)) => ServerTrust::CaFile(path.clone()),
            (None, None) => ServerTrust::BuiltInRoots,
        };
        let client_config = client_config(&trust)?;
        Ok(Some(LinkTls {
            connector: TlsConnector::from(client_config),
            trust,
        }))
    }

    /// Returns the rule that checks the coordinator's certificate.
    pub fn trust(&self) -> &ServerTrust {
        &self.trust
    }

    /// Runs the TLS handshake on `tcp` for the server name `host` (a DNS
    /// name or an IP address, without brackets).
    ///
    /// # Errors
    ///
    /// Fails when `host` is not a valid server name or the handshake fails.
    /// The error names the cause and the fix.
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let server_name =
            ServerName::try_from(host.to_owned()).map_err(|_| HandshakeError::InvalidName {
                host: host.to_owned(),
            })?;
        self.connector
            .connect(server_name, tcp)
            .await
            .map_err(|error| HandshakeError::classify(error, host, &self.trust))
    }
}

/// The `ring` crypto provider, the only one the workspace builds.
// NOTE: rustls 0.23.48 deprecates it because ring has no post-quantum key
// exchange, so connections use X25519 or the NIST curves only.
#[allow(
    deprecated,
    reason = "the workspace enables rustls' ring provider only, not aws-lc-rs"
)]
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(trust: &ServerTrust) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = ring_provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Rustls)?;

    let config = match trust {
        ServerTrust::BuiltInRoots => {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerTrust::CaFile(path) => builder
            .with_root_certificates(read_ca_file(path)?)
            .with_no_client_auth(),
        ServerTrust::Fingerprint(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                fingerprint: *fingerprint,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_ca_file(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|cause| TlsSetupError::ReadCaFile {
        path: path.to_owned(),
        cause,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| TlsSetupError::CaFilePem {
            path: path.to_owned(),
            cause,
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCaCertificate(path.to_owned()));
    }

    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|cause| TlsSetupError::BadCaCertificate {
                path: path.to_owned(),
                cause,
            })?;
    }
    Ok(roots)
}

/// Accepts exactly one end-entity certificate, named by its fingerprint, and
/// verifies handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The coordinator presented a certificate other than the pinned one.
#[derive(Debug, thiserror::Error)]
#[error(
    "certificate fingerprint {} does not match tls_fingerprint {}",
    format_fingerprint(.presented),
    format_fingerprint(.expected)
)]
struct FingerprintMismatch {
    expected: Fingerprint,
    presented: Fingerprint,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = certificate_fingerprint(end_entity);
        if presented == self.fingerprint {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = FingerprintMismatch {
            expected: self.fingerprint,
            presented,
        };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(mismatch)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A failed TLS handshake with the coordinator, sorted by cause.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(
        "`{host}` in coordinator_url is not a valid TLS server name; use a DNS name or an IP address"
    )]
    InvalidName { host: String },
    #[error(
        "the coordinator's certificate is signed by an unknown CA ({trust}); set tls_ca_file to the PEM file of the CA that signed it, such as ca.pem from `runwarden certs`, or pin the certificate with tls_fingerprint"
    )]
    UnknownCa { trust: ServerTrust },
    #[error(
        "the coordinator's certificate fingerprint is {presented}, but tls_fingerprint is {expected}; if the coordinator's certificate was replaced, set tls_fingerprint to the new fingerprint, otherwise another server listens at this address"
    )]
    FingerprintMismatch { expected: String, presented: String },
    #[error(
        "the coordinator's certificate is not valid for `{host}` (it names {names}); put a name that the certificate lists in coordinator_url, or make a certificate for `{host}`, such as with `runwarden certs --host {host}`"
    )]
    NameMismatch { host: String, names: String },
    #[error(
        "the coordinator's certificate is expired or not yet valid ({cause}); renew the certificate or check the clocks of both machines"
    )]
    Validity { cause: rustls::Error },
    #[error(
        "the coordinator's certificate was rejected ({cause}); check [tls] cert_file on the coordinator"
    )]
    Certificate { cause: rustls::Error },
    #[error(
        "the coordinator did not respond with TLS ({cause}); if it serves plain HTTP, use an http:// coordinator_url, or configure [tls] on the coordinator"
    )]
    NotTls { cause: rustls::Error },
    #[error("TLS handshake with the coordinator failed: {cause}")]
    Other { cause: std::io::Error },
}

impl HandshakeError {
    /// Returns true when an operator must change a configuration or a
    /// certificate before the handshake can pass, and false for I/O
    /// failures that a later dial may not meet.
    pub fn needs_operator(&self) -> bool {
        !matches!(self, HandshakeError::Other { .. })
    }

    /// Sorts the error that tokio-rustls returned. It wraps rustls errors in
    /// an `io::Error`. Other I/O errors, such as a reset, stay unsorted.
    fn classify(error: std::io::Error, host: &str, trust: &ServerTrust) -> HandshakeError {
        let Some(tls_error) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return HandshakeError::Other { cause: error };
        };

        if let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = tls_error
            && let Some(mismatch) = other.0.downcast_ref::<FingerprintMismatch>()
        {
            return HandshakeError::FingerprintMismatch {
                expected: format_fingerprint(&mismatch.expected),
                presented: format_fingerprint(&mismatch.presented),
            };
        }

        match tls_error {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                HandshakeError::UnknownCa {
                    trust: trust.clone(),
                }
            }
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            }) => HandshakeError::NameMismatch {
                host: host.to_owned(),
                names: names_list(presented),
            },
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
                HandshakeError::NameMismatch {
                    host: host.to_owned(),
                    names: "other names".to_owned(),
                }
            }
            rustls::Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => HandshakeError::Validity {
                cause: tls_error.clone(),
            },
            rustls::Error::InvalidCertificate(_) => HandshakeError::Certificate {
                cause: tls_error.clone(),
            },
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                HandshakeError::NotTls {
                    cause: tls_error.clone(),
                }
            }
            _ => HandshakeError::Other { cause: error },
        }
    }
}

/// Joins the names of a certificate for a message. rustls-webpki 0.103
/// renders each name in Debug form, such as `DnsName("host")` or
/// `IpAddress(127.0.0.1)`, so only the value inside the brackets is kept.
fn names_list(presented: &[String]) -> String {
    if presented.is_empty() {
        return "no name".to_owned();
    }
    let names: Vec<&str> = presented
        .iter()
        .map(|name| {
            name.split_once('(')
                .and_then(|(_, inner)| inner.strip_suffix(')'))
                .map_or(name.as_str(), |inner| inner.trim_matches('"'))
        })
        .collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_accepts_colons_and_case() {
        let plain = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&plain).unwrap(), [0xAB; 32]);
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xAB; 32]);
    }

    #[test]
    fn fingerprint_rejects_bad_digit() {
        let text = format!("{}zz", "ab".repeat(31));
        let error = parse_fingerprint(&text).unwrap_err().to_string();
        assert!(error.contains("'z' is not a hex digit"), "{error}");
    }

    #[test]
    fn fingerprint_rejects_wrong_length() {
        let error = parse_fingerprint(&"ab".repeat(20)).unwrap_err().to_string();
        assert!(error.contains("40 hex digits instead of 64"), "{error}");
    }

    #[test]
    fn fingerprint_formats_round_trip() {
        let fingerprint = certificate_fingerprint(b"not really a certificate");
        let text = format_fingerprint(&fingerprint);
        assert_eq!(text.len(), 32 * 3 - 1);
        assert_eq!(parse_fingerprint(&text).unwrap(), fingerprint);
    }

    #[test]
    fn names_list_keeps_values() {
        let presented = vec![
            "DnsName(\"other.example\")".to_owned(),
            "IpAddress(10.0.0.5)".to_owned(),
        ];
        assert_eq!(names_list(&presented), "other.example, 10.0.0.5");
        assert_eq!(names_list(&[]), "no name");
    }

    #[test]
    fn missing_ca_file_names_file() {
        let config = AgentConfig {
            coordinator_url: "https://127.0.0.1:7300".into(),
            tls_ca_file: Some(PathBuf::from("/nonexistent/runwarden/ca.pem")),
            ..AgentConfig::default()
        };
        let error = LinkTls::from_config(&config).err().expect("setup fails");
        let message = error.to_string();
        assert!(
            message.contains("/nonexistent/runwarden/ca.pem"),
            "{message}"
        );
        assert!(message.contains("tls_ca_file"), "{message}");
    }

    #[test]
    fn plain_url_needs_no_tls() {
        let config = AgentConfig::default();
        assert!(LinkTls::from_config(&config).unwrap().is_none());
    }
}
