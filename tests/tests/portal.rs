//! The web portal in a real browser (headless Chromium over WebDriver),
//! against the real binary, the fake OAuth server and a scripted XOAUTH2
//! IMAP server: first sign-in → password → settings → an IMAP login with
//! that password; password change; authorise again; forget; a form
//! without its CSRF token; a second browser; the wrong identity; a
//! provider error; a forged redirect; the security headers.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailgate_tests::chrome::Driver;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, Running, USER};
use mailgate_tests::oauth::AuthorizeMode;
use mailgate_tests::portal::{Portal, choose_password, sign_in};

const NEW_PASSWORD: &str = "lamp river quiet orange";
const THIRD_PASSWORD: &str = "seven blue herons at dawn";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sign_in_password_settings_imap_change_again_forget() {
    let p = Portal::start().await;
    let driver = Driver::start().await;
    let b = driver.browser().await;

    // The address form.
    b.goto(&p.base).await;
    b.expect_page("address").await;
    b.screenshot("portal-address").await;
    b.fill("#address", USER).await;
    b.click("button[type=submit]").await;

    // Back from the provider: the password, typed twice.
    b.expect_page("password").await;
    assert!(b.text("main").await.contains(USER));
    let sent = p.env.oauth.last_authorize();
    assert_eq!(sent.get("login_hint").map(String::as_str), Some(USER));
    assert!(sent["scope"].split(' ').any(|s| s == "openid"));
    assert!(sent.contains_key("nonce") && sent.contains_key("code_challenge"));
    b.screenshot("portal-password").await;
    b.fill("#password", PASSWORD).await;
    b.fill("#confirm", "something else entirely").await;
    b.click("button[type=submit]").await;
    b.expect_page("password").await;
    assert!(
        b.text(".error").await.contains("differ"),
        "mismatch refused"
    );
    assert!(p.token_file().is_none(), "nothing stored yet");
    // The browser itself refuses a short password (minlength); without
    // that attribute, the portal refuses it too.
    b.client
        .execute(
            "document.querySelectorAll('[minlength]').forEach(e => e.removeAttribute('minlength'))",
            vec![],
        )
        .await
        .unwrap();
    b.fill("#password", "short").await;
    b.fill("#confirm", "short").await;
    b.click("button[type=submit]").await;
    b.expect_page("password").await;
    assert!(b.text(".error").await.contains("at least 8"));
    b.fill("#password", PASSWORD).await;
    b.fill("#confirm", PASSWORD).await;
    b.click("button[type=submit]").await;

    // The settings page names the listener.
    b.expect_page("settings").await;
    let settings = b.text("main").await;
    let port = p.imap().port().to_string();
    assert!(settings.contains("Incoming mail (IMAP)"), "{settings}");
    assert!(
        settings.contains(&port) && settings.contains("127.0.0.1"),
        "{settings}"
    );
    assert!(settings.contains(USER));
    assert!(
        !b.url().await.as_str().contains("code="),
        "no secret in the URL"
    );
    b.screenshot("portal-settings").await;

    // A mail client logs in through mailgate with that password.
    let r = p.imap_login(PASSWORD).await;
    assert!(r.starts_with("a OK"), "{r}");

    // The account page.
    b.goto(&format!("{}account", p.base)).await;
    b.expect_page("account").await;
    assert!(b.text("#token-state").await.starts_with("Ready"));
    // The shared mailboxes it may open, with the user name to type.
    let shared = b.text("#shared").await;
    assert!(
        shared.contains(&format!("{USER}\\info@example.test")),
        "{shared}"
    );
    b.screenshot("portal-account").await;

    // The record says that the sign-in does not allow sending through
    // Graph (what a refused Graph token writes; tests/graph.rs): the page
    // says so, and says to authorise again.
    let file = p.token_file().unwrap();
    let mut marked: serde_json::Value = serde_json::from_slice(&file).unwrap();
    marked["graph_refused"] = serde_json::Value::Bool(true);
    let path = p
        .env
        .state_dir()
        .join("tokens")
        .join(format!("{USER}.json"));
    std::fs::write(&path, serde_json::to_vec(&marked).unwrap()).unwrap();
    b.goto(&format!("{}account", p.base)).await;
    b.expect_page("account").await;
    let state = b.text("#token-state").await;
    assert!(
        state.contains("cannot send") && state.contains("authorise again"),
        "{state}"
    );
    std::fs::write(&path, &file).unwrap();

    // Changing the password needs the old one.
    b.fill("#old", "not the password").await;
    b.fill("#new", NEW_PASSWORD).await;
    b.fill("#confirm", NEW_PASSWORD).await;
    b.click("#change").await;
    b.expect_page("account").await;
    assert!(b.text(".error").await.contains("current password is wrong"));
    b.fill("#old", PASSWORD).await;
    b.fill("#new", NEW_PASSWORD).await;
    b.fill("#confirm", NEW_PASSWORD).await;
    b.click("#change").await;
    b.expect_page("account").await;
    assert!(b.text(".ok").await.contains("password is changed"));
    let r = p.imap_login(PASSWORD).await;
    assert!(
        r.starts_with("a NO [AUTHENTICATIONFAILED] Invalid credentials"),
        "the old password is refused: {r}"
    );
    let r = p.imap_login(NEW_PASSWORD).await;
    assert!(r.starts_with("a OK"), "{r}");

    // A form posted without its token is refused, and changes nothing.
    let before = p.token_file().unwrap();
    b.client
        .execute(
            "document.querySelectorAll('input[name=csrf]').forEach(e => e.value = 'forged')",
            vec![],
        )
        .await
        .unwrap();
    b.click("#forget").await;
    b.expect_page("message").await;
    assert!(b.text("h1").await.contains("Form expired"));
    assert_eq!(
        p.token_file().unwrap(),
        before,
        "the forged form changed nothing"
    );

    // A second browser (other cookies) sees nothing of the first's account.
    let other = driver.browser().await;
    for page in ["account", "settings", "password"] {
        other.goto(&format!("{}{page}", p.base)).await;
        other.expect_page("address").await;
    }
    other.close().await;

    // Authorise again: a new sign-in as the same identity, a new password.
    b.goto(&format!("{}account", p.base)).await;
    b.expect_page("account").await;
    b.click("#authorize-again").await;
    choose_password(&b, THIRD_PASSWORD).await;
    assert_eq!(p.env.oauth.grants("authorization_code"), 2);
    let r = p.imap_login(THIRD_PASSWORD).await;
    assert!(r.starts_with("a OK"), "{r}");
    let r = p.imap_login(NEW_PASSWORD).await;
    assert!(
        r.starts_with("a NO [AUTHENTICATIONFAILED] Invalid credentials"),
        "{r}"
    );

    // Forget the account.
    b.goto(&format!("{}account", p.base)).await;
    b.expect_page("account").await;
    b.click("#forget").await;
    b.expect_page("message").await;
    assert!(b.text("h1").await.contains("Account forgotten"));
    assert!(p.token_file().is_none());
    let r = p.imap_login(THIRD_PASSWORD).await;
    assert!(
        r.starts_with(&format!(
            "a NO [ALERT] To authorise {USER}, open {}?address=",
            p.base
        )),
        "the account has no tokens any more: {r}"
    );
    // The session ended with it.
    b.goto(&format!("{}account", p.base)).await;
    b.expect_page("address").await;

    assert!(
        p.metric("mailgate_portal_sign_ins_total{result=\"ok\"} 2")
            .await
    );
    let log = p.gateway.log();
    for secret in [PASSWORD, NEW_PASSWORD, THIRD_PASSWORD, "code-0", "code-1"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_identity_provider_error_and_forged_redirects_store_nothing() {
    let p = Portal::start().await;
    // The account already has tokens; nobody but its identity may change them.
    p.env.seal_new_user_token();
    let before = p.token_file().unwrap();
    let driver = Driver::start().await;
    let b = driver.browser().await;

    // Someone signs in at the provider as another identity.
    p.env.oauth.set_sign_in_as(Some("mallory@example.test"));
    sign_in(&b, &p.base, USER).await;
    b.expect_page("wrong-identity").await;
    assert_eq!(b.text("#signed-in").await, "mallory@example.test");
    assert_eq!(b.text("#expected").await, USER);
    b.screenshot("portal-wrong-identity").await;
    assert_eq!(p.token_file().unwrap(), before, "nothing stored");

    // Trying again, the provider refuses.
    p.env.oauth.set_sign_in_as(None);
    p.env.oauth.set_authorize_mode(AuthorizeMode::Deny);
    b.click("#try-again").await;
    b.expect_page("provider-error").await;
    assert_eq!(b.text("#provider-error").await, "access_denied");
    assert!(b.text("#advice").await.contains("declined"));
    b.screenshot("portal-provider-error").await;
    assert_eq!(p.token_file().unwrap(), before);

    // A redirect this browser did not start is ignored.
    p.env.oauth.set_authorize_mode(AuthorizeMode::Approve);
    b.goto(&format!("{}?code=code-9&state=forged", p.base))
        .await;
    b.expect_page("message").await;
    assert!(b.text("h1").await.contains("not recognised"));
    // A state from the provider that is not this sign-in's: refused too.
    p.env.oauth.set_authorize_mode(AuthorizeMode::WrongState);
    sign_in(&b, &p.base, USER).await;
    b.expect_page("message").await;
    assert!(b.text("h1").await.contains("not recognised"));
    assert_eq!(p.token_file().unwrap(), before);

    // The owner, signing in as the identity, reaches the account page (its
    // tokens are already there, so no password is asked).
    p.env.oauth.set_authorize_mode(AuthorizeMode::Approve);
    sign_in(&b, &p.base, USER).await;
    b.expect_page("account").await;
    assert_eq!(
        p.token_file().unwrap(),
        before,
        "signing in alone changes nothing"
    );

    assert!(
        p.metric("mailgate_portal_sign_ins_total{result=\"wrong_identity\"} 1")
            .await
    );
    assert!(
        p.metric("mailgate_portal_sign_ins_total{result=\"provider_error\"} 1")
            .await
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_cookies_hosts_and_forms_without_a_session() {
    let p = Portal::start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(&p.base).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    assert!(
        csp.contains(&p.env.oauth.issuer()),
        "the provider is a form target: {csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let cookie = h["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let body = r.text().await.unwrap();
    assert!(!body.contains("<script"), "no script on any page");

    // A page posting from elsewhere has no session, and no token.
    let r = http
        .post(format!("{}sign-in", p.base))
        .form(&[("address", USER)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("{}account/forget", p.base))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A name that is not the portal's (DNS rebinding) is refused.
    let r = http
        .get(&p.base)
        .header("host", "attacker.example:80")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);

    // The stylesheet and the help page.
    let r = http
        .get(format!("{}style.css", p.base))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let r = http.get(format!("{}help", p.base)).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("AADSTS"));
}

/// Over TLS the cookie is `__Host-` and `Secure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_over_tls() {
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = format!(
        "{}\n[portal]\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\n",
        env.config_text(&imap.url(false), "log_format = \"json\"", "", "")
            .replace(
                "redirect_uri = \"http://127.0.0.1/\"",
                "redirect_uri = \"https://127.0.0.1/\""
            )
    );
    let config = env.write_config(&text);
    let gateway = Running::start(&config, "portal listening");
    let addr = gateway.address("portal listening", None);
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(format!("https://{addr}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    // A visit makes no session: the address form's own cookie.
    assert!(cookie.starts_with("__Host-mailgate-form="), "{cookie}");
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Plain HTTP on the TLS port gets nothing.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    // Refused by the TLS layer: connected, then closed without an answer
    // (not a port that nothing listens on, and not a wait).
    let e = plain.expect_err("plain HTTP is answered on the TLS port");
    assert!(!e.is_connect() && !e.is_timeout(), "{e:?}");
}
