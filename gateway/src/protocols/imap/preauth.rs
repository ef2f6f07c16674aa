//! The IMAP pre-authentication state machine (SPEC §6), sans I/O.
//!
//! Feed it the client's bytes with [`ImapPreAuth::feed`] and drain [`Event`]s
//! with [`ImapPreAuth::next_event`] until it returns `None` (it needs more input). It
//! answers `CAPABILITY`, `NOOP`, `ID`, `LOGOUT` and `STARTTLS` itself, turns
//! `LOGIN` and `AUTHENTICATE PLAIN` into [`Event::Login`], and after that
//! parses nothing more: whatever the client pipelined behind its login stays
//! in the buffer, for [`ImapPreAuth::into_residual`] to hand to the relay.

use std::collections::VecDeque;

use mailgate_proto::imap::{Command, CommandBody, Frame, Framer, Limits, decode_command};
use mailgate_proto::sasl::{SaslLine, decode_sasl_line};
use mailgate_proto::{DecodeError, SecretString};

use super::capabilities;
use crate::protocols::line::{PlainError, plain_credentials};
pub use crate::session::Event;
use crate::session::login::Failure;
use crate::session::{End, Options, PreAuth, one_line};

#[derive(Debug, Clone)]
enum Phase {
    Command,
    /// `AUTHENTICATE PLAIN` waits for the client's response line.
    SaslPlain {
        tag: String,
    },
    /// A login is being checked; no input is parsed.
    AwaitLogin {
        tag: String,
    },
    /// STARTTLS was accepted; the handshake comes next.
    AwaitTls,
    Closed,
}

#[derive(Debug)]
pub struct ImapPreAuth {
    opts: Options,
    buf: Vec<u8>,
    framer: Framer,
    phase: Phase,
    failures: u32,
    out: VecDeque<Event>,
}

impl ImapPreAuth {
    pub fn new(opts: Options) -> ImapPreAuth {
        ImapPreAuth {
            framer: Framer::new(limits(&opts)),
            opts,
            buf: Vec::new(),
            phase: Phase::Command,
            failures: 0,
            out: VecDeque::new(),
        }
    }

    /// The tag of the pending login.
    pub fn pending_tag(&self) -> Option<&str> {
        match &self.phase {
            Phase::AwaitLogin { tag } => Some(tag),
            _ => None,
        }
    }

    /// Answers the pending login with `tag NO [code] text`, closing after too
    /// many credential failures.
    fn fail(&mut self, code: &str, text: &str, counts: bool) {
        let Phase::AwaitLogin { tag } = self.phase.clone() else {
            return;
        };
        let text = one_line(text);
        self.write(format!("{tag} NO [{code}] {text}\r\n"));
        self.phase = Phase::Command;
        if counts {
            self.failures += 1;
            if self.failures >= self.opts.max_failures {
                self.bye("Too many failed login attempts", End::TooManyFailures);
            }
        }
    }

    fn write(&mut self, s: String) {
        self.out.push_back(Event::Write(s.into_bytes()));
    }

    fn bye(&mut self, text: &str, why: End) {
        self.write(format!("* BYE {text}\r\n"));
        self.out.push_back(Event::Close(why));
        self.phase = Phase::Closed;
    }

    fn overflow(&mut self, frame: Frame) -> Option<Event> {
        let limits = limits(&self.opts);
        let text = match frame {
            Frame::LineTooLong => format!("Line too long (limit {} bytes)", limits.max_line),
            _ => format!(
                "Command too large (limits: literal {} bytes, command {} bytes)",
                limits.max_literal, limits.max_message
            ),
        };
        tracing::info!(reason = %text, "closing: client input over the limit");
        self.bye(&text, End::Refused);
        self.out.pop_front()
    }

    fn next_command(&mut self) -> Option<Event> {
        let n = match self.framer.next_message(&self.buf) {
            Frame::Incomplete => return None,
            Frame::SyncLiteral { .. } => {
                return Some(Event::Write(b"+ Ready for literal data\r\n".to_vec()));
            }
            f @ (Frame::LineTooLong | Frame::MessageTooLarge) => return self.overflow(f),
            Frame::Complete(n) => n,
        };
        let message: Vec<u8> = self.buf.drain(..n).collect();
        self.framer.reset();
        if crate::protocols::line::looks_like_http(&message) {
            tracing::info!("closing without an answer: the client sent HTTP (a web page?)");
            self.buf.clear();
            self.phase = Phase::Closed;
            return Some(Event::Close(End::Refused));
        }
        match decode_command(&message) {
            Ok((_, cmd)) => self.command(cmd),
            Err(DecodeError::Failed { tag }) => {
                let tag = tag.unwrap_or_else(|| "*".into());
                self.write(format!("{tag} BAD Invalid command syntax\r\n"));
            }
            Err(DecodeError::Incomplete) => {
                self.write("* BAD Invalid command syntax\r\n".into());
            }
        }
        self.out.pop_front()
    }

    fn capabilities(&self) -> String {
        capabilities::pre_auth(self.opts.starttls, self.opts.login_allowed())
    }

    fn command(&mut self, cmd: Command) {
        let tag = cmd.tag;
        if tag.len() > self.opts.max_tag {
            self.write(format!(
                "* BAD Tag too long (limit {} characters)\r\n",
                self.opts.max_tag
            ));
            return;
        }
        if matches!(
            cmd.body,
            CommandBody::Login { .. } | CommandBody::Authenticate { .. }
        ) && !self.opts.login_allowed()
        {
            self.write(format!(
                "{tag} NO [PRIVACYREQUIRED] Use STARTTLS first: this listener does not take passwords in clear\r\n"
            ));
            return;
        }
        match cmd.body {
            CommandBody::Capability => self.write(format!(
                "* CAPABILITY {}\r\n{tag} OK CAPABILITY completed\r\n",
                self.capabilities()
            )),
            CommandBody::Noop => self.write(format!("{tag} OK NOOP completed\r\n")),
            CommandBody::Logout => {
                self.write(format!(
                    "* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n"
                ));
                self.out.push_back(Event::Close(End::ClientClosed));
                self.phase = Phase::Closed;
            }
            CommandBody::StartTls if self.opts.starttls => {
                self.write(format!("{tag} OK Begin TLS negotiation now\r\n"));
                // Whatever was pipelined in clear is dropped, never executed
                // after the upgrade (CVE-2011-0411, RFC 3207 §4.2).
                self.buf.clear();
                self.framer.reset();
                self.out.push_back(Event::StartTls);
                self.phase = Phase::AwaitTls;
            }
            CommandBody::StartTls if self.opts.tls => {
                self.write(format!("{tag} BAD TLS is already active\r\n"));
            }
            CommandBody::StartTls => {
                self.write(format!(
                    "{tag} BAD STARTTLS is not offered on this listener\r\n"
                ));
            }
            CommandBody::Id(_) => self.write(format!(
                "* ID (\"name\" \"mailgate\" \"version\" \"{}\")\r\n{tag} OK ID completed\r\n",
                env!("CARGO_PKG_VERSION")
            )),
            CommandBody::Login { username, password } => self.ask_login(tag, username, password),
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                if mechanism != "PLAIN" {
                    self.write(format!(
                        "{tag} NO [CANNOT] Unsupported mechanism; use AUTHENTICATE PLAIN or LOGIN\r\n"
                    ));
                } else if let Some(ir) = initial_response {
                    self.plain_response(tag, &ir);
                } else {
                    self.write("+ \r\n".into());
                    self.phase = Phase::SaslPlain { tag };
                }
            }
            CommandBody::Other { name } => {
                let mut name = name;
                name.truncate(32);
                self.write(format!(
                    "{tag} BAD {name} is not available before login; log in first with LOGIN or AUTHENTICATE PLAIN\r\n"
                ));
            }
        }
    }

    fn next_sasl(&mut self, tag: String) -> Option<Event> {
        let n = match self.framer.next_line(&self.buf) {
            Frame::Complete(n) => n,
            Frame::Incomplete | Frame::SyncLiteral { .. } => return None,
            f => return self.overflow(f),
        };
        let line = zeroize::Zeroizing::new(self.buf.drain(..n).collect::<Vec<u8>>());
        self.phase = Phase::Command;
        match decode_sasl_line(&line) {
            Ok((_, SaslLine::Cancel)) => {
                self.write(format!("{tag} BAD AUTHENTICATE cancelled\r\n"));
            }
            Ok((_, SaslLine::Response(b64))) => self.plain_response(tag, &b64),
            Err(_) => self.write(format!("{tag} BAD Invalid SASL response\r\n")),
        }
        self.out.pop_front()
    }

    fn plain_response(&mut self, tag: String, b64: &SecretString) {
        match plain_credentials(b64) {
            Ok((user, password)) => self.ask_login(tag, user, password),
            Err(PlainError::Malformed(e)) => {
                self.write(format!("{tag} BAD Invalid SASL PLAIN response: {e}\r\n"))
            }
            Err(PlainError::OtherUser) => self.write(format!(
                "{tag} NO [AUTHORIZATIONFAILED] Logging in as another user is not supported\r\n"
            )),
        }
    }

    fn ask_login(&mut self, tag: String, user: String, password: SecretString) {
        self.phase = Phase::AwaitLogin { tag };
        self.out.push_back(Event::Login { user, password });
    }
}

impl PreAuth for ImapPreAuth {
    fn greeting(&self) -> Vec<u8> {
        format!(
            "* OK [CAPABILITY {}] {} mailgate ready\r\n",
            self.capabilities(),
            self.opts.hostname
        )
        .into_bytes()
    }

    fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn next_event(&mut self) -> Option<Event> {
        if let Some(e) = self.out.pop_front() {
            return Some(e);
        }
        match self.phase.clone() {
            Phase::Command => self.next_command(),
            Phase::SaslPlain { tag } => self.next_sasl(tag),
            Phase::AwaitLogin { .. } | Phase::AwaitTls | Phase::Closed => None,
        }
    }

    fn login_failed(&mut self, failure: &Failure) {
        let code = match failure {
            Failure::BadCredentials | Failure::Refused(_) => "AUTHENTICATIONFAILED",
            Failure::NeedsAuthorization(_) => "ALERT",
            Failure::Unavailable(_) | Failure::Throttled(_) => "UNAVAILABLE",
        };
        self.fail(code, failure.text(), failure.counts());
    }

    fn timeout_reply(&self, limit: std::time::Duration) -> Vec<u8> {
        format!(
            "* BYE Autologout: no login within {}\r\n",
            humantime::format_duration(limit)
        )
        .into_bytes()
    }

    fn into_residual(self) -> Vec<u8> {
        self.buf
    }

    fn tls_started(&mut self) {
        self.opts.tls_started();
        self.buf.clear();
        self.framer.reset();
        self.phase = Phase::Command;
    }
}

/// The framer's caps: a line, a LOGIN literal, and a whole command of both.
fn limits(o: &Options) -> Limits {
    Limits {
        max_line: o.max_line,
        max_literal: u32::try_from(o.max_literal).unwrap_or(u32::MAX),
        max_message: 2 * (o.max_line + o.max_literal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testing::run;
    use secrecy::ExposeSecret;

    fn login_of(m: &ImapPreAuth, e: Option<Event>) -> (String, String, String) {
        match e {
            Some(Event::Login { user, password }) => (
                m.pending_tag().unwrap_or_default().to_owned(),
                user,
                password.expose_secret().to_owned(),
            ),
            other => panic!("expected a login, got {other:?}"),
        }
    }

    #[test]
    fn greeting_and_local_commands() {
        let mut m = ImapPreAuth::new(Options::default());
        assert_eq!(
            String::from_utf8_lossy(&m.greeting()).replace("localhost", "gw"),
            "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN] gw mailgate ready\r\n"
        );
        let (w, e) = run(&mut m, b"a CAPABILITY\r\nb NOOP\r\nc ID NIL\r\n");
        assert!(e.is_none());
        assert_eq!(
            w,
            "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN\r\na OK CAPABILITY completed\r\n\
             b OK NOOP completed\r\n\
             * ID (\"name\" \"mailgate\" \"version\" \"0.1.0\")\r\nc OK ID completed\r\n"
        );
        let (w, e) = run(&mut m, b"d SELECT INBOX\r\ne STARTTLS\r\n!!\r\n");
        assert!(e.is_none());
        assert!(
            w.starts_with("d BAD SELECT is not available before login"),
            "{w}"
        );
        assert!(w.contains("e BAD STARTTLS is not offered"), "{w}");
        assert!(w.ends_with("* BAD Invalid command syntax\r\n"), "{w}");
        let (w, e) = run(&mut m, b"z LOGOUT\r\n");
        assert_eq!(w, "* BYE Logging out\r\nz OK LOGOUT completed\r\n");
        assert!(matches!(e, Some(Event::Close(End::ClientClosed))));
    }

    #[test]
    fn starttls_discards_pipelined_input_and_is_not_offered_twice() {
        let mut m = ImapPreAuth::new(Options {
            starttls: true,
            auth_before_tls: false,
            ..Options::default()
        });
        assert!(String::from_utf8_lossy(&m.greeting()).contains("ID STARTTLS LOGINDISABLED]"));
        let (w, e) = run(&mut m, b"a LOGIN u p\r\n");
        assert!(w.starts_with("a NO [PRIVACYREQUIRED]"), "{w}");
        assert!(e.is_none());
        let (w, e) = run(&mut m, b"b STARTTLS\r\nc LOGIN injected pw\r\n");
        assert_eq!(w, "b OK Begin TLS negotiation now\r\n");
        assert!(matches!(e, Some(Event::StartTls)));
        assert!(
            m.next_event().is_none(),
            "nothing is parsed before the handshake"
        );
        m.tls_started();
        let (w, e) = run(&mut m, b"d CAPABILITY\r\ne STARTTLS\r\n");
        assert!(e.is_none(), "the injected LOGIN was dropped");
        assert_eq!(
            w,
            "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN\r\nd OK CAPABILITY completed\r\ne BAD TLS is already active\r\n"
        );
        let (_, e) = run(&mut m, b"f LOGIN u p\r\n");
        assert_eq!(login_of(&m, e).1, "u");
    }

    #[test]
    fn tag_cap() {
        let mut m = ImapPreAuth::new(Options {
            max_tag: 4,
            ..Options::default()
        });
        let (w, _) = run(&mut m, b"abcd NOOP\r\nabcde NOOP\r\n");
        assert_eq!(
            w,
            "abcd OK NOOP completed\r\n* BAD Tag too long (limit 4 characters)\r\n"
        );
    }

    #[test]
    fn login_forms() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"a LOGIN alice secret\r\n", "alice", "secret"),
            (
                b"a LOGIN \"al ice\" \"se\\\"cret\"\r\n",
                "al ice",
                "se\"cret",
            ),
            (
                b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n",
                "alice",
                "secret",
            ),
            (
                b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
                "alice",
                "secret",
            ),
            (
                b"a AUTHENTICATE PLAIN YWxpY2UAYWxpY2UAc2VjcmV0\r\n",
                "alice",
                "secret",
            ),
        ];
        for (input, user, pw) in cases {
            let mut m = ImapPreAuth::new(Options::default());
            let (w, e) = run(&mut m, input);
            assert_eq!(w, "");
            let (tag, u, p) = login_of(&m, e);
            assert_eq!((tag.as_str(), u.as_str(), p.as_str()), ("a", *user, *pw));
        }
    }

    #[test]
    fn synchronising_literals_get_continuations() {
        let mut m = ImapPreAuth::new(Options::default());
        let (w, e) = run(&mut m, b"a LOGIN {5}\r\n");
        assert_eq!(w, "+ Ready for literal data\r\n");
        assert!(e.is_none());
        let (w, e) = run(&mut m, b"alice {6}\r\n");
        assert_eq!(w, "+ Ready for literal data\r\n");
        assert!(e.is_none());
        let (w, e) = run(&mut m, b"secret\r\n");
        assert_eq!(w, "");
        assert_eq!(login_of(&m, e).2, "secret");
    }

    #[test]
    fn authenticate_plain_continuation_and_cancel() {
        let mut m = ImapPreAuth::new(Options::default());
        let (w, e) = run(&mut m, b"a AUTHENTICATE PLAIN\r\n");
        assert_eq!(w, "+ \r\n");
        assert!(e.is_none());
        let (w, e) = run(&mut m, b"*\r\n");
        assert_eq!(w, "a BAD AUTHENTICATE cancelled\r\n");
        assert!(e.is_none());
        let (w, _) = run(&mut m, b"b AUTHENTICATE PLAIN\r\n");
        assert_eq!(w, "+ \r\n");
        let (w, e) = run(&mut m, b"AGFsaWNlAHNlY3JldA==\r\n");
        assert_eq!(w, "");
        assert_eq!(login_of(&m, e).0, "b");
    }

    #[test]
    fn bad_sasl_responses() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"a AUTHENTICATE PLAIN AGFsaWNl\r\n",
                "a BAD Invalid SASL PLAIN response",
            ),
            (
                b"a AUTHENTICATE PLAIN =\r\n",
                "a BAD Invalid SASL PLAIN response",
            ),
            (
                b"a AUTHENTICATE CRAM-MD5\r\n",
                "a NO [CANNOT] Unsupported mechanism",
            ),
            (
                b"a AUTHENTICATE PLAIN Ym9iAGFsaWNlAHNlY3JldA==\r\n",
                "a NO [AUTHORIZATIONFAILED]",
            ),
        ];
        for (input, want) in cases {
            let mut m = ImapPreAuth::new(Options::default());
            let (w, e) = run(&mut m, input);
            assert!(e.is_none());
            assert!(w.starts_with(want), "{w}");
        }
    }

    #[test]
    fn residual_keeps_pipelined_commands() {
        let mut m = ImapPreAuth::new(Options::default());
        let (_, e) = run(
            &mut m,
            b"a LOGIN u p\r\nb SELECT INBOX\r\nc FETCH 1 BODY[]\r\n",
        );
        login_of(&m, e);
        assert!(
            m.next_event().is_none(),
            "nothing is parsed while the login is pending"
        );
        assert_eq!(m.pending_tag(), Some("a"));
        assert_eq!(m.into_residual(), b"b SELECT INBOX\r\nc FETCH 1 BODY[]\r\n");
    }

    #[test]
    fn three_failures_close() {
        let mut m = ImapPreAuth::new(Options::default());
        for i in 0..3 {
            let (_, e) = run(&mut m, b"a LOGIN u p\r\n");
            login_of(&m, e);
            m.login_failed(&Failure::BadCredentials);
            let (w, e) = run(&mut m, b"");
            if i < 2 {
                assert_eq!(w, "a NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
                assert!(e.is_none());
            } else {
                assert_eq!(
                    w,
                    "a NO [AUTHENTICATIONFAILED] Invalid credentials\r\n* BYE Too many failed login attempts\r\n"
                );
                assert!(matches!(e, Some(Event::Close(End::TooManyFailures))));
            }
        }
    }

    #[test]
    fn failures_that_do_not_count() {
        let mut m = ImapPreAuth::new(Options::default());
        for _ in 0..5 {
            let (_, e) = run(&mut m, b"a LOGIN u p\r\n");
            login_of(&m, e);
            m.login_failed(&Failure::Unavailable("try\r\nlater".into()));
            let (w, e) = run(&mut m, b"");
            assert_eq!(w, "a NO [UNAVAILABLE] try  later\r\n");
            assert!(e.is_none());
        }
    }

    #[test]
    fn overflow_closes() {
        let opts = Options {
            max_line: 32,
            max_literal: 16,
            ..Options::default()
        };
        let mut m = ImapPreAuth::new(opts.clone());
        let (w, e) = run(&mut m, &[b'x'; 40]);
        assert_eq!(w, "* BYE Line too long (limit 32 bytes)\r\n");
        assert!(matches!(e, Some(Event::Close(End::Refused))));
        assert!(m.next_event().is_none());

        let mut m = ImapPreAuth::new(opts);
        let (w, e) = run(&mut m, b"a LOGIN {17}\r\n");
        assert!(w.starts_with("* BYE Command too large"), "{w}");
        assert!(matches!(e, Some(Event::Close(End::Refused))));
    }

    /// Byte-by-byte delivery gives the same result as one chunk.
    #[test]
    fn split_points() {
        let input = b"a NOOP\r\nb LOGIN {5+}\r\nalice \"pw\"\r\nc NOOP\r\n";
        let mut m = ImapPreAuth::new(Options::default());
        let mut written = Vec::new();
        let mut login = None;
        for b in input {
            m.feed(std::slice::from_ref(b));
            while let Some(e) = m.next_event() {
                match e {
                    Event::Write(w) => written.extend(w),
                    e => login = Some(e),
                }
            }
        }
        assert_eq!(String::from_utf8_lossy(&written), "a OK NOOP completed\r\n");
        assert_eq!(login_of(&m, login).1, "alice");
        assert_eq!(m.into_residual(), b"c NOOP\r\n");
    }
}
