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
