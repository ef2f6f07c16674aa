//! Google service accounts with domain-wide delegation: a signed JWT per
//! mailbox (RFC 7523), checked by the fake token endpoint with the key's
//! public half; the token logs in to a real Dovecot as that mailbox.

#![allow(clippy::unwrap_used)]

use mailgate_config::Protocol;
use mailgate_tests::client::LineClient;
use mailgate_tests::dovecot::Dovecot;
use mailgate_tests::harness::{
    Env, Running, USER, imap_addr, logs, password_hash, start, unused_port,
};
use mailgate_tests::service_account::{CLIENT_EMAIL, key_file};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const BOB: &str = "bob@example.test";

/// A configuration for `url` whose provider signs in as the service
/// account of `key`, with USER and BOB as its mailboxes.
fn config(env: &Env, url: &str, key: &std::path::Path, gateway: &str) -> String {
    let provider = format!(
        "flow = \"service_account\"\nservice_account_file = \"{}\"",
        key.display()
    );
    let extra = format!(
        "password_hash = \"{}\"\n\n[[account]]\nuser = \"{BOB}\"\nprovider = \"test\"\npassword_hash = \"{}\"\n",
        password_hash("alice app pw"),
        password_hash("bob app pw")
    );
    env.config_for(&[(Protocol::Imap, url)], gateway, &provider, &extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_per_mailbox_through_dovecot() {
    logs();
    let env = Env::new().await;
    let (key, public) = key_file(env.path(), "key.json");
    env.oauth.set_service_account(CLIENT_EMAIL, &public);
    let dv = Dovecot::start(env.path(), &env.ca, &env.oauth, unused_port());
    let url = format!("imaps://127.0.0.1:{}", dv.imaps_port);
    let g = start(env.load(&config(&env, &url, &key, ""))).await;
    for (user, pw) in [
        (USER, "alice app pw"),
        (BOB, "bob app pw"),
        (USER, "alice app pw"),
    ] {
        let mut c = LineClient::greeted(imap_addr(&g)).await;
        let r = c.login("a", user, pw).await;
        assert!(r.starts_with("a OK"), "{user}: {r}\n{}", dv.log());
        c.send("s SELECT INBOX\r\n").await;
        assert!(c.response_text("s").await.contains("s OK"), "{user}");
        c.send("z LOGOUT\r\n").await;
        c.response_text("z").await;
    }
    // One assertion per mailbox, each for that mailbox; the second login
    // of USER used the cached token.
    assert_eq!(env.oauth.grants(JWT_BEARER), 2);
    assert_eq!(env.oauth.assertion_subjects(), vec![USER, BOB]);
    // Dovecot saw each mailbox log in as itself, never as the service
    // account.
    let log = dv.log();
    assert!(!log.contains(CLIENT_EMAIL), "{log}");
    // Nothing is sealed per user.
    assert!(!env.state_dir().join("tokens").exists());

    // A wrong local password never reaches the provider.
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("b", BOB, "alice app pw").await;
    assert!(r.starts_with("b NO [AUTHENTICATIONFAILED]"), "{r}");
    assert_eq!(env.oauth.grants(JWT_BEARER), 2);

    // The upstream rejects the token: a new assertion (the fake refuses a
    // reused one) gets a new token, once.
    env.oauth.revoke_access_tokens();
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("c", BOB, "bob app pw").await;
    assert!(r.starts_with("c OK"), "{r}");
    assert_eq!(env.oauth.grants(JWT_BEARER), 3);
    assert_eq!(env.oauth.assertion_subjects(), vec![USER, BOB, BOB]);
}

/// Without domain-wide delegation Google answers `unauthorized_client`:
/// the client is told that the administrator must grant it, and the log
/// says where, with the client ID and scopes to paste.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_delegation_says_where_to_grant_it() {
    let env = Env::new().await;
    let (key, public) = key_file(env.path(), "key.json");
    env.oauth.set_service_account(CLIENT_EMAIL, &public);
    env.oauth.set_delegated(false);
    let text = config(&env, "imaps://127.0.0.1:9", &key, "log_format = \"json\"");
    let path = env.write_config(&text);

    // `mailgate check` names the service account and its key.
    let out = mailgate_tests::harness::mailgate(Some(&path))
        .arg("check")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("flow service_account"), "{shown}");
    assert!(shown.contains(CLIENT_EMAIL), "{shown}");
    assert!(shown.contains("0123456789abcdef"), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");

    let g = Running::start(&path, "listening");
    let addr = g.address("listening", Some("imap"));
    let mut c = LineClient::greeted(addr).await;
    let r = c.login("a", USER, "alice app pw").await;
    assert!(
        r.starts_with("a NO [UNAVAILABLE] Cannot log in now: the service account of test has no domain-wide delegation"),
        "{r}"
    );
    assert!(r.contains("Google Admin console"), "{r}");
    // The log line may reach the pipe just after the client's answer.
    for _ in 0..100 {
        if g.log().contains("Manage domain-wide delegation") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = g.log();
    assert!(
        log.contains("Manage domain-wide delegation")
            && log.contains("111111111111111111111")
            && log.contains("mail"),
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

#[test]
fn a_service_account_needs_a_key_google_and_password_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = key_file(dir.path(), "key.json");
    std::fs::write(
        dir.path().join("not-a-key.json"),
        "{\"type\": \"authorized_user\"}",
    )
    .unwrap();
    let check = |provider: &str, account: &str| -> String {
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            format!(
                "[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:0\"\n[provider.p]\n{provider}\n[[account]]\nuser = \"a@x.test\"\nprovider = \"p\"\n{account}\n"
            ),
        )
        .unwrap();
        match mailgate_config::load_with_env(&path, Vec::new()) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let hash = format!("password_hash = \"{}\"", password_hash("pw"));
    let sa = |preset: &str, file: &str| {
        format!(
            "preset = \"{preset}\"\nflow = \"service_account\"\nservice_account_file = \"{file}\""
        )
    };
    let key = key.display().to_string();
    assert_eq!(check(&sa("gmail", &key), &hash), "", "a valid one");
    let e = check(&sa("office365", &key), &hash);
    assert!(
        e.contains("provider.p.flow") && e.contains("client_credentials"),
        "{e}"
    );
    let e = check(&sa("gmail", &key), "");
    assert!(e.contains("account[0].password_hash"), "{e}");
    let e = check(&sa("gmail", "not-a-key.json"), &hash);
    assert!(
        e.contains("service_account_file") && e.contains("not a service account key"),
        "{e}"
    );
    let e = check(&sa("gmail", "missing.json"), &hash);
    assert!(
        e.contains("service_account_file") && e.contains("cannot read"),
        "{e}"
    );
    let e = check("preset = \"gmail\"\nflow = \"service_account\"", &hash);
    assert!(
        e.contains("service_account_file") && e.contains("missing"),
        "{e}"
    );
}

/// Two gateways on one Redis: a mailbox's token is asked for once in the
/// whole fleet, and the other instance uses the one in Redis (sealed with
/// a key derived from the service account's private key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_assertion_per_mailbox_for_the_fleet() {
    use mailgate_tests::imap_server::{FakeImap, Options};
    use mailgate_tests::redis::Redis;
    logs();
    let env = Env::new().await;
    let (key, public) = key_file(env.path(), "key.json");
    env.oauth.set_service_account(CLIENT_EMAIL, &public);
    env.oauth.set_mode(mailgate_tests::oauth::Mode::Slow(
        std::time::Duration::from_millis(300),
    ));
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let redis = Redis::start().await;
    let text = format!(
        "{}\n[store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"sa:\"\n",
        config(&env, &imap.url(false), &key, ""),
        redis.url()
    );
    let a = start(env.load(&text)).await;
    let b = start(env.load(&text)).await;
    let login = |addr| async move {
        let mut c = LineClient::greeted(addr).await;
        c.login("a", USER, "alice app pw").await
    };
    let (ra, rb) = tokio::join!(login(imap_addr(&a)), login(imap_addr(&b)));
    assert!(ra.starts_with("a OK"), "{ra}");
    assert!(rb.starts_with("a OK"), "{rb}");
    assert_eq!(
        env.oauth.grants(JWT_BEARER),
        1,
        "one assertion for the fleet"
    );
    // Redis holds the token sealed: neither the token nor the mailbox in clear.
    let token = env.oauth.last_access_token().unwrap();
    for (k, v) in redis.everything().await {
        assert!(!k.contains(USER), "{k}");
        assert!(!String::from_utf8_lossy(&v).contains(&token), "{k}");
    }
}
