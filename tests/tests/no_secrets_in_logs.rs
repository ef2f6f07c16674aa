//! SPEC §7: passwords, tokens, SASL payloads and authorisation codes never
//! appear in any log at any level. The real binary runs at TRACE (its own
//! crates and every dependency) through every login path — success, wrong
//! password, unknown user, refresh, rotation, upstream rejection and retry,
//! dead refresh token, in-band authorisation and the portal's sign-in, over
//! IMAP, SMTP and POP3 — and its whole output is searched for each secret.

#![allow(clippy::unwrap_used)]

use secrecy::ExposeSecret as _;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailgate_config::Protocol;
use mailgate_tests::browser::PortalVisit;
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, USER, mailgate};
use mailgate_tests::oauth::Mode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_at_trace() {
    let env = Env::new().await;
    env.oauth.set_rotate(true);
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let smtp = FakeServer::smtp(&env.ca, env.oauth.clone(), Default::default()).await;
    let pop3 = FakeServer::pop3(&env.ca, env.oauth.clone(), Default::default()).await;
    let (first_rt, _) = env.seal_new_user_token();
    let other = "bob@example.test";
    let text = env.config_for(
        &[
            (Protocol::Imap, &imap.url(false)),
            (Protocol::Smtp, &smtp.url(false)),
            (Protocol::Pop3, &pop3.url(false)),
        ],
        "shutdown_grace = \"1s\"",
        "",
        &format!("\n[[account]]\nuser = \"{other}\"\nprovider = \"test\"\n"),
    );
    let cfg = env.write_config(&format!("{text}\n[portal]\naddress = \"127.0.0.1:0\"\n"));
    let mut child = mailgate(Some(&cfg))
        .arg("run")
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let (log, tx) = (log.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
    }
    let mut addrs = std::collections::HashMap::new();
    while addrs.len() < 4 {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("listening lines");
        if line.contains("listening") {
            let proto = ["imap", "smtp", "pop3"]
                .into_iter()
                .find(|p| line.contains(&format!("protocol={p}")))
                .unwrap_or("portal");
            let a = line[line.find("address=").unwrap() + 8..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            addrs.insert(proto, a.parse::<std::net::SocketAddr>().unwrap());
        }
    }

    let mut secrets: Vec<String> = vec![PASSWORD.into(), "wrong-password-x".into(), first_rt];
    // IMAP: success (refresh, rotation), wrong password, unknown user.
    let mut c = LineClient::greeted(addrs["imap"]).await;
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));
    let mut c = LineClient::greeted(addrs["imap"]).await;
    assert!(
        c.login("b", USER, "wrong-password-x")
            .await
            .starts_with("b NO")
    );
    assert!(
        c.login("c", "nobody@example.test", PASSWORD)
            .await
            .starts_with("c NO")
    );
    // AUTHENTICATE PLAIN: the SASL payload itself.
    let plain = STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    secrets.push(plain.clone());
    c.send(format!("d AUTHENTICATE PLAIN {plain}\r\n")).await;
    assert!(c.response_text("d").await.starts_with("d OK"));
    // Upstream rejection → refresh → retry.
    env.oauth.revoke_access_tokens();
    let mut c = LineClient::greeted(addrs["imap"]).await;
    assert!(c.login("e", USER, PASSWORD).await.starts_with("e OK"));
    // SMTP, AUTH LOGIN.
    let mut s = LineClient::greeted_with(addrs["smtp"], "220").await;
    s.send("EHLO x\r\n").await;
    while !s.line().await.starts_with("250 ") {}
    s.send("AUTH LOGIN\r\n").await;
    s.line().await;
    s.send(format!("{}\r\n", STANDARD.encode(USER))).await;
    s.line().await;
    let pw_b64 = STANDARD.encode(PASSWORD);
    secrets.push(pw_b64.clone());
    s.send(format!("{pw_b64}\r\n")).await;
    assert!(s.line().await.starts_with("235"));
    // POP3.
    let mut p = LineClient::greeted_with(addrs["pop3"], "+OK").await;
    p.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await;
    p.line().await;
    assert!(p.line().await.starts_with("+OK"));
    // In-band authorisation for another user: the link to the portal, and
    // the sign-in there (the code, and the password chosen in the form).
    let mut c = LineClient::greeted(addrs["imap"]).await;
    let r = c.login("f", other, "bob local pw").await;
    secrets.push("bob local pw".into());
    assert!(r.contains("?address=bob%40example.test"), "{r}");
    let code = PortalVisit::new(&format!("http://{}/", addrs["portal"]))
        .sign_in(other, "bob local pw")
        .await;
    secrets.push(code);
    let mut c = LineClient::greeted(addrs["imap"]).await;
    assert!(
        c.login("g", other, "bob local pw")
            .await
            .starts_with("g OK")
    );
    // A dead refresh token.
    env.oauth.set_mode(Mode::InvalidGrant);
    env.oauth.revoke_access_tokens();
    let mut c = LineClient::greeted(addrs["imap"]).await;
    assert!(c.login("h", USER, PASSWORD).await.starts_with("h NO"));

    // Every token the fake authorisation server ever issued.
    for t in env.oauth.issued_tokens() {
        secrets.push(t);
    }
    for (user, pw) in [(USER, PASSWORD), (other, "bob local pw")] {
        let tokens = env.open(user, pw);
        secrets.extend(
            tokens
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
        );
        let access = tokens
            .access(mailgate::accounts::store::Audience::Mail)
            .map(|a| a.token.expose_secret().to_owned());
        secrets.extend(access.clone());
        if let Some(t) = access {
            secrets.push(STANDARD.encode(format!("user={user}\x01auth=Bearer {t}\x01\x01")));
        }
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(200));
    let log = log.lock().unwrap().clone();
    assert!(log.contains("TRACE"), "the log was not at TRACE");
    assert!(log.len() > 10_000, "suspiciously little log output");
    for s in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "a secret ({} chars, starting {:?}) appears in the log",
            s.len(),
            &s[..4.min(s.len())]
        );
    }
}
