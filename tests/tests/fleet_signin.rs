//! Sign-ins and app-only tokens across a fleet on one real `redis-server`
//! (SPEC §9): a portal sign-in started through one instance completes
//! through another (headless Chromium); a mail client of any instance is
//! sent to the fleet's portal for an account without tokens; two
//! instances of a `client_credentials` provider share one app-only token.
//! Redis holds none of these secrets in the clear.

#![allow(clippy::unwrap_used)]

use mailgate_tests::balancer::Balancer;
use mailgate_tests::chrome::Driver;
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{
    Env, PASSWORD, Running, USER, imap_addr, logs, password_hash, start, unused_port,
};
use mailgate_tests::oauth::AuthorizeMode;
use mailgate_tests::redis::Redis;

/// Two gateways (binaries) on one Redis behind a load balancer, whose
/// address is the portals' public URL and the providers' redirect URI.
struct Fleet {
    redis: Redis,
    env: Env,
    _imap: FakeServer,
    a: Running,
    b: Running,
    balancer: Balancer,
    public: String,
}

impl Fleet {
    async fn start() -> Fleet {
        let redis = Redis::start().await;
        let env = Env::new().await;
        let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
        let port = unused_port();
        let public = format!("http://127.0.0.1:{port}/");
        let text = |portal: &str| {
            format!(
                "{}\n[portal]\naddress = \"{portal}\"\npublic_url = \"{public}\"\ninsecure_plaintext = true\n\n[store]\nbackend = \"redis\"\nurl = \"{}\"\n",
                env.config_text(&imap.url(false), "log_format = \"json\"", "", "")
                    .replace(
                        "redirect_uri = \"http://127.0.0.1/\"",
                        &format!("redirect_uri = \"{public}\"")
                    ),
                redis.url()
            )
        };
        let start = |i: usize| env.instance(&text("127.0.0.1:0"), i, "portal listening");
        let (a, b) = (start(0), start(1));
        let balancer = Balancer::start(
            ([127, 0, 0, 1], port).into(),
            [&a, &b]
                .iter()
                .map(|r| r.address("portal listening", None))
                .collect(),
        )
        .await;
        Fleet {
            redis,
            env,
            _imap: imap,
            a,
            b,
            balancer,
            public,
        }
    }

    async fn imap_login(r: &Running, user: &str, password: &str) -> String {
        let mut c = LineClient::greeted(r.address("listening", Some("imap"))).await;
        c.login("a", user, password).await
    }

    async fn has_tokens(&self) -> bool {
        self.redis
            .hget(&format!("mailgate:account:{USER}"), "file")
            .await
            .is_some()
    }

    /// No value in Redis contains `secret`.
    async fn assert_not_in_redis(&self, secret: &str, what: &str) {
        for (k, v) in self.redis.everything().await {
            assert!(
                !v.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{what} in the clear under {k}"
            );
            assert!(!k.contains(secret), "{what} in the key {k}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_sign_in_started_on_one_instance_completes_on_another() {
    let f = Fleet::start().await;
    f.env.oauth.set_authorize_mode(AuthorizeMode::Consent);
    let driver = Driver::start().await;
    let b = driver.browser().await;
    let signed_in = "portal: signed in as the account's identity";

    // The address form through the balancer, on instance A.
    b.goto(&f.public).await;
    b.expect_page("address").await;
    b.fill("#address", USER).await;
    b.click("button[type=submit]").await;
    b.expect_page("consent").await;
    assert!(f.a.log().contains("portal: sign-in sent to the provider"));
    // While the browser is at the provider, the balancer moves it to B.
    f.balancer.switch_to(1);
    b.click("#approve").await;
    b.expect_page("password").await;
    assert!(f.b.log().contains(signed_in), "B took the redirect");
    assert!(!f.a.log().contains(signed_in));
    // The grant waiting for its password is in Redis, sealed.
    let issued = f.env.oauth.issued_tokens();
    assert!(!issued.is_empty());
    for t in issued {
        f.assert_not_in_redis(&t, "a token waiting for its password")
            .await;
    }
    b.fill("#password", PASSWORD).await;
    b.fill("#confirm", PASSWORD).await;
    b.click("button[type=submit]").await;
    b.expect_page("settings").await;
    assert!(f.has_tokens().await);

    // Back on A: the same session, signed in.
    f.balancer.switch_to(0);
    b.goto(&format!("{}account", f.public)).await;
    b.expect_page("account").await;
    assert!(b.text("main").await.contains(USER));

    // Both instances log the account in with that password.
    for r in [&f.a, &f.b] {
        let reply = Fleet::imap_login(r, USER, PASSWORD).await;
        assert!(reply.starts_with("a OK"), "{reply}");
    }

    // Signing out on A ends the session on B too.
    b.click("#sign-out").await;
    b.expect_page("address").await;
    f.balancer.switch_to(1);
    b.goto(&format!("{}account", f.public)).await;
    b.expect_page("address").await;
}

/// A mail client of either instance is sent to the fleet's portal (its
/// public address) for the account; nothing is started or stored for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_band_message_names_the_fleets_portal() {
    let f = Fleet::start().await;
    let from_a = Fleet::imap_login(&f.a, USER, PASSWORD).await;
    let from_b = Fleet::imap_login(&f.b, USER, "another password entirely").await;
    assert_eq!(from_a, from_b, "the same message, whatever the password");
    assert!(
        from_a.starts_with(&format!(
            "a NO [ALERT] To authorise {USER}, open {}?address=alice%40example.test ",
            f.public
        )),
        "{from_a}"
    );
    assert_eq!(f.env.oauth.grants("authorization_code"), 0);
    assert!(f.env.oauth.last_authorize().is_empty());
    assert!(!f.has_tokens().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_shares_one_app_only_token() {
    logs();
    let redis = Redis::start().await;
    let env = Env::new().await;
    env.oauth.set_client_secret(Some("app-secret"));
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = format!(
        "{}\n[store]\nbackend = \"redis\"\nurl = \"{}\"\n",
        env.config_text(
            &imap.url(false),
            "",
            "flow = \"client_credentials\"\nclient_secret = \"app-secret\"",
            &format!("password_hash = \"{}\"\n", password_hash("alice app pw")),
        ),
        redis.url()
    );
    let one = start(env.load(&text)).await;
    let two = start(env.load(&text)).await;
    for g in [&one, &two, &one, &two] {
        let mut c = LineClient::greeted(imap_addr(g)).await;
        let r = c.login("a", USER, "alice app pw").await;
        assert!(r.starts_with("a OK"), "{r}");
    }
    assert_eq!(
        env.oauth.grants("client_credentials"),
        1,
        "one token for the fleet"
    );
    let token = env.oauth.last_access_token().unwrap();
    for (k, v) in redis.everything().await {
        assert!(
            !v.windows(token.len()).any(|w| w == token.as_bytes()),
            "the app-only token in the clear under {k}"
        );
    }
    // The upstream rejects it: one instance gets a new one, which the
    // other then uses too.
    env.oauth.revoke_access_tokens();
    for g in [&two, &one] {
        let mut c = LineClient::greeted(imap_addr(g)).await;
        let r = c.login("a", USER, "alice app pw").await;
        assert!(r.starts_with("a OK"), "{r}");
    }
    assert_eq!(env.oauth.grants("client_credentials"), 2);
}
