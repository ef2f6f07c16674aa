//! The POP3 login (RFC 5034 AUTH with XOAUTH2), sans I/O.
//!
//! `pop3s://`: the greeting over TLS. `pop3://`: greeting and `CAPA` in
//! clear, `STLS` (required), then TLS. XOAUTH2 goes as `AUTH XOAUTH2`, wait
//! for `+`, then the base64 line (the form Microsoft requires). An error
//! challenge (`+ <base64 JSON>`) is answered with an empty line; a final
//! `-ERR [SYS/...]` is a temporary failure, any other a rejected token.

use secrecy::SecretString;

use super::{Core, Failure, Step, with_challenge};
use crate::pop3::{Reply, decode_multiline, decode_reply};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Greeting,
    Capa,
    /// `+OK` to CAPA: the list follows.
    CapaList,
    Stls,
    Tls,
    /// `AUTH XOAUTH2` sent: a `+` comes next.
    Ready,
    Auth {
        challenge: Option<String>,
    },
}

/// A POP3 XOAUTH2 login.
#[derive(Debug)]
pub struct Login {
    core: Core,
    phase: Phase,
}

impl Login {
    /// `tls`: the connection is already TLS (`pop3s://`); else STLS is
    /// required before the token is sent.
    pub fn new(user: &str, token: &SecretString, tls: bool) -> Login {
        Login {
            core: Core::new(user, token, tls),
            phase: Phase::Greeting,
        }
    }

    /// `+OK`, or the failure it is: `[SYS/TEMP]` and `[IN-USE]` are
    /// temporary, anything else a protocol violation.
    fn expect_ok(&mut self, what: &str, r: Reply) -> bool {
        match r {
            Reply::Ok(_) => true,
            Reply::Err { code, text }
                if code
                    .as_deref()
                    .is_some_and(|c| c.starts_with("SYS/TEMP") || c == "IN-USE") =>
            {
                self.core
                    .fail(Failure::Unavailable(format!("{what}: {text}")));
                false
            }
            other => {
                self.core.fail(Failure::Protocol(format!(
                    "{what}: unexpected reply {other:?}"
                )));
                false
            }
        }
    }

    fn auth(&mut self) {
        self.core.send(b"AUTH XOAUTH2\r\n".to_vec());
        self.phase = Phase::Ready;
    }

    fn stls_if_offered(&mut self, caps: &[String]) {
        if caps.iter().any(|c| c.trim().eq_ignore_ascii_case("STLS")) {
            self.core.send(b"STLS\r\n".to_vec());
            self.phase = Phase::Stls;
        } else {
            self.core.fail(Failure::Protocol(
                "the server does not offer STLS; mailgate never sends a token in clear (use pop3s:// if the server has implicit TLS)".into(),
            ));
        }
    }

    /// TLS is up after STARTTLS: what comes next.
    fn resume(&mut self) {
        // No greeting after STLS.
        self.auth();
    }

    fn step(&mut self) -> bool {
        if self.phase == Phase::CapaList {
            let Some(caps) = self.core.take(decode_multiline) else {
                return false;
            };
            self.stls_if_offered(&caps);
            return true;
        }
        let Some(r) = self.core.take(decode_reply) else {
            return false;
        };
        match self.phase.clone() {
            Phase::Greeting => {
                if self.expect_ok("greeting", r) {
                    if self.core.tls {
                        self.auth();
                    } else {
                        self.core.send(b"CAPA\r\n".to_vec());
                        self.phase = Phase::Capa;
                    }
                }
            }
            Phase::Capa => match r {
                Reply::Ok(_) => self.phase = Phase::CapaList,
                _ => self.stls_if_offered(&[]),
            },
            Phase::CapaList | Phase::Tls => {}
            Phase::Stls => {
                if self.expect_ok("STLS", r) {
                    self.phase = Phase::Tls;
                    self.core.out.push_back(Step::StartTls);
                }
            }
            Phase::Ready => match r {
                Reply::Continuation(_) => {
                    self.core.send_xoauth2("");
                    self.phase = Phase::Auth { challenge: None };
                }
                Reply::Err { text, .. } => self
                    .core
                    .fail(Failure::Protocol(format!("AUTH XOAUTH2 refused: {text}"))),
                Reply::Ok(text) => self.core.fail(Failure::Protocol(format!(
                    "AUTH XOAUTH2 answered +OK {text}"
                ))),
            },
            Phase::Auth { challenge } => match r {
                Reply::Ok(_) => self.core.done(None),
                Reply::Continuation(text) if challenge.is_none() => {
                    let c = self.core.challenge(&text);
                    self.phase = Phase::Auth { challenge: Some(c) };
                }
                Reply::Continuation(_) => self.core.fail(Failure::Protocol(
                    "a second challenge after the empty response".into(),
                )),
                Reply::Err { code, text } => {
                    let detail = match &code {
                        Some(c) => format!("[{c}] {text}"),
                        None => text,
                    };
                    let detail = with_challenge(detail, challenge);
                    self.core
                        .fail(if code.as_deref().is_some_and(|c| c.starts_with("SYS")) {
                            Failure::Unavailable(detail)
                        } else {
                            Failure::Rejected(detail)
                        });
                }
            },
        }
        true
    }
}

super::steps!(Login);

#[cfg(test)]
mod tests {
    use super::super::testing::{ir, last, play, sent, split_everywhere};
    use super::*;

    fn machine(tls: bool) -> Login {
        Login::new("alice@example.test", &SecretString::from("tok"), tls)
    }

    const DOVECOT_STLS: [&[u8]; 5] = [
        b"+OK Dovecot (Debian) ready.\r\n",
        b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\nSASL\r\n.\r\n",
        b"+OK Begin TLS negotiation now.\r\n",
        b"+ \r\n",
        b"+OK Logged in.\r\n",
    ];

    #[test]
    fn dovecot_stls_and_success() {
        let steps = play(machine(false), &DOVECOT_STLS, usize::MAX);
        assert_eq!(
            sent(&steps),
            format!("CAPA\r\nSTLS\r\nAUTH XOAUTH2\r\n{}\r\n", ir())
        );
        assert!(steps.contains(&Step::StartTls));
        assert!(matches!(last(&steps), Some(Step::Done(_))));
        split_everywhere(|| machine(false), &DOVECOT_STLS);
    }

    #[test]
    fn office365_challenge_and_failures() {
        let steps = play(
            machine(true),
            &[
                b"+OK The Microsoft Exchange POP3 service is ready.\r\n",
                b"+ \r\n",
                b"+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0=\r\n",
                b"-ERR Authentication failure: unknown user name or bad password.\r\n",
            ],
            usize::MAX,
        );
        assert!(sent(&steps).ends_with(&format!("{}\r\n\r\n", ir())));
        assert!(
            matches!(last(&steps), Some(Step::Failed(Failure::Rejected(d))) if d.contains("challenge"))
        );
        let steps = play(
            machine(true),
            &[
                b"+OK ready\r\n",
                b"+ \r\n",
                b"-ERR [SYS/TEMP] try later\r\n",
            ],
            usize::MAX,
        );
        assert!(matches!(
            last(&steps),
            Some(Step::Failed(Failure::Unavailable(_)))
        ));
        let steps = play(machine(true), &[b"-ERR [IN-USE] locked\r\n"], usize::MAX);
        assert!(matches!(
            last(&steps),
            Some(Step::Failed(Failure::Unavailable(_)))
        ));
        let steps = play(
            machine(true),
            &[b"+OK ready\r\n", b"-ERR no XOAUTH2\r\n"],
            usize::MAX,
        );
        assert!(
            matches!(last(&steps), Some(Step::Failed(Failure::Protocol(r))) if r.contains("refused"))
        );
    }

    #[test]
    fn no_stls_and_garbage() {
        let steps = play(
            machine(false),
            &[b"+OK ready\r\n", b"+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n"],
            usize::MAX,
        );
        assert!(
            matches!(last(&steps), Some(Step::Failed(Failure::Protocol(r))) if r.contains("STLS"))
        );
        assert!(!sent(&steps).contains("AUTH"), "no token in clear");
        let steps = play(
            machine(false),
            &[b"+OK ready\r\n", b"-ERR no CAPA\r\n"],
            usize::MAX,
        );
        assert!(matches!(
            last(&steps),
            Some(Step::Failed(Failure::Protocol(_)))
        ));
        let steps = play(machine(true), &[b"220 smtp here\r\n"], usize::MAX);
        assert!(
            matches!(last(&steps), Some(Step::Failed(Failure::Protocol(_)))),
            "{steps:?}"
        );
    }
}
