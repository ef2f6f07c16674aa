//! The POP3 pre-authentication state machine (SPEC §6), sans I/O.
//!
//! Greets with `+OK`, answers `CAPA`, takes `USER`/`PASS` and `AUTH PLAIN`
//! (with an initial response or after `+`), refuses `APOP`, and refuses
//! transaction commands before login. Nothing after the login is parsed.

use mailgate_proto::SecretString;
use mailgate_proto::pop3::{Command, decode_command, encode_multiline};
use mailgate_proto::sasl::{SaslLine, decode_sasl_line};

use crate::protocols::line::{LineCore, PlainError, plain_credentials};
use crate::session::login::Failure;
use crate::session::{End, Event, Options, PreAuth};

/// The one place where the gateway's CAPA list is written: `USER` and
/// `SASL` only while logins are accepted, `STLS` while offered.
pub fn capabilities(stls: bool, login_allowed: bool) -> Vec<&'static str> {
    let mut c = Vec::new();
    if login_allowed {
        c.extend(["USER", "SASL PLAIN"]);
    }
    c.extend(["RESP-CODES", "AUTH-RESP-CODE", "UIDL", "TOP"]);
    if stls {
        c.push("STLS");
    }
    c
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Command,
    /// `AUTH PLAIN` sent `+`; the response line is next.
    AuthPlain,
}

#[derive(Debug)]
pub struct Pop3PreAuth {
    opts: Options,
    core: LineCore,
    phase: Phase,
    /// The name given by `USER`.
    user: Option<String>,
}

impl Pop3PreAuth {
    pub fn new(opts: Options) -> Pop3PreAuth {
        Pop3PreAuth {
            opts,
            core: LineCore::default(),
            phase: Phase::Command,
            user: None,
        }
    }

    fn write(&mut self, s: impl Into<String>) {
        self.core.write(s);
    }

    fn step(&mut self) {
        let Some(line) = self.core.take_line(self.opts.max_line, |limit| {
            format!("-ERR Line too long (limit {limit} bytes)\r\n")
        }) else {
            return;
        };
        if self.phase == Phase::AuthPlain {
            self.phase = Phase::Command;
            match decode_sasl_line(&line) {
                Ok((_, SaslLine::Response(b64))) => self.plain(&b64),
                Ok((_, SaslLine::Cancel)) => self.write("-ERR Authentication cancelled\r\n"),
                Err(_) => self.write("-ERR Invalid base64 data\r\n"),
            }
            return;
        }
        if self.core.refuse_http(&line) {
            return;
        }
        let cmd = match decode_command(&line) {
            Ok((_, c)) => c,
            Err(_) => {
                self.write("-ERR Invalid command syntax\r\n");
                return;
            }
        };
        let login_allowed = self.opts.login_allowed();
        if !login_allowed
            && matches!(
                cmd,
                Command::User(_) | Command::Pass(_) | Command::Auth { .. }
            )
        {
            self.write("-ERR Use STLS first: this listener does not take passwords in clear\r\n");
            return;
        }
        match cmd {
            Command::Capa => {
                let mut r = b"+OK Capability list follows\r\n".to_vec();
                r.extend(encode_multiline(&capabilities(
                    self.opts.starttls,
                    self.opts.login_allowed(),
                )));
                self.core.out.push_back(Event::Write(r));
            }
            Command::User(name) => {
                self.user = Some(name);
                self.write("+OK Send PASS\r\n");
            }
            Command::Pass(pw) => match self.user.take() {
                Some(user) => self.ask_login(user, pw),
                None => self.write("-ERR No user name given; send USER first\r\n"),
            },
            Command::Auth {
                mechanism: None, ..
            } => {
                let mut r = b"+OK Mechanisms follow\r\n".to_vec();
                r.extend(encode_multiline(&["PLAIN"]));
                self.core.out.push_back(Event::Write(r));
            }
            Command::Auth {
                mechanism: Some(m),
                initial_response,
            } if m == "PLAIN" => match initial_response {
                Some(ir) => self.plain(&ir),
                None => {
                    self.write("+ \r\n");
                    self.phase = Phase::AuthPlain;
                }
            },
            Command::Auth { .. } => {
                self.write("-ERR Unsupported mechanism; use AUTH PLAIN or USER and PASS\r\n")
            }
            Command::Stls if self.opts.starttls => {
                self.write("+OK Begin TLS negotiation\r\n");
                self.core.start_tls();
            }
            Command::Stls if self.opts.tls => self.write("-ERR TLS is already active\r\n"),
            Command::Stls => self.write("-ERR STLS is not offered on this listener\r\n"),
            Command::Quit => self.core.close(
                &format!("+OK {} signing off\r\n", self.opts.hostname),
                End::ClientClosed,
            ),
            Command::Apop => {
                self.write("-ERR APOP is not supported; use USER and PASS or AUTH PLAIN\r\n")
            }
            Command::Noop | Command::Other(_) => {
                self.write("-ERR Not logged in; use USER and PASS or AUTH PLAIN first\r\n")
            }
        }
    }

    fn plain(&mut self, b64: &SecretString) {
        match plain_credentials(b64) {
            Ok((user, password)) => self.ask_login(user, password),
            Err(PlainError::Malformed(e)) => {
                self.write(format!("-ERR Invalid AUTH PLAIN response: {e}\r\n"))
            }
            Err(PlainError::OtherUser) => {
                self.write("-ERR [AUTH] Logging in as another user is not supported\r\n")
            }
        }
    }

    fn ask_login(&mut self, user: String, password: SecretString) {
        self.core.ask_login(user, password);
    }
}

impl PreAuth for Pop3PreAuth {
    fn greeting(&self) -> Vec<u8> {
        format!("+OK {} mailgate ready\r\n", self.opts.hostname).into_bytes()
    }

    fn feed(&mut self, data: &[u8]) {
        self.core.buf.extend_from_slice(data);
    }

    fn next_event(&mut self) -> Option<Event> {
        LineCore::next_event(self, |m| &mut m.core, Self::step)
    }

    fn login_failed(&mut self, failure: &Failure) {
        let reply = match failure {
            Failure::Unavailable(_) => "-ERR [SYS/TEMP]",
            // RFC 2449: the user is logging in too often.
            Failure::Throttled(_) => "-ERR [LOGIN-DELAY]",
            _ => "-ERR [AUTH]",
        };
        self.core
            .login_failed(failure, self.opts.max_failures, reply, "");
    }

    fn timeout_reply(&self, limit: std::time::Duration) -> Vec<u8> {
        format!(
            "-ERR Autologout: no login within {}\r\n",
            humantime::format_duration(limit)
        )
        .into_bytes()
    }

    fn into_residual(self) -> Vec<u8> {
        self.core.buf
    }

    fn tls_started(&mut self) {
        self.opts.tls_started();
        self.user = None;
        self.core.tls_started();
        self.phase = Phase::Command;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testing::{b64, creds, run};
    #[test]
    fn greeting_capa_and_refusals() {
        let mut m = Pop3PreAuth::new(Options::default());
        assert_eq!(m.greeting(), b"+OK localhost mailgate ready\r\n");
        let (w, _) = run(
            &mut m,
            b"CAPA\r\nAUTH\r\nSTAT\r\nAPOP a b\r\nSTLS\r\nPASS x\r\nAUTH CRAM-MD5\r\n",
        );
        assert_eq!(
            w,
            "+OK Capability list follows\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nUIDL\r\nTOP\r\n.\r\n\
             +OK Mechanisms follow\r\nPLAIN\r\n.\r\n\
             -ERR Not logged in; use USER and PASS or AUTH PLAIN first\r\n\
             -ERR APOP is not supported; use USER and PASS or AUTH PLAIN\r\n\
             -ERR STLS is not offered on this listener\r\n\
             -ERR No user name given; send USER first\r\n\
             -ERR Unsupported mechanism; use AUTH PLAIN or USER and PASS\r\n"
        );
        let (w, e) = run(&mut m, b"QUIT\r\n");
        assert_eq!(w, "+OK localhost signing off\r\n");
        assert!(matches!(e, Some(Event::Close(End::ClientClosed))));
    }

    #[test]
    fn stls_resets_and_drops_injected_commands() {
        let mut m = Pop3PreAuth::new(Options {
            starttls: true,
            auth_before_tls: false,
            ..Options::default()
        });
        let (w, _) = run(&mut m, b"CAPA\r\nUSER a\r\n");
        assert!(
            !w.contains("USER\r\n") && w.contains("STLS\r\n.\r\n"),
            "{w}"
        );
        assert!(
            w.ends_with("-ERR Use STLS first: this listener does not take passwords in clear\r\n"),
            "{w}"
        );
        let (w, e) = run(&mut m, b"STLS\r\nUSER a\r\nPASS injected\r\n");
        assert_eq!(w, "+OK Begin TLS negotiation\r\n");
        assert!(matches!(e, Some(Event::StartTls)));
        m.tls_started();
        let (w, e) = run(&mut m, b"PASS p\r\n");
        assert_eq!(
            w, "-ERR No user name given; send USER first\r\n",
            "USER from before TLS is forgotten"
        );
        assert!(e.is_none());
        let (w, _) = run(&mut m, b"STLS\r\nCAPA\r\n");
        assert!(
            w.starts_with("-ERR TLS is already active\r\n")
                && w.contains("USER\r\n")
                && !w.contains("STLS\r\n."),
            "{w}"
        );
    }

    #[test]
    fn login_forms() {
        let cases = vec![
            "USER alice\r\nPASS se cret\r\n".to_string(),
            format!("AUTH PLAIN {}\r\n", b64("\0alice\0se cret")),
        ];
        for input in cases {
            let mut m = Pop3PreAuth::new(Options::default());
            let (_, e) = run(&mut m, input.as_bytes());
            assert_eq!(creds(e), ("alice".into(), "se cret".into()));
        }
        let mut m = Pop3PreAuth::new(Options::default());
        let (w, e) = run(&mut m, b"AUTH PLAIN\r\n");
        assert_eq!(w, "+ \r\n");
        assert!(e.is_none());
        let (_, e) = run(&mut m, format!("{}\r\n", b64("\0alice\0pw")).as_bytes());
        assert_eq!(creds(e).1, "pw");
        let mut m = Pop3PreAuth::new(Options::default());
        let (w, _) = run(&mut m, b"AUTH PLAIN\r\n*\r\n");
        assert_eq!(w, "+ \r\n-ERR Authentication cancelled\r\n");
    }

    #[test]
    fn residual_and_failures() {
        let mut m = Pop3PreAuth::new(Options::default());
        let (_, e) = run(&mut m, b"USER a\r\nPASS p\r\nSTAT\r\nLIST\r\n");
        creds(e);
        assert!(m.next_event().is_none());
        m.login_failed(&Failure::Unavailable("down".into()));
        let (w, _) = run(&mut m, b"");
        assert!(w.starts_with("-ERR [SYS/TEMP] down\r\n"), "{w}");
        let mut m = Pop3PreAuth::new(Options::default());
        for i in 0..3 {
            let (_, e) = run(&mut m, b"USER a\r\nPASS p\r\n");
            creds(e);
            m.login_failed(&Failure::BadCredentials);
            let (w, e) = run(&mut m, b"");
            assert_eq!(w, "-ERR [AUTH] Invalid credentials\r\n");
            assert_eq!(
                matches!(e, Some(Event::Close(End::TooManyFailures))),
                i == 2
            );
        }
        let mut m = Pop3PreAuth::new(Options::default());
        let (_, e) = run(&mut m, b"USER a\r\nPASS p\r\nSTAT\r\nRETR 1\r\n");
        creds(e);
        assert_eq!(m.into_residual(), b"STAT\r\nRETR 1\r\n");
    }

    #[test]
    fn overlong_line_closes() {
        let mut m = Pop3PreAuth::new(Options {
            max_line: 10,
            ..Options::default()
        });
        let (w, e) = run(&mut m, b"USER aaaaaaaaaaaaaaa");
        assert_eq!(w, "-ERR Line too long (limit 10 bytes)\r\n");
        assert!(matches!(e, Some(Event::Close(End::Refused))));
    }
}
