//! `mailgate login` through the real binary against the fake authorisation
//! server: the browser flow (the browser is an HTTP client following the
//! printed URL), the paste flow and the device flow; `state` and PKCE
//! checked; the stored tokens then serve a login through the gateway.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailgate_tests::client::LineClient;
use mailgate_tests::harness::{Env, PASSWORD, USER, imap_addr, logs, start};
use mailgate_tests::imap_server::{FakeImap, Options};
use mailgate_tests::login::Login;
use mailgate_tests::oauth::{AuthorizeMode, DeviceMode};

async fn setup(extra_provider: &str) -> (Env, FakeImap, std::path::PathBuf) {
    logs();
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let cfg = env.write_config(&env.config_text(&imap.url(false), "", extra_provider, ""));
    (env, imap, cfg)
}

/// The stored tokens serve a login through the gateway, without a refresh.
async fn gateway_login_works(env: &Env, imap: &FakeImap) {
    let refreshes = env.oauth.refresh_count();
    let g = start(env.load(&env.config_text(&imap.url(false), "", "", ""))).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("a", USER, PASSWORD).await;
    assert!(r.starts_with("a OK"), "{r}");
    assert_eq!(env.oauth.refresh_count(), refreshes);
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Plays the browser: opens the authorize URL, follows the redirect to the
/// loopback listener, returns that page's status and text.
async fn browse(url: &str) -> (u16, String) {
    let r = http().get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302, "the authorize endpoint redirects");
    let to = r.headers()["location"].to_str().unwrap().to_string();
    let page = http().get(&to).send().await.unwrap();
    (page.status().as_u16(), page.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_flow() {
    let (env, imap, cfg) = setup("").await;
    let login = Login::spawn(
        &cfg,
        &["alice@example.test", "--flow", "browser", "--no-browser"],
    );
    let url = login.line_starting("http");
    assert!(url.starts_with(&env.oauth.authorize_url()), "{url}");
    let (status, page) = browse(&url).await;
    assert_eq!(status, 200);
    assert!(page.contains("Signed in"), "{page}");
    let (ok, out) = login.finish();
    assert!(ok, "{out}");
    assert!(
        out.contains("stored the tokens of alice@example.test"),
        "{out}"
    );

    let q = env.oauth.last_authorize();
    assert_eq!(
        q.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    assert_eq!(q.get("login_hint").map(String::as_str), Some(USER));
    assert!(q.get("state").is_some_and(|s| s.len() >= 16));
    assert!(
        q.get("redirect_uri")
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "any free port for a portless 127.0.0.1 redirect"
    );
    assert_eq!(env.oauth.grants("authorization_code"), 1);
    assert!(env.open(USER, PASSWORD).refresh_token.is_some());
    gateway_login_works(&env, &imap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_flow_gmail_preset_asks_for_offline_access() {
    let (env, _imap, cfg) = setup("preset = \"gmail\"").await;
    let login = Login::spawn(&cfg, &[USER, "--no-browser"]);
    let url = login.line_starting("http");
    browse(&url).await;
    let (ok, out) = login.finish();
    assert!(ok, "{out}");
    let q = env.oauth.last_authorize();
    assert_eq!(q.get("access_type").map(String::as_str), Some("offline"));
    assert_eq!(q.get("prompt").map(String::as_str), Some("consent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_flow_ignores_a_wrong_state() {
    let (env, _imap, cfg) = setup("").await;
    env.oauth.set_authorize_mode(AuthorizeMode::WrongState);
    let login = Login::spawn(&cfg, &[USER, "--no-browser", "--timeout", "3s"]);
    let url = login.line_starting("http");
    // A redirect with another state (a stale tab, a forged request) gets a
    // page and changes nothing: the login goes on waiting for its own.
    let (status, page) = browse(&url).await;
    assert_eq!(status, 400);
    assert!(page.contains("not recognised"), "{page}");
    let (ok, out) = login.finish();
    assert!(!ok);
    assert!(
        out.contains("no sign-in arrived") && out.contains("nothing was stored"),
        "{out}"
    );
    assert_eq!(
        env.oauth.grants("authorization_code"),
        0,
        "the code is never exchanged"
    );
    assert!(
        !env.state_dir()
            .join("tokens")
            .join(format!("{USER}.json"))
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_flow_shows_the_providers_error() {
    let (env, _imap, cfg) = setup("").await;
    env.oauth.set_authorize_mode(AuthorizeMode::Deny);
    let login = Login::spawn(&cfg, &[USER, "--no-browser"]);
    let url = login.line_starting("http");
    let (status, page) = browse(&url).await;
    assert_eq!(status, 400);
    assert!(
        page.contains("access_denied") && page.contains("User declined to consent"),
        "{page}"
    );
    let (ok, out) = login.finish();
    assert!(!ok);
    assert!(
        out.contains("access_denied (AADSTS65004: User declined to consent)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_flow_times_out_clearly() {
    let (_env, _imap, cfg) = setup("").await;
    let login = Login::spawn(&cfg, &[USER, "--no-browser", "--timeout", "1s"]);
    let (ok, out) = login.finish();
    assert!(!ok);
    assert!(out.contains("no sign-in arrived within 1s"), "{out}");
    assert!(out.contains("firewall"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paste_flow() {
    let (env, imap, cfg) = setup("").await;
    let mut login = Login::spawn(&cfg, &[USER, "--flow", "paste"]);
    let url = login.line_starting("http");
    let r = http().get(&url).send().await.unwrap();
    let to = r.headers()["location"].to_str().unwrap().to_string();
    login.type_line(&to);
    let (ok, out) = login.finish();
    assert!(ok, "{out}");
    assert!(env.open(USER, PASSWORD).refresh_token.is_some());
    gateway_login_works(&env, &imap).await;
}

/// A code obtained for another PKCE challenge (an injected code) fails at
/// the token endpoint: mailgate sent its own verifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pkce_verifier_is_rejected() {
    let (env, _imap, cfg) = setup("").await;
    let mut login = Login::spawn(&cfg, &[USER, "--flow", "paste"]);
    let url = login.line_starting("http");
    let mut forged = url::Url::parse(&url).unwrap();
    let pairs: Vec<(String, String)> = forged
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "code_challenge" {
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let r = http().get(forged.as_str()).send().await.unwrap();
    let to = r.headers()["location"].to_str().unwrap().to_string();
    login.type_line(&to);
    let (ok, out) = login.finish();
    assert!(!ok);
    assert!(
        out.contains("invalid_grant") && out.contains("Code_Verifier does not match"),
        "{out}"
    );
    assert!(
        !env.state_dir()
            .join("tokens")
            .join(format!("{USER}.json"))
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow() {
    let (env, imap, cfg) = setup("flow = \"device_code\"").await;
    env.oauth.set_device_mode(DeviceMode::ApproveAfter(2));
    let login = Login::spawn(&cfg, &[USER]);
    let line = login.line_starting("To sign in");
    assert!(
        line.contains("https://login.example.test/device") && line.contains("CODE-"),
        "{line}"
    );
    assert!(
        line.contains("to authenticate"),
        "the provider's message is shown: {line}"
    );
    let (ok, out) = login.finish();
    assert!(ok, "{out}");
    assert_eq!(
        env.oauth
            .grants("urn:ietf:params:oauth:grant-type:device_code"),
        3,
        "two pending polls, then tokens"
    );
    gateway_login_works(&env, &imap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_slow_down_declined_expired() {
    let (env, _imap, cfg) = setup("flow = \"device_code\"").await;
    env.oauth.set_device_mode(DeviceMode::SlowDownOnce);
    let started = std::time::Instant::now();
    let (ok, out) = Login::spawn(&cfg, &[USER]).finish();
    assert!(ok, "{out}");
    // slow_down adds 5 s to the 1 s interval (a lower bound only).
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "slow_down was not honoured"
    );

    env.oauth.set_device_mode(DeviceMode::Decline);
    let (ok, out) = Login::spawn(&cfg, &[USER]).finish();
    assert!(!ok);
    assert!(out.contains("declined"), "{out}");

    env.oauth.set_device_mode(DeviceMode::Expire);
    let (ok, out) = Login::spawn(&cfg, &[USER]).finish();
    assert!(!ok);
    assert!(out.contains("expired"), "{out}");
}
