//! Interop with a real XOAUTH2-only Dovecot through the gateway: a plain
//! LOGIN client selects, appends and fetches back byte-exact, over imaps://
//! and over imap:// with STARTTLS. These tests fail (never skip) when Dovecot
//! is missing.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailgate_config::Protocol;
use mailgate_tests::client::LineClient;
use mailgate_tests::dovecot::Dovecot;
use mailgate_tests::harness::{
    Env, PASSWORD, USER, imap_addr, logs, pop3_addr, smtp_addr, start, unused_port,
};
use mailgate_tests::relay_sink::RelaySink;

async fn login(addr: std::net::SocketAddr) -> LineClient {
    let mut c = LineClient::connect(addr).await;
    let g = c.line().await;
    assert!(g.starts_with("* OK"), "{g}");
    let r = c.login("a", USER, PASSWORD).await;
    assert!(r.starts_with("a OK [CAPABILITY IMAP4rev1"), "{r}");
    assert!(!r.contains("AUTH="), "{r}");
    c
}

/// SELECT, APPEND with a synchronising literal, FETCH it back byte-exact.
async fn append_and_fetch(c: &mut LineClient, subject: &str) {
    let message = format!(
        "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.test>\r\n\r\nHello through mailgate.\r\n\
         A line with \"quotes\", {{braces}} and 8-bit: caf\u{e9}.\r\n"
    );
    c.send("s SELECT INBOX\r\n").await;
    let r = c.response_text("s").await;
    assert!(r.contains("s OK"), "{r}");
    c.send(format!("p APPEND INBOX (\\Seen) {{{}}}\r\n", message.len()))
        .await;
    let cont = c.line().await;
    assert!(cont.starts_with('+'), "{cont}");
    c.send(format!("{message}\r\n")).await;
    let r = c.response_text("p").await;
    assert!(r.contains("p OK"), "{r}");
    c.send("n NOOP\r\n").await;
    c.response_text("n").await;
    c.send(
        "f UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])
",
    )
    .await;
    let r = c.response_text("f").await;
    assert!(r.contains(subject), "{r}");
    c.send("g FETCH * BODY.PEEK[]\r\n").await;
    let raw = c.response("g").await;
    let want = format!("BODY[] {{{}}}\r\n{message})", message.len());
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains(&want),
        "FETCH did not return the message byte-exact:\n{text}"
    );
    c.send("z LOGOUT\r\n").await;
    assert!(c.response_text("z").await.contains("z OK"));
}

/// After the login: MAIL FROM `from`, RCPT TO `to`, DATA `message`
/// (dot-stuffed, CRLF lines), each answered 250; then QUIT.
async fn send_message(c: &mut LineClient, from: &str, to: &str, message: &str, dv: &Dovecot) {
    c.send(format!("MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n"))
        .await;
    for _ in 0..2 {
        let r = c.line().await;
        assert!(r.starts_with("250"), "{r}");
    }
    assert!(c.line().await.starts_with("354"));
    c.send(format!("{message}.\r\n")).await;
    let r = c.line().await;
    assert!(r.starts_with("250"), "{r}\nlog:\n{}", dv.log());
    c.send("QUIT\r\n").await;
    c.line().await;
}

/// POP3 USER/PASS as `login` (as fetchmail does), then message `n` as
/// it comes over the wire (dot-stuffed), without the final dot.
async fn pop3_retr(addr: std::net::SocketAddr, login: &str, n: usize, dv: &Dovecot) -> String {
    let mut p = LineClient::greeted_with(addr, "+OK").await;
    p.send(format!("USER {login}\r\nPASS {PASSWORD}\r\n")).await;
    assert!(p.line().await.starts_with("+OK"));
    let r = p.line().await;
    assert_eq!(r, "+OK Logged in\r\n", "log:\n{}", dv.log());
    p.send(format!("RETR {n}\r\n")).await;
    assert!(p.line().await.starts_with("+OK"));
    let mut retr = String::new();
    loop {
        let l = p.line().await;
        if l == ".\r\n" {
            break;
        }
        retr.push_str(&l);
    }
    p.send("QUIT\r\n").await;
    p.line().await;
    retr
}

/// A fake OAuth server, a Dovecot validating against it, and a sealed token.
async fn with_dovecot() -> (Env, Dovecot) {
    logs();
    let env = Env::new().await;
    let dv = Dovecot::start(env.path(), &env.ca, &env.oauth, unused_port());
    env.seal_new_user_token();
    (env, dv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_imaps_and_starttls() {
    let (env, dv) = with_dovecot().await;

    // imaps:// on 127.0.0.1
    let g = env
        .gateway(&format!("imaps://127.0.0.1:{}", dv.imaps_port))
        .await;
    let mut c = login(imap_addr(&g)).await;
    append_and_fetch(&mut c, "over-imaps").await;
    g.shutdown().await;

    // The premise of the next part: on 127.0.0.2 Dovecot refuses to
    // authenticate before TLS.
    let mut direct = LineClient::connect(([127, 0, 0, 2], dv.imap_port).into()).await;
    let greeting = direct.line().await;
    assert!(
        greeting.contains("LOGINDISABLED") && greeting.contains("STARTTLS"),
        "{greeting}"
    );
    direct
        .send("x AUTHENTICATE XOAUTH2 dXNlcj1hAWF1dGg9QmVhcmVyIHgBAQ==\r\n")
        .await;
    let r = direct.response_text("x").await;
    assert!(
        r.contains("PRIVACYREQUIRED") || r.starts_with("x NO") || r.starts_with("x BAD"),
        "{r}"
    );

    // imap:// with STARTTLS on 127.0.0.2: works only if the gateway upgrades.
    let g = env
        .gateway(&format!("imap://127.0.0.2:{}", dv.imap_port))
        .await;
    let mut c = login(imap_addr(&g)).await;
    append_and_fetch(&mut c, "over-starttls").await;
    let log = dv.log();
    assert!(
        log.contains("TLS"),
        "Dovecot log shows no TLS login:\n{log}"
    );
    assert!(env.oauth.introspection_count() >= 2);
}

/// A token Dovecot no longer accepts: Dovecot's error challenge is answered,
/// the gateway refreshes once and logs in, without dropping the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_rejected_token_is_refreshed() {
    let (env, dv) = with_dovecot().await;
    let g = env
        .gateway(&format!("imaps://127.0.0.1:{}", dv.imaps_port))
        .await;
    let _first = login(imap_addr(&g)).await;
    assert_eq!(env.oauth.refresh_count(), 1);
    env.oauth.revoke_access_tokens();
    let mut c = tokio::time::timeout(Duration::from_secs(30), login(imap_addr(&g)))
        .await
        .unwrap();
    assert_eq!(env.oauth.refresh_count(), 2);
    c.send("s SELECT INBOX\r\n").await;
    assert!(c.response_text("s").await.contains("s OK"));
}

/// What issue 3 is about: a plain-auth SMTP client sends a message through
/// mailgate to Dovecot's XOAUTH2-only submission service; a plain-auth POP3
/// client and a plain-LOGIN IMAP client read it back through mailgate. Once
/// with STARTTLS/STLS upstream on 127.0.0.2 (where Dovecot refuses
/// authentication in clear), once with implicit TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_to_pop3_and_imap_through_dovecot() {
    logs();
    let env = Env::new().await;
    let sink = RelaySink::start(Dovecot::config_path(env.path())).await;
    let dv = Dovecot::start(env.path(), &env.ca, &env.oauth, sink.port);
    env.seal_new_user_token();
    let variants = [
        (
            format!("smtp://127.0.0.2:{}", dv.submission_port),
            format!("pop3://127.0.0.2:{}", dv.pop3_port),
            format!("imap://127.0.0.2:{}", dv.imap_port),
        ),
        (
            format!("smtps://127.0.0.1:{}", dv.submissions_port),
            format!("pop3s://127.0.0.1:{}", dv.pop3s_port),
            format!("imaps://127.0.0.1:{}", dv.imaps_port),
        ),
    ];
    for (n, (smtp, pop3, imap)) in variants.iter().enumerate() {
        let text = env.config_for(
            &[
                (Protocol::Smtp, smtp),
                (Protocol::Pop3, pop3),
                (Protocol::Imap, imap),
            ],
            "",
            "",
            "",
        );
        let g = start(env.load(&text)).await;
        let subject = format!("round trip {n}");
        // As stored; on the SMTP and POP3 wires a line starting with a dot
        // is dot-stuffed.
        let body =
            format!("Sent by a scanner through mailgate.\r\n.dot line\r\nEnd of message {n}.\r\n");
        let stuffed = body.replace("\r\n.", "\r\n..");

        // SMTP with AUTH LOGIN, as scanners and CRMs do.
        let mut c = LineClient::greeted_with(smtp_addr(&g), "220").await;
        c.send("EHLO scanner.example\r\n").await;
        while !c.line().await.starts_with("250 ") {}
        c.send("AUTH LOGIN\r\n").await;
        assert!(c.line().await.starts_with("334"));
        c.send(format!("{}\r\n", STANDARD.encode(USER))).await;
        assert!(c.line().await.starts_with("334"));
        c.send(format!("{}\r\n", STANDARD.encode(PASSWORD))).await;
        let r = c.line().await;
        assert_eq!(
            r,
            "235 2.7.0 Authentication successful\r\n",
            "log:\n{}",
            dv.log()
        );
        send_message(
            &mut c,
            USER,
            USER,
            &format!("From: {USER}\r\nTo: {USER}\r\nSubject: {subject}\r\n\r\n{stuffed}"),
            &dv,
        )
        .await;

        // POP3 with USER/PASS, as fetchmail does.
        let retr = pop3_retr(pop3_addr(&g), USER, n + 1, &dv).await;
        assert!(retr.contains(&format!("Subject: {subject}\r\n")), "{retr}");
        // Dot-stuffed on the wire, as POP3 requires.
        assert!(retr.contains(&stuffed), "{retr}");

        // IMAP with LOGIN.
        let mut i = LineClient::greeted(imap_addr(&g)).await;
        assert!(i.login("a", USER, PASSWORD).await.starts_with("a OK"));
        i.send("s SELECT INBOX\r\n").await;
        i.response_text("s").await;
        i.send(format!("f FETCH {} BODY.PEEK[TEXT]\r\n", n + 1))
            .await;
        let r = i.response_text("f").await;
        assert!(r.contains(&body), "{r}");
        i.send("z LOGOUT\r\n").await;
        i.response_text("z").await;
        drop((c, i));
        g.shutdown().await;
    }
}

/// Shared mailboxes against a real server: alice's token opens info@ in
/// Dovecot (its second oauth2 passdb takes a token for the mailbox that
/// the introspection names as delegated to its owner). A message sent over
/// SMTP as alice with MAIL FROM info@ to info@ is read back from info@'s
/// own mailbox over IMAP and POP3, and not from alice's; a mailbox the
/// configuration allows but nobody delegated is refused by Dovecot, and
/// the client is told which right is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegate_opens_a_shared_mailbox_in_dovecot() {
    const SHARED: &str = "info@example.test";
    logs();
    let env = Env::new().await;
    let sink = RelaySink::start(Dovecot::config_path(env.path())).await;
    let dv = Dovecot::start(env.path(), &env.ca, &env.oauth, sink.port);
    env.seal_new_user_token();
    env.oauth.delegate(USER, SHARED);
    let text = env.config_for(
        &[
            (
                Protocol::Smtp,
                &format!("smtps://127.0.0.1:{}", dv.submissions_port),
            ),
            (
                Protocol::Pop3,
                &format!("pop3s://127.0.0.1:{}", dv.pop3s_port),
            ),
            (
                Protocol::Imap,
                &format!("imaps://127.0.0.1:{}", dv.imaps_port),
            ),
        ],
        "",
        "",
        &format!("shared = [\"{SHARED}\", \"sales@example.test\"]"),
    );
    let g = start(env.load(&text)).await;
    let login = format!("{USER}\\{SHARED}");

    // SMTP: alice logs in as herself and sends as info@, to info@.
    let (mut c, reply) = LineClient::smtp_auth_plain(smtp_addr(&g), &login, PASSWORD).await;
    assert_eq!(
        reply,
        "235 2.7.0 Authentication successful\r\n",
        "log:\n{}",
        dv.log()
    );
    send_message(
        &mut c,
        SHARED,
        SHARED,
        &format!("From: {SHARED}\r\nTo: {SHARED}\r\nSubject: for the team\r\n\r\nShared.\r\n"),
        &dv,
    )
    .await;

    // IMAP as alice\info: info@'s INBOX holds the message.
    let imap_login = |login: &str| {
        format!(
            "a LOGIN \"{}\" \"{PASSWORD}\"\r\n",
            login.replace('\\', "\\\\")
        )
    };
    let mut i = LineClient::greeted(imap_addr(&g)).await;
    i.send(imap_login(&login)).await;
    let r = i.response_text("a").await;
    assert!(r.contains("a OK"), "{r}\nlog:\n{}", dv.log());
    i.send("s SELECT INBOX\r\n").await;
    let r = i.response_text("s").await;
    assert!(r.contains("* 1 EXISTS"), "{r}");
    i.send("f FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]\r\n")
        .await;
    let r = i.response_text("f").await;
    assert!(r.contains("Subject: for the team"), "{r}");
    i.send("z LOGOUT\r\n").await;
    i.response_text("z").await;

    // POP3 as alice\info, as fetchmail would.
    let retr = pop3_retr(pop3_addr(&g), &login, 1, &dv).await;
    assert!(retr.contains("Subject: for the team"), "{retr}");

    // alice's own mailbox is another one: empty.
    let mut i = LineClient::greeted(imap_addr(&g)).await;
    i.send(imap_login(USER)).await;
    assert!(i.response_text("a").await.contains("a OK"));
    i.send("s SELECT INBOX\r\n").await;
    let r = i.response_text("s").await;
    assert!(r.contains("* 0 EXISTS"), "{r}");
    drop(i);

    real_clients_read_the_shared_mailbox(&env, &g, &login).await;

    // Allowed by the configuration, but nobody delegated sales@ to alice:
    // Dovecot refuses, and the client learns the missing right.
    let mut i = LineClient::greeted(imap_addr(&g)).await;
    i.send(imap_login(&format!("{USER}\\sales@example.test")))
        .await;
    let r = i.response_text("a").await;
    assert!(
        r.contains("a NO") && r.contains("has no access to sales@example.test"),
        "{r}"
    );
    let log = dv.log();
    assert!(
        log.contains(SHARED),
        "Dovecot's log names no login as {SHARED}:\n{log}"
    );
    g.shutdown().await;
}

/// fetchmail over POP3 and over IMAP, and mbsync, log in as
/// `DELEGATE\SHARED` and fetch the shared mailbox's message.
async fn real_clients_read_the_shared_mailbox(env: &Env, g: &mailgate::Gateway, login: &str) {
    let dir = env.path();
    // fetchmail's run control file: the backslash is escaped in its quoted
    // string; it must be private to its owner.
    let rc = dir.join("fetchmailrc");
    let mut polls = String::from("set no syslog\n");
    for (protocol, port) in [("POP3", pop3_addr(g).port()), ("IMAP", imap_addr(g).port())] {
        let out = dir.join(format!("fetched-{protocol}.mbox"));
        polls.push_str(&format!(
            "poll 127.0.0.1 service {port} protocol {protocol} auth password\n  \
             user \"{user}\" password \"{PASSWORD}\" is root here\n  \
             sslproto '' keep fetchall mda \"/bin/sh -c 'cat >> {out}'\"\n",
            user = login.replace('\\', "\\\\"),
            out = out.display(),
        ));
    }
    std::fs::write(&rc, polls).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let idfile = dir.join("fetchids");
    let rc_path = rc.display().to_string();
    let id_path = idfile.display().to_string();
    env.run_client(
        "fetchmail",
        &["-N", "-v", "-f", &rc_path, "--idfile", &id_path],
    )
    .await;
    for protocol in ["POP3", "IMAP"] {
        let got = std::fs::read_to_string(dir.join(format!("fetched-{protocol}.mbox")))
            .unwrap_or_default();
        assert!(
            got.contains("Subject: for the team"),
            "fetchmail over {protocol} fetched: {got:?}"
        );
    }

    // mbsync pulls the shared INBOX into a local Maildir.
    let maildir = dir.join("mbsync-mail");
    std::fs::create_dir_all(&maildir).unwrap();
    let conf = dir.join("mbsyncrc");
    std::fs::write(
        &conf,
        format!(
            "IMAPAccount shared\nHost 127.0.0.1\nPort {port}\nUser \"{user}\"\n\
             Pass \"{PASSWORD}\"\nSSLType None\nAuthMechs LOGIN\n\n\
             IMAPStore shared-remote\nAccount shared\n\n\
             MaildirStore local\nPath {md}/\nInbox {md}/INBOX\n\n\
             Channel shared\nFar :shared-remote:\nNear :local:\n\
             Patterns INBOX\nCreate Near\nSync Pull\nSyncState *\n",
            port = imap_addr(g).port(),
            user = login.replace('\\', "\\\\"),
            md = maildir.display(),
        ),
    )
    .unwrap();
    let conf_path = conf.display().to_string();
    env.run_client("mbsync", &["-c", &conf_path, "shared"])
        .await;
    let mut found = false;
    for sub in ["new", "cur"] {
        for entry in std::fs::read_dir(maildir.join("INBOX").join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            found |= text.contains("Subject: for the team");
        }
    }
    assert!(found, "mbsync did not fetch the shared mailbox's message");
}
