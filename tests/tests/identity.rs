//! Identity claims as Entra issues them (SPEC §4), through the portal in
//! headless Chromium against the real binary, with `tenant = "common"`:
//!
//! - nOAuth: an administrator of any tenant sets a user's mail attribute to
//!   the victim's address; the `email` claim is not verified
//!   (`xms_edov` absent), so that user is who `preferred_username` says;
//! - an account's tokens stay in the tenant of its first sign-in: the same
//!   address from another tenant (a personal account) cannot replace them;
//! - `allowed_tenants` refuses every other tenant, even for an account
//!   without tokens; `check` warns while `common` is not pinned.

#![allow(clippy::unwrap_used)]

use mailgate_tests::chrome::Driver;
use mailgate_tests::harness::{PASSWORD, USER, run_mailgate};
use mailgate_tests::oauth::Entra;
use mailgate_tests::portal::{Portal, choose_password, sign_in};

const HOME: &str = "11111111-2222-3333-4444-555555555555";
const OTHER: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

fn entra(tid: &str, mail: Option<&str>) -> Option<Entra> {
    Some(Entra {
        tid: tid.into(),
        mail: mail.map(Into::into),
        email_domain_verified: false,
    })
}

/// The portal with an Office 365 provider on `tenant = "common"`.
async fn portal(extra_provider: &str) -> Portal {
    Portal::with(
        "",
        &format!("preset = \"office365\"\ntenant = \"common\"\n{extra_provider}"),
        "",
    )
    .await
}

/// `mailgate check`: whether it passed, its output and its warnings.
fn check(p: &Portal) -> (bool, String, String) {
    let out = run_mailgate(
        &p.env.path().join("mailgate.toml"),
        &["check"],
        "",
        None,
        &[],
    );
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_verified_claims_of_the_right_tenant_claim_an_account() {
    let p = portal("").await;
    let driver = Driver::start().await;

    // nOAuth: mallory's tenant says his mail is alice's address.
    p.env.oauth.set_entra(entra(OTHER, Some(USER)));
    p.env.oauth.set_sign_in_as(Some("mallory@evil.test"));
    let b = driver.browser().await;
    sign_in(&b, &p.base, USER).await;
    b.expect_page("wrong-identity").await;
    assert_eq!(b.text("#signed-in").await, "mallory@evil.test");
    assert!(p.token_file().is_none(), "nothing stored");
    b.close().await;

    // Alice signs in from her own tenant: stored, with that tenant.
    p.env.oauth.set_entra(entra(HOME, None));
    p.env.oauth.set_sign_in_as(None);
    let b = driver.browser().await;
    sign_in(&b, &p.base, USER).await;
    choose_password(&b, PASSWORD).await;
    b.close().await;
    let before = p.token_file().unwrap();
    let file: serde_json::Value = serde_json::from_slice(&before).unwrap();
    assert_eq!(file["tenant"], HOME);

    // The same address signed in from another tenant (a personal account
    // named after it): refused, the tokens unchanged.
    p.env.oauth.set_entra(entra(OTHER, None));
    let b = driver.browser().await;
    sign_in(&b, &p.base, USER).await;
    b.expect_page("message").await;
    let text = b.text("main").await;
    assert!(
        text.contains(OTHER) && text.contains("another organisation"),
        "{text}"
    );
    assert_eq!(p.token_file().unwrap(), before);
    b.close().await;

    // An address the tenant verified (xms_edov) is an identity.
    p.env.oauth.set_entra(Some(Entra {
        tid: HOME.into(),
        mail: Some(USER.into()),
        email_domain_verified: true,
    }));
    p.env.oauth.set_sign_in_as(Some("alice.smith@example.test"));
    let b = driver.browser().await;
    sign_in(&b, &p.base, USER).await;
    b.expect_page("account").await;
    b.close().await;
    assert!(!p.gateway.log().contains(PASSWORD));

    // `check` warns that common is not pinned.
    let (ok, _, err) = check(&p);
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "provider.test: tenant = \"common\" lets users of any Microsoft tenant sign in"
        ) && err.contains("allowed_tenants"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_tenants_refuse_every_other_tenant() {
    let p = portal(&format!("allowed_tenants = [\"{HOME}\"]")).await;
    let driver = Driver::start().await;
    p.env.oauth.set_entra(entra(OTHER, None));
    let b = driver.browser().await;
    sign_in(&b, &p.base, USER).await;
    b.expect_page("message").await;
    assert!(b.text("main").await.contains("allows only its own tenants"));
    assert!(p.token_file().is_none());
    b.close().await;

    p.env.oauth.set_entra(entra(HOME, None));
    let b = driver.browser().await;
    sign_in(&b, &p.base, USER).await;
    b.expect_page("password").await;
    b.close().await;

    let (ok, shown, err) = check(&p);
    assert!(ok, "{err}");
    assert!(!err.contains("lets users of any Microsoft tenant"), "{err}");
    assert!(shown.contains(HOME), "{shown}");
}
