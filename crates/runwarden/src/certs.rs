//! `runwarden certs`: a development CA and a coordinator certificate signed
//! by it, for tests and first steps with TLS.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use runwarden_agent::tls::{certificate_fingerprint, format_fingerprint};
use runwarden_coordinator::config::DEFAULT_LISTEN;

use crate::Failure;

/// Days the CA certificate is valid, counted from now.
const CA_VALID_DAYS: u64 = 3650;

/// Days the coordinator certificate is valid, counted from now.
const COORDINATOR_VALID_DAYS: u64 = 365;

/// How far back both certificates start to be valid, so that a machine whose
/// clock is a little behind accepts them at once.
const BACKDATE: Duration = Duration::from_secs(3600);

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const COORDINATOR_CERT_FILE: &str = "coordinator.pem";
const COORDINATOR_KEY_FILE: &str = "coordinator-key.pem";

#[derive(clap::Args)]
pub struct CertsArgs {
    /// Folder for ca.pem, ca-key.pem, coordinator.pem and
    /// coordinator-key.pem, created if missing.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Host name or IP address that agents and clients put in the
    /// coordinator's URL. Repeat it for several. Each one becomes a subject
    /// alternative name of the coordinator certificate.
    #[arg(
        long = "host",
        value_name = "NAME_OR_IP",
        default_values = ["localhost", "127.0.0.1"]
    )]
    hosts: Vec<String>,
    /// Replace files that already exist in --out.
    #[arg(long)]
    force: bool,
}

/// The four PEM files of a development set-up.
struct DevCertificates {
    ca_cert: String,
    ca_key: String,
    coordinator_cert: String,
    coordinator_key: String,
    /// SHA-256 of the coordinator certificate's DER form.
    fingerprint: String,
}

pub fn run(args: CertsArgs) -> Result<(), Failure> {
    let CertsArgs { out, hosts, force } = args;

    let files = [
        CA_CERT_FILE,
        CA_KEY_FILE,
        COORDINATOR_CERT_FILE,
        COORDINATOR_KEY_FILE,
    ]
    .map(|name| out.join(name));
    let existing: Vec<String> = files
        .iter()
        .filter(|path| path.exists())
        .map(|path| format!("`{}`", path.display()))
        .collect();
    if !existing.is_empty() && !force {
        return Err(Failure::Config(anyhow::anyhow!(
            "{} already exist; pass --force to replace them, or choose another --out folder",
            existing.join(", ")
        )));
    }

    let certificates = generate(&hosts).map_err(Failure::Config)?;

    std::fs::create_dir_all(&out)
        .with_context(|| format!("failed to create the folder `{}`", out.display()))?;
    let [ca_cert, ca_key, coordinator_cert, coordinator_key] = &files;
    write_file(ca_cert, &certificates.ca_cert, 0o644, force)?;
    write_file(ca_key, &certificates.ca_key, 0o600, force)?;
    write_file(
        coordinator_cert,
        &certificates.coordinator_cert,
        0o644,
        force,
    )?;
    write_file(coordinator_key, &certificates.coordinator_key, 0o600, force)?;

    print_summary(&out, &hosts, &certificates.fingerprint);
    Ok(())
}

/// Makes a CA and a coordinator certificate for `hosts`, signed by the CA.
/// Both keys are ECDSA P-256.
fn generate(hosts: &[String]) -> anyhow::Result<DevCertificates> {
    if hosts.is_empty() || hosts.iter().any(String::is_empty) {
        anyhow::bail!("--host is empty; give a host name or an IP address");
    }
    let now = SystemTime::now();

    let ca_key = KeyPair::generate().context("failed to generate the CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Runwarden development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = (now - BACKDATE).into();
    ca_params.not_after = (now + days(CA_VALID_DAYS)).into();
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("failed to sign the CA certificate")?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let coordinator_key = KeyPair::generate().context("failed to generate the coordinator key")?;
    let mut params = CertificateParams::new(hosts.to_vec()).with_context(|| {
        format!("invalid --host in {hosts:?}; give DNS names (ASCII) or IP addresses")
    })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, hosts[0].as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + days(COORDINATOR_VALID_DAYS)).into();
    let coordinator_cert = params
        .signed_by(&coordinator_key, &issuer)
        .context("failed to sign the coordinator certificate")?;

    Ok(DevCertificates {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        coordinator_cert: coordinator_cert.pem(),
        coordinator_key: coordinator_key.serialize_pem(),
        fingerprint: format_fingerprint(&certificate_fingerprint(coordinator_cert.der())),
    })
}

fn days(count: u64) -> Duration {
    Duration::from_secs(count * 24 * 3600)
}

/// Writes `contents` to `path` with permission bits `mode`, also when the
/// file exists already and `replace` is set.
fn write_file(path: &Path, contents: &str, mode: u32, replace: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }

    let failed = || format!("failed to write `{}`", path.display());
    let mut file = options.open(path).with_context(failed)?;
    // `mode` applies only to a new file, so set it on a replaced one too,
    // before the key goes in.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(failed)?;
    file.write_all(contents.as_bytes()).with_context(failed)?;
    Ok(())
}

fn print_summary(out: &Path, hosts: &[String], fingerprint: &str) {
    let out = std::path::absolute(out).unwrap_or_else(|_| out.to_owned());
    let path_of = |name: &str| toml_string(&out.join(name));
    let port = DEFAULT_LISTEN.rsplit(':').next().unwrap_or("7300");
    let host = if hosts[0].contains(':') {
        format!("[{}]", hosts[0])
    } else {
        hosts[0].clone()
    };

    println!(
        r#"Wrote a development CA and a coordinator certificate to {out}:

  {CA_CERT_FILE:<20} CA certificate; agents trust it through tls_ca_file
  {CA_KEY_FILE:<20} CA private key, needed only to sign more certificates
  {COORDINATOR_CERT_FILE:<20} coordinator certificate for {names}, valid {COORDINATOR_VALID_DAYS} days
  {COORDINATOR_KEY_FILE:<20} coordinator private key

SHA-256 fingerprint of the coordinator certificate:

  {fingerprint}

Coordinator config:

  [tls]
  cert_file = {cert_file}
  key_file = {key_file}

Agent config, with tls_ca_file or, to pin this one certificate instead,
tls_fingerprint:

  coordinator_url = "https://{host}:{port}"
  tls_ca_file = {ca_file}
  # tls_fingerprint = "{fingerprint}"

These files are for tests and first steps, not for production: the CA key
lies unencrypted next to the certificates. Keep both key files secret."#,
        out = out.display(),
        names = hosts.join(", "),
        cert_file = path_of(COORDINATOR_CERT_FILE),
        key_file = path_of(COORDINATOR_KEY_FILE),
        ca_file = path_of(CA_CERT_FILE),
    );
}

/// Quotes a path as a TOML basic string. JSON string escapes are valid TOML
/// escapes, so serde_json does the quoting.
fn toml_string(path: &Path) -> String {
    let text = path.to_string_lossy();
    serde_json::to_string(text.as_ref()).unwrap_or_else(|_| format!("\"{text}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_makes_four_pem_files() {
        let hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let certificates = generate(&hosts).unwrap();
        assert!(
            certificates
                .ca_cert
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(
            certificates
                .coordinator_cert
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(certificates.ca_key.contains("PRIVATE KEY-----"));
        assert!(certificates.coordinator_key.contains("PRIVATE KEY-----"));
        assert_ne!(certificates.ca_cert, certificates.coordinator_cert);
        assert_eq!(certificates.fingerprint.len(), 32 * 3 - 1);
    }

    #[test]
    fn generate_rejects_empty_host() {
        let error = generate(&[String::new()]).err().expect("empty host fails");
        assert!(error.to_string().contains("--host"), "{error}");
    }

    #[test]
    fn toml_string_escapes_quotes() {
        let quoted = toml_string(Path::new("/tmp/a\"b"));
        assert_eq!(quoted, r#""/tmp/a\"b""#);
    }
}
