//! The IMAP login (RFC 9051 AUTHENTICATE with XOAUTH2), sans I/O.
//!
//! `imaps://`: the greeting over TLS. `imap://`: the greeting and the
//! capabilities in clear, `STARTTLS` (required), then the capabilities
//! again over TLS. XOAUTH2 goes as an initial response when the server
//! offers SASL-IR, else after the `+`. An error challenge is answered with
//! an empty line and the final `NO` reported as a rejection
//! (`[UNAVAILABLE]` as a temporary failure).

use secrecy::SecretString;

use super::{Core, Failure, Note, Step, with_challenge};
use crate::DecodeError;
use crate::imap::{Code, Response, Status, decode_response};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Greeting,
    /// `tag CAPABILITY` sent; what comes after it.
    Capability {
        tag: &'static str,
        caps: Option<Vec<String>>,
    },
    /// `mg1 STARTTLS` sent.
    StartTls,
    /// Waiting for the handshake.
    Tls,
    /// `mg3 AUTHENTICATE XOAUTH2` without initial response sent.
    Continuation,
    /// The XOAUTH2 response sent.
    Auth {
        challenge: Option<String>,
        caps: Option<Vec<String>>,
    },
}

/// An IMAP XOAUTH2 login.
#[derive(Debug)]
pub struct Login {
    core: Core,
    phase: Phase,
}

impl Login {
    /// `tls`: the connection is already TLS (`imaps://`); else STARTTLS is
    /// required before the token is sent.
    pub fn new(user: &str, token: &SecretString, tls: bool) -> Login {
        Login {
            core: Core::new(user, token, tls),
            phase: Phase::Greeting,
        }
    }

    fn protocol(&mut self, reason: String) {
        self.core.fail(Failure::Protocol(reason));
    }

    /// The capabilities are known: STARTTLS first, or authenticate.
    fn with_capabilities(&mut self, caps: Vec<String>) {
        if !self.core.tls {
            if !has(&caps, "STARTTLS") {
                return self.protocol(
                    "the server does not offer STARTTLS; mailgate never sends a token in clear (use imaps:// if the server has implicit TLS)".into(),
                );
            }
            self.core.send(b"mg1 STARTTLS\r\n".to_vec());
            self.phase = Phase::StartTls;
            return;
        }
        if !has(&caps, "AUTH=XOAUTH2") {
            self.core.out.push_back(Step::Note(Note::NoXoauth2));
        }
        if has(&caps, "SASL-IR") {
            self.core.send_xoauth2("mg3 AUTHENTICATE XOAUTH2 ");
            self.phase = Phase::Auth {
                challenge: None,
                caps: None,
            };
        } else {
            self.core.send(b"mg3 AUTHENTICATE XOAUTH2\r\n".to_vec());
            self.phase = Phase::Continuation;
        }
    }

    fn capability(&mut self, tag: &'static str) {
        self.core.send(format!("{tag} CAPABILITY\r\n").into_bytes());
        self.phase = Phase::Capability { tag, caps: None };
    }

    /// One reply; false when none is complete.
    /// TLS is up after STARTTLS: what comes next.
    fn resume(&mut self) {
        // No greeting after STARTTLS: ask for the capabilities again.
        self.capability("mg2");
    }

    fn step(&mut self) -> bool {
        let Some(r) = self.core.take(line_response) else {
            return false;
        };
        match (self.phase.clone(), r) {
            (
                Phase::Greeting,
                Response::Status {
                    status: Status::Ok,
                    code,
                    ..
                },
            ) => match code {
                Some(Code::Capability(c)) => self.with_capabilities(c),
                _ => self.capability(if self.core.tls { "mg2" } else { "mg0" }),
            },
            (
                Phase::Greeting,
                Response::Status {
                    status: Status::Bye,
                    text,
                    ..
                },
            ) => self
                .core
                .fail(Failure::Unavailable(format!("greeted with BYE: {text}"))),
            (Phase::Greeting, other) => self.protocol(format!("unexpected greeting: {other:?}")),
            (Phase::Capability { tag, .. }, Response::Capability(c)) => {
                self.phase = Phase::Capability { tag, caps: Some(c) };
            }
            (
                Phase::Capability { tag, caps },
                Response::Tagged {
                    tag: t,
                    status,
                    code,
                    text,
                },
            ) if t == tag => {
                if status != Status::Ok {
                    return {
                        self.protocol(format!("CAPABILITY failed: {text}"));
                        true
                    };
                }
                let caps = match code {
                    Some(Code::Capability(c)) => Some(c),
                    _ => caps,
                };
                match caps {
                    Some(c) => self.with_capabilities(c),
                    None => self.protocol("no CAPABILITY in the reply".into()),
                }
            }
            (
                Phase::StartTls,
                Response::Tagged {
                    tag, status, text, ..
                },
            ) if tag == "mg1" => {
                if status != Status::Ok {
                    self.protocol(format!("STARTTLS refused: {text}"));
                } else {
                    self.phase = Phase::Tls;
                    self.core.out.push_back(Step::StartTls);
                }
            }
            (Phase::Continuation, Response::Continuation(_)) => {
                self.core.send_xoauth2("");
                self.phase = Phase::Auth {
                    challenge: None,
                    caps: None,
                };
            }
            (Phase::Continuation, Response::Tagged { text, .. }) => {
                self.protocol(format!("AUTHENTICATE XOAUTH2 refused: {text}"));
            }
            (Phase::Continuation, other) => self.protocol(format!("unexpected reply: {other:?}")),
            (Phase::Auth { caps, .. }, Response::Continuation(text)) => {
                let c = self.core.challenge(&text);
                self.phase = Phase::Auth {
                    challenge: Some(c),
                    caps,
                };
            }
            (Phase::Auth { challenge, .. }, Response::Capability(c)) => {
                self.phase = Phase::Auth {
                    challenge,
                    caps: Some(c),
                };
            }
            (
                Phase::Auth { .. },
                Response::Status {
                    status: Status::Bye,
                    text,
                    ..
                },
            ) => self
                .core
                .fail(Failure::Unavailable(format!("BYE during login: {text}"))),
            (
                Phase::Auth { challenge, caps },
                Response::Tagged {
                    tag,
                    status,
                    code,
                    text,
                },
            ) if tag == "mg3" => self.finish(status, code, text, challenge, caps),
            // Untagged lines, and tagged ones of no interest, are skipped.
            _ => {}
        }
        true
    }

    fn finish(
        &mut self,
        status: Status,
        code: Option<Code>,
        text: String,
        challenge: Option<String>,
        caps: Option<Vec<String>>,
    ) {
        if status == Status::Ok {
            let capabilities = match code {
                Some(Code::Capability(c)) => Some(c),
                _ => caps,
            };
            return self.core.done(capabilities);
        }
        let code_name = match &code {
            Some(Code::Other { name, .. }) => Some(name.clone()),
            _ => None,
        };
        let detail = match &code_name {
            Some(n) => format!("[{n}] {text}"),
            None => text,
        };
        let detail = with_challenge(detail, challenge);
        self.core
            .fail(if code_name.as_deref() == Some("UNAVAILABLE") {
                Failure::Unavailable(detail)
            } else {
                Failure::Rejected(detail)
            });
    }
}

super::steps!(Login);

fn has(caps: &[String], cap: &str) -> bool {
    caps.iter().any(|c| c.eq_ignore_ascii_case(cap))
}

/// One reply line off the front of `buf`.
fn line_response(buf: &[u8]) -> Result<(&[u8], Response), DecodeError> {
    let Some(i) = buf.iter().position(|b| *b == b'\n') else {
        return Err(DecodeError::Incomplete);
    };
    let (line, rest) = buf.split_at(i + 1);
    match decode_response(line) {
        Ok((_, r)) => Ok((rest, r)),
        Err(_) => Err(DecodeError::Failed { tag: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Machine as _;
    use super::super::testing::{ir, last, play, run, sent, split_everywhere};
    use super::*;

    fn machine(tls: bool) -> Login {
        Login::new("alice@example.test", &SecretString::from("tok"), tls)
    }

    /// Gmail: SASL-IR, success with untagged capabilities before the OK.
    const GMAIL_OK: [&[u8]; 2] = [
        b"* OK Gimap ready for requests from 1.2.3.4 x1mb\r\n",
        b"* CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584\r\nmg3 OK alice@example.test authenticated (Success)\r\n",
    ];

    #[test]
    fn gmail_success_and_error_challenge() {
        let mut m = machine(true);
        let steps = run(&mut m, GMAIL_OK[0]);
        assert_eq!(sent(&steps), "mg2 CAPABILITY\r\n");
        let steps = run(
            &mut m,
            b"* CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 XYZZY SASL-IR AUTH=XOAUTH2 AUTH=PLAIN AUTH=PLAIN-CLIENTTOKEN AUTH=OAUTHBEARER\r\nmg2 OK Thats all she wrote! x1mb\r\n",
        );
        assert_eq!(
            sent(&steps),
            format!("mg3 AUTHENTICATE XOAUTH2 {}\r\n", ir())
        );
        let steps = run(&mut m, GMAIL_OK[1]);
        match last(&steps) {
            Some(Step::Done(s)) => {
                assert!(
                    s.capabilities
                        .as_ref()
                        .is_some_and(|c| c.contains(&"IDLE".to_string()))
                );
                assert!(s.leftover.is_empty());
            }
            other => panic!("{other:?}"),
        }

        // A bad token: the challenge, answered with an empty line.
        let mut m = machine(true);
        run(
            &mut m,
            b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] Gimap ready\r\n",
        );
        let steps = run(
            &mut m,
            b"+ eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==\r\n",
        );
        assert!(
            matches!(&steps[0], Step::Note(Note::Challenge(j)) if j.contains("\"status\":\"400\""))
        );
        assert_eq!(sent(&steps), "\r\n");
        let steps = run(
            &mut m,
            b"mg3 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n",
        );
        match last(&steps) {
            Some(Step::Failed(Failure::Rejected(d))) => {
                assert!(
                    d.starts_with(
                        "[AUTHENTICATIONFAILED] Invalid credentials (Failure) (challenge {"
                    ),
                    "{d}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn office365_without_sasl_ir_and_plain_no() {
        let mut m = machine(true);
        let steps = play(
            machine(true),
            &[
                b"* OK The Microsoft Exchange IMAP4 service is ready. [TQBOADIAUABSADAA]\r\n",
                b"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+\r\nmg2 OK CAPABILITY completed.\r\n",
                b"mg3 NO AUTHENTICATE failed.\r\n",
            ],
            usize::MAX,
        );
        assert!(
            matches!(last(&steps), Some(Step::Failed(Failure::Rejected(d))) if d == "AUTHENTICATE failed.")
        );
        // Without SASL-IR: the command, the `+`, then the response.
        run(
            &mut m,
            b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready\r\n",
        );
        let steps = m.next();
        assert!(steps.is_none());
        let mut m = machine(true);
        let steps = run(
            &mut m,
            b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready\r\n",
        );
        assert_eq!(sent(&steps), "mg3 AUTHENTICATE XOAUTH2\r\n");
        let steps = run(&mut m, b"+ \r\n");
        assert_eq!(sent(&steps), format!("{}\r\n", ir()));
        let steps = run(
            &mut m,
            b"mg3 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n* 1 EXISTS\r\n",
        );
        match last(&steps) {
            Some(Step::Done(s)) => {
                assert_eq!(
                    s.capabilities.as_deref(),
                    Some(&["IMAP4rev1".to_string(), "IDLE".to_string()][..])
                );
                assert_eq!(s.leftover, b"* 1 EXISTS\r\n");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dovecot_starttls_and_unavailable() {
        let mut m = machine(false);
        let steps = run(
            &mut m,
            b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS LOGINDISABLED] Dovecot (Debian) ready.\r\n",
        );
        assert_eq!(sent(&steps), "mg1 STARTTLS\r\n");
        let steps = run(&mut m, b"mg1 OK Begin TLS negotiation now.\r\n");
        assert_eq!(last(&steps), Some(&Step::StartTls));
        assert!(m.next().is_none(), "nothing until TLS is up");
        m.tls_started();
        let steps = run(
            &mut m,
            b"* CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER\r\nmg2 OK Pre-login capabilities listed, post-login capabilities have more.\r\n",
        );
        assert!(sent(&steps).starts_with("mg2 CAPABILITY\r\nmg3 AUTHENTICATE XOAUTH2 "));
        let steps = run(
            &mut m,
            b"mg3 NO [UNAVAILABLE] Temporary authentication failure.\r\n",
        );
        assert!(matches!(
            last(&steps),
            Some(Step::Failed(Failure::Unavailable(_)))
        ));
    }

    #[test]
    fn starttls_missing_or_refused_and_garbage() {
        let mut m = machine(false);
        let steps = run(
            &mut m,
            b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready\r\n",
        );
        assert!(
            matches!(last(&steps), Some(Step::Failed(Failure::Protocol(r))) if r.contains("does not offer STARTTLS"))
        );
        assert_eq!(sent(&steps), "", "no token in clear");

        let steps = play(
            machine(false),
            &[
                b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n",
                b"mg1 BAD no\r\n",
            ],
            usize::MAX,
        );
        assert!(
            matches!(last(&steps), Some(Step::Failed(Failure::Protocol(r))) if r.contains("STARTTLS refused"))
        );

        let steps = play(
            machine(true),
            &[b"HTTP/1.1 400 Bad Request\r\n"],
            usize::MAX,
        );
        assert!(
            matches!(last(&steps), Some(Step::Failed(Failure::Protocol(r))) if r.contains("unexpected"))
        );
        let steps = play(machine(true), &[b"* BYE go away\r\n"], usize::MAX);
        assert!(matches!(
            last(&steps),
            Some(Step::Failed(Failure::Unavailable(_)))
        ));
        let steps = play(machine(true), &[&[b'x'; 70_000][..]], usize::MAX);
        assert!(
            matches!(last(&steps), Some(Step::Failed(Failure::Protocol(r))) if r.contains("too long"))
        );
    }

    #[test]
    fn split_at_every_byte() {
        split_everywhere(|| machine(true), &GMAIL_OK);
        split_everywhere(
            || machine(false),
            &[
                b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n",
                b"mg1 OK go\r\n",
                b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\nmg2 OK done\r\n",
                b"+ \r\n",
                b"+ e30=\r\n",
                b"mg3 NO [AUTHENTICATIONFAILED] no\r\n",
            ],
        );
    }
}
