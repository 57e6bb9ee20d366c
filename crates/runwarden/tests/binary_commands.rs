//! The `runwarden` binary itself: dev mode's printed example, the
//! coordinator and agent subcommands with config files, and an agent that
//! does not run as root.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_runwarden");

/// A child process that is killed when dropped, so a failing test leaves no
/// server behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the child's stdout until a line contains `needle`, for at most 20 s,
/// and returns every line read.
fn read_until(child: &mut Child, needle: &str) -> Vec<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if sender.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match receiver.recv_timeout(left) {
            Ok(Ok(line)) => {
                let found = line.contains(needle);
                lines.push(line);
                if found {
                    return lines;
                }
            }
            _ => break,
        }
    }
    panic!("`{needle}` not printed within 20 s; got {lines:?}");
}

#[test]
fn dev_mode_printed_curl_works() {
    let work_dir = tempfile::tempdir().unwrap();
    let mut dev = Command::new(BINARY)
        .args(["dev", "--listen", "127.0.0.1:0"])
        .current_dir(work_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start runwarden dev");
    let lines = read_until(&mut dev, "-d '");
    let _dev = KillOnDrop(dev);

    // The example spans two lines joined by a trailing backslash, exactly as
    // a user would paste it into a shell.
    let start = lines
        .iter()
        .position(|line| line.trim_start().starts_with("curl"))
        .unwrap();
    let example = lines[start..].join("\n");
    let output = Command::new("sh")
        .arg("-c")
        .arg(&example)
        .output()
        .expect("run curl");

    assert!(output.status.success(), "curl failed: {output:?}");
    let answer: Value = serde_json::from_slice(&output.stdout).expect("curl printed JSON");
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(answer["data"]["status"], "success", "{answer}");
    assert_eq!(
        answer["data"]["list"][0]["resCmd"]["stdout"],
        format!("hello from {host}\n")
    );
    assert!(work_dir.path().join("runwarden-dev/scripts").is_dir());
}

#[test]
fn dev_mode_rejects_public_listen() {
    let output = Command::new(BINARY)
        .args(["dev", "--listen", "0.0.0.0:7300"])
        .output()
        .expect("run runwarden dev");

    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");
}

#[test]
fn bad_config_exits_with_usage_status() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nmax_timeout = 5\n").unwrap();

    let output = Command::new(BINARY)
        .args(["coordinator", "--config"])
        .arg(&path)
        .output()
        .expect("run runwarden coordinator");

    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_timeout"), "{stderr}");
    assert!(stderr.contains("coordinator.toml"), "{stderr}");
}

/// Starts `runwarden coordinator` on a free port and returns it with its URL.
fn start_coordinator(dir: &std::path::Path) -> (KillOnDrop, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);

    let config = dir.join("coordinator.toml");
    // A data_dir of its own, so that no test touches the machine's default
    // /var/lib/runwarden.
    let text = format!(
        "listen = \"{address}\"\ndata_dir = \"{}\"\n",
        dir.join("coordinator-data").display()
    );
    std::fs::write(&config, text).unwrap();
    let child = Command::new(BINARY)
        .args(["coordinator", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start runwarden coordinator");
    let url = format!("http://{address}");

    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(
            Instant::now() < deadline,
            "coordinator did not listen on {address}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (KillOnDrop(child), url)
}

fn post(url: &str, body: &Value) -> Value {
    let output = Command::new("curl")
        .args(["-s", "-H", "Content-Type: application/json", "-d"])
        .arg(body.to_string())
        .arg(url)
        .output()
        .expect("run curl");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("not JSON: {output:?}"))
}

/// Waits until `/script/sync` on `peer` answers, which needs the agent to
/// have connected.
fn sync_when_connected(url: &str, peer: &str, content: Value) -> Value {
    let body = serde_json::json!({ "peers": [peer], "content": content });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = post(&format!("{url}/script/sync"), &body);
        if answer["code"] == 0 {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "agent {peer} never connected: {answer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agent_binary_runs_jobs_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, url) = start_coordinator(dir.path());
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "coordinator_url = \"{url}\"\npeer_id = \"bin-agent\"\nscripts_dir = \"{0}\"\ndata_dir = \"{0}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let agent = Command::new(BINARY)
        .args(["agent", "--config"])
        .arg(&agent_config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start runwarden agent");
    let _agent = KillOnDrop(agent);

    let answer = sync_when_connected(
        &url,
        "bin-agent",
        serde_json::json!({ "content": "echo from-binary" }),
    );

    assert_eq!(
        answer["data"]["list"][0]["resCmd"]["stdout"], "from-binary\n",
        "{answer}"
    );
}

#[test]
fn non_root_agent_runs_only_as_itself() {
    if !common::is_root() {
        eprintln!("skipped: starting an agent as another user needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, url) = start_coordinator(dir.path());
    let data_dir = dir.path().join("nobody-data");
    std::fs::create_dir(&data_dir).unwrap();
    nix::unistd::chown(&data_dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "coordinator_url = \"{url}\"\npeer_id = \"unprivileged\"\ndata_dir = \"{}\"\nuse_cgroups = false\n",
            data_dir.display()
        ),
    )
    .unwrap();
    make_traversable(dir.path());
    make_traversable(std::path::Path::new(BINARY).parent().unwrap());

    let agent = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BINARY)
        .args(["agent", "--config"])
        .arg(&agent_config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start runwarden agent as nobody");
    let _agent = KillOnDrop(agent);

    let own = sync_when_connected(
        &url,
        "unprivileged",
        serde_json::json!({ "content": "id -u" }),
    );
    let other = sync_when_connected(
        &url,
        "unprivileged",
        serde_json::json!({ "content": "id -u", "user": "root" }),
    );

    assert_eq!(
        own["data"]["list"][0]["resCmd"]["stdout"], "65534\n",
        "{own}"
    );
    let res_cmd = &other["data"]["list"][0]["resCmd"];
    assert_eq!(res_cmd["code"], "user_not_permitted", "{other}");
    assert!(
        res_cmd["err"].as_str().unwrap().contains("not root"),
        "{other}"
    );
    assert_eq!(res_cmd["exitCode"], -1);
}

/// Lets other users enter `dir` and read its files, as the unprivileged
/// agent needs for its config and binary.
fn make_traversable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;

    let mut current = Some(dir);
    while let Some(path) = current {
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o005 != 0o005 {
                let _ =
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o005));
            }
        }
        current = path.parent();
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Ok(meta) = entry.metadata()
                && meta.is_file()
            {
                let mode = meta.permissions().mode();
                let _ = std::fs::set_permissions(
                    entry.path(),
                    std::fs::Permissions::from_mode(mode | 0o004),
                );
            }
        }
    }
}
