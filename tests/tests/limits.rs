//! Configured limits, end to end: the connection cap answers with each
//! protocol's "too busy" reply, and the line and failure limits follow the
//! configuration.

#![allow(clippy::unwrap_used)]

use mailgate_config::Protocol;
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, USER, imap_addr, logs, pop3_addr, smtp_addr, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_answers_too_busy() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = env.config_for(
        &[
            (Protocol::Imap, &imap.url(false)),
            (Protocol::Smtp, "smtps://127.0.0.1:9"),
            (Protocol::Pop3, "pop3s://127.0.0.1:9"),
        ],
        "max_connections = 2\nshutdown_grace = \"1s\"",
        "",
        "",
    );
    let g = start(env.load(&text)).await;
    let a = LineClient::greeted(imap_addr(&g)).await;
    let b = LineClient::greeted(imap_addr(&g)).await;
    for (addr, want) in [
        (
            imap_addr(&g),
            "* BYE Too many connections; try again later\r\n",
        ),
        (
            smtp_addr(&g),
            "421 4.3.2 Too many connections; try again later\r\n",
        ),
        (
            pop3_addr(&g),
            "-ERR [SYS/TEMP] Too many connections; try again later\r\n",
        ),
    ] {
        let mut c = LineClient::connect(addr).await;
        assert_eq!(c.line().await, want);
        assert!(c.closed().await);
    }
    // A slot frees when a client leaves.
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut c = LineClient::connect(imap_addr(&g)).await;
        if c.line().await.starts_with("* OK") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was not freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_line_and_failure_limits() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    env.seal_new_user_token();
    let text = env.config_for(
        &[
            (Protocol::Imap, &imap.url(false)),
            (Protocol::Smtp, "smtps://127.0.0.1:9"),
        ],
        "max_line = 600\nmax_failures = 1\nmax_literal = 64",
        "",
        "",
    );
    let g = start(env.load(&text)).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    c.send(format!("a NOOP {}\r\n", "x".repeat(700))).await;
    assert_eq!(c.line().await, "* BYE Line too long (limit 600 bytes)\r\n");
    assert!(c.closed().await);

    // The configured literal cap: 64 bytes are taken, 65 close.
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    c.send("b LOGIN {64}\r\n").await;
    assert_eq!(c.line().await, "+ Ready for literal data\r\n");
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    c.send("b LOGIN {65}\r\n").await;
    let r = c.line().await;
    assert!(
        r.starts_with("* BYE Command too large (limits: literal 64 bytes"),
        "{r}"
    );
    assert!(c.closed().await);

    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(
        c.login("a", USER, "wrong")
            .await
            .starts_with("a NO [AUTHENTICATIONFAILED]")
    );
    assert_eq!(c.line().await, "* BYE Too many failed login attempts\r\n");
    assert!(c.closed().await);

    let mut s = LineClient::greeted_with(smtp_addr(&g), "220").await;
    s.send(format!("EHLO {}\r\n", "y".repeat(700))).await;
    assert_eq!(
        s.line().await,
        "500 5.5.6 Line too long (limit 600 bytes)\r\n"
    );
    assert!(s.closed().await);
}

/// Repeated wrong passwords show in `mailgate accounts` (written by the
/// running gateway to state_dir/backoff.json).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_is_visible_in_accounts() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    env.seal_new_user_token();
    let text = env.config_text(&imap.url(false), "", "", "");
    let cfg = env.write_config(&text);
    let g = start(env.load(&text)).await;
    for tag in ["a", "b", "c"] {
        let mut c = LineClient::greeted(imap_addr(&g)).await;
        assert!(c.login(tag, USER, "wrong").await.contains(" NO "));
    }
    let snapshot = env.state_dir().join("backoff.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let failures = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s).ok()?["users"][USER]["failures"].as_u64()
    };
    while !std::fs::read_to_string(&snapshot).is_ok_and(|s| failures(&s) == Some(3)) {
        assert!(std::time::Instant::now() < deadline, "no backoff snapshot");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = mailgate_tests::harness::mailgate(Some(&cfg))
        .arg("accounts")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| l.starts_with(USER)).unwrap();
    assert!(row.contains("3 (next +0.5s)"), "{text}");
    assert!(
        text.contains("client addresses with failed logins: 127.0.0.1: 3 (next +0.5s)"),
        "{text}"
    );
}

/// Unset, `max_connections` is sized from the descriptor limit the process
/// has, without a warning; a configured value the limit cannot hold is
/// warned about and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_follows_the_descriptor_limit() {
    use mailgate_tests::harness::Running;
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let sessions = |g: &Running| -> serde_json::Value {
        g.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "sessions at once")
            .map(|v| v["max_connections"].clone())
            .unwrap_or_else(|| panic!("no \"sessions at once\" line:\n{}", g.log()))
    };
    let warned = |g: &Running| g.log().contains("the descriptor limit holds only");
    for (extra, want, warns) in [
        // (256 - 64) / 2 sessions fit, and nobody asked for more.
        ("", 96, false),
        ("max_connections = 90", 90, false),
        ("max_connections = 1000", 1000, true),
    ] {
        let text = env.config_for(
            &[(Protocol::Imap, &imap.url(false))],
            &format!("log_format = \"json\"\n{extra}"),
            "",
            "",
        );
        let path = env.write_config(&text);
        let g = Running::start_with_fd_limit(&path, "listening", 256);
        assert_eq!(sessions(&g), want, "{extra:?}:\n{}", g.log());
        assert_eq!(warned(&g), warns, "{extra:?}:\n{}", g.log());
    }
}
