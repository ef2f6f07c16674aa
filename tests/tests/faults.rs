//! Faults at the upstream and in the store, end to end: each yields a clear
//! protocol reply and a log line; the gateway neither hangs nor crashes, and
//! other accounts are unaffected.

#![allow(clippy::unwrap_used)]

use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, USER, imap_addr, logs, start};
use mailgate_tests::imap_server::{Fault, Options};
use secrecy::ExposeSecret as _;

async fn with_fault(fault: Fault) -> (Env, FakeServer, mailgate::Gateway) {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(
        &env.ca,
        env.oauth.clone(),
        Options {
            fault,
            ..Options::default()
        },
    )
    .await;
    env.seal_new_user_token();
    let g = env.gateway(&imap.url(false)).await;
    (env, imap, g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_bye_and_resets_during_login() {
    // The client is told what happened in one line; the server's words
    // and address are the administrator's, in the log.
    for (fault, want) in [
        (
            Fault::ByeGreeting,
            "a NO [UNAVAILABLE] The mail server cannot log in now; try again later",
        ),
        (
            Fault::ByeDuringLogin,
            "a NO [UNAVAILABLE] The mail server cannot log in now; try again later",
        ),
        (
            Fault::ResetDuringLogin,
            "a NO [UNAVAILABLE] The connection to the mail server broke; try again later",
        ),
    ] {
        let (_env, _imap, g) = with_fault(fault).await;
        let mut c = LineClient::greeted(imap_addr(&g)).await;
        let r = c.login("a", USER, PASSWORD).await;
        assert!(r.starts_with(want), "{fault:?}: {r}");
        assert!(
            !r.contains("127.0.0.1") && !r.contains("BYE"),
            "{fault:?}: {r}"
        );
        // The client keeps its connection and may try again.
        c.send("n NOOP\r\n").await;
        assert_eq!(c.response_text("n").await, "n OK NOOP completed\r\n");
    }
}

/// The upstream drops a relayed session: the client is closed cleanly, and
/// the gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_session_closes_the_client() {
    let (_env, _imap, g) = with_fault(Fault::None).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));
    c.send("b CRASH\r\n").await;
    assert!(
        c.closed().await,
        "the client is closed when the upstream goes away"
    );
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(c.login("c", USER, PASSWORD).await.starts_with("c OK"));
}

/// A damaged token file makes its account need authorisation; another
/// account is unaffected; nothing is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_or_truncated_token_file() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let (_, path) = env.seal_new_user_token();
    let other = "bob@example.test";
    let t =
        mailgate::accounts::store::Tokens::refreshable(env.oauth.issue_refresh_token(other).into());
    env.seal(other, "bob pw", t);
    let text = env.config_text(
        &imap.url(false),
        "shutdown_grace = \"1s\"",
        "",
        &format!("\n[[account]]\nuser = \"{other}\"\nprovider = \"test\"\n"),
    );
    let text = mailgate_tests::harness::without_in_band(&text);
    let whole = std::fs::read(&path).unwrap();
    for damage in [
        whole[..whole.len() / 2].to_vec(),
        b"\x00\xffnot json".to_vec(),
        {
            // Valid JSON whose ciphertext was altered.
            let mut f: serde_json::Value = serde_json::from_slice(&whole).unwrap();
            f["ciphertext"] = serde_json::json!("AAAA");
            serde_json::to_vec(&f).unwrap()
        },
    ] {
        std::fs::write(&path, &damage).unwrap();
        let g = start(env.load(&text)).await;
        let mut c = LineClient::greeted(imap_addr(&g)).await;
        let r = c.login("a", USER, PASSWORD).await;
        assert!(
            r.starts_with("a NO [ALERT] The stored token of alice@example.test"),
            "{r}"
        );
        assert!(r.contains("mailgate login alice@example.test"), "{r}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            damage,
            "the damaged file is left as it was"
        );
        let mut c = LineClient::greeted(imap_addr(&g)).await;
        assert!(
            c.login("b", other, "bob pw").await.starts_with("b OK"),
            "other accounts work"
        );
        drop(c);
        g.shutdown().await;
    }
}

/// The token store cannot be written (here: a directory stands where its
/// lock file goes — permissions would not stop root) but stays readable
/// where the gateway reads it: logins go on with the in-memory tokens, a
/// rotated refresh token is kept in memory, and the file on disk is not
/// corrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_state_dir_keeps_logins_working() {
    logs();
    let env = Env::new().await;
    env.oauth.set_rotate(true);
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let (_, path) = env.seal_new_user_token();
    let g = env.gateway(&imap.url(false)).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));
    let saved = std::fs::read(&path).unwrap();

    // The store stays readable where the gateway reads it, but no write
    // can happen: the store's lock cannot be opened (a directory stands
    // where the lock file goes).
    let lock = env.state_dir().join("tokens").join(".lock");
    let _ = std::fs::remove_file(&lock);
    std::fs::create_dir(&lock).unwrap();

    // Force refreshes (each rotates the refresh token) while nothing can be
    // written.
    for tag in ["b", "c", "d"] {
        env.oauth.revoke_access_tokens();
        let mut c = LineClient::greeted(imap_addr(&g)).await;
        let r = c.login(tag, USER, PASSWORD).await;
        assert!(r.starts_with(&format!("{tag} OK")), "{r}");
    }
    assert_eq!(env.oauth.refresh_count(), 4);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        saved,
        "the file on disk is intact"
    );
    // Once writable again, the next refresh persists the newest token.
    std::fs::remove_dir(&lock).unwrap();
    env.oauth.revoke_access_tokens();
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(c.login("e", USER, PASSWORD).await.starts_with("e OK"));
    let stored = env.open(USER, PASSWORD).refresh_token.clone().unwrap();
    assert!(
        env.oauth.refresh_token_valid(stored.expose_secret()),
        "the newest refresh token was persisted"
    );
}
