//! The real binary's logs: `log_format = "json"` gives one JSON object per
//! line, every line of a connection carries the connection span's fields,
//! and `--log-level` wins over `RUST_LOG`.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use mailgate_config::Protocol;
use mailgate_tests::client::LineClient;
use mailgate_tests::harness::{Env, PASSWORD, USER, mailgate, unused_port};
use mailgate_tests::imap_server::{FakeImap, Options};
use serde_json::Value;

/// `mailgate run --log-level debug` on `cfg` (with `RUST_LOG` when given),
/// its standard error collected by a thread, once `port` accepts.
async fn run_debug(
    cfg: &std::path::Path,
    port: u16,
    rust_log: Option<&str>,
) -> (
    std::process::Child,
    std::thread::JoinHandle<Vec<String>>,
    std::net::SocketAddr,
) {
    let mut cmd = mailgate(Some(cfg));
    cmd.args(["--log-level", "debug", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(l) = rust_log {
        cmd.env("RUST_LOG", l);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (child, reader, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_the_connection_span() {
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    env.seal_new_user_token();
    let port = unused_port();
    let text = env
        .config_for(
            &[(Protocol::Imap, &imap.url(false))],
            "log_format = \"json\"\nshutdown_grace = \"1s\"",
            "",
            "",
        )
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let cfg = env.write_config(&text);
    let (mut child, reader, addr) = run_debug(&cfg, port, Some("trace")).await;
    let mut c = LineClient::greeted(addr).await;
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));
    c.send("z LOGOUT\r\n").await;
    c.response("z").await;
    assert!(c.closed().await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let lines = reader.join().unwrap();

    let mut in_connection = 0;
    let mut levels = std::collections::BTreeSet::new();
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        levels.insert(v["level"].as_str().unwrap().to_owned());
        assert!(
            v["timestamp"].is_string() && v["message"].is_string(),
            "{line}"
        );
        let Some(conn) = v["spans"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "conn"))
        else {
            continue;
        };
        in_connection += 1;
        assert!(conn["id"].is_u64(), "{line}");
        assert_eq!(conn["proto"], "imap", "{line}");
        assert!(
            conn["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
        let message = v["message"].as_str().unwrap();
        if message.contains("relaying") || message.starts_with("session ") {
            assert_eq!(conn["user"], USER, "the user is known after login: {line}");
        }
    }
    assert!(
        in_connection >= 4,
        "too few connection lines:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.contains("\"message\":\"session ")),
        "{}",
        lines.join("\n")
    );
    // --log-level debug beat RUST_LOG=trace.
    assert!(levels.contains("DEBUG"), "{levels:?}");
    assert!(!levels.contains("TRACE"), "{levels:?}");
}

#[test]
fn a_bad_log_level_is_a_user_error() {
    let env_dir = tempfile::tempdir().unwrap();
    let cfg = env_dir.path().join("m.toml");
    std::fs::write(&cfg, "").unwrap();
    let out = mailgate(Some(&cfg))
        .args(["--log-level", "degub", "login", "x@y"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--log-level"), "{err}");
}

/// A second login on the same connection: each line names one user, the
/// one of its attempt, and after the login the connection's span carries
/// the user who logged in (text logs printed `user=` once per attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_per_line_after_two_logins() {
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    env.seal_new_user_token();
    let port = unused_port();
    let text = env
        .config_for(
            &[(Protocol::Imap, &imap.url(false))],
            "shutdown_grace = \"1s\"",
            "",
            "",
        )
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let cfg = env.write_config(&text);
    let (mut child, reader, addr) = run_debug(&cfg, port, None).await;
    let mut c = LineClient::greeted(addr).await;
    let r = c.login("a", "nobody@example.com", PASSWORD).await;
    assert!(
        r.starts_with("a NO [AUTHENTICATIONFAILED] Invalid credentials"),
        "{r}"
    );
    assert!(c.login("b", USER, PASSWORD).await.starts_with("b OK"));
    c.send("z LOGOUT\r\n").await;
    c.response("z").await;
    assert!(c.closed().await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let lines = reader.join().unwrap();
    let all = lines.join("\n");
    for line in &lines {
        assert!(line.matches("user=").count() <= 1, "{line}\n\n{all}");
    }
    let failed = lines
        .iter()
        .find(|l| l.contains("login failed"))
        .unwrap_or_else(|| panic!("{all}"));
    assert!(
        failed.contains("user=\"nobody@example.com\"")
            || failed.contains("user=nobody@example.com"),
        "{failed}"
    );
    let session = lines
        .iter()
        .find(|l| l.contains("session "))
        .unwrap_or_else(|| panic!("no session line:\n{all}"));
    assert!(session.contains(USER), "{session}");
    assert!(!session.contains("nobody"), "{session}");
}
