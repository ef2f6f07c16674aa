//! The body of every fuzz target, shared by `fuzz/` (libFuzzer) and the
//! regression test that replays the committed inputs under `cargo test`.
//! Each function must not panic on any input; the assertions are the
//! invariants the fuzzer checks.

use mailgate_proto::{imap, pop3, recipients, sasl, smtp, submission};

use mailgate::session::login::Failure;
use mailgate::session::{Event, PreAuth};

/// The targets, by name (the names of `fuzz/fuzz_targets/*.rs`).
pub const TARGETS: &[&str] = &[
    "imap_framer",
    "imap_command",
    "imap_response",
    "sasl_line",
    "sasl_plain",
    "sasl_error_challenge",
    "smtp_command",
    "smtp_reply",
    "pop3_command",
    "pop3_reply",
    "pop3_multiline",
    "preauth",
    "imap_login",
    "smtp_login",
    "pop3_login",
    "submission",
    "recipients",
    "draft",
];

/// Runs target `name` on `data`. Unknown names panic (a test mistake).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "imap_framer" => imap_framer(data),
        "imap_command" => consumed(data, imap::decode_command(data).map(|(r, _)| r.len())),
        "imap_response" => {
            if let Ok((rest, r)) = imap::decode_response(data) {
                assert!(rest.len() < data.len());
                let _ = r.capabilities();
            }
        }
        "sasl_line" => consumed(data, sasl::decode_sasl_line(data).map(|(r, _)| r.len())),
        "sasl_plain" => {
            let _ = sasl::decode_plain(data);
            if let Ok(raw) = sasl::decode_base64(data) {
                use secrecy::ExposeSecret;
                let _ = sasl::decode_plain(raw.expose_secret());
            }
            let _ = sasl::decode_xoauth2(data);
        }
        "sasl_error_challenge" => {
            let _ = sasl::decode_error_challenge(data);
        }
        "smtp_command" => consumed(data, smtp::decode_command(data).map(|(r, _)| r.len())),
        "smtp_reply" => {
            if let Ok((rest, r)) = smtp::decode_reply(data) {
                assert!(rest.len() < data.len());
                // What decodes encodes back to something that decodes alike.
                let wire = r.encode();
                let (_, again) = smtp::decode_reply(&wire).expect("re-encoded reply decodes");
                assert_eq!(again.code, r.code);
            }
        }
        "pop3_command" => consumed(data, pop3::decode_command(data).map(|(r, _)| r.len())),
        "pop3_reply" => consumed(data, pop3::decode_reply(data).map(|(r, _)| r.len())),
        "pop3_multiline" => consumed(data, pop3::decode_multiline(data).map(|(r, _)| r.len())),
        "preauth" => preauth(data),
        "imap_login" | "smtp_login" | "pop3_login" => upstream_login(name, data),
        "submission" => submission_session(data),
        "recipients" => recipients_decided(data),
        "draft" => draft_recipients(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// A decoder that succeeded consumed something.
fn consumed<E>(data: &[u8], rest: Result<usize, E>) {
    if let Ok(rest) = rest {
        assert!(rest < data.len());
    }
}

/// The framer never reports a message longer than its input or its caps.
fn imap_framer(data: &[u8]) {
    let limits = imap::Limits {
        max_line: 256,
        max_literal: 128,
        max_message: 1024,
    };
    let mut f = imap::Framer::new(limits);
    for end in (0..=data.len()).step_by(7).chain([data.len()]) {
        match f.next_message(&data[..end]) {
            imap::Frame::Complete(n) => {
                assert!(n <= end && n <= limits.max_message);
                f.reset();
            }
            imap::Frame::LineTooLong | imap::Frame::MessageTooLarge => return,
            imap::Frame::Incomplete | imap::Frame::SyncLiteral { .. } => {}
        }
    }
    let _ = imap::Framer::new(limits).next_line(data);
}

/// The three pre-auth machines fed `data` in arbitrary chunks; the first
/// byte picks the protocol and the TLS setting; logins fail or TLS starts
/// as the input decides.
fn preauth(data: &[u8]) {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    let starttls = which & 0x10 != 0;
    let auth_before_tls = which & 0x20 != 0;
    match which % 3 {
        0 => drive(
            mailgate::protocols::imap::preauth::ImapPreAuth::new(mailgate::session::Options {
                starttls,
                auth_before_tls,
                max_line: 256,
                max_literal: 64,
                ..Default::default()
            }),
            data,
        ),
        1 => drive(
            mailgate::protocols::smtp::preauth::SmtpPreAuth::new(mailgate::session::Options {
                starttls,
                auth_before_tls,
                max_line: 256,
                ..Default::default()
            }),
            data,
        ),
        _ => drive(
            mailgate::protocols::pop3::preauth::Pop3PreAuth::new(mailgate::session::Options {
                starttls,
                auth_before_tls,
                max_line: 256,
                ..Default::default()
            }),
            data,
        ),
    }
}

fn drive<M: PreAuth>(mut m: M, data: &[u8]) {
    let mut choices = data.iter().rev().copied().cycle();
    let mut rest = data;
    while !rest.is_empty() {
        let n = (rest[0] as usize % 37 + 1).min(rest.len());
        m.feed(&rest[..n]);
        rest = &rest[n..];
        // Bounded: a machine that never stops producing events is a bug.
        let mut settled = false;
        for _ in 0..10_000 {
            match m.next_event() {
                None => {
                    settled = true;
                    break;
                }
                Some(Event::Write(w)) => assert!(w.ends_with(b"\r\n"), "reply without CRLF"),
                Some(Event::Close(_)) => return,
                Some(Event::StartTls) => m.tls_started(),
                Some(Event::Login { .. }) => {
                    let f = match choices.next().unwrap_or(0) % 4 {
                        0 => Failure::BadCredentials,
                        1 => Failure::Unavailable("down".into()),
                        2 => Failure::Refused("no".into()),
                        _ => Failure::NeedsAuthorization("authorise".into()),
                    };
                    m.login_failed(&f);
                }
            }
        }
        assert!(settled, "the machine kept producing events");
    }
    let _ = m.into_residual();
}

/// An upstream login machine fed what a broken or hostile server might
/// send (the first byte picks implicit TLS or STARTTLS, and for SMTP the
/// inline form): it never panics, settles after every chunk, ends for good
/// once it has ended, and never sends the token before TLS.
fn upstream_login(name: &str, data: &[u8]) {
    use mailgate_proto::upstream::{Machine, Step, imap, pop3, smtp};
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let tls = mode & 1 == 1;
    let token = secrecy::SecretString::from("fuzz-token");
    let secret_line = {
        use secrecy::ExposeSecret;
        sasl::encode_xoauth2("u@x.test", &token)
            .expose_secret()
            .to_owned()
    };
    let mut m: Box<dyn Machine> = match name {
        "imap_login" => Box::new(imap::Login::new("u@x.test", &token, tls)),
        "smtp_login" => Box::new(smtp::Login::new(
            "u@x.test",
            &token,
            "c",
            mode & 2 == 2,
            tls,
        )),
        _ => Box::new(pop3::Login::new("u@x.test", &token, tls)),
    };
    let mut secure = tls;
    let mut ended = false;
    let mut rest = data;
    while !rest.is_empty() {
        let n = (rest[0] as usize % 41 + 1).min(rest.len());
        m.feed(&rest[..n]);
        rest = &rest[n..];
        let mut settled = false;
        for _ in 0..10_000 {
            let Some(step) = m.next() else {
                settled = true;
                break;
            };
            assert!(!ended, "a step after the end: {step:?}");
            match step {
                Step::Send(bytes) => {
                    assert!(bytes.ends_with(b"\r\n"), "a command without CRLF");
                    if !secure {
                        let text = String::from_utf8_lossy(&bytes);
                        assert!(!text.contains(&secret_line), "the token before TLS");
                    }
                }
                Step::StartTls => {
                    assert!(!secure, "TLS asked for twice");
                    secure = true;
                    m.tls_started();
                }
                Step::Done(_) => {
                    assert!(secure, "logged in without TLS");
                    ended = true;
                }
                Step::Failed(_) => ended = true,
                Step::Note(_) => {}
            }
        }
        assert!(settled, "the machine kept producing steps");
    }
}

/// The submission machine fed arbitrary chunks (the first byte picks the
/// chunk size): every reply is a whole line with a code, no more message
/// bytes are handed out than the limit, a message's size is the bytes
/// handed out for it, and nothing comes after a close.
fn submission_session(data: &[u8]) {
    use submission::{Event, Limits, Submission};
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_message: 256,
        max_line: 128,
        max_recipients: 3,
    };
    let mut m = Submission::new(limits.clone());
    let chunk = usize::from(first % 16) + 1;
    let mut handed = 0usize;
    let mut closed = false;
    for piece in rest.chunks(chunk) {
        m.feed(piece);
        while let Some(e) = m.next_event() {
            assert!(!closed, "an event after the close: {e:?}");
            match e {
                Event::Reply(r) => {
                    assert!(r.ends_with(b"\r\n") && r.len() >= 5, "{r:?}");
                    assert!(r[..3].iter().all(u8::is_ascii_digit), "{r:?}");
                }
                Event::Data(d) => {
                    handed += d.len();
                    assert!(handed <= limits.max_message, "over the limit");
                }
                Event::Discard => handed = 0,
                Event::Message(env) => {
                    assert_eq!(env.size, handed, "the size is what was handed out");
                    assert!(!env.recipients.is_empty() && env.recipients.len() <= 3);
                    handed = 0;
                    m.answered("250 2.0.0 Sent\r\n");
                }
                Event::Close => closed = true,
            }
        }
    }
}

/// The recipients' rewrite on any header section and envelope (the
/// envelope is the input's first line, addresses separated by spaces):
/// what the rewritten header lets a sender deliver to is exactly the
/// envelope, and the body is where it was.
/// The first line is the envelope (as in `recipients`), the rest the
/// message: once decided, the message in Graph's JSON shape names only
/// the envelope's recipients, and parsing it never panics.
fn draft_recipients(data: &[u8]) {
    let (first, message) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let envelope = envelope_of(first);
    let Ok(d) = recipients::decide(message, &envelope) else {
        return;
    };
    let mut whole = d.header.clone();
    whole.extend_from_slice(&message[d.body_at..]);
    let Ok(draft) = mailgate_proto::draft::draft(&whole) else {
        return;
    };
    for field in ["toRecipients", "ccRecipients", "bccRecipients"] {
        for r in draft.message[field].as_array().into_iter().flatten() {
            let a = r["emailAddress"]["address"].as_str().unwrap_or_default();
            assert!(
                envelope.iter().any(|e| e.eq_ignore_ascii_case(a)),
                "{field} names {a:?}, not in the envelope {envelope:?}"
            );
        }
    }
}

/// The envelope of the `recipients` and `draft` targets: the first line's
/// words that the submission machine would let through (one `@`, no
/// space, none of the characters it refuses).
fn envelope_of(first: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(first)
        .split_whitespace()
        .filter(|a| a.matches('@').count() == 1 && !a.starts_with('@') && !a.ends_with('@'))
        .filter(|a| !a.contains([',', '<', '>', '"', ';', ':', '(', ')', '\\']))
        .map(str::to_owned)
        .collect()
}

fn recipients_decided(data: &[u8]) {
    use mail_parser::{Address, HeaderValue, MessageParser};
    let (first, message) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let envelope = envelope_of(first);
    let Ok(d) = recipients::decide(message, &envelope) else {
        return;
    };
    assert!(d.body_at <= message.len());
    assert!(d.header.ends_with(b"\r\n"));
    let parsed = MessageParser::new().parse_headers(&d.header[..]);
    let Some(parsed) = parsed else { return };
    for h in parsed.headers() {
        let name = h.name();
        if !["To", "Cc", "Bcc"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        if let HeaderValue::Address(Address::List(list)) = h.value() {
            for a in list {
                if let Some(a) = a.address.as_deref() {
                    assert!(
                        envelope.iter().any(|e| e.eq_ignore_ascii_case(a.trim())),
                        "{a} is not in the envelope {envelope:?}"
                    );
                }
            }
        }
    }
}
