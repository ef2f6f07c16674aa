//! POP3 end to end through the gateway (in process) against a scripted
//! XOAUTH2-only POP3 server over TLS.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailgate_config::Protocol;
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::{FailureStyle, FakeServer};
use mailgate_tests::harness::{Env, PASSWORD, USER, logs, pop3_addr, start, unused_port};
use mailgate_tests::pop3_server::{Options, retr_body};

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

struct Setup {
    env: Env,
    pop3: FakeServer,
    gateway: mailgate::Gateway,
}

impl Setup {
    async fn with(opts: Options) -> Setup {
        logs();
        let env = Env::new().await;
        let starttls = opts.starttls;
        let pop3 = FakeServer::pop3(&env.ca, env.oauth.clone(), opts).await;
        env.seal_new_user_token();
        let text = env.config_for(&[(Protocol::Pop3, &pop3.url(starttls))], "", "", "");
        let gateway = start(env.load(&text)).await;
        Setup { env, pop3, gateway }
    }

    async fn client(&self) -> LineClient {
        let mut c = LineClient::connect(pop3_addr(&self.gateway)).await;
        assert_eq!(c.line().await, "+OK localhost mailgate ready\r\n");
        c
    }

    async fn user_pass(&self) -> LineClient {
        let mut c = self.client().await;
        c.send(format!("USER {USER}\r\n")).await;
        assert!(c.line().await.starts_with("+OK"));
        c.send(format!("PASS {PASSWORD}\r\n")).await;
        assert_eq!(c.line().await, "+OK Logged in\r\n");
        c
    }
}

/// LIST and RETR through the relay, byte-exact, then QUIT.
async fn list_and_retr(c: &mut LineClient, message: &[u8]) {
    c.send("LIST\r\n").await;
    assert_eq!(c.line().await, "+OK 1 messages\r\n");
    assert_eq!(c.line().await, format!("1 {}\r\n", message.len()));
    assert_eq!(c.line().await, ".\r\n");
    c.send("RETR 1\r\n").await;
    assert_eq!(c.line().await, format!("+OK {} octets\r\n", message.len()));
    let body = retr_body(message);
    assert_eq!(c.read_exact(body.len()).await, body);
    c.send("QUIT\r\n").await;
    assert!(c.line().await.starts_with("+OK"));
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capa_user_pass_list_retr() {
    let opts = Options::default();
    let message = opts.message.clone();
    let s = Setup::with(opts).await;
    let mut c = s.client().await;
    c.send("CAPA\r\n").await;
    let mut capa = String::new();
    loop {
        let l = c.line().await;
        capa.push_str(&l);
        if l == ".\r\n" {
            break;
        }
    }
    assert_eq!(
        capa,
        "+OK Capability list follows\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nUIDL\r\nTOP\r\n.\r\n"
    );
    drop(c);
    let mut c = s.user_pass().await;
    list_and_retr(&mut c, &message).await;
    // Exact XOAUTH2 bytes in the two-step form Microsoft requires.
    let token = s.env.oauth.last_access_token().unwrap();
    let ir = b64(&format!("user={USER}\x01auth=Bearer {token}\x01\x01"));
    assert_eq!(
        String::from_utf8_lossy(&s.pop3.auth_lines()[0]),
        format!("AUTH XOAUTH2\r\n{ir}\r\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plain_and_pipelined_commands() {
    let opts = Options {
        message: (0..2000)
            .map(|i| format!("line {i} with some text\r\n"))
            .collect::<String>()
            .into_bytes(),
        ..Options::default()
    };
    let message = opts.message.clone();
    let s = Setup::with(opts).await;
    let mut c = s.client().await;
    c.send(format!(
        "AUTH PLAIN {}\r\n",
        b64(&format!("\0{USER}\0{PASSWORD}"))
    ))
    .await;
    assert_eq!(c.line().await, "+OK Logged in\r\n");
    list_and_retr(&mut c, &message).await;

    // USER, PASS and STAT in one write: STAT is relayed, not lost.
    let mut c = s.client().await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\n"))
        .await;
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.line().await, "+OK Logged in\r\n");
    assert_eq!(c.line().await, format!("+OK 1 {}\r\n", message.len()));
    assert_eq!(
        s.pop3.after_login().last().map(String::as_str),
        Some("STAT\r\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_changes_nothing() {
    let s = Setup::with(Options::default()).await;
    let path = s
        .env
        .state_dir()
        .join("tokens")
        .join(format!("{USER}.json"));
    let before = std::fs::read(&path).unwrap();
    let mut c = s.client().await;
    c.send("STAT\r\n").await;
    let r = c.line().await;
    assert!(
        r.starts_with("-ERR ") && !r.starts_with("-ERR [AUTH]"),
        "{r}"
    );
    c.send(format!("USER {USER}\r\nPASS wrong\r\n")).await;
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.line().await, "-ERR [AUTH] Invalid credentials\r\n");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(s.pop3.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_token_is_refreshed_and_retried() {
    for failure in [FailureStyle::Challenge, FailureStyle::PlainNo] {
        let opts = Options {
            failure,
            ..Options::default()
        };
        let message = opts.message.clone();
        let s = Setup::with(opts).await;
        drop(s.user_pass().await);
        s.env.oauth.revoke_access_tokens();
        let mut c = s.user_pass().await;
        assert_eq!(s.env.oauth.refresh_count(), 2, "{failure:?}");
        assert_eq!(s.pop3.failed_logins(), 1, "{failure:?}");
        list_and_retr(&mut c, &message).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stls_and_its_absence() {
    let opts = Options {
        starttls: true,
        ..Options::default()
    };
    let message = opts.message.clone();
    let s = Setup::with(opts).await;
    let mut c = s.user_pass().await;
    list_and_retr(&mut c, &message).await;
    assert_eq!(s.pop3.plaintext_auth(), 0);

    let s = Setup::with(Options {
        starttls: true,
        offer_stls: false,
        ..Options::default()
    })
    .await;
    let mut c = s.client().await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await;
    assert!(c.line().await.starts_with("+OK"));
    let r = c.line().await;
    assert!(
        r.starts_with(
            "-ERR [SYS/TEMP] The mail server does not work as the gateway's configuration says; the administrator must check the provider's server settings (the gateway's log says why)"
        ),
        "{r}"
    );
    // The detail is the administrator's (the log), not the client's.
    assert!(!r.contains("STLS"), "{r}");
    assert_eq!(s.pop3.plaintext_auth(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_sys_temp() {
    logs();
    let env = Env::new().await;
    env.seal_new_user_token();
    let url = format!("pop3s://127.0.0.1:{}", unused_port());
    let g = start(env.load(&env.config_for(&[(Protocol::Pop3, &url)], "", "", ""))).await;
    let mut c = LineClient::greeted_with(pop3_addr(&g), "+OK").await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await;
    assert!(c.line().await.starts_with("+OK"));
    assert!(c.line().await.starts_with("-ERR [SYS/TEMP] "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_failure_is_sys_temp() {
    let s = Setup::with(Options::default()).await;
    s.env.oauth.set_mode(mailgate_tests::oauth::Mode::Http500);
    let mut c = s.client().await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await;
    assert!(c.line().await.starts_with("+OK"));
    let r = c.line().await;
    assert!(r.starts_with("-ERR [SYS/TEMP] Cannot log in now"), "{r}");
    assert_eq!(s.pop3.connections(), 0);
}

/// USER/PASS pipelined behind a successful login are answered here: the
/// local password they carry never reaches the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_credentials_after_login_stay_here() {
    let s = Setup::with(Options::default()).await;
    let mut c = s.client().await;
    c.send(format!(
        "USER {USER}\r\nPASS {PASSWORD}\r\nUSER bob@example.test\r\nPASS bobs-local-password\r\n"
    ))
    .await;
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.line().await, "+OK Logged in\r\n");
    assert_eq!(c.line().await, "-ERR Already authenticated\r\n");
    assert_eq!(c.line().await, "-ERR Already authenticated\r\n");
    c.send("STAT\r\n").await;
    assert!(c.line().await.starts_with("+OK 1 "));
    assert_eq!(s.pop3.after_login(), vec!["STAT\r\n"]);
}
