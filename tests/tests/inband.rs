//! In-band authorisation: a user with no token who logs in from a mail client
//! is told, inside the client, exactly what to do; after doing it, the next
//! login works. Over IMAP (browser flow), POP3 (device flow) and SMTP
//! (browser flow).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailgate_config::Protocol;
use mailgate_tests::browser::{sign_in, url_in};
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, USER, imap_addr, logs, pop3_addr, smtp_addr, start};
use mailgate_tests::oauth::DeviceMode;

/// Waits for the background flow to seal the tokens.
async fn wait_for_tokens(env: &Env) {
    let path = env.state_dir().join("tokens").join(format!("{USER}.json"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "the in-band flow stored no tokens"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_browser_flow_in_band() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let g = env.gateway(&imap.url(false)).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let first = c.login("a", USER, PASSWORD).await;
    assert!(
        first.starts_with("a NO [ALERT] To authorise alice@example.test, open http://"),
        "{first}"
    );
    assert!(
        first
            .trim_end()
            .ends_with("in a browser and sign in, then log in again"),
        "{first}"
    );
    // A second attempt while the flow is pending gets the same URL.
    let second = c.login("b", USER, PASSWORD).await;
    assert_eq!(url_in(&first), url_in(&second), "never a second flow");
    sign_in(&url_in(&first)).await;
    wait_for_tokens(&env).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("c", USER, PASSWORD).await;
    assert!(r.starts_with("c OK"), "{r}");
    assert_eq!(env.oauth.grants("authorization_code"), 1);
    // Sealed with the password of the attempt: another one does not open it.
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(
        c.login("d", USER, "other")
            .await
            .starts_with("d NO [AUTHENTICATIONFAILED]")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_device_flow_in_band() {
    logs();
    let env = Env::new().await;
    env.oauth.set_device_mode(DeviceMode::ApproveAfter(1));
    let pop3 = FakeServer::pop3(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = env.config_for(
        &[(Protocol::Pop3, &pop3.url(false))],
        "",
        "flow = \"device_code\"",
        "",
    );
    let g = start(env.load(&text)).await;
    let mut c = LineClient::greeted_with(pop3_addr(&g), "+OK").await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await;
    assert!(c.line().await.starts_with("+OK"));
    let r = c.line().await;
    assert!(
        r.starts_with("-ERR [AUTH] To authorise alice@example.test, open https://login.example.test/device and enter the code CODE-"),
        "{r}"
    );
    wait_for_tokens(&env).await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await;
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.line().await, "+OK Logged in\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_browser_flow_in_band() {
    logs();
    let env = Env::new().await;
    let smtp = FakeServer::smtp(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = env.config_for(&[(Protocol::Smtp, &smtp.url(false))], "", "", "");
    let g = start(env.load(&text)).await;
    let auth = format!(
        "AUTH PLAIN {}\r\n",
        STANDARD.encode(format!("\0{USER}\0{PASSWORD}"))
    );
    let mut c = LineClient::greeted_with(smtp_addr(&g), "220").await;
    c.send("EHLO client\r\n").await;
    while !c.line().await.starts_with("250 ") {}
    c.send(&auth).await;
    let r = c.line().await;
    assert!(
        r.starts_with("535 5.7.8 To authorise alice@example.test, open http://"),
        "{r}"
    );
    sign_in(&url_in(&r)).await;
    wait_for_tokens(&env).await;
    c.send(&auth).await;
    assert_eq!(c.line().await, "235 2.7.0 Authentication successful\r\n");
}
