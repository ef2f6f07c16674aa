//! Certificate credentials of a confidential Microsoft client: every token
//! request carries a client assertion (RFC 7523 §2.2) signed with the
//! certificate's key and naming it by `x5t#S256`, which the fake token
//! endpoint checks as Entra does; the tokens log in to a real Dovecot.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use mailgate_config::Protocol;
use mailgate_tests::client::LineClient;
use mailgate_tests::dovecot::Dovecot;
use mailgate_tests::harness::{
    Env, PASSWORD, Running, USER, logs, password_hash, run_mailgate, unused_port,
};
use mailgate_tests::login::Login;
use mailgate_tests::rsa::{ClientCert, client_certificate};

const DAY: Duration = Duration::from_secs(86_400);
const DEVICE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A certificate valid from yesterday for `days` more days.
fn cert(dir: &Path, name: &str, days: u64) -> ClientCert {
    let now = SystemTime::now();
    client_certificate(dir, name, now - DAY, now + DAY * days as u32)
}

fn provider_keys(c: &ClientCert, extra: &str) -> String {
    format!(
        "client_certificate = \"{}\"\nclient_key = \"{}\"\n{extra}",
        c.certificate.display(),
        c.key.display()
    )
}

async fn imap_login(g: &Running, user: &str, password: &str) -> String {
    let mut c = LineClient::greeted(g.address("listening", Some("imap"))).await;
    let r = c.login("a", user, password).await;
    if r.starts_with("a OK") {
        c.send("s SELECT INBOX\r\n").await;
        let s = c.response_text("s").await;
        assert!(s.contains("s OK"), "{s}");
    }
    r
}

/// `mailgate login` (authorization code, then device), the gateway's
/// refresh: each grant carries a PS256 assertion that the fake endpoint
/// verified; the refreshed token logs in to Dovecot. A certificate the app
/// registration does not know gives the client a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grant_carries_a_client_assertion() {
    logs();
    let env = Env::new().await;
    let c = cert(env.path(), "app", 365);
    env.oauth.set_client_certificate(&c.public, &c.x5t_s256);
    let dv = Dovecot::start(env.path(), &env.ca, &env.oauth, unused_port());
    let url = format!("imaps://127.0.0.1:{}", dv.imaps_port);
    let text = env.config_for(
        &[(Protocol::Imap, &url)],
        "log_format = \"json\"",
        &provider_keys(&c, ""),
        "",
    );
    let path = env.write_config(&text);

    // `mailgate check` shows what Entra shows, and the expiry.
    let out = run_mailgate(&path, &["check"], "", None, &[]);
    let (shown, warned) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{shown}{warned}");
    assert!(shown.contains("client certificate"), "{shown}");
    assert!(
        shown.contains(&format!("thumbprint     {}", c.sha1)),
        "{shown}"
    );
    assert!(shown.contains(&c.x5t_s256), "{shown}");
    assert!(
        shown.contains("valid until") && shown.contains("PS256"),
        "{shown}"
    );
    assert!(!warned.contains("client certificate"), "{warned}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");

    // The authorization code grant (paste flow).
    let mut login = Login::spawn(&path, &[USER, "--flow", "paste"]);
    let authorize = login.line_starting("http");
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&authorize)
        .send()
        .await
        .unwrap();
    login.type_line(r.headers()["location"].to_str().unwrap());
    let (ok, out) = login.finish();
    assert!(ok, "{out}");
    // The device grant: a fresh assertion for every poll (the fake, as
    // Entra, refuses a jti it has seen: a replay).
    let (ok, out) = Login::spawn(&path, &[USER, "--flow", "device"]).finish();
    assert!(ok, "{out}");
    let assertions = env.oauth.client_assertions();
    assert_eq!(assertions[0], ("authorization_code".into(), "PS256".into()));
    assert!(
        assertions.len() >= 3 && assertions[1..].iter().all(|a| a.0 == DEVICE),
        "{assertions:?}"
    );

    // The refresh grant: the stored access token is refused upstream.
    let g = Running::start(&path, "listening");
    env.oauth.revoke_access_tokens();
    let r = imap_login(&g, USER, PASSWORD).await;
    assert!(r.starts_with("a OK"), "{r}\n{}\n{}", g.log(), dv.log());
    let assertions = env.oauth.client_assertions();
    assert_eq!(
        assertions.last().unwrap(),
        &("refresh_token".to_owned(), "PS256".to_owned())
    );
    assert!(assertions.iter().all(|a| a.1 == "PS256"), "{assertions:?}");

    // The app registration has another certificate now: Entra's
    // invalid_client reaches the client as a configuration problem.
    let other = cert(env.path(), "other", 365);
    env.oauth
        .set_client_certificate(&other.public, &other.x5t_s256);
    env.oauth.revoke_access_tokens();
    let r = imap_login(&g, USER, PASSWORD).await;
    assert!(
        r.starts_with("a NO [UNAVAILABLE]") && r.contains("client secret or certificate"),
        "{r}"
    );
    let log = g.log();
    assert!(log.contains("AADSTS700027"), "{log}");
    assert!(
        !log.contains("PRIVATE KEY") && !log.contains("eyJ"),
        "{log}"
    );
    // The refresh token survived the refused request.
    env.oauth.set_client_certificate(&c.public, &c.x5t_s256);
    let r = imap_login(&g, USER, PASSWORD).await;
    assert!(r.starts_with("a OK"), "{r}");
}

/// App-only access with a certificate (and RS256, for servers without
/// PSS): one token serves the mailboxes. (The scripted IMAP server stands
/// for Exchange here: Dovecot's introspection ties a token to one user,
/// while an app-only token serves every mailbox.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_a_certificate() {
    use mailgate_tests::imap_server::{FakeImap, Options};
    logs();
    let env = Env::new().await;
    let c = cert(env.path(), "app", 365);
    env.oauth.set_client_certificate(&c.public, &c.x5t_s256);
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let url = imap.url(false);
    let extra = format!(
        "password_hash = \"{}\"\n\n[[account]]\nuser = \"bob@example.test\"\nprovider = \"test\"\npassword_hash = \"{}\"\n",
        password_hash("alice app pw"),
        password_hash("bob app pw")
    );
    let text = env.config_for(
        &[(Protocol::Imap, &url)],
        "log_format = \"json\"",
        &provider_keys(
            &c,
            "flow = \"client_credentials\"\nclient_assertion_alg = \"RS256\"",
        ),
        &extra,
    );
    let g = Running::start(&env.write_config(&text), "listening");
    for (user, pw) in [(USER, "alice app pw"), ("bob@example.test", "bob app pw")] {
        let r = imap_login(&g, user, pw).await;
        assert!(r.starts_with("a OK"), "{user}: {r}");
    }
    assert_eq!(imap.successful_logins(), 2);
    assert_eq!(
        env.oauth.client_assertions(),
        vec![("client_credentials".to_owned(), "RS256".to_owned())]
    );
}

/// `mailgate check` and the running gateway warn 30 days before expiry
/// and after it; a key that is not the certificate's, an encrypted key,
/// a secret as well, a Google client: errors naming the key.
#[test]
fn check_warns_before_expiry_and_refuses_bad_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let soon = cert(dir.path(), "soon", 10);
    let now = SystemTime::now();
    let expired = client_certificate(dir.path(), "expired", now - DAY * 400, now - DAY * 5);
    let good = cert(dir.path(), "good", 365);
    let encrypted = dir.path().join("encrypted.key");
    let ok = std::process::Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:x",
            "-in",
        ])
        .arg(&good.key)
        .arg("-out")
        .arg(&encrypted)
        .status()
        .unwrap();
    assert!(ok.success());
    let check = |provider: &str| {
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            format!(
                "[gateway]\nstate_dir = \"state\"\nlog_format = \"json\"\n[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:0\"\n[provider.p]\npreset = \"office365\"\nclient_id = \"c\"\n{provider}\n[[account]]\nuser = \"a@x.test\"\nprovider = \"p\"\n"
            ),
        )
        .unwrap();
        let out = run_mailgate(&path, &["check"], "", None, &[]);
        // A refused configuration is the user's error (exit 1).
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            path,
        )
    };
    let pair = |c: &Path, k: &Path| {
        format!(
            "client_certificate = \"{}\"\nclient_key = \"{}\"",
            c.display(),
            k.display()
        )
    };

    let (ok, _, err, path) = check(&pair(&soon.certificate, &soon.key));
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: provider p: the client certificate")
            && err.contains(&soon.sha1)
            && (err.contains("in 9 day(s)") || err.contains("in 10 day(s)")),
        "{err}"
    );
    // The running gateway says so in its log too.
    let g = Running::start(&path, "listening");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !g.log().contains("expires on") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(g.log().contains("expires on"), "{}", g.log());
    drop(g);

    let (ok, _, err, _) = check(&pair(&expired.certificate, &expired.key));
    assert!(ok, "{err}");
    assert!(err.contains("expired on"), "{err}");

    let (ok, _, err, _) = check(&pair(&good.certificate, &soon.key));
    assert!(!ok);
    assert!(
        err.contains("provider.p.client_key") && err.contains("is not the private key"),
        "{err}"
    );
    let (ok, _, err, _) = check(&pair(&good.certificate, &encrypted));
    assert!(!ok);
    assert!(err.contains("encrypted"), "{err}");
    let (ok, _, err, _) = check(&pair(&good.key, &good.key));
    assert!(!ok);
    assert!(
        err.contains("provider.p.client_certificate") && err.contains("no PEM certificate"),
        "{err}"
    );
    let (ok, _, err, _) = check(&format!(
        "{}\nclient_secret = \"s\"",
        pair(&good.certificate, &good.key)
    ));
    assert!(!ok);
    assert!(err.contains("not both"), "{err}");
    let (ok, _, err, _) = check(&format!(
        "client_certificate = \"{}\"",
        good.certificate.display()
    ));
    assert!(!ok);
    assert!(
        err.contains("provider.p.client_key") && err.contains("missing"),
        "{err}"
    );
    let (ok, _, err, _) = check("client_assertion_alg = \"PS256\"");
    assert!(!ok);
    assert!(err.contains("client_assertion_alg"), "{err}");

    // One PEM file with both the certificate and the key works too; a
    // key readable by everyone is warned about.
    let both = dir.path().join("both.pem");
    std::fs::write(
        &both,
        [
            std::fs::read_to_string(&good.certificate).unwrap(),
            std::fs::read_to_string(&good.key).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&both, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, shown, err, _) = check(&pair(&both, &both));
    assert!(ok, "{err}");
    assert!(shown.contains(&good.sha1), "{shown}");
    assert!(
        err.contains("provider.p.client_key") && err.contains("readable by every user"),
        "{err}"
    );
}

/// A client certificate within 30 days of its end: the account event
/// `credential_expiring` is told once (to `[notify]`), and the metrics give
/// its end and the accounts it serves, for an alert rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_certificate_is_told_and_measured() {
    logs();
    let env = Env::new().await;
    let c = cert(env.path(), "app", 10);
    let told = env.path().join("told.txt");
    let text = format!(
        "{}\n[notify]\ncommand = [\"/bin/sh\", \"-c\", \"env | grep ^MAILGATE_ | sort >> {}\"]\n",
        env.config_for(
            &[(Protocol::Imap, "imaps://127.0.0.1:9")],
            "metrics = \"127.0.0.1:0\"",
            &provider_keys(&c, "flow = \"client_credentials\""),
            &format!("password_hash = \"{}\"", password_hash("app pw")),
        ),
        told.display()
    );
    let g = mailgate_tests::harness::start(env.load(&text)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let lines = std::fs::read_to_string(&told).unwrap_or_default();
        if lines.contains("MAILGATE_EVENT=") {
            break lines;
        }
        assert!(std::time::Instant::now() < deadline, "never told");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        lines.contains("MAILGATE_EVENT=credential_expiring"),
        "{lines}"
    );
    assert!(lines.contains("MAILGATE_REASON=provider test:"), "{lines}");
    let m = mailgate_tests::harness::metrics(&g).await;
    assert!(
        m.contains("mailgate_accounts{state=\"credential_expiring\"} 1"),
        "{m}"
    );
    let at: u64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "mailgate_client_credential_expiry_timestamp_seconds{provider=\"test\"} ",
            )
        })
        .unwrap_or_else(|| panic!("{m}"))
        .parse()
        .unwrap();
    let expected = (SystemTime::now() + DAY * 10)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(at.abs_diff(expected) < 120, "{at} vs {expected}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = std::fs::read_to_string(&told).unwrap();
    assert_eq!(again.matches("MAILGATE_EVENT=").count(), 1, "{again}");
    g.shutdown().await;
}
