//! The SMTP pre-authentication state machine (SPEC §6), sans I/O.
//!
//! Greets, answers `EHLO`/`HELO` locally with the gateway's own capabilities,
//! takes `AUTH PLAIN` (inline or after `334`) and `AUTH LOGIN`, refuses mail
//! commands before authentication with `530 5.7.0`, and remembers the
//! client's EHLO name for the upstream. Nothing after the `AUTH` exchange is
//! parsed: pipelined `MAIL`/`RCPT`/`DATA` stay in the buffer for the relay.

use mailgate_proto::sasl::{SaslLine, decode_base64, decode_sasl_line};
use mailgate_proto::smtp::{Command, decode_command};
use mailgate_proto::{ExposeSecret, SecretString};

use crate::protocols::line::{LineCore, PlainError, plain_credentials};
use crate::session::login::Failure;
use crate::session::{End, Event, Options, PreAuth};

/// The one place where the gateway's EHLO keywords are written: `AUTH`
/// only while logins are accepted, `STARTTLS` while offered.
pub fn ehlo_keywords(starttls: bool, login_allowed: bool) -> Vec<&'static str> {
    let mut k = Vec::new();
    if login_allowed {
        k.push("AUTH PLAIN LOGIN");
    }
    k.extend(["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]);
    if starttls {
        k.push("STARTTLS");
    }
    k
}

#[derive(Debug, Clone)]
enum Phase {
    Command,
    /// `AUTH PLAIN` sent `334`; the response line is next.
    AuthPlain,
    /// `AUTH LOGIN` asked for the user name.
    AuthLoginUser,
    /// `AUTH LOGIN` asked for the password.
    AuthLoginPassword {
        user: String,
    },
}

#[derive(Debug)]
pub struct SmtpPreAuth {
    opts: Options,
    core: LineCore,
    phase: Phase,
    /// The client's EHLO/HELO name.
    ehlo: Option<String>,
}

const USERNAME_PROMPT: &str = "334 VXNlcm5hbWU6\r\n"; // "Username:"
const PASSWORD_PROMPT: &str = "334 UGFzc3dvcmQ6\r\n"; // "Password:"

impl SmtpPreAuth {
    pub fn new(opts: Options) -> SmtpPreAuth {
        SmtpPreAuth {
            opts,
            core: LineCore::default(),
            phase: Phase::Command,
            ehlo: None,
        }
    }

    /// The name the client gave in EHLO/HELO, for the upstream's EHLO.
    pub fn ehlo_name(&self) -> Option<&str> {
        self.ehlo.as_deref()
    }

    fn write(&mut self, s: impl Into<String>) {
        self.core.write(s);
    }

    fn ehlo_reply(&self, name: &str) -> String {
        let mut lines = vec![format!("{} Hello {name}", self.opts.hostname)];
        lines.extend(
            ehlo_keywords(self.opts.starttls, self.opts.login_allowed())
                .iter()
                .map(|k| k.to_string()),
        );
        let reply = mailgate_proto::smtp::Reply { code: 250, lines };
        String::from_utf8_lossy(&reply.encode()).into_owned()
    }

    fn step(&mut self) {
        let Some(line) = self.core.take_line(self.opts.max_line, |limit| {
            format!("500 5.5.6 Line too long (limit {limit} bytes)\r\n")
        }) else {
            return;
        };
        if matches!(self.phase, Phase::Command) && self.core.refuse_http(&line) {
            return;
        }
        match self.phase.clone() {
            Phase::Command => self.command(&line),
            Phase::AuthPlain => {
                self.phase = Phase::Command;
                if let Some(b64) = self.sasl_response(&line) {
                    self.plain(&b64);
                }
            }
            Phase::AuthLoginUser => {
                self.phase = Phase::Command;
                if let Some(user) = self.sasl_text(&line) {
                    self.write(PASSWORD_PROMPT);
                    self.phase = Phase::AuthLoginPassword {
                        user: user.expose_secret().to_owned(),
                    };
                }
            }
            Phase::AuthLoginPassword { user } => {
                self.phase = Phase::Command;
                if let Some(pw) = self.sasl_text(&line) {
                    self.ask_login(user, pw);
                }
            }
        }
    }

    /// A SASL response line; `None` (with the reply queued) when cancelled
    /// or malformed.
    fn sasl_response(&mut self, line: &[u8]) -> Option<SecretString> {
        match decode_sasl_line(line) {
            Ok((_, SaslLine::Response(b64))) => Some(b64),
            Ok((_, SaslLine::Cancel)) => {
                self.write("501 5.0.0 Authentication cancelled\r\n");
                None
            }
            Err(_) => {
                self.write("501 5.5.2 Invalid base64 data\r\n");
                None
            }
        }
    }

    /// A SASL response decoded as UTF-8 text (AUTH LOGIN fields).
    fn sasl_text(&mut self, line: &[u8]) -> Option<SecretString> {
        let b64 = self.sasl_response(line)?;
        let text = decode_base64(b64.expose_secret().as_bytes())
            .ok()
            .and_then(|raw| String::from_utf8(raw.expose_secret().to_vec()).ok());
        match text {
            Some(t) => Some(SecretString::from(t)),
            None => {
                self.write("501 5.5.2 Invalid base64 data\r\n");
                None
            }
        }
    }

    fn plain(&mut self, b64: &SecretString) {
        match plain_credentials(b64) {
            Ok((user, password)) => self.ask_login(user, password),
            Err(PlainError::Malformed(e)) => {
                self.write(format!("501 5.5.2 Invalid AUTH PLAIN response: {e}\r\n"))
            }
            Err(PlainError::OtherUser) => {
                self.write("535 5.7.8 Logging in as another user is not supported\r\n")
            }
        }
    }

    fn ask_login(&mut self, user: String, password: SecretString) {
        self.core.ask_login(user, password);
    }

    fn command(&mut self, line: &[u8]) {
        let cmd = match decode_command(line) {
            Ok((_, c)) => c,
            Err(_) => {
                self.write("501 5.5.4 Syntax error\r\n");
                return;
            }
        };
        match cmd {
            Command::Ehlo(name) => {
                let r = self.ehlo_reply(&name);
                self.ehlo = Some(name);
                self.write(r);
            }
            Command::Helo(name) => {
                self.write(format!("250 {}\r\n", self.opts.hostname));
                self.ehlo = Some(name);
            }
            Command::Auth { .. } if !self.opts.login_allowed() => {
                self.write("530 5.7.0 Must issue a STARTTLS command first\r\n");
            }
            Command::Auth { .. } if self.ehlo.is_none() => {
                self.write("503 5.5.1 Send EHLO first\r\n");
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => match (mechanism.as_str(), initial_response) {
                ("PLAIN", Some(ir)) => self.plain(&ir),
                ("PLAIN", None) => {
                    self.write("334 \r\n");
                    self.phase = Phase::AuthPlain;
                }
                ("LOGIN", None) => {
                    self.write(USERNAME_PROMPT);
                    self.phase = Phase::AuthLoginUser;
                }
                ("LOGIN", Some(ir)) => {
                    // RFC 4954 initial response: the user name.
                    let line = format!("{}\r\n", ir.expose_secret());
                    if let Some(user) = self.sasl_text(line.as_bytes()) {
                        self.write(PASSWORD_PROMPT);
                        self.phase = Phase::AuthLoginPassword {
                            user: user.expose_secret().to_owned(),
                        };
                    }
                }
                _ => {
                    self.write("504 5.5.4 Unrecognized authentication type; use PLAIN or LOGIN\r\n")
                }
            },
            Command::StartTls if self.opts.starttls => {
                self.write("220 2.0.0 Ready to start TLS\r\n");
                self.core.start_tls();
            }
            Command::StartTls if self.opts.tls => self.write("503 5.5.1 TLS already active\r\n"),
            Command::StartTls => self.write("454 4.7.0 TLS not available on this listener\r\n"),
            Command::Mail => self.write("530 5.7.0 Authentication required\r\n"),
            Command::Rset => self.write("250 2.0.0 OK\r\n"),
            Command::Noop => self.write("250 2.0.0 OK\r\n"),
            Command::Help => {
                self.write("214 2.0.0 Log in with AUTH PLAIN or AUTH LOGIN, then send mail\r\n")
            }
            Command::Quit => self.core.close(
                &format!("221 2.0.0 {} closing connection\r\n", self.opts.hostname),
                End::ClientClosed,
            ),
            Command::Other(verb) => match verb.as_str() {
                "RCPT" | "DATA" | "BDAT" | "VRFY" | "EXPN" | "ETRN" => {
                    self.write("530 5.7.0 Authentication required\r\n")
                }
                _ => self.write("500 5.5.2 Command not recognized\r\n"),
            },
        }
    }
}

impl PreAuth for SmtpPreAuth {
    fn greeting(&self) -> Vec<u8> {
        format!("220 {} ESMTP mailgate ready\r\n", self.opts.hostname).into_bytes()
    }

    fn feed(&mut self, data: &[u8]) {
        self.core.buf.extend_from_slice(data);
    }

    fn next_event(&mut self) -> Option<Event> {
        LineCore::next_event(self, |m| &mut m.core, Self::step)
    }

    fn login_failed(&mut self, failure: &Failure) {
        let reply = match failure {
            Failure::Unavailable(_) | Failure::Throttled(_) => "454 4.7.0",
            _ => "535 5.7.8",
        };
        self.core.login_failed(
            failure,
            self.opts.max_failures,
            reply,
            "421 4.7.0 Too many failed authentication attempts\r\n",
        );
    }

    fn timeout_reply(&self, limit: std::time::Duration) -> Vec<u8> {
        format!(
            "421 4.4.2 {} Timeout: no login within {}\r\n",
            self.opts.hostname,
            humantime::format_duration(limit)
        )
        .into_bytes()
    }

    fn into_residual(self) -> Vec<u8> {
        self.core.buf
    }

    fn tls_started(&mut self) {
        // RFC 3207 §4.2: forget what the client said in clear; it must EHLO
        // again.
        self.opts.tls_started();
        self.ehlo = None;
        self.core.tls_started();
        self.phase = Phase::Command;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testing::{b64, creds, run};
    #[test]
    fn greeting_ehlo_and_local_commands() {
        let mut m = SmtpPreAuth::new(Options::default());
        assert_eq!(m.greeting(), b"220 localhost ESMTP mailgate ready\r\n");
        let (w, e) = run(&mut m, b"EHLO client.example\r\nNOOP\r\nRSET\r\n");
        assert!(e.is_none());
        assert_eq!(
            w,
            "250-localhost Hello client.example\r\n250-AUTH PLAIN LOGIN\r\n250-PIPELINING\r\n\
             250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n250 2.0.0 OK\r\n250 2.0.0 OK\r\n"
        );
        assert_eq!(m.ehlo_name(), Some("client.example"));
        let (w, _) = run(
            &mut m,
            b"MAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\nSTARTTLS\r\nWHAT\r\nEHLO\r\n",
        );
        assert_eq!(
            w,
            "530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n\
             530 5.7.0 Authentication required\r\n454 4.7.0 TLS not available on this listener\r\n\
             500 5.5.2 Command not recognized\r\n501 5.5.4 Syntax error\r\n"
        );
        let (w, e) = run(&mut m, b"QUIT\r\n");
        assert_eq!(w, "221 2.0.0 localhost closing connection\r\n");
        assert!(matches!(e, Some(Event::Close(End::ClientClosed))));
    }

    #[test]
    fn starttls_resets_and_drops_injected_commands() {
        let mut m = SmtpPreAuth::new(Options {
            starttls: true,
            auth_before_tls: false,
            ..Options::default()
        });
        let (w, _) = run(&mut m, b"EHLO c\r\n");
        assert!(!w.contains("AUTH") && w.contains("250 STARTTLS"), "{w}");
        let (w, _) = run(
            &mut m,
            format!("AUTH PLAIN {}\r\n", b64("\0u\0p")).as_bytes(),
        );
        assert_eq!(w, "530 5.7.0 Must issue a STARTTLS command first\r\n");
        let injected = format!("STARTTLS\r\nAUTH PLAIN {}\r\n", b64("\0u\0p"));
        let (w, e) = run(&mut m, injected.as_bytes());
        assert_eq!(w, "220 2.0.0 Ready to start TLS\r\n");
        assert!(matches!(e, Some(Event::StartTls)));
        m.tls_started();
        let (w, e) = run(&mut m, b"");
        assert!(w.is_empty() && e.is_none(), "the injected AUTH was dropped");
        let (w, _) = run(
            &mut m,
            format!("AUTH PLAIN {}\r\n", b64("\0u\0p")).as_bytes(),
        );
        assert_eq!(w, "503 5.5.1 Send EHLO first\r\n", "EHLO again after TLS");
        let (w, _) = run(&mut m, b"EHLO c\r\nSTARTTLS\r\n");
        assert!(
            w.contains("250-AUTH PLAIN LOGIN") && !w.contains("250 STARTTLS"),
            "{w}"
        );
        assert!(w.ends_with("503 5.5.1 TLS already active\r\n"), "{w}");
    }

    #[test]
    fn auth_needs_ehlo_first() {
        let mut m = SmtpPreAuth::new(Options::default());
        let (w, e) = run(
            &mut m,
            format!("AUTH PLAIN {}\r\n", b64("\0u\0p")).as_bytes(),
        );
        assert_eq!(w, "503 5.5.1 Send EHLO first\r\n");
        assert!(e.is_none());
    }

    #[test]
    fn auth_forms() {
        let plain = b64("\0alice\0secret");
        let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
            (vec![format!("EHLO c\r\nAUTH PLAIN {plain}\r\n")], vec![]),
            (
                vec!["EHLO c\r\nAUTH PLAIN\r\n".into(), format!("{plain}\r\n")],
                vec!["334 \r\n"],
            ),
            (
                vec![
                    "HELO c\r\nAUTH LOGIN\r\n".into(),
                    format!("{}\r\n", b64("alice")),
                    format!("{}\r\n", b64("secret")),
                ],
                vec![USERNAME_PROMPT, PASSWORD_PROMPT],
            ),
            (
                vec![
                    format!("EHLO c\r\nAUTH LOGIN {}\r\n", b64("alice")),
                    format!("{}\r\n", b64("secret")),
                ],
                vec![PASSWORD_PROMPT],
            ),
        ];
        for (parts, prompts) in cases {
            let mut m = SmtpPreAuth::new(Options::default());
            let mut last = None;
            let mut seen = Vec::new();
            for p in parts {
                let (w, e) = run(&mut m, p.as_bytes());
                let w = w
                    .lines()
                    .filter(|l| l.starts_with("334"))
                    .map(|l| format!("{l}\n"))
                    .collect::<Vec<_>>();
                seen.extend(w);
                last = e;
            }
            assert_eq!(creds(last), ("alice".into(), "secret".into()));
            let want: Vec<String> = prompts.iter().map(|p| p.replace("\r\n", "\n")).collect();
            assert_eq!(seen, want);
        }
    }

    #[test]
    fn cancel_and_bad_base64() {
        let mut m = SmtpPreAuth::new(Options::default());
        run(&mut m, b"EHLO c\r\n");
        let (w, _) = run(&mut m, b"AUTH PLAIN\r\n*\r\n");
        assert_eq!(w, "334 \r\n501 5.0.0 Authentication cancelled\r\n");
        let (w, _) = run(&mut m, b"AUTH LOGIN\r\n!!!\r\n");
        assert_eq!(
            w,
            format!("{USERNAME_PROMPT}501 5.5.2 Invalid base64 data\r\n")
        );
        let (w, _) = run(&mut m, b"AUTH CRAM-MD5\r\n");
        assert!(w.starts_with("504 5.5.4"), "{w}");
        let (w, _) = run(
            &mut m,
            format!("AUTH PLAIN {}\r\n", b64("bob\0alice\0pw")).as_bytes(),
        );
        assert!(w.starts_with("535 5.7.8 Logging in as another user"), "{w}");
    }

    #[test]
    fn pipelined_mail_after_auth_is_residual() {
        let mut m = SmtpPreAuth::new(Options::default());
        let input = format!(
            "EHLO c\r\nAUTH PLAIN {}\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n",
            b64("\0alice\0secret")
        );
        let (_, e) = run(&mut m, input.as_bytes());
        creds(e);
        assert!(m.next_event().is_none());
        assert_eq!(
            m.into_residual(),
            b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"
        );
    }

    #[test]
    fn failures_and_limits() {
        let mut m = SmtpPreAuth::new(Options::default());
        run(&mut m, b"EHLO c\r\n");
        let login = format!("AUTH PLAIN {}\r\n", b64("\0u\0p"));
        run(&mut m, login.as_bytes());
        m.login_failed(&Failure::Unavailable("provider down".into()));
        let (w, _) = run(&mut m, b"");
        assert_eq!(w, "454 4.7.0 provider down\r\n");
        for i in 0..3 {
            let (_, e) = run(&mut m, login.as_bytes());
            creds(e);
            m.login_failed(&Failure::BadCredentials);
            let (w, e) = run(&mut m, b"");
            if i < 2 {
                assert_eq!(w, "535 5.7.8 Invalid credentials\r\n");
            } else {
                assert_eq!(
                    w,
                    "535 5.7.8 Invalid credentials\r\n421 4.7.0 Too many failed authentication attempts\r\n"
                );
                assert!(matches!(e, Some(Event::Close(End::TooManyFailures))));
            }
        }
        let mut m = SmtpPreAuth::new(Options {
            max_line: 16,
            ..Options::default()
        });
        let (w, e) = run(&mut m, &[b'x'; 20]);
        assert_eq!(w, "500 5.5.6 Line too long (limit 16 bytes)\r\n");
        assert!(matches!(e, Some(Event::Close(End::Refused))));
    }

    #[test]
    fn split_points() {
        let input = format!(
            "EHLO c\r\nNOOP\r\nAUTH PLAIN {}\r\nQUIT\r\n",
            b64("\0alice\0secret")
        );
        let mut m = SmtpPreAuth::new(Options::default());
        let mut login = None;
        for b in input.as_bytes() {
            m.feed(std::slice::from_ref(b));
            while let Some(e) = m.next_event() {
                if let Event::Login { .. } = e {
                    login = Some(e);
                }
            }
        }
        assert_eq!(creds(login).0, "alice");
        assert_eq!(m.into_residual(), b"QUIT\r\n");
    }
}
