//! The SMTP login (RFC 4954 AUTH with XOAUTH2), sans I/O.
//!
//! `smtps://`: greeting and `EHLO` over TLS. `smtp://`: greeting and
//! `EHLO` in clear, `STARTTLS` (required), `EHLO` again over TLS. The
//! `EHLO` name is the client's own. XOAUTH2 is sent after the `334` (both
//! providers accept that form), or inline when asked (Gmail accepts it and
//! it saves a round trip). An error challenge (`334 <base64 JSON>`) is
//! answered with an empty line; a final 4xx is a temporary failure, any
//! other a rejected token.

use secrecy::SecretString;

use super::{Core, Failure, Step, with_challenge};
use crate::smtp::{Reply, decode_reply};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Greeting,
    Ehlo,
    StartTls,
    Tls,
    /// `AUTH XOAUTH2` without the token sent: a `334` comes next.
    Ready,
    /// The token sent.
    Auth {
        challenge: Option<String>,
    },
}

/// An SMTP XOAUTH2 login.
#[derive(Debug)]
pub struct Login {
    core: Core,
    phase: Phase,
    ehlo: String,
    inline: bool,
}

impl Login {
    /// `ehlo`: the name to greet with; `inline`: the token on the `AUTH`
    /// line; `tls`: the connection is already TLS (`smtps://`).
    pub fn new(user: &str, token: &SecretString, ehlo: &str, inline: bool, tls: bool) -> Login {
        Login {
            core: Core::new(user, token, tls),
            phase: Phase::Greeting,
            ehlo: ehlo.to_owned(),
            inline,
        }
    }

    fn ehlo(&mut self) {
        self.core
            .send(format!("EHLO {}\r\n", self.ehlo).into_bytes());
        self.phase = Phase::Ehlo;
    }

    /// A reply other than the one expected: 4xx is temporary.
    fn unexpected(&mut self, what: &str, r: &Reply) {
        let detail = format!("{what}: {} {}", r.code, r.text());
        self.core.fail(if (400..500).contains(&r.code) {
            Failure::Unavailable(detail)
        } else {
            Failure::Protocol(detail)
        });
    }

    fn rejection(&mut self, r: &Reply, challenge: Option<String>) {
        let detail = with_challenge(format!("{} {}", r.code, r.text()), challenge);
        self.core.fail(if (400..500).contains(&r.code) {
            Failure::Unavailable(detail)
        } else {
            Failure::Rejected(detail)
        });
    }

    /// TLS is up after STARTTLS: what comes next.
    fn resume(&mut self) {
        // No greeting after STARTTLS: EHLO again.
        self.ehlo();
    }

    fn step(&mut self) -> bool {
        let Some(r) = self.core.take(decode_reply) else {
            return false;
        };
        match self.phase.clone() {
            Phase::Greeting if r.code == 220 => self.ehlo(),
            Phase::Greeting => self.unexpected("greeting", &r),
            Phase::Ehlo if r.code != 250 => self.unexpected("EHLO", &r),
            Phase::Ehlo if !self.core.tls => {
                if !r.ehlo_keywords().iter().any(|(k, _)| k == "STARTTLS") {
                    self.core.fail(Failure::Protocol(
                        "the server does not offer STARTTLS; mailgate never sends a token in clear (use smtps:// if the server has implicit TLS)".into(),
                    ));
                } else {
                    self.core.send(b"STARTTLS\r\n".to_vec());
                    self.phase = Phase::StartTls;
                }
            }
            Phase::Ehlo if self.inline => {
                self.core.send_xoauth2("AUTH XOAUTH2 ");
                self.phase = Phase::Auth { challenge: None };
            }
            Phase::Ehlo => {
                self.core.send(b"AUTH XOAUTH2\r\n".to_vec());
                self.phase = Phase::Ready;
            }
            Phase::StartTls if r.code == 220 => {
                self.phase = Phase::Tls;
                self.core.out.push_back(Step::StartTls);
            }
            Phase::StartTls => self.unexpected("STARTTLS", &r),
            Phase::Tls => {}
            Phase::Ready if r.code == 334 => {
                self.core.send_xoauth2("");
                self.phase = Phase::Auth { challenge: None };
            }
            Phase::Ready => self.rejection(&r, None),
            Phase::Auth { challenge } if r.code == 235 => {
                let _ = challenge;
                self.core.done(None);
            }
            Phase::Auth { challenge: None } if r.code == 334 => {
                let c = self.core.challenge(&r.text());
                self.phase = Phase::Auth { challenge: Some(c) };
            }
            Phase::Auth { challenge } => self.rejection(&r, challenge),
        }
        true
    }
}

super::steps!(Login);

#[cfg(test)]
mod tests {
    use super::super::Note;
    use super::super::testing::{ir, last, play, run, sent, split_everywhere};
    use super::*;

    fn machine(inline: bool, tls: bool) -> Login {
        Login::new(
            "alice@example.test",
            &SecretString::from("tok"),
            "client.example",
            inline,
            tls,
        )
    }

    const OFFICE365: [&[u8]; 6] = [
        b"220 AM0PR02CA0001.outlook.office365.com Microsoft ESMTP MAIL Service ready\r\n",
        b"250-AM0PR02CA0001.outlook.office365.com Hello [1.2.3.4]\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n",
        b"220 2.0.0 SMTP server ready\r\n",
        b"250-AM0PR02CA0001.outlook.office365.com Hello [1.2.3.4]\r\n250-SIZE 157286400\r\n250-AUTH LOGIN XOAUTH2\r\n250 SMTPUTF8\r\n",
        b"334 \r\n",
        b"235 2.7.0 Authentication successful\r\n",
    ];

    #[test]
    fn office365_starttls_and_success() {
        let steps = play(machine(false, false), &OFFICE365, usize::MAX);
        assert_eq!(
            sent(&steps),
            format!(
                "EHLO client.example\r\nSTARTTLS\r\nEHLO client.example\r\nAUTH XOAUTH2\r\n{}\r\n",
                ir()
            )
        );
        assert!(steps.contains(&Step::StartTls));
        assert!(matches!(last(&steps), Some(Step::Done(s)) if s.capabilities.is_none()));
        split_everywhere(|| machine(false, false), &OFFICE365);
    }

    #[test]
    fn office365_refusals() {
        for (reply, temporary) in [
            (&b"535 5.7.3 Authentication unsuccessful [AM0PR02CA0001]\r\n"[..], false),
            (b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.\r\n", false),
            (b"454 4.7.0 Temporary authentication failure\r\n", true),
        ] {
            let steps = play(
                machine(false, true),
                &[b"220 ready\r\n", b"250-x\r\n250 AUTH XOAUTH2\r\n", b"334 \r\n", reply],
                usize::MAX,
            );
            match last(&steps) {
                Some(Step::Failed(Failure::Unavailable(_))) => assert!(temporary),
                Some(Step::Failed(Failure::Rejected(d))) => {
                    assert!(!temporary);
                    assert!(d.starts_with("535 5.7."), "{d}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn gmail_inline_and_error_challenge() {
        let mut m = machine(true, true);
        run(&mut m, b"220 smtp.gmail.com ESMTP x1sm ready\r\n");
        let steps = run(
            &mut m,
            b"250-smtp.gmail.com at your service\r\n250-SIZE 35882577\r\n250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH\r\n250 SMTPUTF8\r\n",
        );
        assert_eq!(sent(&steps), format!("AUTH XOAUTH2 {}\r\n", ir()));
        let steps = run(
            &mut m,
            b"334 eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==\r\n",
        );
        assert!(matches!(&steps[0], Step::Note(Note::Challenge(j)) if j.contains("400")));
        assert_eq!(sent(&steps), "\r\n");
        let steps = run(
            &mut m,
            b"535-5.7.8 Username and Password not accepted. For more information, go to\r\n535 5.7.8  https://support.google.com/mail/?p=BadCredentials x1sm\r\n",
        );
        assert!(
            matches!(last(&steps), Some(Step::Failed(Failure::Rejected(d))) if d.contains("challenge"))
        );
    }

    #[test]
    fn postfix_without_starttls_and_garbage() {
        let steps = play(
            machine(false, false),
            &[
                b"220 mx.example ESMTP Postfix (Debian/GNU)\r\n",
                b"250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            ],
            usize::MAX,
        );
        assert!(
            matches!(last(&steps), Some(Step::Failed(Failure::Protocol(r))) if r.contains("STARTTLS"))
        );
        assert!(!sent(&steps).contains("AUTH"), "no token in clear");
        let steps = play(machine(false, true), &[b"421 4.3.2 busy\r\n"], usize::MAX);
        assert!(matches!(
            last(&steps),
            Some(Step::Failed(Failure::Unavailable(_)))
        ));
        let steps = play(machine(false, true), &[b"* OK IMAP here\r\n"], usize::MAX);
        assert!(matches!(
            last(&steps),
            Some(Step::Failed(Failure::Protocol(_)))
        ));
        let steps = play(
            machine(false, false),
            &[
                b"220 x\r\n",
                b"250-x\r\n250 STARTTLS\r\n",
                b"454 4.7.0 TLS not available\r\n",
            ],
            usize::MAX,
        );
        assert!(matches!(
            last(&steps),
            Some(Step::Failed(Failure::Unavailable(_)))
        ));
    }
}
