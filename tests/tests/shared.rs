//! Shared mailboxes: `DELEGATE\SHARED` with the delegate's own local
//! password opens SHARED over IMAP (XOAUTH2 `user=` the shared mailbox,
//! the delegate's token) and sends over SMTP as the delegate (MAIL FROM
//! the shared address, relayed unchanged) or through Graph as the shared
//! mailbox; whoever may not gets a refusal that says why.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use mailgate_config::Protocol;
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::graph::FakeGraph;
use mailgate_tests::harness::{
    Env, PASSWORD, USER, imap_addr, logs, run_mailgate, smtp_addr, start,
};
use mailgate_tests::imap_server::Options;

const SHARED: &str = "info@example.test";

/// The `user=` of the last XOAUTH2 the server received.
fn last_xoauth2_user(server: &FakeServer) -> String {
    let lines = server.auth_lines();
    let last = String::from_utf8_lossy(lines.last().unwrap()).into_owned();
    let token = last.split_whitespace().last().unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    raw.split('\u{1}')
        .find_map(|f| f.strip_prefix("user="))
        .unwrap()
        .to_owned()
}

/// IMAP `LOGIN` with the login as a quoted string (backslash escaped).
async fn imap_login(g: &mailgate::Gateway, login: &str, password: &str) -> String {
    let mut c = LineClient::greeted(imap_addr(g)).await;
    let quoted = login.replace('\\', "\\\\");
    c.send(format!("a LOGIN \"{quoted}\" \"{password}\"\r\n"))
        .await;
    c.response_text("a").await
}

/// USER's account may open `shared` (a TOML list's inside), with a
/// listener and upstream for each of `servers`, and `other` as a second
/// account (`extra`: more of its lines); USER's token is sealed and
/// SHARED is delegated to USER.
fn delegate_config(
    env: &Env,
    servers: &[(Protocol, &str)],
    shared: &str,
    other: &str,
    extra: &str,
) -> String {
    env.seal_new_user_token();
    env.oauth.delegate(USER, SHARED);
    format!(
        "{}\n[[account]]\nuser = \"{other}\"\nprovider = \"test\"\n{extra}",
        env.config_for(servers, "", "", &format!("shared = [{shared}]"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegate_opens_a_shared_mailbox_and_strangers_are_told_why_not() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let smtp = FakeServer::smtp(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = delegate_config(
        &env,
        &[
            (Protocol::Imap, &imap.url(false)),
            (Protocol::Smtp, &smtp.url(false)),
        ],
        &format!("\"{SHARED}\", \"*@team.example.test\""),
        "boss@example.test",
        "",
    );
    let g = start(env.load(&text)).await;

    // IMAP: the shared mailbox, with alice's password and token.
    let r = imap_login(&g, &format!("{USER}\\{SHARED}"), PASSWORD).await;
    assert!(r.contains("a OK"), "{r}");
    assert_eq!(last_xoauth2_user(&imap), SHARED);

    // Allowed here, but the provider gives alice no rights on it.
    let r = imap_login(&g, &format!("{USER}\\sales@team.example.test"), PASSWORD).await;
    assert!(
        r.contains("has no access to sales@team.example.test") && r.contains("FullAccess"),
        "{r}"
    );
    // Not listed in alice's `shared`.
    let r = imap_login(&g, &format!("{USER}\\ceo@example.test"), PASSWORD).await;
    assert!(r.contains("may not open ceo@example.test"), "{r}");
    // A mailbox that is an account of its own.
    let r = imap_login(&g, &format!("{USER}\\boss@example.test"), PASSWORD).await;
    assert!(r.contains("is an account of its own"), "{r}");
    // Malformed.
    for bad in [
        format!("{USER}\\{SHARED}\\x@example.test"),
        format!("{USER}\\"),
        format!("\\{SHARED}"),
    ] {
        let r = imap_login(&g, &bad, PASSWORD).await;
        assert!(
            r.contains("a NO") && r.contains("DELEGATE\\SHARED"),
            "{bad}: {r}"
        );
    }
    // The wrong password is alice's wrong password.
    let r = imap_login(&g, &format!("{USER}\\{SHARED}"), "not alice's").await;
    assert!(r.contains("AUTHENTICATIONFAILED"), "{r}");

    // SMTP: alice logs in as herself; MAIL FROM the shared address goes
    // upstream unchanged (the provider checks Send As).
    let (mut c, reply) =
        LineClient::smtp_auth_plain(smtp_addr(&g), &format!("{USER}\\{SHARED}"), PASSWORD).await;
    assert_eq!(reply, "235 2.7.0 Authentication successful\r\n");
    assert_eq!(last_xoauth2_user(&smtp), USER);
    c.send(format!("MAIL FROM:<{SHARED}>\r\n")).await;
    assert!(c.line().await.starts_with("250"));
    assert!(
        smtp.after_login()
            .iter()
            .any(|l| l.contains(&format!("MAIL FROM:<{SHARED}>"))),
        "{:?}",
        smtp.after_login()
    );
    drop(c);
    g.shutdown().await;

    // `mailgate accounts` lists what alice may open; `mailgate doctor
    // alice\info` checks the shared mailbox's logins.
    let path = env.write_config(&text);
    let out = run_mailgate(&path, &["accounts", "--json"], "", None, &[]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let alice = json["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["user"] == USER)
        .unwrap();
    assert_eq!(
        alice["shared"],
        serde_json::json!([SHARED, "*@team.example.test"])
    );
    let out = run_mailgate(
        &path,
        &["doctor", &format!("{USER}\\{SHARED}"), "--json"],
        "",
        Some(PASSWORD),
        &[],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(last_xoauth2_user(&imap), SHARED);
}

/// With `smtp = "graph"`, the delegate's message goes to
/// `/users/{shared}/sendMail`, and the Graph token asks for
/// Mail.Send.Shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegate_sends_as_the_shared_mailbox_through_graph() {
    logs();
    let env = Env::new().await;
    let fake = FakeGraph::start(env.oauth.clone()).await;
    env.seal_new_user_token();
    env.oauth.delegate(USER, SHARED);
    let text = env.config_for(
        &[(Protocol::Smtp, "graph")],
        "",
        &format!("graph_url = \"{}\"", fake.url()),
        &format!("shared = [\"{SHARED}\"]"),
    );
    let g = start(env.load(&text)).await;
    let (mut c, reply) =
        LineClient::smtp_auth_plain(smtp_addr(&g), &format!("{USER}\\{SHARED}"), PASSWORD).await;
    assert_eq!(reply, "235 2.7.0 Authentication successful\r\n");
    c.send(format!(
        "MAIL FROM:<{SHARED}>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    ))
    .await;
    assert!(c.line().await.starts_with("250"));
    assert!(c.line().await.starts_with("250"));
    assert!(c.line().await.starts_with("354"));
    c.send(format!(
        "From: {SHARED}\r\nTo: bob@example.test\r\nSubject: from info\r\n\r\nhi\r\n.\r\n"
    ))
    .await;
    assert_eq!(c.line().await, "250 2.0.0 Accepted by Microsoft Graph\r\n");
    let d = fake.deliveries();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].mailbox, SHARED);
    let scope = env
        .oauth
        .access_scope(&env.oauth.last_access_token().unwrap())
        .unwrap();
    assert!(scope.contains("Mail.Send.Shared"), "{scope}");
    drop(c);
    g.shutdown().await;
}

/// Gmail has no IMAP delegation: `check` refuses `shared` there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_shared_on_gmail() {
    let env = Env::new().await;
    let text = env.config_for(
        &[(Protocol::Imap, "imaps://127.0.0.1:9")],
        "",
        "preset = \"gmail\"",
        &format!("shared = [\"{SHARED}\"]"),
    );
    let path = env.write_config(&text);
    let out = run_mailgate(&path, &["check"], "", None, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("shared") && err.contains("Gmail"), "{err}");
}

/// Real clients with the backslash login: Python's imaplib (which sends
/// the user name as it is given, so unquoted unless the caller quotes
/// it), poplib, and msmtp; a delegate without stored tokens is
/// told to sign in first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_use_the_backslash_login() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let pop3 = FakeServer::pop3(&env.ca, env.oauth.clone(), Default::default()).await;
    let smtp = FakeServer::smtp(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = delegate_config(
        &env,
        &[
            (Protocol::Imap, &imap.url(false)),
            (Protocol::Pop3, &pop3.url(false)),
            (Protocol::Smtp, &smtp.url(false)),
        ],
        &format!("\"{SHARED}\""),
        "new@example.test",
        &format!("shared = [\"{SHARED}\"]\n"),
    );
    let g = start(env.load(&text)).await;
    let login = format!("{USER}\\\\{SHARED}");
    let script = format!(
        r#"
import imaplib, poplib
# imaplib quotes the password only. The user name goes as it is given:
# unquoted (the gateway takes the backslash in an atom), then quoted with
# the backslash escaped, as RFC 3501 spells it.
for user in ("{login}", '"{quoted}"'):
    i = imaplib.IMAP4("127.0.0.1", {imap})
    i.login(user, "{PASSWORD}")
    i.logout()
p = poplib.POP3("127.0.0.1", {pop3})
p.user("{login}")
p.pass_("{PASSWORD}")
p.quit()
"#,
        quoted = login.replace('\\', "\\\\"),
        imap = imap_addr(&g).port(),
        pop3 = mailgate_tests::harness::pop3_addr(&g).port(),
    );
    env.run_client("python3", &["-c", &script]).await;
    assert_eq!(last_xoauth2_user(&imap), SHARED);
    assert_eq!(last_xoauth2_user(&pop3), SHARED);

    let message = env.path().join("m.eml");
    std::fs::write(
        &message,
        format!("From: {SHARED}\r\nTo: bob@example.test\r\nSubject: s\r\n\r\nhi\r\n"),
    )
    .unwrap();
    let out = tokio::process::Command::new("msmtp")
        .args([
            "--host=127.0.0.1",
            &format!("--port={}", smtp_addr(&g).port()),
            "--tls=off",
            "--auth=plain",
        ])
        .arg(format!("--user={USER}\\{SHARED}"))
        .arg(format!("--passwordeval=echo {PASSWORD}"))
        .arg(format!("--from={SHARED}"))
        .arg("bob@example.test")
        .stdin(std::fs::File::open(&message).unwrap())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(last_xoauth2_user(&smtp), USER);
    assert!(
        String::from_utf8_lossy(&smtp.messages()[0]).contains(&format!("From: {SHARED}")),
        "relayed unchanged"
    );

    // A delegate that never signed in.
    let r = imap_login(&g, &format!("new@example.test\\{SHARED}"), "whatever it is").await;
    assert!(r.contains("has no stored authorisation yet"), "{r}");
    g.shutdown().await;
}
