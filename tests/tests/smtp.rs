//! SMTP end to end through the gateway (in process) against a scripted
//! XOAUTH2-only submission server over TLS.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailgate_config::Protocol;
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::{FailureStyle, FakeServer};
use mailgate_tests::harness::{Env, PASSWORD, USER, logs, smtp_addr, start, unused_port};
use mailgate_tests::smtp_server::Options;

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

fn xoauth2(user: &str, token: &str) -> String {
    b64(&format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

/// The message as a client sends it after DATA (one line dot-stuffed), and
/// as the server must receive it.
const SENT: &str = "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: via mailgate\r\n\r\nHello.\r\n..a line that starts with a dot\r\n.\r\n";
const RECEIVED: &str = "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: via mailgate\r\n\r\nHello.\r\n.a line that starts with a dot\r\n";

struct Setup {
    env: Env,
    smtp: FakeServer,
    gateway: mailgate::Gateway,
}

impl Setup {
    async fn new() -> Setup {
        Self::with(Options::default(), "").await
    }

    async fn with(opts: Options, extra_provider: &str) -> Setup {
        logs();
        let env = Env::new().await;
        let starttls = opts.starttls;
        let smtp = FakeServer::smtp(&env.ca, env.oauth.clone(), opts).await;
        env.seal_new_user_token();
        let text = env.config_for(
            &[(Protocol::Smtp, &smtp.url(starttls))],
            "",
            extra_provider,
            "",
        );
        let gateway = start(env.load(&text)).await;
        Setup { env, smtp, gateway }
    }

    async fn client(&self) -> LineClient {
        let mut c = LineClient::connect(smtp_addr(&self.gateway)).await;
        assert_eq!(c.line().await, "220 localhost ESMTP mailgate ready\r\n");
        c.send("EHLO client.example\r\n").await;
        let mut ehlo = String::new();
        loop {
            let l = c.line().await;
            ehlo.push_str(&l);
            if l.starts_with("250 ") {
                break;
            }
        }
        assert_eq!(
            ehlo,
            "250-localhost Hello client.example\r\n250-AUTH PLAIN LOGIN\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
        );
        c
    }
}

/// MAIL, RCPT and DATA after authentication; returns the replies.
async fn send_message(c: &mut LineClient) {
    c.send("MAIL FROM:<alice@example.test>\r\n").await;
    assert!(c.line().await.starts_with("250"));
    c.send("RCPT TO:<bob@example.test>\r\n").await;
    assert!(c.line().await.starts_with("250"));
    c.send("DATA\r\n").await;
    assert!(c.line().await.starts_with("354"));
    c.send(SENT).await;
    assert_eq!(c.line().await, "250 2.0.0 OK queued\r\n");
    c.send("QUIT\r\n").await;
    assert!(c.line().await.starts_with("221"));
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plain_sends_a_message() {
    let s = Setup::new().await;
    let mut c = s.client().await;
    c.send(format!(
        "AUTH PLAIN {}\r\n",
        b64(&format!("\0{USER}\0{PASSWORD}"))
    ))
    .await;
    assert_eq!(c.line().await, "235 2.7.0 Authentication successful\r\n");
    send_message(&mut c).await;
    assert_eq!(s.smtp.messages(), vec![RECEIVED.as_bytes().to_vec()]);
    // The client's EHLO name was used upstream (twice: before and after TLS
    // would be STARTTLS; implicit TLS says it once).
    assert_eq!(s.smtp.ehlo_names(), vec!["client.example"]);
    // Exact XOAUTH2 bytes, two-step form (AUTH XOAUTH2, 334, token).
    let token = s.env.oauth.last_access_token().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&s.smtp.auth_lines()[0]),
        format!("AUTH XOAUTH2\r\n{}\r\n", xoauth2(USER, &token))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plain_after_334_and_auth_login() {
    let s = Setup::new().await;
    let mut c = s.client().await;
    c.send("AUTH PLAIN\r\n").await;
    assert_eq!(c.line().await, "334 \r\n");
    c.send(format!("{}\r\n", b64(&format!("\0{USER}\0{PASSWORD}"))))
        .await;
    assert_eq!(c.line().await, "235 2.7.0 Authentication successful\r\n");
    send_message(&mut c).await;

    let mut c = s.client().await;
    c.send("AUTH LOGIN\r\n").await;
    assert_eq!(c.line().await, "334 VXNlcm5hbWU6\r\n");
    c.send(format!("{}\r\n", b64(USER))).await;
    assert_eq!(c.line().await, "334 UGFzc3dvcmQ6\r\n");
    c.send(format!("{}\r\n", b64(PASSWORD))).await;
    assert_eq!(c.line().await, "235 2.7.0 Authentication successful\r\n");
    send_message(&mut c).await;
    assert_eq!(s.smtp.messages().len(), 2);
    assert_eq!(s.env.oauth.refresh_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_transaction_pipelined_after_auth() {
    let s = Setup::new().await;
    let mut c = s.client().await;
    c.send(format!(
        "AUTH PLAIN {}\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n",
        b64(&format!("\0{USER}\0{PASSWORD}"))
    ))
    .await;
    assert_eq!(c.line().await, "235 2.7.0 Authentication successful\r\n");
    assert!(c.line().await.starts_with("250"));
    assert!(c.line().await.starts_with("250"));
    assert!(c.line().await.starts_with("354"));
    c.send(SENT).await;
    assert_eq!(c.line().await, "250 2.0.0 OK queued\r\n");
    assert_eq!(s.smtp.messages(), vec![RECEIVED.as_bytes().to_vec()]);
    assert_eq!(
        s.smtp.after_login()[..3],
        [
            "MAIL FROM:<alice@example.test>\r\n",
            "RCPT TO:<bob@example.test>\r\n",
            "DATA\r\n"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_before_auth_is_refused_and_wrong_password_changes_nothing() {
    let s = Setup::new().await;
    let path = s
        .env
        .state_dir()
        .join("tokens")
        .join(format!("{USER}.json"));
    let before = std::fs::read(&path).unwrap();
    let mut c = s.client().await;
    c.send("MAIL FROM:<alice@example.test>\r\n").await;
    assert_eq!(c.line().await, "530 5.7.0 Authentication required\r\n");
    c.send(format!(
        "AUTH PLAIN {}\r\n",
        b64(&format!("\0{USER}\0wrong"))
    ))
    .await;
    assert_eq!(c.line().await, "535 5.7.8 Invalid credentials\r\n");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(s.smtp.connections(), 0);
    assert_eq!(s.env.oauth.refresh_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_token_is_refreshed_and_retried() {
    for failure in [FailureStyle::Challenge, FailureStyle::PlainNo] {
        let s = Setup::with(
            Options {
                failure,
                ..Options::default()
            },
            "",
        )
        .await;
        let mut c = s.client().await;
        c.send(format!(
            "AUTH PLAIN {}\r\n",
            b64(&format!("\0{USER}\0{PASSWORD}"))
        ))
        .await;
        assert!(c.line().await.starts_with("235"));
        s.env.oauth.revoke_access_tokens();
        let mut c = s.client().await;
        c.send(format!(
            "AUTH PLAIN {}\r\n",
            b64(&format!("\0{USER}\0{PASSWORD}"))
        ))
        .await;
        assert_eq!(
            c.line().await,
            "235 2.7.0 Authentication successful\r\n",
            "{failure:?}"
        );
        assert_eq!(s.env.oauth.refresh_count(), 2);
        assert_eq!(s.smtp.failed_logins(), 1);
        if failure == FailureStyle::Challenge {
            let failed = String::from_utf8_lossy(&s.smtp.auth_lines()[1]).into_owned();
            assert!(
                failed.ends_with("\r\n\r\n"),
                "the challenge is answered with an empty line: {failed:?}"
            );
        }
        send_message(&mut c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gmail_takes_the_token_inline() {
    let s = Setup::with(Options::default(), "preset = \"gmail\"").await;
    let mut c = s.client().await;
    c.send(format!(
        "AUTH PLAIN {}\r\n",
        b64(&format!("\0{USER}\0{PASSWORD}"))
    ))
    .await;
    assert!(c.line().await.starts_with("235"));
    let token = s.env.oauth.last_access_token().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&s.smtp.auth_lines()[0]),
        format!("AUTH XOAUTH2 {}\r\n", xoauth2(USER, &token))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_starttls_and_its_absence() {
    let s = Setup::with(
        Options {
            starttls: true,
            ..Options::default()
        },
        "",
    )
    .await;
    let mut c = s.client().await;
    c.send(format!(
        "AUTH PLAIN {}\r\n",
        b64(&format!("\0{USER}\0{PASSWORD}"))
    ))
    .await;
    assert!(c.line().await.starts_with("235"));
    send_message(&mut c).await;
    // EHLO in clear, then again over TLS, both with the client's name.
    assert_eq!(
        s.smtp.ehlo_names(),
        vec!["client.example", "client.example"]
    );
    assert_eq!(s.smtp.plaintext_auth(), 0);

    let s = Setup::with(
        Options {
            starttls: true,
            offer_starttls: false,
            ..Options::default()
        },
        "",
    )
    .await;
    let mut c = s.client().await;
    c.send(format!(
        "AUTH PLAIN {}\r\n",
        b64(&format!("\0{USER}\0{PASSWORD}"))
    ))
    .await;
    let r = c.line().await;
    // A configuration problem, not an unreachable server.
    assert!(
        r.starts_with(
            "454 4.7.0 The mail server does not work as the gateway's configuration says; the administrator must check the provider's server settings (the gateway's log says why)"
        ),
        "{r}"
    );
    assert!(!r.contains("cannot be reached"), "{r}");
    assert!(!r.contains("STARTTLS"), "{r}");
    assert_eq!(s.smtp.plaintext_auth(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_454() {
    logs();
    let env = Env::new().await;
    env.seal_new_user_token();
    let url = format!("smtps://127.0.0.1:{}", unused_port());
    let g = start(env.load(&env.config_for(&[(Protocol::Smtp, &url)], "", "", ""))).await;
    let mut c = LineClient::greeted_with(smtp_addr(&g), "220").await;
    c.send("EHLO x\r\n").await;
    while !c.line().await.starts_with("250 ") {}
    c.send(format!(
        "AUTH PLAIN {}\r\n",
        b64(&format!("\0{USER}\0{PASSWORD}"))
    ))
    .await;
    assert!(c.line().await.starts_with("454 4.7.0 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_failure_is_454() {
    let s = Setup::new().await;
    s.env.oauth.set_mode(mailgate_tests::oauth::Mode::Http500);
    let mut c = s.client().await;
    c.send(format!(
        "AUTH PLAIN {}\r\n",
        b64(&format!("\0{USER}\0{PASSWORD}"))
    ))
    .await;
    let r = c.line().await;
    assert!(r.starts_with("454 4.7.0 Cannot log in now"), "{r}");
    assert_eq!(s.smtp.connections(), 0);
}

/// A second AUTH pipelined behind a successful one carries a local
/// password: it is answered here and never reaches the provider, and
/// neither does what follows it (SPEC §4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_second_auth_never_reaches_the_provider() {
    let s = Setup::new().await;
    let mut c = s.client().await;
    let other = b64("\0bob@example.test\0bobs-local-password");
    c.send(format!(
        "AUTH PLAIN {}\r\nAUTH PLAIN {other}\r\nAUTH LOGIN\r\n{}\r\n",
        b64(&format!("\0{USER}\0{PASSWORD}")),
        b64("another-local-password"),
    ))
    .await;
    assert_eq!(c.line().await, "235 2.7.0 Authentication successful\r\n");
    for _ in 0..3 {
        assert_eq!(c.line().await, "503 5.5.1 Already authenticated\r\n");
    }
    // The session goes on: the next command is relayed.
    send_message(&mut c).await;
    let after = s.smtp.after_login();
    assert!(after[0].starts_with("MAIL FROM:"), "{after:?}");
    assert!(
        after.iter().all(|l| !l.contains(&other)
            && !l.starts_with("AUTH")
            && !l.contains(&b64("another-local-password"))),
        "{after:?}"
    );
}
