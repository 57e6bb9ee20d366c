//! TLS on the REST API and the agent link, with real `runwarden` processes
//! on 127.0.0.1 and certificates from `runwarden certs`. REST calls go
//! through curl, which checks the coordinator's certificate with `--cacert`.

mod common;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{AgentProcess, BINARY, CoordinatorProcess};
use serde_json::{Value, json};

/// Maximum wait for a process to exit, a peer to connect or a log line.
const LIMIT: Duration = Duration::from_secs(20);

/// The files `runwarden certs` wrote, and the fingerprint it printed.
struct DevCerts {
    dir: PathBuf,
    fingerprint: String,
}

impl DevCerts {
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("coordinator.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("coordinator-key.pem")
    }

    /// Returns the `[tls]` table for a coordinator config.
    fn tls_table(&self) -> String {
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.cert().display(),
            self.key().display()
        )
    }
}

/// The output of a process that ran to its end.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` until it exits, for at most [`LIMIT`], and
/// kills it past that.
fn run_binary(args: &[&str], dir: &Path) -> Finished {
    let stdout_path = dir.join("run.stdout");
    let stderr_path = dir.join("run.stderr");
    let mut child = Command::new(BINARY)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start runwarden");

    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll runwarden") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("runwarden {args:?} did not exit within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

/// Writes `text` to `dir/COMMAND.toml` and runs `runwarden COMMAND --config`
/// with it until it exits.
fn run_with_config(dir: &Path, command: &str, text: &str) -> Finished {
    let config = dir.join(format!("{command}.toml"));
    std::fs::write(&config, text).unwrap();
    run_binary(&[command, "--config", &config.display().to_string()], dir)
}

/// Runs `runwarden certs --out DIR/name` with `--host` for each of `hosts`
/// (none keeps the defaults), and reads the fingerprint it printed.
fn make_certs(dir: &Path, name: &str, hosts: &[&str]) -> DevCerts {
    let out = dir.join(name);
    let out_text = out.display().to_string();
    let mut args = vec!["certs", "--out", out_text.as_str()];
    for host in hosts {
        args.extend(["--host", host]);
    }
    let finished = run_binary(&args, dir);
    assert!(
        finished.status.success(),
        "runwarden certs failed: {}",
        finished.stderr
    );

    let fingerprint = finished
        .stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("# tls_fingerprint = "))
        .expect("certs prints a tls_fingerprint line")
        .trim_matches('"')
        .to_owned();
    DevCerts {
        dir: out,
        fingerprint,
    }
}

fn https_url(coordinator: &CoordinatorProcess) -> String {
    format!("https://{}", coordinator.address)
}

/// Runs curl with `args` and returns the HTTP status and the body. Status 0
/// means curl got no HTTP response, such as after a failed handshake.
fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// Calls the REST API over HTTPS, trusting only `ca`, and parses the body:
/// a POST of `body`, or a GET without one.
fn api(ca: &Path, url: &str, body: Option<&Value>) -> (u16, Value) {
    let body_text = body.map(Value::to_string);
    let method = if body.is_some() { "POST" } else { "GET" };
    https_call(ca, method, url, None, body_text.as_deref())
}

fn is_online(ca: &Path, base_url: &str, peer_id: &str) -> bool {
    let (_, envelope) = api(ca, &format!("{base_url}/peers"), None);
    envelope["data"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|peer| peer["peerId"] == peer_id && peer["online"] == true)
}

fn wait_online(ca: &Path, base_url: &str, agent: &AgentProcess) {
    let deadline = Instant::now() + LIMIT;
    while !is_online(ca, base_url, &agent.peer_id) {
        assert!(
            Instant::now() < deadline,
            "peer {} not online within {LIMIT:?}; agent log:\n{}",
            agent.peer_id,
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the agent's log contains `needle` and returns the log.
fn wait_for_log(agent: &AgentProcess, needle: &str) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let log = agent.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "agent log has no `{needle}` within {LIMIT:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a coordinator that serves TLS with `certs`.
fn tls_coordinator(dir: &Path, certs: &DevCerts) -> CoordinatorProcess {
    CoordinatorProcess::start(dir, &certs.tls_table())
}

#[test]
fn https_api_serves_health() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let coordinator = tls_coordinator(dir.path(), &certs);

    let base_url = https_url(&coordinator);
    let (status, envelope) = api(&certs.ca(), &format!("{base_url}/health"), None);
    assert_eq!(status, 200, "{envelope}");
    assert_eq!(envelope["data"]["status"], "ready", "{envelope}");

    let by_name = format!("https://localhost:{}/health", coordinator.address.port());
    let (status, _) = api(&certs.ca(), &by_name, None);
    assert_eq!(
        status, 200,
        "localhost is a name of the default certificate"
    );

    let log = coordinator.log();
    assert!(
        log.contains(&format!("url=https://{}", coordinator.address)),
        "{log}"
    );
}

#[test]
fn stalled_handshake_blocks_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let mut coordinator = tls_coordinator(dir.path(), &certs);
    let base_url = https_url(&coordinator);

    // Two clients that open a TLS record and then send nothing more: a
    // handshake that runs on the accept path would hold up every later
    // client until the handshake timeout.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut tcp = std::net::TcpStream::connect(coordinator.address).unwrap();
        tcp.write_all(&[0x16]).unwrap();
        stalled.push(tcp);
    }

    let ca = certs.ca().display().to_string();
    let (status, body) = curl(&[
        "--cacert",
        &ca,
        "--max-time",
        "5",
        &format!("{base_url}/health"),
    ]);
    assert_eq!(status, 200, "{body}");

    coordinator.terminate();
    let exit = coordinator.wait_exit(LIMIT);
    assert!(exit.success(), "coordinator exited with {exit}");
    drop(stalled);
}

#[test]
fn plain_http_gets_use_https() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let coordinator = tls_coordinator(dir.path(), &certs);

    let plain_url = format!("http://{}", coordinator.address);
    let (status, body) = curl(&[&format!("{plain_url}/health")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("https://"), "{body}");
    assert!(!body.contains("ready"), "{body}");

    let request = json!({ "peers": ["nobody"], "content": { "execWay": 0, "content": "true" } });
    let (status, body) = curl(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        &request.to_string(),
        &format!("{plain_url}/script/async"),
    ]);
    assert_eq!(status, 400, "{body}");
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");

    // The response ends with a close: reading reaches the end of the stream.
    let mut tcp = std::net::TcpStream::connect(coordinator.address).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .expect("the coordinator closes the plain connection");
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    assert!(response.contains("Connection: close"), "{response}");
}

#[test]
fn ca_file_agent_runs_job() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let coordinator = tls_coordinator(dir.path(), &certs);
    let base_url = https_url(&coordinator);

    let options = format!("tls_ca_file = \"{}\"", certs.ca().display());
    let agent = AgentProcess::start(dir.path(), "tls-ca", &base_url, &options);
    wait_online(&certs.ca(), &base_url, &agent);

    let request = json!({
        "peers": ["tls-ca"],
        "content": { "execWay": 0, "content": "echo over-tls" }
    });
    let (status, envelope) = api(
        &certs.ca(),
        &format!("{base_url}/script/sync"),
        Some(&request),
    );
    assert_eq!(status, 200, "{envelope}");
    let job = &envelope["data"]["list"][0];
    assert_eq!(job["status"], "success", "{envelope}");
    assert_eq!(job["resCmd"]["stdout"], "over-tls\n", "{envelope}");
}

#[test]
fn pinned_fingerprint_agent_connects() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let coordinator = tls_coordinator(dir.path(), &certs);
    let base_url = https_url(&coordinator);

    // Lower case without colons: the agent accepts both forms.
    let fingerprint = certs.fingerprint.replace(':', "").to_lowercase();
    let wss_url = format!("wss://{}", coordinator.address);
    let options = format!("tls_fingerprint = \"{fingerprint}\"");
    let agent = AgentProcess::start(dir.path(), "tls-pin", &wss_url, &options);
    wait_online(&certs.ca(), &base_url, &agent);
}

#[test]
fn wrong_fingerprint_stays_offline() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let other = make_certs(dir.path(), "other-certs", &[]);
    let coordinator = tls_coordinator(dir.path(), &certs);
    let base_url = https_url(&coordinator);

    let options = format!("tls_fingerprint = \"{}\"", other.fingerprint);
    let agent = AgentProcess::start(dir.path(), "tls-wrong-pin", &base_url, &options);

    let log = wait_for_log(&agent, "TLS handshake with the coordinator failed");
    assert!(log.contains("tls_fingerprint"), "{log}");
    assert!(log.contains(&certs.fingerprint), "presented: {log}");
    assert!(log.contains(&other.fingerprint), "expected: {log}");
    assert!(!log.contains("connected to coordinator"), "{log}");
    assert!(!is_online(&certs.ca(), &base_url, "tls-wrong-pin"));
}

#[test]
fn builtin_roots_reject_dev_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let coordinator = tls_coordinator(dir.path(), &certs);
    let base_url = https_url(&coordinator);

    let agent = AgentProcess::start(dir.path(), "tls-no-ca", &base_url, "");

    let log = wait_for_log(&agent, "TLS handshake with the coordinator failed");
    assert!(log.contains("unknown CA"), "{log}");
    assert!(log.contains("built-in"), "{log}");
    assert!(log.contains("set tls_ca_file"), "{log}");
    assert!(!is_online(&certs.ca(), &base_url, "tls-no-ca"));
}

#[test]
fn other_host_certificate_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &["other.example"]);
    let coordinator = tls_coordinator(dir.path(), &certs);
    let base_url = https_url(&coordinator);

    let options = format!("tls_ca_file = \"{}\"", certs.ca().display());
    let agent = AgentProcess::start(dir.path(), "tls-other-host", &base_url, &options);

    let log = wait_for_log(&agent, "TLS handshake with the coordinator failed");
    assert!(log.contains("not valid for `127.0.0.1`"), "{log}");
    assert!(log.contains("other.example"), "{log}");
    assert!(!log.contains("connected to coordinator"), "{log}");

    // curl's name check agrees, so the REST API is refused as well.
    let (status, _) = curl(&[
        "--cacert",
        &certs.ca().display().to_string(),
        &format!("{base_url}/health"),
    ]);
    assert_eq!(status, 0, "curl must reject the certificate");
}

#[test]
fn plain_agent_on_tls_port_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let coordinator = tls_coordinator(dir.path(), &certs);

    let plain_url = format!("http://{}", coordinator.address);
    let agent = AgentProcess::start(dir.path(), "plain-on-tls", &plain_url, "");

    let log = wait_for_log(&agent, "failed to reach coordinator");
    assert!(log.contains("HTTP 400"), "{log}");
    assert!(log.contains("https://"), "{log}");
}

#[test]
fn tls_agent_on_plain_port_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let coordinator = CoordinatorProcess::start(dir.path(), "");

    let options = format!("tls_ca_file = \"{}\"", certs.ca().display());
    let agent = AgentProcess::start(
        dir.path(),
        "tls-on-plain",
        &https_url(&coordinator),
        &options,
    );

    let log = wait_for_log(&agent, "TLS handshake with the coordinator failed");
    assert!(log.contains("did not respond with TLS"), "{log}");
}

#[test]
fn missing_cert_file_is_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-cert.pem");
    let finished = run_with_config(
        dir.path(),
        "coordinator",
        &format!(
            "listen = \"127.0.0.1:0\"\nstorage = \"memory\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            missing.display(),
            dir.path().join("missing-key.pem").display()
        ),
    );
    assert_eq!(finished.status.code(), Some(64), "{}", finished.stderr);
    assert!(
        finished.stderr.contains(&missing.display().to_string()),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("cert_file"), "{}", finished.stderr);
}

#[test]
fn mismatched_key_is_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let finished = run_with_config(
        dir.path(),
        "coordinator",
        &format!(
            "listen = \"127.0.0.1:0\"\nstorage = \"memory\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            certs.cert().display(),
            certs.dir.join("ca-key.pem").display()
        ),
    );
    assert_eq!(finished.status.code(), Some(64), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("cannot be used"),
        "{}",
        finished.stderr
    );
}

#[test]
fn tls_options_with_plain_url_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let finished = run_with_config(
        dir.path(),
        "agent",
        "coordinator_url = \"http://127.0.0.1:7300\"\ntls_ca_file = \"/etc/runwarden/ca.pem\"\n",
    );
    assert_eq!(finished.status.code(), Some(64), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("tls_ca_file is set"),
        "{}",
        finished.stderr
    );
}

#[test]
fn missing_ca_file_is_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let finished = run_with_config(
        dir.path(),
        "agent",
        &format!(
            "coordinator_url = \"https://127.0.0.1:7300\"\ntls_ca_file = \"{}\"\ndata_dir = \"{}\"\nuse_cgroups = false\n",
            missing.display(),
            dir.path().join("agent-data").display()
        ),
    );
    assert_eq!(finished.status.code(), Some(64), "{}", finished.stderr);
    assert!(
        finished.stderr.contains(&missing.display().to_string()),
        "{}",
        finished.stderr
    );
}

#[test]
fn certs_refuses_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let key_before = std::fs::read(certs.key()).unwrap();
    let out = certs.dir.display().to_string();

    let refused = run_binary(&["certs", "--out", &out], dir.path());
    assert_eq!(refused.status.code(), Some(64), "{}", refused.stderr);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(std::fs::read(certs.key()).unwrap(), key_before);

    let forced = run_binary(&["certs", "--out", &out, "--force"], dir.path());
    assert!(forced.status.success(), "{}", forced.stderr);
    assert_ne!(std::fs::read(certs.key()).unwrap(), key_before);

    for name in ["ca-key.pem", "coordinator-key.pem"] {
        let mode = std::fs::metadata(certs.dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
}

/// Runs `runwarden token ARGS --config` on the coordinator's config and
/// returns the token it printed.
fn token_command(dir: &Path, args: &[&str]) -> String {
    let config = dir.join("coordinator.toml").display().to_string();
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    all.extend(["--config", config.as_str()]);
    let finished = run_binary(&all, dir);
    assert!(finished.status.success(), "{}", finished.stderr);
    finished.stdout.trim().to_owned()
}

/// Calls the REST API over HTTPS with a bearer token: a POST of `body`,
/// or a GET without one.
fn api_with_token(ca: &Path, url: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let body_text = body.map(Value::to_string);
    let method = if body.is_some() { "POST" } else { "GET" };
    https_call(ca, method, url, Some(token), body_text.as_deref())
}

#[test]
fn enrolled_agent_runs_job_over_tls_with_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let options = format!("{}[auth]\nenabled = true\n", certs.tls_table());
    let coordinator = CoordinatorProcess::start(dir.path(), &options);
    let base_url = https_url(&coordinator);
    let admin = token_command(dir.path(), &["create", "--name", "ops", "--scope", "admin"]);
    let enrollment = token_command(dir.path(), &["enroll", "--peer", "tls-enrolled"]);

    let (status, envelope) = api(&certs.ca(), &format!("{base_url}/peers"), None);
    assert_eq!(status, 401, "{envelope}");
    let (status, envelope) = api_with_token(
        &certs.ca(),
        &format!("{base_url}/peers"),
        "rwt_000000000000_x",
        None,
    );
    assert_eq!(status, 401, "{envelope}");
    assert_eq!(envelope["code"], 40102, "{envelope}");

    let agent_options = format!(
        "tls_ca_file = \"{}\"\nenrollment_token = \"{enrollment}\"",
        certs.ca().display()
    );
    let agent = AgentProcess::start(dir.path(), "tls-enrolled", &base_url, &agent_options);
    let deadline = Instant::now() + LIMIT;
    loop {
        let (_, envelope) = api_with_token(&certs.ca(), &format!("{base_url}/peers"), &admin, None);
        let online = envelope["data"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|peer| peer["peerId"] == "tls-enrolled" && peer["online"] == true);
        if online {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent not online:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let request = json!({
        "peers": ["tls-enrolled"],
        "content": { "execWay": 0, "content": "echo enrolled-over-tls" }
    });
    let (status, envelope) = api_with_token(
        &certs.ca(),
        &format!("{base_url}/script/sync"),
        &admin,
        Some(&request),
    );
    assert_eq!(status, 200, "{envelope}");
    assert_eq!(
        envelope["data"]["list"][0]["resCmd"]["stdout"], "enrolled-over-tls\n",
        "{envelope}"
    );
    assert!(agent.data_dir.join("credential").exists());
}

/// Calls the API over HTTPS with any method, an optional token and an
/// optional raw body.
fn https_call(
    ca: &Path,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let ca = ca.display().to_string();
    let header = token.map(|token| format!("Authorization: Bearer {token}"));
    let mut args = vec!["--cacert", ca.as_str(), "-X", method];
    if let Some(header) = &header {
        args.extend(["-H", header.as_str()]);
    }
    if let Some(body) = body {
        args.extend([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    args.push(url);

    let (status, text) = curl(&args);
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{url} responded {status} with non-JSON ({error}): {text}"));
    (status, value)
}

#[test]
fn token_rejections_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let options = format!(
        "max_body_bytes = 4096\nmax_script_bytes = 2048\nmax_tasks_per_minute = 1\n{}[auth]\nenabled = true\n",
        certs.tls_table()
    );
    let coordinator = CoordinatorProcess::start(dir.path(), &options);
    let base = https_url(&coordinator);
    let ca = certs.ca();
    let admin = token_command(dir.path(), &["create", "--name", "ops", "--scope", "admin"]);
    let reader = token_command(
        dir.path(),
        &["create", "--name", "viewer", "--scope", "read"],
    );
    let runner = token_command(
        dir.path(),
        &["create", "--name", "runner", "--scope", "run"],
    );
    let short = token_command(
        dir.path(),
        &[
            "create", "--name", "short", "--scope", "admin", "--ttl", "1s",
        ],
    );
    let revoked = token_command(
        dir.path(),
        &["create", "--name", "gone", "--scope", "admin"],
    );
    token_command(dir.path(), &["revoke", "--name", "gone"]);
    let peers = format!("{base}/peers");
    let task = r#"{"peers":["nobody"],"content":{"content":"true","execWay":0}}"#;

    let (status, body) = https_call(&ca, "GET", &peers, None, None);
    assert_eq!(
        (status, body["code"].as_i64()),
        (401, Some(40101)),
        "missing: {body}"
    );
    let (status, body) = https_call(&ca, "GET", &peers, Some("rwt_0123456789ab_wrong"), None);
    assert_eq!(
        (status, body["code"].as_i64()),
        (401, Some(40102)),
        "wrong: {body}"
    );
    let (status, body) = https_call(&ca, "GET", &peers, Some(&revoked), None);
    assert_eq!(
        (status, body["code"].as_i64()),
        (401, Some(40104)),
        "revoked: {body}"
    );
    let (status, body) = https_call(
        &ca,
        "POST",
        &format!("{base}/script/async"),
        Some(&reader),
        Some(task),
    );
    assert_eq!(
        (status, body["code"].as_i64()),
        (403, Some(40301)),
        "under-scoped: {body}"
    );
    let (status, body) = https_call(&ca, "GET", &peers, Some(&reader), None);
    assert_eq!(status, 200, "read token: {body}");

    let oversized = format!(
        r#"{{"peers":["nobody"],"content":{{"content":"{}","execWay":0}}}}"#,
        "x".repeat(8192)
    );
    let (status, body) = https_call(
        &ca,
        "POST",
        &format!("{base}/script/async"),
        Some(&admin),
        Some(&oversized),
    );
    assert_eq!(
        (status, body["code"].as_i64()),
        (413, Some(41301)),
        "oversized: {body}"
    );

    let (status, body) = https_call(
        &ca,
        "POST",
        &format!("{base}/script/async"),
        Some(&runner),
        Some(task),
    );
    assert_eq!(status, 404, "first task of the minute: {body}");
    let (status, body) = https_call(
        &ca,
        "POST",
        &format!("{base}/script/async"),
        Some(&runner),
        Some(task),
    );
    assert_eq!(
        (status, body["code"].as_i64()),
        (429, Some(42901)),
        "rate limit: {body}"
    );

    // The token was made with a 1 s lifetime; wait until it is past.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = https_call(&ca, "GET", &peers, Some(&short), None);
    assert_eq!(
        (status, body["code"].as_i64()),
        (401, Some(40103)),
        "expired: {body}"
    );
}

#[test]
fn spoofed_peer_id_is_rejected_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "certs", &[]);
    let options = format!("{}[auth]\nenabled = true\n", certs.tls_table());
    let coordinator = CoordinatorProcess::start(dir.path(), &options);
    let base = https_url(&coordinator);
    let ca = certs.ca();
    let admin = token_command(dir.path(), &["create", "--name", "ops", "--scope", "admin"]);
    let enrollment = token_command(dir.path(), &["enroll", "--peer", "genuine"]);

    let genuine_options = format!(
        "tls_ca_file = \"{}\"\nenrollment_token = \"{enrollment}\"",
        ca.display()
    );
    let mut genuine = AgentProcess::start(dir.path(), "genuine", &base, &genuine_options);
    let credential = genuine.data_dir.join("credential");
    let deadline = Instant::now() + LIMIT;
    while !credential.exists() {
        assert!(
            Instant::now() < deadline,
            "agent did not enroll:\n{}",
            genuine.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    genuine.stop();

    let spoofer_options = format!(
        "tls_ca_file = \"{}\"\ncredential_file = \"{}\"",
        ca.display(),
        credential.display()
    );
    let spoofer = AgentProcess::start(dir.path(), "impostor", &base, &spoofer_options);
    let audit_url = format!("{base}/audit?action=agent.denied");
    let deadline = Instant::now() + LIMIT;
    let denial = loop {
        let (_, body) = https_call(&ca, "GET", &audit_url, Some(&admin), None);
        if let Some(entry) = body["data"]["list"]
            .as_array()
            .and_then(|list| list.first())
            .cloned()
        {
            break entry;
        }
        assert!(
            Instant::now() < deadline,
            "no agent.denied entry:\n{}",
            spoofer.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(denial["outcome"], "credential_for_other_peer", "{denial}");
    assert_eq!(denial["target"], "impostor", "{denial}");
    let (_, body) = https_call(&ca, "GET", &format!("{base}/peers"), Some(&admin), None);
    let online: Vec<&Value> = body["data"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|peer| peer["online"] == true)
        .collect();
    assert!(online.is_empty(), "{body}");
}
