//! Sending through Microsoft Graph, against the fake Graph on loopback:
//! the envelope decides who receives (the recipients' rewrite, then
//! `sendMail` with the MIME), and every answer of Graph becomes the SMTP
//! reply that says what to do.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailgate::graph::{Graph, GraphError};
use mailgate_proto::recipients;
use mailgate_tests::graph::{FakeGraph, GraphMode};
use mailgate_tests::harness::{Env, USER};
use secrecy::SecretString;

fn graph(fake: &FakeGraph, timeout: Duration) -> Graph {
    Graph::new(
        reqwest::Client::new(),
        url::Url::parse(&fake.url()).unwrap(),
        timeout,
    )
}

/// The message as the envelope decides it: the rewritten header, then
/// the body.
fn decided(message: &[u8], envelope: &[&str]) -> (Vec<u8>, recipients::Decided) {
    let env: Vec<String> = envelope.iter().map(|s| s.to_string()).collect();
    let d = recipients::decide(message, &env).unwrap();
    let mut mime = d.header.clone();
    mime.extend_from_slice(&message[d.body_at..]);
    (mime, d)
}

fn message() -> Vec<u8> {
    format!(
        "From: Alice <{USER}>\r\nTo: Bob <bob@example.test>\r\nCc: carol@example.test\r\nBcc: eve@example.test\r\nSubject: hello\r\n\r\nHello\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_envelope_receives() {
    let env = Env::new().await;
    let fake = FakeGraph::start(env.oauth.clone()).await;
    let token = SecretString::from(env.oauth.issue_access_token(USER));
    // Envelope: bob (in To), eve (only in Bcc), zoe (in no header);
    // carol is only in the headers.
    let (mime, d) = decided(
        &message(),
        &["bob@example.test", "eve@example.test", "zoe@example.test"],
    );
    assert_eq!(d.dropped, vec!["carol@example.test"]);
    assert_eq!(d.added_bcc, vec!["eve@example.test", "zoe@example.test"]);
    graph(&fake, Duration::from_secs(10))
        .send_mime(USER, &token, &mime)
        .await
        .unwrap();
    assert_eq!(
        fake.recipients(),
        vec!["bob@example.test", "eve@example.test", "zoe@example.test"],
        "exactly the envelope's recipients, and not carol"
    );
    for delivery in fake.deliveries() {
        let text = String::from_utf8(delivery.message).unwrap();
        assert!(!text.to_ascii_lowercase().contains("bcc:"), "{text}");
        assert!(!text.contains("eve@example.test"), "{text}");
        assert!(
            text.ends_with("\r\n\r\nHello\r\n"),
            "the body as sent: {text}"
        );
        assert_eq!(delivery.mailbox, USER);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_becomes_an_smtp_reply() {
    let env = Env::new().await;
    let fake = FakeGraph::start(env.oauth.clone()).await;
    let token = SecretString::from(env.oauth.issue_access_token(USER));
    let (mime, _) = decided(&message(), &["bob@example.test"]);
    let g = graph(&fake, Duration::from_secs(10));

    fake.set_mode(GraphMode::Throttle(30));
    let e = g.send_mime(USER, &token, &mime).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
    assert!(
        e.smtp_reply().starts_with(
            "451 4.7.0 Microsoft Graph is throttling this mailbox (ApplicationThrottled"
        ),
        "{}",
        e.smtp_reply()
    );
    fake.set_mode(GraphMode::Unavailable);
    let e = g.send_mime(USER, &token, &mime).await.unwrap_err();
    assert!(
        e.smtp_reply().starts_with("451 4.3.0 "),
        "{}",
        e.smtp_reply()
    );
    fake.set_mode(GraphMode::Unauthorized);
    let e = g.send_mime(USER, &token, &mime).await.unwrap_err();
    assert!(matches!(e, GraphError::Unauthorized { .. }), "{e:?}");
    fake.set_mode(GraphMode::Accept);

    // Another From than the mailbox: Send As denied.
    let other = b"From: boss@example.test\r\nTo: bob@example.test\r\n\r\nx\r\n";
    let (mime_other, _) = decided(other, &["bob@example.test"]);
    let e = g.send_mime(USER, &token, &mime_other).await.unwrap_err();
    assert!(
        e.smtp_reply().starts_with("550 5.7.60 ") && e.smtp_reply().contains("ErrorSendAsDenied"),
        "{}",
        e.smtp_reply()
    );
    // A token of another mailbox.
    let e = g
        .send_mime("someone@example.test", &token, &mime)
        .await
        .unwrap_err();
    assert!(
        e.smtp_reply().starts_with("550 5.7.1 "),
        "{}",
        e.smtp_reply()
    );
    // No token the provider knows.
    let e = g
        .send_mime(USER, &SecretString::from("forged"), &mime)
        .await
        .unwrap_err();
    assert!(matches!(e, GraphError::Unauthorized { .. }), "{e:?}");
    // Too large for one request: refused before it is sent.
    let before = fake.requests();
    let big = vec![b'x'; mailgate::graph::MAX_MIME_REQUEST + 1];
    let e = g.send_mime(USER, &token, &big).await.unwrap_err();
    assert!(
        e.smtp_reply().starts_with("552 5.3.4 "),
        "{}",
        e.smtp_reply()
    );
    assert_eq!(fake.requests(), before, "nothing was sent");
    assert!(fake.deliveries().is_empty(), "nothing was delivered");

    // A Graph that never answers is a timeout, not a hang.
    fake.set_mode(GraphMode::Hang);
    let e = graph(&fake, Duration::from_millis(500))
        .send_mime(USER, &token, &mime)
        .await
        .unwrap_err();
    assert_eq!(e, GraphError::Timeout);
    assert!(e.smtp_reply().starts_with("451 4.4.1 "));
}

/// The fake Graph takes only tokens asked for Graph's scope: a token the
/// token endpoint issued for the mail servers (`scope=mail`) is refused,
/// as Microsoft refuses a token of another audience.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_token_is_not_a_graph_token() {
    let env = Env::new().await;
    let fake = FakeGraph::start(env.oauth.clone()).await;
    let rt = env.oauth.issue_refresh_token(USER);
    let mut tokens = Vec::new();
    for scope in [
        "mail offline_access",
        "https://graph.microsoft.com/Mail.Send",
    ] {
        let answer = reqwest::Client::new()
            .post(env.oauth.token_url())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt.as_str()),
                ("client_id", mailgate_tests::oauth::CLIENT_ID),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        tokens.push(SecretString::from(
            answer["access_token"].as_str().unwrap().to_owned(),
        ));
    }
    let (mime, _) = decided(&message(), &["bob@example.test"]);
    let g = graph(&fake, Duration::from_secs(10));
    let e = g.send_mime(USER, &tokens[0], &mime).await.unwrap_err();
    assert!(matches!(e, GraphError::Unauthorized { .. }), "{e:?}");
    g.send_mime(USER, &tokens[1], &mime).await.unwrap();
    assert_eq!(fake.recipients(), vec!["bob@example.test"]);
}

/// An upload URL carries its own token (`authtoken=`): when it cannot be
/// reached, the error (which the log shows) does not repeat it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_urls_token_never_reaches_an_error() {
    let env = Env::new().await;
    let fake = FakeGraph::start(env.oauth.clone()).await;
    let token = SecretString::from(env.oauth.issue_access_token(USER));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    fake.set_upload_host(Some(&dead));
    let mut message = format!(
        "From: {USER}\r\nTo: bob@example.test\r\nSubject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/octet-stream; name=x.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    );
    let line = "A".repeat(76);
    for _ in 0..60_000 {
        message.push_str(&line);
        message.push_str("\r\n");
    }
    message.push_str("--b--\r\n");
    let draft = mailgate_proto::draft::draft(message.as_bytes()).unwrap();
    assert!(draft.attachments[0].content.len() > 3_000_000);
    let e = graph(&fake, Duration::from_secs(10))
        .send_draft(USER, &token, &draft)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, GraphError::Unreachable(_)), "{text}");
    assert!(
        !text.contains("authtoken") && !text.contains("/upload/"),
        "{text}"
    );
    assert_eq!(fake.upload_counts().2, 0, "the draft was deleted");
}

/// An SMTP client's session through a gateway with `smtp = "graph"`: AUTH
/// with the local password, then a message whose envelope differs from its
/// headers.
mod end_to_end {
    use super::*;
    use mailgate_config::Protocol;
    use mailgate_tests::client::LineClient;
    use mailgate_tests::fake::FakeServer;
    use mailgate_tests::harness::{PASSWORD, logs, smtp_addr, start};

    async fn logged_in(g: &mailgate::Gateway) -> LineClient {
        let (c, reply) = LineClient::smtp_auth_plain(smtp_addr(g), USER, PASSWORD).await;
        assert_eq!(reply, "235 2.7.0 Authentication successful\r\n");
        c
    }

    async fn send(c: &mut LineClient, rcpts: &[&str], message: &str) -> String {
        c.send(format!("MAIL FROM:<{USER}>\r\n")).await;
        let r = c.line().await;
        if !r.starts_with("250 ") {
            return r;
        }
        for r in rcpts {
            c.send(format!("RCPT TO:<{r}>\r\n")).await;
            assert_eq!(c.line().await, "250 2.1.5 Recipient OK\r\n");
        }
        c.send("DATA\r\n").await;
        assert!(c.line().await.starts_with("354 "));
        c.send(format!("{message}.\r\n")).await;
        c.line().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smtp_in_graph_out_with_the_envelopes_recipients() {
        logs();
        let env = Env::new().await;
        let fake = FakeGraph::start(env.oauth.clone()).await;
        let told = env.path().join("told.txt");
        let text = format!(
            "{}\n[notify]\ncommand = [\"/bin/sh\", \"-c\", \"env | grep ^MAILGATE_EVENT >> {}\"]\n",
            graph_config(&env, &fake, "metrics = \"127.0.0.1:0\"", ""),
            told.display()
        );
        let g = start(env.load(&text)).await;
        let mut c = logged_in(&g).await;
        let message = format!(
            "From: {USER}\r\nTo: bob@example.test\r\nCc: carol@example.test\r\nBcc: eve@example.test\r\nSubject: via Graph\r\n\r\n..a stuffed line\r\n"
        );
        let r = send(&mut c, &["bob@example.test", "zoe@example.test"], &message).await;
        assert_eq!(r, "250 2.0.0 Accepted by Microsoft Graph\r\n");
        assert_eq!(
            fake.recipients(),
            vec!["bob@example.test", "zoe@example.test"],
            "exactly the envelope: not carol (headers only), not eve (Bcc header only)"
        );
        for d in fake.deliveries() {
            let text = String::from_utf8(d.message).unwrap();
            assert!(
                !text.contains("eve@example.test") && !text.contains("carol@"),
                "{text}"
            );
            assert!(
                text.ends_with("\r\n\r\n.a stuffed line\r\n"),
                "unstuffed: {text}"
            );
        }

        // The provider forgets the Graph token: Graph answers 401, the
        // gateway refreshes it once and sends again.
        let refreshes = env.oauth.refresh_count();
        env.oauth.revoke_access_tokens();
        let r = send(&mut c, &["bob@example.test"], &message).await;
        assert_eq!(r, "250 2.0.0 Accepted by Microsoft Graph\r\n");
        assert_eq!(env.oauth.refresh_count(), refreshes + 1, "one refresh");
        assert_eq!(fake.recipients().len(), 3);

        // Graph throttles: 451 with its wait, then the account is held
        // back at MAIL until the wait passes.
        fake.set_mode(GraphMode::Throttle(30));
        let r = send(&mut c, &["bob@example.test"], &message).await;
        assert!(
            r.starts_with("451 4.7.0 Microsoft Graph is throttling this mailbox")
                && r.contains("30 s"),
            "{r}"
        );
        let requests = fake.requests();
        fake.set_mode(GraphMode::Accept);
        let r = send(&mut c, &["bob@example.test"], &message).await;
        assert!(
            r.starts_with("451 4.7.0 Microsoft Graph asked this mailbox to wait"),
            "{r}"
        );
        assert_eq!(fake.requests(), requests, "held back without asking Graph");
        c.send("QUIT\r\n").await;
        assert_eq!(c.line().await, "221 2.0.0 Bye\r\n");
        assert_eq!(fake.recipients().len(), 3, "nothing more was delivered");
        // The account metrics are recounted a second after an event.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let metrics = loop {
            let m = mailgate_tests::harness::metrics(&g).await;
            if m.contains("mailgate_accounts{state=\"throttled\"} 1")
                || std::time::Instant::now() > deadline
            {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for line in [
            "mailgate_graph_messages_total{result=\"accepted\"} 2",
            "mailgate_graph_messages_total{result=\"throttled\"} 1",
            "mailgate_graph_send_seconds_count 3",
            "mailgate_accounts{state=\"throttled\"} 1",
        ] {
            assert!(metrics.contains(line), "{line} in:\n{metrics}");
        }
        // The throttling was told once to [notify].
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&told)
            .unwrap_or_default()
            .is_empty()
        {
            assert!(std::time::Instant::now() < deadline, "never told");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            std::fs::read_to_string(&told).unwrap(),
            "MAILGATE_EVENT=throttled\n"
        );
        g.shutdown().await;
    }

    /// A real client: Python's smtplib sends to To, Cc and an
    /// envelope-only Bcc through the gateway.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn python_smtplib_sends_through_graph() {
        logs();
        let env = Env::new().await;
        let fake = FakeGraph::start(env.oauth.clone()).await;
        let g = graph_gateway(&env, &fake, "").await;
        let port = smtp_addr(&g).port();
        let script = format!(
            r#"
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "{USER}"
m["To"] = "bob@example.test"
m["Cc"] = "carol@example.test"
m["Subject"] = "Grüße über Graph"
m.set_content("Zeile mit Umlauten: äöü\n.Punkt am Anfang\n")
s = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
s.login("{USER}", "{PASSWORD}")
refused = s.send_message(m, to_addrs=["bob@example.test", "carol@example.test", "secret@example.test"])
assert refused == {{}}, refused
s.quit()
"#
        );
        env.run_client("python3", &["-c", &script]).await;
        assert_eq!(
            fake.recipients(),
            vec![
                "bob@example.test",
                "carol@example.test",
                "secret@example.test"
            ]
        );
        for d in fake.deliveries() {
            let text = String::from_utf8(d.message).unwrap();
            assert!(
                !text.contains("secret@example.test"),
                "a Bcc is hidden: {text}"
            );
            assert!(text.contains("Subject: =?utf-8?"), "{text}");
        }
        g.shutdown().await;
    }

    /// `smtp = "auto"`: the tenant answers 535 5.7.139 to the SMTP login;
    /// the same login goes on through Graph, and the next ones go there
    /// straight away.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auto_switches_when_the_tenant_refuses_smtp_auth() {
        logs();
        let env = Env::new().await;
        let fake = FakeGraph::start(env.oauth.clone()).await;
        let smtp = FakeServer::smtp(
            &env.ca,
            env.oauth.clone(),
            mailgate_tests::smtp_server::Options {
                smtp_auth_disabled: true,
                ..Default::default()
            },
        )
        .await;
        env.seal_new_user_token();
        let text = env.config_for(
            &[(Protocol::Smtp, "auto")],
            "",
            &format!(
                "graph_url = \"{}\"\nsmtp_server = \"{}\"",
                fake.url(),
                smtp.url(false)
            ),
            "",
        );
        let g = start(env.load(&text)).await;
        let message = format!("From: {USER}\r\nTo: bob@example.test\r\n\r\nhi\r\n");
        let mut c = logged_in(&g).await;
        let r = send(&mut c, &["bob@example.test"], &message).await;
        assert_eq!(r, "250 2.0.0 Accepted by Microsoft Graph\r\n");
        assert_eq!(smtp.failed_logins(), 1, "SMTP AUTH was tried once");
        drop(c);
        let mut c = logged_in(&g).await;
        let r = send(
            &mut c,
            &["carol@example.test"],
            &message.replace("bob", "carol"),
        )
        .await;
        assert_eq!(r, "250 2.0.0 Accepted by Microsoft Graph\r\n");
        assert_eq!(
            smtp.failed_logins(),
            1,
            "not tried again: the account sends through Graph"
        );
        assert_eq!(
            fake.recipients(),
            vec!["bob@example.test", "carol@example.test"]
        );
        c.send("QUIT\r\n").await;
        assert_eq!(c.line().await, "221 2.0.0 Bye\r\n");
        g.shutdown().await;
    }

    /// A gateway sending `USER`'s SMTP through the fake Graph
    /// (`extra_gateway` added to `[gateway]`).
    async fn graph_gateway(env: &Env, fake: &FakeGraph, extra_gateway: &str) -> mailgate::Gateway {
        start(env.load(&graph_config(env, fake, extra_gateway, ""))).await
    }

    /// The configuration of [`graph_gateway`], `extra_provider` added to
    /// the provider; USER gets a fresh sealed token.
    fn graph_config(
        env: &Env,
        fake: &FakeGraph,
        extra_gateway: &str,
        extra_provider: &str,
    ) -> String {
        env.seal_new_user_token();
        env.config_for(
            &[(Protocol::Smtp, "graph")],
            extra_gateway,
            &format!("graph_url = \"{}\"\n{extra_provider}", fake.url()),
            "",
        )
    }

    /// msmtp sends the message in file `message` through the gateway on
    /// `port` to `recipients` (AUTH PLAIN, no TLS), and succeeds.
    async fn msmtp_sends(port: u16, message: &std::path::Path, recipients: &[&str]) {
        let input = std::fs::read(message).unwrap();
        let mut msmtp = tokio::process::Command::new("msmtp")
            .args(["--host=127.0.0.1", &format!("--port={port}"), "--tls=off"])
            .args(["--auth=plain", &format!("--user={USER}")])
            .arg(format!("--passwordeval=echo {PASSWORD}"))
            .arg(format!("--from={USER}"))
            .args(recipients)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use tokio::io::AsyncWriteExt as _;
            let mut stdin = msmtp.stdin.take().unwrap();
            stdin.write_all(&input).await.unwrap();
        }
        let out = msmtp.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// swaks and msmtp, as they are: an 8-bit message with To, Cc and an
    /// envelope-only recipient, and a header-only Cc that is not in the
    /// envelope.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn swaks_and_msmtp_send_through_graph() {
        logs();
        let env = Env::new().await;
        let fake = FakeGraph::start(env.oauth.clone()).await;
        let g = graph_gateway(&env, &fake, "").await;
        let port = smtp_addr(&g).port();
        let message = env.path().join("message.eml");
        std::fs::write(
            &message,
            format!(
                "From: {USER}\r\nTo: bob@example.test\r\nCc: carol@example.test\r\nSubject: 8-bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\u{fc}\u{df}e aus der Werkstatt.\r\n"
            ),
        )
        .unwrap();

        let out = tokio::process::Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{port}")])
            .args([
                "--auth",
                "PLAIN",
                "--auth-user",
                USER,
                "--auth-password",
                PASSWORD,
            ])
            .args(["--from", USER, "--to", "bob@example.test,zoe@example.test"])
            .arg("--data")
            .arg(&message)
            .output()
            .await
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains("250 2.0.0 Accepted by Microsoft Graph"),
            "{said}"
        );
        assert_eq!(
            fake.recipients(),
            vec!["bob@example.test", "zoe@example.test"]
        );

        msmtp_sends(
            port,
            &message,
            &["carol@example.test", "secret@example.test"],
        )
        .await;
        assert_eq!(
            fake.recipients(),
            vec![
                "bob@example.test",
                "carol@example.test",
                "secret@example.test",
                "zoe@example.test"
            ],
            "msmtp's envelope: carol (in Cc) and secret (Bcc); not bob (To only)"
        );
        for d in fake.deliveries() {
            let text = String::from_utf8(d.message).unwrap();
            assert!(
                text.contains("Gr\u{fc}\u{df}e aus der Werkstatt."),
                "8-bit kept: {text}"
            );
            assert!(
                !text.contains("secret@") && !text.contains("zoe@"),
                "{text}"
            );
        }
        g.shutdown().await;
    }

    /// Python writes a message of 20 MB (a 15 MB attachment, To, Cc, a
    /// Bcc header and an `X-` header) and the attachment beside it, in
    /// `dir`; smtplib sends it through the gateway on `port` to bob, eve
    /// (its Bcc) and zoe (the envelope only).
    fn large_message_script(dir: &std::path::Path, port: u16) -> String {
        let dir = dir.display();
        format!(
            r#"
import random, smtplib
from email.message import EmailMessage
data = random.Random(7).randbytes(15_000_000)
open("{dir}/scan.bin", "wb").write(data)
m = EmailMessage()
m["From"] = "{USER}"
m["To"] = "bob@example.test"
m["Cc"] = "carol@example.test"
m["Bcc"] = "eve@example.test"
m["Subject"] = "Großer Anhang"
m["X-Scanner"] = "copier-7"
m.set_content("Der Scan ist angehängt.\n")
m.add_attachment(data, maintype="application", subtype="octet-stream", filename="scan.bin")
open("{dir}/big.eml", "wb").write(bytes(m))
s = smtplib.SMTP("127.0.0.1", {port}, timeout=120)
s.login("{USER}", "{PASSWORD}")
refused = s.send_message(m, to_addrs=["bob@example.test", "eve@example.test", "zoe@example.test"])
assert refused == {{}}, refused
s.quit()
"#
        )
    }

    /// Checks the deliveries made since `before`: exactly `expected`
    /// received the large message, whole, without a Bcc.
    fn check_large(fake: &FakeGraph, before: usize, expected: &[&str], data: &[u8]) {
        let all = fake.deliveries();
        let new = &all[before..];
        let mut got: Vec<&str> = new.iter().map(|d| d.recipient.as_str()).collect();
        got.sort();
        assert_eq!(got, expected);
        for d in new {
            assert_eq!(d.how, "draft", "over 3 MB: a draft with an upload session");
            let text = String::from_utf8_lossy(&d.message);
            assert!(text.contains("Subject: Großer Anhang"), "{text}");
            assert!(text.contains("X-Scanner: copier-7"), "{text}");
            assert!(text.contains("Der Scan ist angehängt."), "{text}");
            assert!(!text.contains("eve@"), "{text}");
            assert_eq!(d.attachments.len(), 1);
            let (name, contents) = &d.attachments[0];
            assert_eq!(name, "scan.bin");
            assert!(contents.as_slice() == data, "the attachment arrived whole");
        }
    }

    /// smtplib, swaks and msmtp send a 20 MB message: it goes as a draft
    /// whose attachment is uploaded in chunks, to exactly the envelope's
    /// recipients.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_clients_send_20_mb_through_graph() {
        logs();
        let env = Env::new().await;
        let fake = FakeGraph::start(env.oauth.clone()).await;
        let g = graph_gateway(&env, &fake, "metrics = \"127.0.0.1:0\"").await;
        let port = smtp_addr(&g).port();
        env.run_client("python3", &["-c", &large_message_script(env.path(), port)])
            .await;
        let data = std::fs::read(env.path().join("scan.bin")).unwrap();
        let message = env.path().join("big.eml");
        assert!(std::fs::metadata(&message).unwrap().len() > 20_000_000);
        check_large(
            &fake,
            0,
            &["bob@example.test", "eve@example.test", "zoe@example.test"],
            &data,
        );

        let before = fake.deliveries().len();
        let out = tokio::process::Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{port}")])
            .args([
                "--auth",
                "LOGIN",
                "--auth-user",
                USER,
                "--auth-password",
                PASSWORD,
            ])
            .args(["--from", USER, "--to", "bob@example.test,zoe@example.test"])
            .args(["--timeout", "120", "--suppress-data"])
            .arg("--data")
            .arg(&message)
            .output()
            .await
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains("250 2.0.0 Accepted by Microsoft Graph"),
            "{said}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        check_large(
            &fake,
            before,
            &["bob@example.test", "zoe@example.test"],
            &data,
        );

        let before = fake.deliveries().len();
        msmtp_sends(
            port,
            &message,
            &["carol@example.test", "secret@example.test"],
        )
        .await;
        check_large(
            &fake,
            before,
            &["carol@example.test", "secret@example.test"],
            &data,
        );
        let (sessions, puts, open) = fake.upload_counts();
        assert_eq!(sessions, 3, "one upload session per message");
        assert!(puts >= 12, "15 MB in chunks under 4 MB: {puts} PUTs");
        assert_eq!(open, 0, "no draft left behind");
        let metrics = mailgate_tests::harness::metrics(&g).await;
        assert!(
            metrics.contains("mailgate_graph_upload_sessions_total 3"),
            "{metrics}"
        );
        g.shutdown().await;
    }

    /// `save_to_sent_items = false`: the message goes as JSON with
    /// `saveToSentItems: false`; a message over `max_message_size` is
    /// refused with 552 while it arrives; a large message that Graph
    /// refuses leaves no draft behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_when_not_saved_552_over_the_limit_no_draft_left() {
        logs();
        let env = Env::new().await;
        let fake = FakeGraph::start(env.oauth.clone()).await;
        let text = graph_config(
            &env,
            &fake,
            "",
            "save_to_sent_items = false\nmax_message_size = \"6MB\"",
        );
        let g = start(env.load(&text)).await;
        let mut c = logged_in(&g).await;
        let message = format!(
            "From: {USER}\r\nTo: bob@example.test\r\nSubject: not kept\r\nX-Tag: one\r\n\r\nbody\r\n"
        );
        let r = send(&mut c, &["bob@example.test", "zoe@example.test"], &message).await;
        assert_eq!(r, "250 2.0.0 Accepted by Microsoft Graph\r\n");
        let d = fake.deliveries();
        assert_eq!(
            fake.recipients(),
            vec!["bob@example.test", "zoe@example.test"]
        );
        assert!(d.iter().all(|d| d.how == "json" && !d.saved), "{d:?}");
        assert!(String::from_utf8_lossy(&d[0].message).contains("X-Tag: one"));

        // 7 MB against a limit of 6 MB.
        let line = "a".repeat(998);
        let big: String = std::iter::repeat_n(format!("{line}\r\n"), 7_000).collect();
        let over = format!("From: {USER}\r\nTo: bob@example.test\r\n\r\n{big}");
        let r = send(&mut c, &["bob@example.test"], &over).await;
        assert!(r.starts_with("552 5.3.4 "), "{r}");

        // 5 MB (as a draft), refused at send by Graph: the From is not the
        // mailbox. The draft is deleted.
        let under = format!(
            "From: boss@example.test\r\nTo: bob@example.test\r\n\r\n{}",
            &big[..5_000_000]
        );
        let r = send(&mut c, &["bob@example.test"], &under).await;
        assert!(
            r.starts_with("550 ") && r.contains("ErrorSendAsDenied"),
            "{r}"
        );
        assert_eq!(fake.upload_counts().2, 0, "the refused draft was deleted");
        assert_eq!(fake.recipients().len(), 2, "nothing more was delivered");
        c.send("QUIT\r\n").await;
        assert_eq!(c.line().await, "221 2.0.0 Bye\r\n");
        g.shutdown().await;
    }

    /// An account signed in before its provider sent through Graph: the
    /// token endpoint refuses a Graph token (AADSTS65001). The SMTP login
    /// says to authorise again, the account's record remembers it for
    /// `mailgate accounts`, and reading mail is untouched; a Graph token
    /// obtained later clears it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sign_in_without_graph_consent_is_told_to_authorise_again() {
        logs();
        let env = Env::new().await;
        let fake = FakeGraph::start(env.oauth.clone()).await;
        let text = graph_config(&env, &fake, "", "");
        let path = env.write_config(&text);
        let g = start(env.load(&text)).await;
        env.oauth.set_unconsented(Some("graph.microsoft.com"));
        let (c, r) = LineClient::smtp_auth_plain(smtp_addr(&g), USER, PASSWORD).await;
        assert!(
            r.starts_with("535 ")
                && r.contains("does not allow sending through Microsoft Graph; authorise it again"),
            "{r}"
        );
        let f = env.token_file(USER);
        assert!(f.graph_refused && !f.needs_authorization, "{f:?}");
        let out = mailgate_tests::harness::run_mailgate(&path, &["accounts"], "", None, &[]);
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            table.contains("cannot send through Microsoft Graph: authorise again"),
            "{table}"
        );
        let out =
            mailgate_tests::harness::run_mailgate(&path, &["accounts", "--json"], "", None, &[]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["accounts"][0]["graph_refused"], true, "{json}");

        // Consent given (a new sign-in would do it): the next login gets
        // its Graph token and the mark is gone.
        env.oauth.set_unconsented(None);
        drop(c);
        let mut c = logged_in(&g).await;
        let r = send(
            &mut c,
            &["bob@example.test"],
            &format!("From: {USER}\r\nTo: bob@example.test\r\n\r\nhi\r\n"),
        )
        .await;
        assert_eq!(r, "250 2.0.0 Accepted by Microsoft Graph\r\n");
        assert!(!env.token_file(USER).graph_refused);
        c.send("QUIT\r\n").await;
        assert_eq!(c.line().await, "221 2.0.0 Bye\r\n");
        g.shutdown().await;
    }

    /// App-only (client credentials): the account's local password, one app
    /// token for Graph, and the message sent as the account's
    /// `upstream_user` mailbox.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn app_only_accounts_send_as_their_mailbox() {
        logs();
        let env = Env::new().await;
        let fake = FakeGraph::start(env.oauth.clone()).await;
        env.oauth.set_client_secret(Some("app-secret"));
        let text = env.config_for(
            &[(Protocol::Smtp, "graph")],
            "",
            &format!(
                "graph_url = \"{}\"\nflow = \"client_credentials\"\nclient_secret = \"app-secret\"",
                fake.url()
            ),
            &format!(
                "password_hash = \"{}\"\nupstream_user = \"scanner@example.test\"",
                mailgate_tests::harness::password_hash(PASSWORD)
            ),
        );
        let g = start(env.load(&text)).await;
        for to in ["bob@example.test", "carol@example.test"] {
            let mut c = logged_in(&g).await;
            let r = send(
                &mut c,
                &[to],
                &format!("From: scanner@example.test\r\nTo: {to}\r\nSubject: scan\r\n\r\nscan\r\n"),
            )
            .await;
            assert_eq!(r, "250 2.0.0 Accepted by Microsoft Graph\r\n");
            c.send("QUIT\r\n").await;
            assert_eq!(c.line().await, "221 2.0.0 Bye\r\n");
        }
        let d = fake.deliveries();
        assert_eq!(
            fake.recipients(),
            vec!["bob@example.test", "carol@example.test"]
        );
        assert!(
            d.iter().all(|d| d.mailbox == "scanner@example.test"),
            "{d:?}"
        );
        assert_eq!(
            env.oauth.grants("client_credentials"),
            1,
            "one app token, cached"
        );
        g.shutdown().await;
    }
}
