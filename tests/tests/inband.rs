//! In-band authorisation (SPEC §4): a mail client that logs in to an
//! account without a token is told, inside the client, where to authorise
//! it. Nothing is started and nothing is sealed with the password a mail
//! client typed: the message names the portal's sign-in for the account,
//! where the person who signs in at the provider, in that browser, chooses
//! the password (headless Chromium against the real binary, for the
//! browser flow over IMAP and SMTP and the device flow over POP3); without
//! a portal it names the administrator's `mailgate login`.
//!
//! The takeover these replace: an attacker logged in as the victim with a
//! password of his choice, sent the victim the provider URL the gateway
//! showed him, and the victim's own sign-in sealed the victim's tokens with
//! the attacker's password.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailgate_config::Protocol;
use mailgate_tests::chrome::{Browser, Driver};
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{
    Env, PASSWORD, Running, USER, imap_addr, logs, pop3_addr, smtp_addr, start,
};
use mailgate_tests::oauth::DeviceMode;
use mailgate_tests::portal::choose_password;

const ATTACKER_PW: &str = "attacker-password";

fn token_path(env: &Env) -> std::path::PathBuf {
    env.state_dir().join("tokens").join(format!("{USER}.json"))
}

/// The `http://` link in a message.
fn link_in(text: &str) -> String {
    mailgate_tests::browser::url_in(text)
}

/// The binary with a portal on `servers`, ready.
fn with_portal(env: &Env, servers: &[(Protocol, &str)], extra_provider: &str) -> Running {
    let text = format!(
        "{}\n[portal]\naddress = \"127.0.0.1:0\"\n",
        env.config_for(servers, "log_format = \"json\"", extra_provider, "")
    );
    Running::start(&env.write_config(&text), "portal listening")
}

/// The portal's address form, opened from a mail client's link: filled in
/// with the account, sent by the person in the browser.
async fn open_link(b: &Browser, link: &str) {
    b.goto(link).await;
    b.expect_page("address").await;
    let filled: String = b
        .client
        .execute("return document.querySelector('#address').value", vec![])
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(filled, USER);
    b.click("button[type=submit]").await;
}

/// The attack of the review, as it now goes: the attacker's link opens the
/// portal; the owner signs in there and chooses the password; the
/// attacker's password opens nothing. Whoever logs in first holds nothing
/// either: every client gets the same link, whatever its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_opens_the_portal_where_the_owner_chooses_the_password() {
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let g = with_portal(&env, &[(Protocol::Imap, &imap.url(false))], "");
    let imap_at = g.address("listening", Some("imap"));
    let portal = g.address("portal listening", None);

    let mut attacker = LineClient::greeted(imap_at).await;
    let r = attacker.login("a", USER, ATTACKER_PW).await;
    let expected = format!(
        "a NO [ALERT] To authorise {USER}, open http://{portal}/?address=alice%40example.test in a browser, sign in there and choose the local password for your mail program; then log in with that password\r\n"
    );
    assert_eq!(r, expected);
    // Nothing was started at the provider, and nothing is pending: the
    // owner's own client is told the same, not "pending elsewhere".
    assert!(env.oauth.last_authorize().is_empty());
    let mut owner = LineClient::greeted(imap_at).await;
    let r = owner.login("o", USER, PASSWORD).await;
    assert_eq!(r, expected.replacen("a NO", "o NO", 1));

    // The owner opens the link (the attacker sent it, or the owner's own
    // client showed it) and signs in as themselves.
    let driver = Driver::start().await;
    let b = driver.browser().await;
    open_link(&b, &link_in(&r)).await;
    choose_password(&b, PASSWORD).await;
    assert_eq!(env.oauth.grants("authorization_code"), 1);

    // The attacker's password opens nothing; the owner's does.
    let r = attacker.login("b", USER, ATTACKER_PW).await;
    assert!(r.starts_with("b NO [AUTHENTICATIONFAILED]"), "{r}");
    let mut c = LineClient::greeted(imap_at).await;
    let r = c.login("c", USER, PASSWORD).await;
    assert!(r.starts_with("c OK"), "{r}");
    let log = g.log();
    assert!(
        !log.contains(ATTACKER_PW) && !log.contains(PASSWORD),
        "{log}"
    );
}

/// A device-code provider: the link opens the portal, which shows the code
/// and notices when it was entered; the browser then chooses the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_sign_in_runs_in_the_portal() {
    let env = Env::new().await;
    env.oauth.set_device_mode(DeviceMode::ApproveAfter(1));
    let pop3 = FakeServer::pop3(&env.ca, env.oauth.clone(), Default::default()).await;
    let g = with_portal(
        &env,
        &[(Protocol::Pop3, &pop3.url(false))],
        "flow = \"device_code\"",
    );
    let pop3_at = g.address("listening", Some("pop3"));
    let mut c = LineClient::greeted_with(pop3_at, "+OK").await;
    c.send(format!("USER {USER}\r\nPASS {ATTACKER_PW}\r\n"))
        .await;
    assert!(c.line().await.starts_with("+OK"));
    let r = c.line().await;
    assert!(
        r.starts_with("-ERR [AUTH] To authorise alice@example.test, open http://"),
        "{r}"
    );
    assert_eq!(
        env.oauth
            .grants("urn:ietf:params:oauth:grant-type:device_code"),
        0
    );

    let driver = Driver::start().await;
    let b = driver.browser().await;
    open_link(&b, &link_in(&r)).await;
    b.expect_page("device").await;
    let code = b.text("#user-code").await;
    assert!(code.starts_with("CODE-"), "{code}");
    assert!(
        b.text("main")
            .await
            .contains("https://login.example.test/device")
    );
    b.screenshot("portal-device").await;
    // The page reloads until the provider says the code was entered.
    choose_password(&b, PASSWORD).await;
    assert!(
        env.oauth
            .grants("urn:ietf:params:oauth:grant-type:device_code")
            >= 2
    );

    c.send(format!("USER {USER}\r\nPASS {ATTACKER_PW}\r\n"))
        .await;
    assert!(c.line().await.starts_with("+OK"));
    assert!(c.line().await.starts_with("-ERR [AUTH]"));
    let mut c = LineClient::greeted_with(pop3_at, "+OK").await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await;
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.line().await, "+OK Logged in\r\n");
}

/// Without a portal, each protocol names the administrator's command, and
/// nothing reaches the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_portal_the_message_names_mailgate_login() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let pop3 = FakeServer::pop3(&env.ca, env.oauth.clone(), Default::default()).await;
    let smtp = FakeServer::smtp(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = env.config_for(
        &[
            (Protocol::Imap, &imap.url(false)),
            (Protocol::Pop3, &pop3.url(false)),
            (Protocol::Smtp, &smtp.url(false)),
        ],
        "",
        "",
        "",
    );
    let g = start(env.load(&text)).await;
    let what = "alice@example.test is not authorised yet: the administrator must run `mailgate login alice@example.test` on the gateway (or turn on its web portal, [portal], where you can do it yourself)\r\n";

    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert_eq!(
        c.login("a", USER, PASSWORD).await,
        format!("a NO [ALERT] {what}")
    );
    let mut c = LineClient::greeted_with(pop3_addr(&g), "+OK").await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await;
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.line().await, format!("-ERR [AUTH] {what}"));
    let mut c = LineClient::greeted_with(smtp_addr(&g), "220").await;
    c.send("EHLO client\r\n").await;
    while !c.line().await.starts_with("250 ") {}
    c.send(format!(
        "AUTH PLAIN {}\r\n",
        STANDARD.encode(format!("\0{USER}\0{PASSWORD}"))
    ))
    .await;
    assert_eq!(c.line().await, format!("535 5.7.8 {what}"));

    assert!(env.oauth.last_authorize().is_empty());
    assert_eq!(
        env.oauth
            .grants("urn:ietf:params:oauth:grant-type:device_code"),
        0
    );
    assert!(!token_path(&env).exists());
}
