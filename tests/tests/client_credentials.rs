//! App-only access (client credentials): the account's password_hash is the
//! local password; one app token, cached and renewed, serves every mailbox.

#![allow(clippy::unwrap_used)]

use mailgate_tests::client::LineClient;
use mailgate_tests::harness::{Env, USER, imap_addr, logs, password_hash, start};
use mailgate_tests::imap_server::{FakeImap, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_token_serves_every_mailbox() {
    logs();
    let env = Env::new().await;
    env.oauth.set_client_secret(Some("app-secret"));
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let extra = format!(
        "password_hash = \"{}\"\n\n[[account]]\nuser = \"bob@example.test\"\nprovider = \"test\"\npassword_hash = \"{}\"\n",
        password_hash("alice app pw"),
        password_hash("bob app pw")
    );
    let text = env.config_text(
        &imap.url(false),
        "",
        "flow = \"client_credentials\"\nclient_secret = \"app-secret\"",
        &extra,
    );
    let g = start(env.load(&text)).await;
    for (user, pw) in [
        (USER, "alice app pw"),
        ("bob@example.test", "bob app pw"),
        (USER, "alice app pw"),
    ] {
        let mut c = LineClient::greeted(imap_addr(&g)).await;
        let r = c.login("a", user, pw).await;
        assert!(r.starts_with("a OK"), "{user}: {r}");
    }
    assert_eq!(
        env.oauth.grants("client_credentials"),
        1,
        "one app token for all"
    );
    assert_eq!(imap.successful_logins(), 3);
    // No token file is involved.
    assert!(!env.state_dir().join("tokens").exists());

    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(
        c.login("b", USER, "bob app pw")
            .await
            .starts_with("b NO [AUTHENTICATIONFAILED]")
    );

    // The upstream rejects the app token: a new one is fetched, once.
    env.oauth.revoke_access_tokens();
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(
        c.login("c", "bob@example.test", "bob app pw")
            .await
            .starts_with("c OK")
    );
    assert_eq!(env.oauth.grants("client_credentials"), 2);
}
