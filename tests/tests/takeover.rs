//! The attacks of the security review (issue 12), over real sockets and,
//! where it matters, through the real binary: an account can be opened only
//! by its owner.
//!
//! - in-band authorisation counts towards the connection's failures (the
//!   in-band takeover itself is in `inband.rs`);
//! - the wrong identity at the provider stores nothing, whether the
//!   provider sends an ID token or not, for `mailgate login` and `token
//!   import`;
//! - `forget` and re-authorisation take effect for the next login of a
//!   running gateway;
//! - a web page's cross-protocol POST is closed without an answer;
//! - a client that never reads cannot outstay the pre-auth deadline;
//! - connections per address are capped.

#![allow(clippy::unwrap_used)]

use secrecy::ExposeSecret as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mailgate_config::Protocol;
use mailgate_tests::browser::sign_in;
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{
    Env, PASSWORD, USER, imap_addr, logs, pop3_addr, run_mailgate, smtp_addr, start,
    without_in_band,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn token_path(env: &Env) -> std::path::PathBuf {
    env.state_dir().join("tokens").join(format!("{USER}.json"))
}

/// An account without tokens: every in-band answer counts towards the
/// connection's limit of failed attempts (never towards the account's or
/// the address's backoff: it is not a wrong password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_band_counts_towards_max_failures() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let g = env.gateway(&imap.url(false)).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    for tag in ["a", "b", "c"] {
        let r = c.login(tag, USER, PASSWORD).await;
        assert!(r.starts_with(&format!("{tag} NO")), "{r}");
    }
    assert_eq!(c.line().await, "* BYE Too many failed login attempts\r\n");
    assert!(c.closed().await);
}

/// Runs `mailgate ARGS` with `password` and `stdin`; (success, output).
fn mailgate(cfg: &std::path::Path, args: &[&str], password: &str, stdin: &str) -> (bool, String) {
    let out = run_mailgate(cfg, args, stdin, Some(password), &[]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `mailgate login` in the browser flow, with the provider signing in
/// whoever `env.oauth` says; (success, output).
async fn cli_browser_login(cfg: &std::path::Path) -> (bool, String) {
    let mut child = tokio::process::Command::from(mailgate_tests::harness::mailgate(Some(cfg)))
        .args(["login", USER, "--no-browser", "--timeout", "20s"])
        .env("MAILGATE_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.lines().any(|l| l.starts_with("http")) {
        let n = tokio::time::timeout(Duration::from_secs(20), stdout.read(&mut buf))
            .await
            .expect("mailgate login printed no URL")
            .unwrap();
        assert!(n > 0, "mailgate login ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let url = seen
        .lines()
        .find(|l| l.starts_with("http"))
        .unwrap()
        .to_string();
    sign_in(&url).await;
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        format!("{seen}{rest}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_the_wrong_identity_stores_nothing() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let cfg = env.write_config(&env.config_text(&imap.url(false), "", "", ""));

    // With an ID token: its identity is compared.
    env.oauth.set_sign_in_as(Some("mallory@evil.test"));
    let (ok, out) = cli_browser_login(&cfg).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("mallory@evil.test")
            && out.contains("alice@example.test")
            && out.contains("nothing was stored"),
        "{out}"
    );
    assert!(!token_path(&env).exists());
    assert!(
        env.oauth
            .last_authorize()
            .get("scope")
            .is_some_and(
                |s| s.split(' ').any(|x| x == "openid") && s.split(' ').any(|x| x == "email")
            ),
        "openid email are asked for"
    );
    assert!(env.oauth.last_authorize().contains_key("nonce"));

    // Without an ID token: one upstream login as the account proves it,
    // and the fake upstream refuses a token of another user.
    env.oauth.set_id_tokens(false);
    let (ok, out) = cli_browser_login(&cfg).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("does not open the mailbox of alice@example.test"),
        "{out}"
    );
    assert!(!token_path(&env).exists());

    // The right identity, without an ID token: proven upstream, stored.
    env.oauth.set_sign_in_as(None);
    let logins = imap.successful_logins();
    let (ok, out) = cli_browser_login(&cfg).await;
    assert!(ok, "{out}");
    assert!(token_path(&env).exists());
    assert_eq!(imap.successful_logins(), logins + 1, "one upstream proof");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_import_of_another_users_token_stores_nothing() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let cfg = env.write_config(&env.config_text(&imap.url(false), "", "", ""));
    let other = env.oauth.issue_refresh_token("mallory@evil.test");
    let (ok, out) = mailgate(&cfg, &["token", "import", USER], PASSWORD, &other);
    assert!(!ok, "{out}");
    assert!(out.contains("does not open the mailbox"), "{out}");
    assert!(!token_path(&env).exists());
    let own = env.oauth.issue_refresh_token(USER);
    let (ok, out) = mailgate(&cfg, &["token", "import", USER], PASSWORD, &own);
    assert!(ok, "{out}");
    assert!(token_path(&env).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_new_password_take_effect_in_a_running_gateway() {
    logs();
    let env = Env::new().await;
    env.oauth.set_rotate(true);
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = without_in_band(&env.config_text(&imap.url(false), "", "", ""));
    let cfg = env.write_config(&text);
    let g = start(env.load(&text)).await;
    env.seal_new_user_token();
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));

    let (ok, out) = mailgate(&cfg, &["forget", USER], "", "");
    assert!(ok, "{out}");
    // The old password no longer opens anything, even when the gateway
    // would refresh (its cached tokens are dropped, not written back).
    env.oauth.revoke_access_tokens();
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("b", USER, PASSWORD).await;
    assert!(r.starts_with("b NO [AUTHENTICATIONFAILED]"), "{r}");
    assert!(!token_path(&env).exists(), "the file does not come back");

    // Authorised again with a new password: the old one does not win.
    let rt = env.oauth.issue_refresh_token(USER);
    let (ok, out) = mailgate(&cfg, &["token", "import", USER], "a-new-password", &rt);
    assert!(ok, "{out}");
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("c", USER, PASSWORD).await;
    assert!(r.starts_with("c NO [AUTHENTICATIONFAILED]"), "{r}");
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("d", USER, "a-new-password").await;
    assert!(r.starts_with("d OK"), "{r}");
    // And a refresh by the gateway keeps the new password's file.
    env.oauth.revoke_access_tokens();
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(
        c.login("e", USER, "a-new-password")
            .await
            .starts_with("e OK")
    );
    let stored = env.open(USER, "a-new-password");
    assert!(
        env.oauth
            .refresh_token_valid(stored.refresh_token.as_ref().unwrap().expose_secret())
    );
}

/// What a web page can make a browser send to a local port.
const BROWSER_POST: &str = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.test\r\nContent-Type: text/plain\r\nContent-Length: 34\r\n\r\na LOGIN erin@example.test pw12345678\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_protocol_requests_from_web_pages_get_no_answer() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let smtp = FakeServer::smtp(&env.ca, env.oauth.clone(), Default::default()).await;
    let pop3 = FakeServer::pop3(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = env.config_for(
        &[
            (Protocol::Imap, &imap.url(false)),
            (Protocol::Smtp, &smtp.url(false)),
            (Protocol::Pop3, &pop3.url(false)),
        ],
        "",
        "",
        "[[account]]\nuser = \"*@example.test\"\nprovider = \"test\"\n",
    );
    let g = start(env.load(&text)).await;
    for (addr, greeting) in [
        (imap_addr(&g), "* OK"),
        (smtp_addr(&g), "220"),
        (pop3_addr(&g), "+OK"),
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).await.unwrap(), 1, "a greeting");
            got.push(b[0]);
        }
        assert!(String::from_utf8_lossy(&got).starts_with(greeting));
        s.write_all(BROWSER_POST.as_bytes()).await.unwrap();
        let mut after = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut after)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "the connection is closed: {read:?}"
        );
        assert!(
            after.is_empty(),
            "no answer to an HTTP request: {}",
            String::from_utf8_lossy(&after)
        );
    }
    // Nothing of the page reached the provider, and no login was counted
    // (erin's own login goes through without a backoff).
    assert!(env.oauth.last_authorize().is_empty());
    assert_eq!(env.oauth.token_request_count(), 0);
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c
        .login("a", "erin@example.test", "erins-own-password")
        .await;
    assert!(
        r.starts_with("a NO [ALERT] erin@example.test is not authorised yet"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_at_the_preauth_deadline() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = env.config_text(&imap.url(false), "preauth_timeout = \"2s\"", "", "");
    let g = start(env.load(&text)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(imap_addr(&g)).await.unwrap();
    // Commands whose replies are never read: the gateway's writes block.
    let chunk = "a NOOP\r\n".repeat(1024);
    let started = Instant::now();
    let closed = loop {
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
        match tokio::time::timeout(Duration::from_secs(1), s.write_all(chunk.as_bytes())).await {
            Ok(Err(_)) => break true,
            _ => {
                // Blocked or written: see whether the server is gone.
                let mut probe = [0u8; 1];
                if let Ok(Ok(0)) | Ok(Err(_)) =
                    tokio::time::timeout(Duration::from_millis(1), s.peek(&mut probe)).await
                {
                    break true;
                }
            }
        }
    };
    assert!(closed, "the connection outlived its pre-auth deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = env.config_text(&imap.url(false), "max_connections_per_ip = 2", "", "");
    let g = start(env.load(&text)).await;
    let _a = LineClient::greeted(imap_addr(&g)).await;
    let _b = LineClient::greeted(imap_addr(&g)).await;
    let mut c = LineClient::connect(imap_addr(&g)).await;
    assert_eq!(
        c.line().await,
        "* BYE Too many connections; try again later\r\n"
    );
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _d = LineClient::greeted(imap_addr(&g)).await;
}

#[test]
fn check_never_echoes_a_value_and_warns_about_readable_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mailgate.toml");
    let run = |args: &[&str]| {
        let out = mailgate_tests::harness::mailgate(Some(&cfg))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // An unquoted secret is a syntax error: the line and the key are named,
    // the value never.
    std::fs::write(
        &cfg,
        "[provider.o]\npreset = \"office365\"\nclient_id = \"x\"\nclient_secret = s3cr3t-value\n",
    )
    .unwrap();
    let (code, out) = run(&["check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("line 4") && out.contains("client_secret"),
        "{out}"
    );
    assert!(!out.contains("s3cr3t"), "{out}");
    // A value of the wrong type: its kind is named, not the value.
    std::fs::write(&cfg, "[gateway]\nmax_connections = \"s3cr3t-value\"\n").unwrap();
    let (_, out) = run(&["check"]);
    assert!(
        out.contains("max_connections") && !out.contains("s3cr3t"),
        "{out}"
    );

    // A valid file with a client_secret, readable by everyone: a warning.
    std::fs::write(
        &cfg,
        "[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:0\"\n\n[provider.o]\npreset = \"office365\"\nclient_id = \"x\"\nclient_secret = \"s3cr3t-value\"\n\n[[account]]\nuser = \"a@example.test\"\nprovider = \"o\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out) = run(&["check"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("readable by every user") && out.contains("provider.o.client_secret"),
        "{out}"
    );
    assert!(!out.contains("s3cr3t"), "{out}");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_, out) = run(&["check"]);
    assert!(!out.contains("readable by every user"), "{out}");
}

/// `mailgate login` opens the browser without the sign-in URL (and its
/// `state`) on a command line, where `ps` would show it to every user: the
/// browser gets the path of a private page that leads on to the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_command_line_carries_no_secret() {
    use std::os::unix::fs::PermissionsExt;
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let cfg = env.write_config(&env.config_text(&imap.url(false), "", "", ""));
    let seen = env.path().join("browser-args");
    let page = env.path().join("browser-page");
    let script = env.path().join("browser.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nf=\"${{1#file://}}\"\nstat -c %a \"$f\" > {page}.mode\ncat \"$f\" > {page}\necho \"$@\" > {seen}.tmp\nmv {seen}.tmp {seen}\n",
            page = page.display(),
            seen = seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = tokio::process::Command::from(mailgate_tests::harness::mailgate(Some(&cfg)))
        .args(["login", USER, "--timeout", "20s"])
        .env("MAILGATE_PASSWORD", PASSWORD)
        .env("BROWSER", format!("{} %s", script.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.exists() {
        assert!(Instant::now() < deadline, "no browser was started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let args = std::fs::read_to_string(&seen).unwrap();
    assert!(args.starts_with("file://"), "{args}");
    assert!(!args.contains("state=") && !args.contains("http"), "{args}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("{}.mode", page.display()))
            .unwrap()
            .trim(),
        "600"
    );
    let start = html.find("url=").expect("a redirect in the page") + 4;
    let url = html[start..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(url.contains("state="), "{url}");
    sign_in(&url).await;
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(out.success());
    assert!(token_path(&env).exists());
    assert!(
        !std::fs::read_dir(env.state_dir().join("sign-in"))
            .unwrap()
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "html")),
        "the page is removed after the sign-in"
    );
}
