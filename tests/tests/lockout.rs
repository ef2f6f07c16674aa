//! Nobody but the owner locks an account (SPEC §4): a guessing flood on the
//! owner's name from many addresses holds the guessers back, but not the
//! owner at an address they logged in from before, even with no key
//! cached (a restarted gateway); failures of other programs on the owner's
//! machine (unknown names, an account without tokens, another account's
//! wrong password) do not lock the owner out either; a refusal because of
//! backoff says so. Against the real binary, restarted between rounds.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};

use mailgate_tests::client::quote;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, Running, USER};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One IMAP login on a fresh connection from `from`; the tagged answer.
async fn login_from(from: &str, to: SocketAddr, user: &str, pw: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let mut s = BufReader::new(socket.connect(to).await.unwrap());
    let mut line = String::new();
    s.read_line(&mut line).await.unwrap();
    s.get_mut()
        .write_all(format!("a LOGIN {} {}\r\n", quote(user), quote(pw)).as_bytes())
        .await
        .unwrap();
    loop {
        line.clear();
        assert!(s.read_line(&mut line).await.unwrap() > 0, "closed");
        if line.starts_with("a ") {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_never_lock_the_owner_out() {
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    env.seal_new_user_token();
    let text = env.config_text(
        &imap.url(false),
        "log_format = \"json\"",
        "",
        "[[account]]\nuser = \"*@example.test\"\nprovider = \"test\"\n",
    );
    let config = env.write_config(&text);
    let run = || Running::start(&config, "listening");
    let imap_of = |g: &Running| g.address("listening", Some("imap"));
    let owner = "127.0.0.1";

    // The owner logs in once from their machine: it is familiar now.
    let g = run();
    let r = login_from(owner, imap_of(&g), USER, PASSWORD).await;
    assert!(r.starts_with("a OK"), "{r}");
    drop(g);

    // A restarted gateway: no key in memory. Guesses from 40 addresses.
    let g = run();
    let addr = imap_of(&g);
    let guesses = (0..40).map(|i| {
        let from = format!("127.0.1.{}", i + 1);
        async move { login_from(&from, addr, USER, &format!("guess-{i}")).await }
    });
    let answers = futures_util::future::join_all(guesses).await;
    let count = |what: &str| answers.iter().filter(|r| r.contains(what)).count();
    let checked = count("[AUTHENTICATIONFAILED]");
    let held = count("Too many failed logins");
    let busy = count("too many login attempts at once");
    assert_eq!(checked + held + busy, 40, "{answers:?}");
    assert!(
        checked <= 8,
        "the guessers were held back: {checked} checked"
    );

    // A stranger with the right password is held back, and told why.
    let r = login_from("127.0.2.1", addr, USER, PASSWORD).await;
    assert!(
        r.starts_with("a NO [UNAVAILABLE] Too many failed logins for alice@example.test or from this address; try again in "),
        "{r}"
    );
    // The owner, from their own machine, gets in: a password check, not a
    // cached key.
    let r = login_from(owner, addr, USER, PASSWORD).await;
    assert!(r.starts_with("a OK"), "the owner was locked out: {r}");
    drop(g);

    // On the owner's desktop, other programs fail: unknown names, an
    // account without tokens, another account's wrong password.
    let g = run();
    let addr = imap_of(&g);
    for (user, pw) in [
        ("nobody@nowhere.test", "whatever-1"),
        ("nobody2@nowhere.test", "whatever-2"),
        ("bob@example.test", "bobs-password"),
        ("bob@example.test", "bobs-password"),
        ("carol@example.test", "x-password"),
        ("nobody3@nowhere.test", "whatever-3"),
    ] {
        let r = login_from(owner, addr, user, pw).await;
        assert!(
            r.starts_with("a NO [AUTHENTICATIONFAILED] Invalid credentials")
                || r.starts_with("a NO [UNAVAILABLE] Too many failed logins")
                || r.starts_with(&format!("a NO [ALERT] {user} is not authorised yet")),
            "{r}"
        );
    }
    let r = login_from(owner, addr, USER, PASSWORD).await;
    assert!(r.starts_with("a OK"), "the owner was locked out: {r}");
    assert!(!g.log().contains(PASSWORD));
}
