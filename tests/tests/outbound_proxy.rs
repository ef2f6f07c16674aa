//! Outbound proxies: the real binary reaches a real Dovecot and the fake
//! token endpoint through the test HTTP (CONNECT) and SOCKS5 proxies,
//! which log what they forwarded; TLS runs inside the tunnel against the
//! mail server's own name; refusing and unreachable proxies are reported
//! to the client as such; `no_proxy` and `proxy = "direct"` bypass them.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailgate_config::Protocol;
use mailgate_tests::client::LineClient;
use mailgate_tests::dovecot::Dovecot;
use mailgate_tests::harness::{Env, PASSWORD, Running, USER, logs, run_mailgate, unused_port};
use mailgate_tests::proxies::{Answer, TestProxy};

/// Dovecot and a sealed refresh token (the first login refreshes).
async fn setup() -> (Env, Dovecot) {
    logs();
    let env = Env::new().await;
    let dv = Dovecot::start(env.path(), &env.ca, &env.oauth, unused_port());
    env.seal_new_user_token();
    (env, dv)
}

fn gateway(env: &Env, servers: &[(Protocol, &str)], gateway: &str, provider: &str) -> Running {
    let text = env.config_for(
        servers,
        &format!("log_format = \"json\"\n{gateway}"),
        provider,
        "",
    );
    Running::start(&env.write_config(&text), "listening")
}

async fn imap_login(g: &Running) -> String {
    let mut c = LineClient::greeted(g.address("listening", Some("imap"))).await;
    let r = c.login("a", USER, PASSWORD).await;
    if r.starts_with("a OK") {
        c.send("s SELECT INBOX\r\n").await;
        let s = c.response_text("s").await;
        assert!(s.contains("s OK"), "{s}");
    }
    r
}

fn forwarded(proxy: &TestProxy, line: &str) -> bool {
    proxy
        .log()
        .iter()
        .any(|l| l == &format!("{line} forwarded"))
}

/// IMAP and the token request through an HTTP proxy with a password; then
/// the proxy refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_and_token_requests_through_an_http_proxy() {
    let (env, dv) = setup().await;
    let proxy = TestProxy::http(Some(("mg", "pr0xy pw"))).await;
    let url = format!("imaps://127.0.0.1:{}", dv.imaps_port);
    let setting = format!("proxy = \"http://mg:pr0xy%20pw@{}\"", proxy.addr);
    let g = gateway(&env, &[(Protocol::Imap, &url)], &setting, "");
    let r = imap_login(&g).await;
    assert!(r.starts_with("a OK"), "{r}\n{}\n{}", g.log(), dv.log());
    assert!(
        forwarded(&proxy, &format!("CONNECT 127.0.0.1:{}", dv.imaps_port)),
        "{:?}",
        proxy.log()
    );
    assert!(
        forwarded(&proxy, &format!("POST {}", env.oauth.token_url())),
        "{:?}",
        proxy.log()
    );

    // `check` shows the routes, without the proxy's password.
    let out = run_mailgate(&env.path().join("mailgate.toml"), &["check"], "", None, &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    let through = format!("through http://mg@{}", proxy.addr);
    assert!(shown.contains(&through), "{shown}");
    assert!(shown.contains("token proxy"), "{shown}");
    assert!(!shown.contains("pr0xy"), "{shown}");

    // The proxy says no: the client is told, and so is the log.
    proxy.set_answer(Answer::Refuse);
    let r = imap_login(&g).await;
    assert!(
        r.starts_with(
            "a NO [UNAVAILABLE] The proxy refused the connection; the administrator must check the gateway's proxy settings"
        ),
        "{r}"
    );
    // The proxy's address and user are the administrator's, in the log.
    assert!(
        !r.contains("mg@") && !r.contains(&proxy.addr.to_string()),
        "{r}"
    );
    let log = g.log();
    assert!(log.contains("HTTP 403 Forbidden"), "{log}");
    assert!(!log.contains("pr0xy"), "{log}");
}

/// POP3 and SMTP through SOCKS5 with user/password; `socks5h://` hands
/// the proxy the server's name, and TLS inside the tunnel still checks the
/// certificate for that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_and_smtp_through_socks5h() {
    let (env, dv) = setup().await;
    let proxy = TestProxy::socks5(Some(("mg", "s0cks"))).await;
    let pop3 = format!("pop3s://localhost:{}", dv.pop3s_port);
    let smtp = format!("smtps://localhost:{}", dv.submissions_port);
    let g = gateway(
        &env,
        &[(Protocol::Pop3, &pop3), (Protocol::Smtp, &smtp)],
        &format!("proxy = \"socks5h://mg:s0cks@{}\"", proxy.addr),
        "",
    );
    let mut p = LineClient::greeted_with(g.address("listening", Some("pop3")), "+OK").await;
    p.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await;
    assert!(p.line().await.starts_with("+OK"));
    let r = p.line().await;
    assert_eq!(r, "+OK Logged in\r\n", "{}\n{}", g.log(), dv.log());

    let mut c = LineClient::greeted_with(g.address("listening", Some("smtp")), "220").await;
    c.send("EHLO scanner.example\r\n").await;
    while !c.line().await.starts_with("250 ") {}
    c.send(format!(
        "AUTH PLAIN {}\r\n",
        STANDARD.encode(format!("\0{USER}\0{PASSWORD}"))
    ))
    .await;
    let r = c.line().await;
    assert!(r.starts_with("235"), "{r}\n{}", dv.log());

    let token_port = env.oauth.addr.port();
    for line in [
        format!("SOCKS5 name localhost:{}", dv.pop3s_port),
        format!("SOCKS5 name localhost:{}", dv.submissions_port),
        format!("SOCKS5 ip 127.0.0.1:{token_port}"),
    ] {
        assert!(forwarded(&proxy, &line), "{line}: {:?}", proxy.log());
    }

    proxy.set_answer(Answer::Refuse);
    let mut p = LineClient::greeted_with(g.address("listening", Some("pop3")), "+OK").await;
    p.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await;
    p.line().await;
    let r = p.line().await;
    assert!(
        r.starts_with("-ERR [SYS/TEMP] The proxy refused the connection; the administrator")
            && !r.contains("socks5h://"),
        "{r}"
    );
    assert!(
        g.log().contains("Connection not allowed by ruleset"),
        "{}",
        g.log()
    );
    assert!(!g.log().contains("s0cks"), "{}", g.log());
}

/// `socks5://` (names resolved here) per provider over the gateway's
/// proxy; `no_proxy` and `proxy = "direct"` bypass the proxy; an
/// unreachable proxy and a proxy refusing the token request are said so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_bypasses_and_failures() {
    let (env, dv) = setup().await;
    let socks = TestProxy::socks5(None).await;
    let http = TestProxy::http(None).await;
    let dead = format!("proxy = \"http://127.0.0.1:{}\"", unused_port());
    let by_ip = format!("imaps://127.0.0.1:{}", dv.imaps_port);
    let by_name = format!("imaps://localhost:{}", dv.imaps_port);

    // The provider's own proxy wins over the gateway's (dead) one.
    let g = gateway(
        &env,
        &[(Protocol::Imap, &by_ip)],
        &dead,
        &format!("proxy = \"socks5://{}\"", socks.addr),
    );
    let r = imap_login(&g).await;
    assert!(r.starts_with("a OK"), "{r}\n{}", g.log());
    assert!(
        forwarded(&socks, &format!("SOCKS5 ip 127.0.0.1:{}", dv.imaps_port)),
        "{:?}",
        socks.log()
    );
    drop(g);

    // "direct", and no_proxy: the proxy sees nothing.
    for (gw, provider) in [
        (
            format!("{dead}\nno_proxy = [\"127.0.0.0/8\"]"),
            String::new(),
        ),
        (dead.clone(), "proxy = \"direct\"".to_owned()),
        (
            format!("proxy = \"http://{}\"\nno_proxy = [\"*\"]", http.addr),
            String::new(),
        ),
    ] {
        let g = gateway(&env, &[(Protocol::Imap, &by_ip)], &gw, &provider);
        let r = imap_login(&g).await;
        assert!(r.starts_with("a OK"), "{gw} {provider}: {r}\n{}", g.log());
    }

    // An unreachable proxy.
    let g = gateway(&env, &[(Protocol::Imap, &by_ip)], &dead, "");
    let r = imap_login(&g).await;
    assert!(
        r.starts_with("a NO [UNAVAILABLE] The proxy cannot be reached now; ")
            && !r.contains("127.0.0.1"),
        "{r}"
    );
    drop(g);

    // The mail server directly (no_proxy names it), the token request
    // through a proxy that refuses it. (SOCKS5 here: a real token endpoint
    // is https, reached through an HTTP proxy's CONNECT, which fails the
    // same way; the fake one is http, which an HTTP proxy would forward.)
    env.oauth.revoke_access_tokens();
    env.seal_new_user_token();
    socks.set_answer(Answer::Refuse);
    let g = gateway(
        &env,
        &[(Protocol::Imap, &by_name)],
        &format!(
            "proxy = \"socks5://{}\"\nno_proxy = [\"localhost\"]",
            socks.addr
        ),
        "",
    );
    let before = socks.log().len();
    let r = imap_login(&g).await;
    assert!(
        r.starts_with(
            "a NO [UNAVAILABLE] Cannot log in now: the gateway's outbound proxy refused or failed the request to the token endpoint; the administrator must check the gateway's proxy settings"
        ) && !r.contains(&socks.addr.to_string()),
        "{r}"
    );
    assert_eq!(
        socks.log()[before..],
        [format!(
            "SOCKS5 ip 127.0.0.1:{} refused",
            env.oauth.addr.port()
        )]
    );
    assert!(
        g.log().contains("refused or failed the request"),
        "{}",
        g.log()
    );
    // The refresh token is kept: the proxy lets it through, the login works.
    socks.set_answer(Answer::Forward);
    let r = imap_login(&g).await;
    assert!(r.starts_with("a OK"), "{r}");
    assert!(http.log().is_empty(), "{:?}", http.log());
}

#[test]
fn proxy_settings_are_checked_without_echoing_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let check = |gateway: &str, provider: &str| {
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            format!(
                "[gateway]\n{gateway}\n[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:0\"\n[provider.p]\npreset = \"office365\"\nclient_id = \"c\"\n{provider}\n[[account]]\nuser = \"a@x.test\"\nprovider = \"p\"\n"
            ),
        )
        .unwrap();
        match mailgate_config::load_with_env(&path, Vec::new()) {
            Ok(c) => Ok(c.describe()),
            Err(e) => Err(e.to_string()),
        }
    };
    let e = check("proxy = \"https://u:hunter2@p.example:3128\"", "").unwrap_err();
    assert!(e.contains("gateway.proxy") && !e.contains("hunter2"), "{e}");
    let e = check("proxy = \"http://p.example\"", "").unwrap_err();
    assert!(e.contains("no port"), "{e}");
    let e = check("no_proxy = [\"a b\"]", "").unwrap_err();
    assert!(e.contains("gateway.no_proxy[0]"), "{e}");
    let e = check("", "proxy = \"socks4://p:1\"").unwrap_err();
    assert!(
        e.contains("provider.p.proxy") && e.contains("direct"),
        "{e}"
    );
    // The Microsoft servers go through the proxy, unless no_proxy names them.
    let shown = check(
        "proxy = \"socks5h://p.example:1080\"\nno_proxy = [\".office365.com\"]",
        "",
    )
    .unwrap();
    assert!(
        shown.contains("token proxy    socks5h://p.example:1080"),
        "{shown}"
    );
    assert!(
        !shown.contains("office365.com:993 (implicit TLS) through"),
        "{shown}"
    );
    // A password in the file makes the file a secret.
    let path = dir.path().join("m.toml");
    let _ = check("proxy = \"http://u:pw@p.example:3128\"", "");
    let cfg = mailgate_config::load_with_env(&path, Vec::new()).unwrap();
    assert!(
        cfg.secret_files.iter().any(|(k, _)| k == "gateway.proxy"),
        "{:?}",
        cfg.secret_files
    );
}
