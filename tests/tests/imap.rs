//! End to end through the real gateway (in process) over real sockets on
//! 127.0.0.1: a fake OAuth server and a scripted XOAUTH2-only IMAP upstream
//! over TLS with a test CA.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailgate::accounts::store::{Audience, Tokens};
use mailgate_tests::client::{LineClient, quote};
use mailgate_tests::harness::{
    Env, PASSWORD, USER, imap_addr, logs, start, unused_port, without_in_band,
};
use mailgate_tests::imap_server::{FailureStyle, FakeImap, Options};
use mailgate_tests::oauth::Mode;
use secrecy::ExposeSecret as _;

fn xoauth2(user: &str, token: &str) -> String {
    STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

struct Setup {
    env: Env,
    imap: FakeImap,
    gateway: mailgate::Gateway,
}

impl Setup {
    async fn new() -> Setup {
        Self::with(Options::default(), "", "").await
    }

    async fn with(opts: Options, extra_gateway: &str, extra_provider: &str) -> Setup {
        Self::edited(opts, extra_gateway, extra_provider, |t| t).await
    }

    /// As `with`, with the configuration text passed through `edit`.
    async fn edited(
        opts: Options,
        extra_gateway: &str,
        extra_provider: &str,
        edit: fn(String) -> String,
    ) -> Setup {
        logs();
        let env = Env::new().await;
        let starttls = opts.starttls;
        let imap = FakeImap::start(&env.ca, env.oauth.clone(), opts).await;
        env.seal_new_user_token();
        let mut text = env.config_text(&imap.url(starttls), extra_gateway, extra_provider, "");
        text = edit(text);
        let gateway = start(env.load(&text)).await;
        Setup { env, imap, gateway }
    }

    async fn client(&self) -> LineClient {
        let mut c = LineClient::connect(imap_addr(&self.gateway)).await;
        let greeting = c.line().await;
        assert!(
            greeting.starts_with("* OK [CAPABILITY IMAP4rev1"),
            "{greeting}"
        );
        c
    }

    async fn logged_in(&self) -> LineClient {
        let mut c = self.client().await;
        let r = c.login("a", USER, PASSWORD).await;
        assert!(r.starts_with("a OK"), "{r}");
        c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeting_and_pre_auth_commands() {
    let s = Setup::new().await;
    let mut c = LineClient::connect(imap_addr(&s.gateway)).await;
    assert_eq!(
        c.line().await,
        "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN] localhost mailgate ready\r\n"
    );
    c.send("1 CAPABILITY\r\n").await;
    assert_eq!(
        c.response_text("1").await,
        "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN\r\n1 OK CAPABILITY completed\r\n"
    );
    c.send("2 ID (\"name\" \"test\")\r\n3 NOOP\r\n4 SELECT INBOX\r\n")
        .await;
    assert!(
        c.response_text("2")
            .await
            .contains("* ID (\"name\" \"mailgate\"")
    );
    assert_eq!(c.response_text("3").await, "3 OK NOOP completed\r\n");
    assert!(c.response_text("4").await.starts_with("4 BAD"));
    c.send("5 LOGOUT\r\n").await;
    assert_eq!(
        c.response_text("5").await,
        "* BYE Logging out\r\n5 OK LOGOUT completed\r\n"
    );
    assert!(c.closed().await);
    assert_eq!(
        s.imap
            .record
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no upstream connection before login"
    );
}

/// Every argument form of LOGIN and both forms of AUTHENTICATE PLAIN reach
/// the upstream as the exact XOAUTH2 bytes for the token the OAuth server
/// issued, and the client's own tag comes back on the OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_forms_send_exact_xoauth2() {
    let s = Setup::new().await;
    let plain = STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    let pw_len = PASSWORD.len();
    let user_len = USER.len();
    let forms: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (
            vec![format!("t1 LOGIN {USER} {}\r\n", quote(PASSWORD)).into_bytes()],
            "t1",
        ),
        (
            // Typed in capitals: the provider gets the account's name, the
            // one that was authorised, not the string as typed.
            vec![
                format!(
                    "t2 LOGIN {} {}\r\n",
                    quote(&USER.to_uppercase()),
                    quote(PASSWORD)
                )
                .into_bytes(),
            ],
            "t2",
        ),
        (
            vec![
                format!("t3 LOGIN {{{user_len}}}\r\n").into_bytes(),
                format!("{USER} {{{pw_len}}}\r\n").into_bytes(),
                format!("{PASSWORD}\r\n").into_bytes(),
            ],
            "t3",
        ),
        (
            vec![
                format!("t4 LOGIN {{{user_len}+}}\r\n{USER} {{{pw_len}+}}\r\n{PASSWORD}\r\n")
                    .into_bytes(),
            ],
            "t4",
        ),
        (
            vec![format!("t5 AUTHENTICATE PLAIN {plain}\r\n").into_bytes()],
            "t5",
        ),
        (
            vec![
                b"t6 AUTHENTICATE PLAIN\r\n".to_vec(),
                format!("{plain}\r\n").into_bytes(),
            ],
            "t6",
        ),
    ];
    for (parts, tag) in forms {
        let mut c = s.client().await;
        let n = parts.len();
        for (i, p) in parts.into_iter().enumerate() {
            c.send(&p).await;
            if i + 1 < n {
                let cont = c.line().await;
                assert!(
                    cont.starts_with('+'),
                    "{tag}: expected a continuation, got {cont}"
                );
            }
        }
        let r = c.response_text(tag).await;
        assert!(
            r.starts_with(&format!("{tag} OK [CAPABILITY IMAP4rev1 ID IDLE MOVE] ")),
            "{tag}: {r}"
        );
        assert!(!r.contains("AUTH="), "AUTH= capabilities are removed: {r}");
    }
    // One refresh served all six logins; each reached the upstream with the
    // exact XOAUTH2 initial response for that token.
    assert_eq!(s.env.oauth.refresh_count(), 1);
    let token = s.env.oauth.last_access_token().unwrap();
    let want = format!("mg3 AUTHENTICATE XOAUTH2 {}\r\n", xoauth2(USER, &token)).into_bytes();
    let lines = s.imap.auth_lines();
    assert_eq!(lines.len(), 6);
    for l in lines {
        assert_eq!(String::from_utf8_lossy(&l), String::from_utf8_lossy(&want));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_step_xoauth2_without_sasl_ir() {
    let s = Setup::with(
        Options {
            sasl_ir: false,
            ..Options::default()
        },
        "",
        "",
    )
    .await;
    let _c = s.logged_in().await;
    let token = s.env.oauth.last_access_token().unwrap();
    let want = format!("mg3 AUTHENTICATE XOAUTH2\r\n{}\r\n", xoauth2(USER, &token));
    assert_eq!(String::from_utf8_lossy(&s.imap.auth_lines()[0]), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_megabyte_fetch_is_byte_exact() {
    let mut message = Vec::with_capacity(5 << 20);
    let mut x: u32 = 12345;
    while message.len() < (5 << 20) {
        // Lines of pseudo-random printable bytes, including IMAP specials.
        for _ in 0..76 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            message.push(b' ' + ((x >> 16) % 95) as u8);
        }
        message.extend_from_slice(b"\r\n");
    }
    let s = Setup::with(
        Options {
            message: message.clone(),
            ..Options::default()
        },
        "",
        "",
    )
    .await;
    let mut c = s.logged_in().await;
    c.send("f1 FETCH 1 BODY[]\r\n").await;
    let got = c.response("f1").await;
    let mut want = format!("* 1 FETCH (BODY[] {{{}}}\r\n", message.len()).into_bytes();
    want.extend_from_slice(&message);
    want.extend_from_slice(b")\r\nf1 OK FETCH completed\r\n");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "FETCH bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_after_login_are_relayed() {
    let s = Setup::new().await;
    let mut c = s.client().await;
    c.send(format!(
        "a LOGIN {USER} {}\r\nb SELECT INBOX\r\nc NOOP\r\n",
        quote(PASSWORD)
    ))
    .await;
    assert!(c.response_text("a").await.starts_with("a OK"));
    let b = c.response_text("b").await;
    assert!(b.ends_with("b OK [READ-WRITE] SELECT completed\r\n"), "{b}");
    assert_eq!(c.response_text("c").await, "c OK NOOP completed\r\n");
    assert_eq!(
        s.imap.after_login(),
        vec!["b SELECT INBOX\r\n", "c NOOP\r\n"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_is_relayed() {
    let s = Setup::new().await;
    let mut c = s.logged_in().await;
    c.send("i IDLE\r\n").await;
    assert_eq!(c.line().await, "+ idling\r\n");
    assert_eq!(c.line().await, "* 2 EXISTS\r\n");
    c.send("DONE\r\n").await;
    assert_eq!(c.response_text("i").await, "i OK IDLE terminated\r\n");
    c.send("z LOGOUT\r\n").await;
    assert!(c.response_text("z").await.contains("z OK LOGOUT"));
    assert!(
        c.closed().await,
        "the gateway closes the client when the upstream closes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_changes_nothing() {
    let s = Setup::new().await;
    let path = s
        .env
        .state_dir()
        .join("tokens")
        .join(format!("{USER}.json"));
    let before = std::fs::read(&path).unwrap();
    let mut c = s.client().await;
    c.send(format!("a LOGIN {USER} wrong\r\n")).await;
    assert_eq!(
        c.response_text("a").await,
        "a NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    );
    c.send(format!(
        "b AUTHENTICATE PLAIN {}\r\n",
        STANDARD.encode(format!("\0{USER}\0also wrong"))
    ))
    .await;
    assert_eq!(
        c.response_text("b").await,
        "b NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the token file is byte-for-byte unchanged"
    );
    assert_eq!(s.env.oauth.refresh_count(), 0);
    assert_eq!(
        s.imap
            .record
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // After a good login (key cached), a wrong password still fails and
    // still changes nothing.
    assert!(c.login("c", USER, PASSWORD).await.starts_with("c OK"));
    let after_good = std::fs::read(&path).unwrap();
    let mut d = s.client().await;
    d.send(format!(
        "d LOGIN {USER} {}\r\n",
        quote(&format!("{PASSWORD}x"))
    ))
    .await;
    assert!(
        d.response_text("d")
            .await
            .starts_with("d NO [AUTHENTICATIONFAILED]")
    );
    assert_eq!(std::fs::read(&path).unwrap(), after_good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_and_three_failures() {
    let s = Setup::new().await;
    let mut c = s.client().await;
    c.send("a LOGIN nobody@example.test pw\r\n").await;
    assert_eq!(
        c.response_text("a").await,
        "a NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    );
    c.send(format!("b LOGIN {USER} wrong\r\n")).await;
    assert!(
        c.response_text("b")
            .await
            .starts_with("b NO [AUTHENTICATIONFAILED]")
    );
    c.send(format!("c LOGIN {USER} wrong\r\n")).await;
    assert_eq!(
        c.response_text("c").await,
        "c NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    );
    assert_eq!(c.line().await, "* BYE Too many failed login attempts\r\n");
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_without_in_band_answers_like_a_wrong_password() {
    logs();
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let cfg = env.load(&without_in_band(&env.config_text(
        &imap.url(false),
        "",
        "",
        "",
    )));
    let g = start(cfg).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    // Nothing can check a password for an account without tokens: the
    // client is told what a wrong password (or an unknown user) is told,
    // so that nobody learns which accounts exist.
    c.send(format!("a LOGIN {USER} pw\r\n")).await;
    let r = c.response_text("a").await;
    c.send("b LOGIN nobody@example.test pw\r\n").await;
    let unknown = c.response_text("b").await;
    assert_eq!(r, "a NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
    assert_eq!(
        unknown,
        "b NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_refresh_token() {
    let s = Setup::edited(Options::default(), "", "", |t| without_in_band(&t)).await;
    s.env.oauth.set_mode(Mode::InvalidGrant);
    let mut c = s.client().await;
    let r = c.login("a", USER, PASSWORD).await;
    assert!(
        r.starts_with(
            "a NO [ALERT] The authorisation of alice@example.test has expired or was revoked"
        ),
        "{r}"
    );
    assert!(r.contains("mailgate login alice@example.test"));
    let f = s.env.token_file(USER);
    assert!(f.needs_authorization);
    assert!(f.last_error.unwrap().contains("invalid_grant"));
    // The sealed refresh token is kept (never lost), just marked.
    assert!(s.env.open(USER, PASSWORD).refresh_token.is_some());
    // Later logins fail at once without asking the token endpoint again.
    s.env.oauth.set_mode(Mode::Normal);
    assert!(
        c.login("b", USER, PASSWORD)
            .await
            .starts_with("b NO [ALERT]")
    );
    assert_eq!(s.env.oauth.refresh_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_access_token_is_refreshed_and_min_token_life_honoured() {
    logs();
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    // A stored access token that expires in 10 s: below min_token_life (60 s).
    let rt = env.oauth.issue_refresh_token(USER);
    let at = env.oauth.issue_access_token(USER);
    let mut t = Tokens::refreshable(rt.into());
    t.set_access(
        Audience::Mail,
        at.clone().into(),
        mailgate::accounts::store::now() + 10,
    );
    env.seal(USER, PASSWORD, t);
    let g = env.gateway(&imap.url(false)).await;
    let login = |tag: &'static str| {
        let addr = imap_addr(&g);
        async move {
            let mut c = LineClient::greeted(addr).await;
            let r = c.login(tag, USER, PASSWORD).await;
            assert!(r.starts_with(&format!("{tag} OK")), "{r}");
        }
    };
    login("a").await;
    assert_eq!(
        env.oauth.refresh_count(),
        1,
        "a token with less than min_token_life left is refreshed"
    );
    let fresh = env.oauth.last_access_token().unwrap();
    assert_ne!(fresh, at);
    login("b").await;
    assert_eq!(
        env.oauth.refresh_count(),
        1,
        "a token with enough life is reused"
    );
    // The refreshed token was persisted.
    let stored = env.open(USER, PASSWORD);
    assert_eq!(
        stored
            .access(Audience::Mail)
            .map(|a| a.token.expose_secret().to_owned()),
        Some(fresh)
    );
    assert!(env.token_file(USER).last_refresh.is_some());

    // Tokens that live less than min_token_life are refreshed at every login.
    env.oauth.set_lifetime(Duration::from_secs(30));
    g.shutdown().await;
    let t = Tokens::refreshable(env.oauth.issue_refresh_token(USER).into());
    env.seal(USER, PASSWORD, t);
    let g = env.gateway(&imap.url(false)).await;
    let addr = imap_addr(&g);
    for tag in ["c", "d"] {
        let mut c = LineClient::greeted(addr).await;
        assert!(
            c.login(tag, USER, PASSWORD)
                .await
                .starts_with(&format!("{tag} OK"))
        );
    }
    assert_eq!(env.oauth.refresh_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_tokens_are_persisted() {
    let s = Setup::new().await;
    s.env.oauth.set_rotate(true);
    let refresh_token = || {
        s.env
            .open(USER, PASSWORD)
            .refresh_token
            .unwrap()
            .expose_secret()
            .to_owned()
    };
    let old = refresh_token();
    let _c = s.logged_in().await;
    let new = refresh_token();
    assert_ne!(old, new);
    assert!(!s.env.oauth.refresh_token_valid(&old));
    assert!(
        s.env.oauth.refresh_token_valid(&new),
        "the stored refresh token is the newest"
    );
}

/// The upstream rejects the token the gateway believes valid: the gateway
/// refreshes once and retries, without dropping the client — with both the
/// Gmail-style challenge and the Office 365-style plain NO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_rejection_refreshes_and_retries_once() {
    for style in [FailureStyle::Challenge, FailureStyle::PlainNo] {
        let s = Setup::with(
            Options {
                failure: style,
                ..Options::default()
            },
            "",
            "",
        )
        .await;
        let _c = s.logged_in().await;
        assert_eq!(s.env.oauth.refresh_count(), 1);
        s.env.oauth.revoke_access_tokens();
        let mut c = s.client().await;
        let r = c.login("a", USER, PASSWORD).await;
        assert!(r.starts_with("a OK"), "{style:?}: {r}");
        assert_eq!(s.env.oauth.refresh_count(), 2, "{style:?}");
        assert_eq!(s.imap.failed_logins(), 1, "{style:?}");
        assert_eq!(s.imap.successful_logins(), 2, "{style:?}");
        let lines = s.imap.auth_lines();
        if style == FailureStyle::Challenge {
            // The challenge was answered with an empty line.
            let failed = String::from_utf8_lossy(&lines[1]).into_owned();
            assert!(failed.ends_with("\r\n\r\n"), "{failed:?}");
        }
        // The session works.
        c.send("b NOOP\r\n").await;
        assert_eq!(c.response_text("b").await, "b OK NOOP completed\r\n");
    }
}

/// A token refused even after a refresh: reported, not retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refusing_fresh_tokens_fails_cleanly() {
    logs();
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    env.seal_new_user_token();
    // The upstream identity differs from the token's user: always refused.
    let text = env.config_text(
        &imap.url(false),
        "",
        "",
        "upstream_user = \"mallory@example.test\"",
    );
    let g = start(env.load(&text)).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("a", USER, PASSWORD).await;
    assert!(
        r.starts_with(
            "a NO [AUTHENTICATIONFAILED] The provider refused the login of mallory@example.test"
        ),
        "{r}"
    );
    assert_eq!(imap.failed_logins(), 2, "one retry, not more");
    assert_eq!(env.oauth.refresh_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_logins_cause_one_refresh() {
    let s = Setup::new().await;
    let addr = imap_addr(&s.gateway);
    let mut tasks = Vec::new();
    for i in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut c = LineClient::greeted(addr).await;
            let tag = format!("c{i}");
            let r = c.login(&tag, USER, PASSWORD).await;
            assert!(r.starts_with(&format!("{tag} OK")), "{r}");
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    assert_eq!(s.env.oauth.refresh_count(), 1);
    assert_eq!(s.imap.successful_logins(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_unreachable_is_unavailable() {
    logs();
    let env = Env::new().await;
    env.seal_new_user_token();
    // A port nothing listens on.
    let port = unused_port();
    let g = env.gateway(&format!("imaps://127.0.0.1:{port}")).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("a", USER, PASSWORD).await;
    assert!(
        r.starts_with("a NO [UNAVAILABLE] The mail server cannot be reached now"),
        "{r}"
    );
    // The client may try again on the same connection.
    c.send("b NOOP\r\n").await;
    assert_eq!(c.response_text("b").await, "b OK NOOP completed\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_failures_are_unavailable() {
    for mode in [
        Mode::Http500,
        Mode::MalformedJson,
        Mode::InvalidClient,
        Mode::Slow(Duration::from_secs(8)),
    ] {
        let s = Setup::with(Options::default(), "upstream_timeout = \"2s\"", "").await;
        s.env.oauth.set_mode(mode.clone());
        let mut c = s.client().await;
        let r = c.login("a", USER, PASSWORD).await;
        assert!(
            r.starts_with("a NO [UNAVAILABLE] Cannot log in now"),
            "{mode:?}: {r}"
        );
        let f = s.env.token_file(USER);
        assert!(!f.needs_authorization, "{mode:?}");
        assert!(f.last_error.is_some(), "{mode:?}");
        assert!(
            s.env.open(USER, PASSWORD).refresh_token.is_some(),
            "{mode:?}: token kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down_is_unavailable() {
    logs();
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    env.seal_new_user_token();
    let port = unused_port();
    let text = env.config_text(&imap.url(false), "", "", "").replace(
        &env.oauth.token_url(),
        &format!("http://127.0.0.1:{port}/token"),
    );
    let g = start(env.load(&text)).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("a", USER, PASSWORD).await;
    assert!(
        r.starts_with(
            "a NO [UNAVAILABLE] Cannot log in now: the token endpoint of test cannot be used now"
        ),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_starttls() {
    let s = Setup::with(
        Options {
            starttls: true,
            ..Options::default()
        },
        "",
        "",
    )
    .await;
    let mut c = s.logged_in().await;
    c.send("n NOOP\r\n").await;
    assert_eq!(c.response_text("n").await, "n OK NOOP completed\r\n");
    assert_eq!(
        s.imap
            .record
            .plaintext_auth
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_without_starttls_is_refused() {
    let s = Setup::with(
        Options {
            starttls: true,
            offer_starttls: false,
            ..Options::default()
        },
        "",
        "",
    )
    .await;
    let mut c = s.client().await;
    let r = c.login("a", USER, PASSWORD).await;
    // Said as what it is (a server set up unlike the configuration), not
    // as an unreachable server.
    assert!(
        r.starts_with(
            "a NO [UNAVAILABLE] The mail server does not work as the gateway's configuration says; the administrator must check the provider's server settings (the gateway's log says why)"
        ),
        "{r}"
    );
    assert!(!r.contains("STARTTLS"), "{r}");
    assert_eq!(
        s.imap
            .record
            .plaintext_auth
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no token in clear"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_certificate_must_verify() {
    logs();
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    env.seal_new_user_token();
    // Without ca_file the test CA is not trusted.
    let text = env
        .config_text(&imap.url(false), "", "", "")
        .replace("ca_file = \"test-ca.pem\"\n", "");
    let g = start(env.load(&text)).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("a", USER, PASSWORD).await;
    assert!(
        r.starts_with("a NO [UNAVAILABLE] A secure connection to the mail server failed; the administrator must check"),
        "{r}"
    );
    // Not the certificate's names, nor rustls's chain: those are in the log.
    assert!(
        !r.contains("certificate") && !r.contains("127.0.0.1"),
        "{r}"
    );
    assert!(imap.auth_lines().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_line_closes() {
    let s = Setup::new().await;
    let mut c = s.client().await;
    c.send(vec![b'a'; 9000]).await;
    assert_eq!(c.line().await, "* BYE Line too long (limit 8192 bytes)\r\n");
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preauth_timeout_closes() {
    let s = Setup::with(Options::default(), "preauth_timeout = \"1s\"", "").await;
    let mut c = s.client().await;
    c.send("a NOOP\r\n").await;
    assert_eq!(c.response_text("a").await, "a OK NOOP completed\r\n");
    assert_eq!(c.line().await, "* BYE Autologout: no login within 1s\r\n");
    assert!(c.closed().await);
}

/// From the third wrong password on, the user is locked for a while: an
/// attempt is refused at once, without a password check, even with the
/// right password; once the lock is over the right password works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_passwords_lock_the_user_for_a_while() {
    let s = Setup::new().await;
    for tag in ["a", "b", "c"] {
        let mut c = s.client().await;
        c.send(format!("{tag} LOGIN {USER} wrong\r\n")).await;
        assert!(
            c.response_text(tag)
                .await
                .starts_with(&format!("{tag} NO [AUTHENTICATIONFAILED]"))
        );
    }
    let mut c = s.client().await;
    let r = c.login("d", USER, PASSWORD).await;
    assert!(
        r.starts_with("d NO [UNAVAILABLE] Too many failed logins for alice@example.test or from this address; try again in 1 s"),
        "refused while locked, and told why (not \"invalid credentials\"): {r}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(c.login("e", USER, PASSWORD).await.starts_with("e OK"));
}

/// A correct password whose key is cached is accepted at once, whatever
/// the backoff: a flood of wrong passwords does not lock the owner out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_with_a_cached_key_is_not_locked_out() {
    let s = Setup::new().await;
    let mut c = s.client().await;
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));
    for tag in ["b", "c", "d", "e"] {
        let mut c = s.client().await;
        c.send(format!("{tag} LOGIN {USER} wrong\r\n")).await;
        let r = c.response_text(tag).await;
        // The fourth is not even checked: the owner's own address has
        // failed three times.
        let want = if tag == "e" {
            "e NO [UNAVAILABLE] Too many failed logins"
        } else {
            "NO [AUTHENTICATIONFAILED]"
        };
        assert!(r.contains(want), "{r}");
    }
    let mut c = s.client().await;
    let r = c.login("f", USER, PASSWORD).await;
    assert!(r.starts_with("f OK"), "{r}");
}

/// A LOGIN pipelined behind a successful one (another local password) is
/// answered here; commands before it are relayed in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_second_login_never_reaches_the_provider() {
    let s = Setup::new().await;
    let mut c = s.client().await;
    c.send(format!(
        "a LOGIN {USER} {}\r\nb LOGIN bob@example.test bobs-local-password\r\n",
        quote(PASSWORD)
    ))
    .await;
    assert!(c.response_text("a").await.starts_with("a OK"));
    assert_eq!(
        c.response_text("b").await,
        "b BAD Already authenticated\r\n"
    );
    c.send("c NOOP\r\n").await;
    assert_eq!(c.response_text("c").await, "c OK NOOP completed\r\n");
    assert_eq!(s.imap.after_login(), vec!["c NOOP\r\n"]);
}

/// A token endpoint that answers without end is read up to a cap (a few
/// hundred KiB), not whole: the gateway's memory is not the endpoint's to
/// fill. The stored token is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_token_answer_is_refused_unread() {
    let s = Setup::with(Options::default(), "upstream_timeout = \"10s\"", "").await;
    s.env.oauth.set_mode(Mode::Huge(200 << 20));
    let mut c = s.client().await;
    let r = c.login("a", USER, PASSWORD).await;
    assert!(r.starts_with("a NO [UNAVAILABLE] Cannot log in now"), "{r}");
    let f = s.env.token_file(USER);
    assert!(
        f.last_error
            .as_deref()
            .unwrap_or("")
            .contains("larger than"),
        "{:?}",
        f.last_error
    );
    let sent = s.env.oauth.huge_sent();
    assert!(sent < 32 << 20, "{sent} bytes of the answer were taken");
    assert!(s.env.open(USER, PASSWORD).refresh_token.is_some());
}
