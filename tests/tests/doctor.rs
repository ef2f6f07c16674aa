//! `mailgate doctor`: every check against the fakes on loopback, with a
//! gateway of the same configuration running and not running; each known
//! failure is explained with what to do and its section of
//! docs/troubleshooting.md.

#![allow(clippy::unwrap_used)]

use mailgate_config::Protocol;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, USER, logs, mailgate, start};
use mailgate_tests::imap_server::Options;
use mailgate_tests::oauth::Mode;

/// Runs `mailgate doctor ARGS --json` on `config`; (exit success, report).
fn doctor(
    config: &std::path::Path,
    args: &[&str],
    password: Option<&str>,
) -> (bool, serde_json::Value) {
    let mut cmd = mailgate(Some(config));
    cmd.arg("doctor").args(args).arg("--json");
    if let Some(p) = password {
        cmd.env("MAILGATE_PASSWORD", p);
    }
    let out = cmd.output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

/// The checks whose name contains `what`.
fn lines<'a>(report: &'a serde_json::Value, what: &str) -> Vec<&'a serde_json::Value> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["check"].as_str().unwrap().contains(what))
        .collect()
}

struct Setup {
    env: Env,
    config: std::path::PathBuf,
    text: String,
    _imap: FakeServer,
    _smtp: FakeServer,
}

async fn setup(smtp: mailgate_tests::smtp_server::Options) -> Setup {
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let smtp = FakeServer::smtp(&env.ca, env.oauth.clone(), smtp).await;
    env.seal_new_user_token();
    let text = env.config_for(
        &[
            (Protocol::Imap, &imap.url(false)),
            (Protocol::Smtp, &smtp.url(false)),
        ],
        "",
        "",
        "",
    );
    let config = env.write_config(&text);
    Setup {
        env,
        config,
        text,
        _imap: imap,
        _smtp: smtp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_account_passes_every_check_with_the_gateway_running_or_not() {
    logs();
    let s = setup(Default::default()).await;
    // Not running.
    let (ok, report) = doctor(&s.config, &[USER], Some(PASSWORD));
    assert!(ok, "{report:#}");
    for what in [
        "configuration",
        "IMAP server",
        "SMTP server",
        "token endpoint",
        "clock",
        "account",
        "imap login",
        "smtp login",
    ] {
        let found = lines(&report, what);
        assert!(!found.is_empty(), "no {what} line: {report:#}");
        assert!(
            found.iter().all(|l| l["status"] == "ok"),
            "{what}: {report:#}"
        );
    }
    // Running: the same, beside it (the store is shared).
    let g = start(s.env.load(&s.text)).await;
    let (ok, report) = doctor(&s.config, &[USER], Some(PASSWORD));
    assert!(ok, "{report:#}");
    g.shutdown().await;

    // A wrong password is a failed login, said as the client hears it.
    let (ok, report) = doctor(&s.config, &[USER], Some("not the password"));
    assert!(!ok);
    let imap = lines(&report, "imap login");
    assert_eq!(imap[0]["status"], "fail", "{report:#}");
    assert!(
        imap[0]["detail"]
            .as_str()
            .unwrap()
            .contains("AUTHENTICATIONFAILED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_auth_off_is_explained() {
    let s = setup(mailgate_tests::smtp_server::Options {
        smtp_auth_disabled: true,
        ..Default::default()
    })
    .await;
    let (ok, report) = doctor(&s.config, &[USER], Some(PASSWORD));
    assert!(!ok);
    let smtp = lines(&report, "smtp login");
    assert_eq!(smtp[0]["status"], "fail", "{report:#}");
    assert!(
        smtp[0]["detail"].as_str().unwrap().contains("5.7.139"),
        "{report:#}"
    );
    assert!(
        smtp[0]["what_to_do"]
            .as_str()
            .unwrap()
            .contains("Authenticated SMTP"),
        "{report:#}"
    );
    assert_eq!(
        smtp[0]["see"],
        "docs/troubleshooting.md#smtp-57139-smtp-auth-is-off"
    );
    // The mail client's own reply says what to do in the same words.
    assert!(
        smtp[0]["detail"]
            .as_str()
            .unwrap()
            .contains("turn on Authenticated SMTP for the mailbox"),
        "{report:#}"
    );
}

/// Each Entra and Google error of the token endpoint, as the fake OAuth
/// server answers it: explained in the token endpoint's line (client
/// errors) or the account's after the login (grant errors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_errors_are_explained() {
    let s = setup(Default::default()).await;
    let rows: &[(&str, &str, &str, &str)] = &[
        (
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
            "token endpoint",
            "aadsts7000215-aadsts7000222-client-secret",
        ),
        (
            "invalid_client",
            "AADSTS7000222: The provided client secret keys are expired.",
            "token endpoint",
            "aadsts7000215-aadsts7000222-client-secret",
        ),
        (
            "unauthorized_client",
            "AADSTS700016: Application with identifier 'x' was not found in the directory.",
            "token endpoint",
            "aadsts700016-application-not-found",
        ),
        (
            "invalid_client",
            "AADSTS700027: Client assertion contains an invalid signature.",
            "token endpoint",
            "aadsts700027-invalid-client-assertion",
        ),
        (
            "unauthorized_client",
            "Client is unauthorized to retrieve access tokens using this method.",
            "token endpoint",
            "google-unauthorized_client",
        ),
        (
            "admin_policy_enforced",
            "Access blocked by the administrator.",
            "token endpoint",
            "google-admin_policy_enforced",
        ),
        (
            "invalid_grant",
            "AADSTS50076: Due to a configuration change made by your administrator, you must use multi-factor authentication.",
            "after the logins",
            "aadsts50076-aadsts50079-mfa-required",
        ),
        (
            "invalid_grant",
            "AADSTS50079: The user is required to use multi-factor authentication.",
            "after the logins",
            "aadsts50076-aadsts50079-mfa-required",
        ),
        (
            "invalid_grant",
            "AADSTS53003: Access has been blocked by Conditional Access policies.",
            "after the logins",
            "aadsts53003-blocked-by-conditional-access",
        ),
        (
            "invalid_grant",
            "AADSTS54005: OAuth2 Authorization code was already redeemed.",
            "after the logins",
            "aadsts54005-code-already-redeemed",
        ),
        (
            "invalid_grant",
            "AADSTS65001: The user or administrator has not consented to use the application.",
            "after the logins",
            "aadsts65001-consent-required",
        ),
        (
            "invalid_grant",
            "AADSTS70043: The refresh token has expired or is invalid due to sign-in frequency checks by conditional access.",
            "after the logins",
            "aadsts70043-sign-in-frequency",
        ),
        (
            "invalid_grant",
            "Token has been expired or revoked.",
            "after the logins",
            "google-invalid_grant-token-has-been-expired-or-revoked",
        ),
    ];
    for (error, description, check, anchor) in rows {
        s.env.seal_new_user_token();
        s.env.oauth.set_mode(Mode::Error {
            status: if *error == "invalid_client" { 401 } else { 400 },
            error: error.to_string(),
            description: description.to_string(),
        });
        let (ok, report) = doctor(&s.config, &[USER], Some(PASSWORD));
        assert!(!ok, "{description}: {report:#}");
        let found = lines(&report, check);
        assert!(
            found.iter().any(|l| l["status"] == "fail"
                && l["see"] == format!("docs/troubleshooting.md#{anchor}")),
            "{description}: {report:#}"
        );
        s.env.oauth.set_mode(Mode::Normal);
    }
}

/// `--app-only`: an account served with the organisation's credentials
/// logs in to each server with the app-only token, no local password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_only_accounts_log_in_upstream_without_a_password() {
    let env = Env::new().await;
    env.oauth.set_client_secret(Some("app-secret"));
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let smtp = FakeServer::smtp(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = env.config_for(
        &[
            (Protocol::Imap, &imap.url(false)),
            (Protocol::Smtp, &smtp.url(false)),
        ],
        "",
        "flow = \"client_credentials\"\nclient_secret = \"app-secret\"",
        &format!(
            "password_hash = \"{}\"",
            mailgate_tests::harness::password_hash("app pw")
        ),
    );
    let config = env.write_config(&text);
    let (ok, report) = doctor(&config, &[USER, "--app-only"], None);
    assert!(ok, "{report:#}");
    for what in [
        "imap login upstream",
        "smtp login upstream",
        "token endpoint",
    ] {
        let found = lines(&report, what);
        assert!(
            !found.is_empty() && found.iter().all(|l| l["status"] == "ok"),
            "{what}: {report:#}"
        );
    }
    assert_eq!(imap.successful_logins(), 1);

    // A wrong secret: the token endpoint's refusal is explained.
    env.oauth.set_client_secret(Some("another secret"));
    let (ok, report) = doctor(&config, &[USER, "--app-only"], None);
    assert!(!ok);
    let token = lines(&report, "token endpoint");
    assert!(token.iter().any(|l| l["status"] == "fail"), "{report:#}");
}
