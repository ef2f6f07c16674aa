//! SMTP (RFC 5321, RFC 4954 AUTH, RFC 3207 STARTTLS, RFC 2034 enhanced
//! status codes): the client commands the gateway handles before
//! authentication and the server replies it reads while logging in upstream.

use nom::Parser;
use nom::bytes::streaming::{tag, take_while, take_while_m_n, take_while1};
use nom::combinator::opt;
use nom::sequence::preceded;
use secrecy::SecretString;

use crate::lex::{base64_or_eq, crlf, fail, keyword, mechanism, to_line_end};
use crate::{DecodeError, NomResult, finish};

/// A client command before authentication.
#[derive(Debug)]
pub enum Command {
    /// `EHLO domain`
    Ehlo(String),
    /// `HELO domain`
    Helo(String),
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// Upper-cased.
        mechanism: String,
        /// Raw base64, `=` for an empty response.
        initial_response: Option<SecretString>,
    },
    StartTls,
    /// `MAIL FROM:...` (arguments not parsed).
    Mail,
    Rset,
    Noop,
    Quit,
    Help,
    /// Any other verb (`RCPT`, `DATA`, `VRFY`, ...), upper-cased; arguments
    /// not parsed.
    Other(String),
}

/// Decodes one command line.
pub fn decode_command(input: &[u8]) -> Result<(&[u8], Command), DecodeError> {
    finish(command(input), || None)
}

/// `command = verb [SP arguments] CRLF`
fn command(i: &[u8]) -> NomResult<'_, Command> {
    let (i, verb) = keyword(i)?;
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let (i, name) = preceded(tag(" "), domain).parse(i)?;
            let (i, _) = (take_while(|b| b == b' '), crlf).parse(i)?;
            Ok((
                i,
                if verb == "EHLO" {
                    Command::Ehlo(name)
                } else {
                    Command::Helo(name)
                },
            ))
        }
        "AUTH" => {
            let (i, mechanism) = preceded(tag(" "), mechanism).parse(i)?;
            let (i, ir) = opt(preceded(tag(" "), base64_or_eq)).parse(i)?;
            let (i, _) = crlf(i)?;
            Ok((
                i,
                Command::Auth {
                    mechanism,
                    initial_response: ir.map(SecretString::from),
                },
            ))
        }
        "STARTTLS" | "RSET" | "NOOP" | "QUIT" | "HELP" => {
            // These take no argument (NOOP and HELP may have one, ignored).
            let (i, rest) = rest_of_line(i)?;
            if !rest.is_empty() && matches!(verb.as_str(), "STARTTLS" | "RSET" | "QUIT") {
                return Err(fail(i));
            }
            Ok((
                i,
                match verb.as_str() {
                    "STARTTLS" => Command::StartTls,
                    "RSET" => Command::Rset,
                    "NOOP" => Command::Noop,
                    "QUIT" => Command::Quit,
                    _ => Command::Help,
                },
            ))
        }
        _ => {
            let (i, _) = rest_of_line(i)?;
            Ok((
                i,
                if verb == "MAIL" {
                    Command::Mail
                } else {
                    Command::Other(verb)
                },
            ))
        }
    }
}

/// `Domain / address-literal`, leniently: any printable run.
fn domain(i: &[u8]) -> NomResult<'_, String> {
    let (i, d) = take_while1(|b: u8| b.is_ascii_graphic()).parse(i)?;
    Ok((i, String::from_utf8_lossy(d).into_owned()))
}

/// The rest of the line after the verb (without the leading space), then CRLF.
fn rest_of_line(i: &[u8]) -> NomResult<'_, &[u8]> {
    let (i, rest) = to_line_end(i)?;
    let (i, _) = crlf(i)?;
    Ok((i, rest.strip_prefix(b" ").unwrap_or(rest)))
}

/// A server reply, single or multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line, after the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// All lines' text joined with spaces.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// The enhanced status code (`5.7.8`) at the start of the first line.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?;
        let word = first.split(' ').next()?;
        let parts: Vec<&str> = word.split('.').collect();
        (parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit())))
        .then_some(word)
    }

    /// The EHLO keywords (first word of each line after the first),
    /// upper-cased, with their parameters.
    pub fn ehlo_keywords(&self) -> Vec<(String, String)> {
        self.lines
            .iter()
            .skip(1)
            .map(|l| {
                let (k, p) = l.split_once(' ').unwrap_or((l, ""));
                (k.to_ascii_uppercase(), p.to_owned())
            })
            .collect()
    }

    /// The reply on the wire: `code-text` lines, the last `code text`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.push_str(&format!("{}{sep}{text}\r\n", self.code));
        }
        out.into_bytes()
    }
}

/// Decodes one reply (all its lines).
pub fn decode_reply(input: &[u8]) -> Result<(&[u8], Reply), DecodeError> {
    finish(reply(input), || None)
}

/// `Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF`
fn reply(mut i: &[u8]) -> NomResult<'_, Reply> {
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let (rest, digits) = take_while_m_n(3, 3, |b: u8| b.is_ascii_digit()).parse(i)?;
        let c: u16 = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| fail(i))?;
        if !(200..600).contains(&c) || code.is_some_and(|k| k != c) {
            return Err(fail(i));
        }
        code = Some(c);
        let (rest, sep) = opt(nom::branch::alt((tag("-"), tag(" ")))).parse(rest)?;
        let (rest, text) = take_while(|b| b != b'\r' && b != b'\n').parse(rest)?;
        let (rest, _) = crlf(rest)?;
        lines.push(String::from_utf8_lossy(text).into_owned());
        i = rest;
        if sep != Some(&b"-"[..]) {
            return Ok((i, Reply { code: c, lines }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn cmd(input: &[u8]) -> Command {
        let (rest, c) = decode_command(input).expect("decodes");
        assert!(rest.is_empty());
        c
    }

    #[test]
    fn command_known_answers() {
        assert!(
            matches!(cmd(b"EHLO client.example\r\n"), Command::Ehlo(ref d) if d == "client.example")
        );
        assert!(matches!(cmd(b"ehlo [127.0.0.1]\n"), Command::Ehlo(ref d) if d == "[127.0.0.1]"));
        assert!(matches!(cmd(b"HELO x\r\n"), Command::Helo(ref d) if d == "x"));
        assert!(matches!(cmd(b"STARTTLS\r\n"), Command::StartTls));
        assert!(matches!(cmd(b"rset\r\n"), Command::Rset));
        assert!(matches!(cmd(b"NOOP\r\n"), Command::Noop));
        assert!(matches!(cmd(b"NOOP anything\r\n"), Command::Noop));
        assert!(matches!(cmd(b"QUIT\r\n"), Command::Quit));
        assert!(matches!(cmd(b"HELP AUTH\r\n"), Command::Help));
        assert!(matches!(
            cmd(b"MAIL FROM:<a@b.c> SIZE=10\r\n"),
            Command::Mail
        ));
        assert!(matches!(cmd(b"RCPT TO:<a@b.c>\r\n"), Command::Other(ref v) if v == "RCPT"));
        assert!(matches!(cmd(b"DATA\r\n"), Command::Other(ref v) if v == "DATA"));
        match cmd(b"AUTH plain AGEAYg==\r\n") {
            Command::Auth {
                mechanism,
                initial_response: Some(ir),
            } => {
                assert_eq!(mechanism, "PLAIN");
                assert_eq!(ir.expose_secret(), "AGEAYg==");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cmd(b"AUTH LOGIN\r\n"),
            Command::Auth { ref mechanism, initial_response: None } if mechanism == "LOGIN"
        ));
        assert!(matches!(
            cmd(b"AUTH PLAIN =\r\n"),
            Command::Auth { initial_response: Some(ref s), .. } if s.expose_secret() == "="
        ));
    }

    #[test]
    fn malformed_commands() {
        crate::testing::all_malformed(
            decode_command,
            &[
                b"EHLO\r\n",
                b"EHLO \r\n",
                b"AUTH\r\n",
                b"AUTH PLAIN !!!\r\n",
                b"QUIT now\r\n",
                b"\r\n",
                b"123\r\n",
            ],
        );
    }

    #[test]
    fn reply_known_answers() {
        let cases: Vec<(&[u8], u16, Vec<&str>)> = vec![
            (b"220 smtp.example ESMTP ready\r\n", 220, vec!["smtp.example ESMTP ready"]),
            (
                b"250-smtp.gmail.com at your service\r\n250-SIZE 35882577\r\n250-AUTH LOGIN PLAIN XOAUTH2\r\n250 SMTPUTF8\r\n",
                250,
                vec!["smtp.gmail.com at your service", "SIZE 35882577", "AUTH LOGIN PLAIN XOAUTH2", "SMTPUTF8"],
            ),
            (b"334 \r\n", 334, vec![""]),
            (b"334\r\n", 334, vec![""]),
            (b"334 eyJzdGF0dXMiOiI0MDAifQ==\r\n", 334, vec!["eyJzdGF0dXMiOiI0MDAifQ=="]),
            (
                b"535-5.7.8 Username and Password not accepted.\r\n535 5.7.8 https://support.google.com/mail/?p=BadCredentials\r\n",
                535,
                vec!["5.7.8 Username and Password not accepted.", "5.7.8 https://support.google.com/mail/?p=BadCredentials"],
            ),
            (b"235 2.7.0 Accepted\r\n", 235, vec!["2.7.0 Accepted"]),
        ];
        for (input, code, lines) in cases {
            let (rest, r) = decode_reply(input).expect("decodes");
            assert!(rest.is_empty());
            assert_eq!(r.code, code);
            assert_eq!(r.lines, lines);
        }
        let (_, r) = decode_reply(b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.\r\n").expect("ok");
        assert_eq!(r.enhanced(), Some("5.7.139"));
        let (_, r) =
            decode_reply(b"250-x\r\n250-STARTTLS\r\n250 AUTH PLAIN XOAUTH2\r\n").expect("ok");
        assert_eq!(
            r.ehlo_keywords(),
            vec![
                ("STARTTLS".to_string(), String::new()),
                ("AUTH".to_string(), "PLAIN XOAUTH2".to_string())
            ]
        );
        assert_eq!(
            decode_reply(b"220 x\r\n").map(|(_, r)| r.enhanced().is_none()),
            Ok(true)
        );
    }

    #[test]
    fn reply_round_trip() {
        for r in [
            Reply {
                code: 250,
                lines: vec![
                    "host Hello x".into(),
                    "AUTH PLAIN LOGIN".into(),
                    "PIPELINING".into(),
                ],
            },
            Reply {
                code: 235,
                lines: vec!["2.7.0 Authentication successful".into()],
            },
            Reply {
                code: 334,
                lines: vec![String::new()],
            },
        ] {
            let wire = r.encode();
            let (rest, back) = decode_reply(&wire).expect("decodes");
            assert!(rest.is_empty());
            assert_eq!(back, r);
        }
    }

    #[test]
    fn malformed_replies() {
        crate::testing::all_malformed(
            decode_reply,
            &[
                b"2x0 hi\r\n",
                b"250-a\r\n251 b\r\n",
                b"999 x\r\n",
                b"hello\r\n",
            ],
        );
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let commands: &[&[u8]] = &[
            b"EHLO client.example\r\n",
            b"AUTH PLAIN AGEAYg==\r\n",
            b"AUTH LOGIN\r\n",
            b"MAIL FROM:<a@b.c>\r\n",
            b"QUIT\r\n",
        ];
        crate::testing::prefixes_are_incomplete(decode_command, commands);
        let replies: &[&[u8]] = &[
            b"250-a\r\n250-b\r\n250 c\r\n",
            b"334 \r\n",
            b"535 5.7.8 no\r\n",
        ];
        crate::testing::prefixes_are_incomplete(decode_reply, replies);
    }
}
