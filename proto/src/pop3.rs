//! POP3 (RFC 1939, RFC 2449 CAPA and RESP-CODES, RFC 5034 AUTH, RFC 2595
//! STLS): client commands before authentication and the server replies read
//! while logging in upstream.

use nom::Parser;
use nom::bytes::streaming::{tag, tag_no_case};
use nom::combinator::opt;
use nom::sequence::{delimited, preceded};
use secrecy::SecretString;

use crate::lex::{base64_or_eq, crlf, fail, keyword, mechanism, to_line_end};
use crate::{DecodeError, NomResult, finish};

/// A client command in the AUTHORIZATION state.
#[derive(Debug)]
pub enum Command {
    Capa,
    /// `USER name`
    User(String),
    /// `PASS password` (the rest of the line: passwords may hold spaces).
    Pass(SecretString),
    /// `AUTH` (list mechanisms), `AUTH mech`, `AUTH mech initial-response`.
    Auth {
        /// Upper-cased; `None` for a bare `AUTH`.
        mechanism: Option<String>,
        initial_response: Option<SecretString>,
    },
    Stls,
    Quit,
    Noop,
    /// `APOP name digest`: recognised in order to be refused.
    Apop,
    /// Any other keyword, upper-cased (`STAT`, `RETR`, ... before login).
    Other(String),
}

/// Decodes one command line.
pub fn decode_command(input: &[u8]) -> Result<(&[u8], Command), DecodeError> {
    finish(command(input), || None)
}

/// `command = keyword *(SP argument) CRLF`
fn command(i: &[u8]) -> NomResult<'_, Command> {
    let (i, k) = keyword(i)?;
    match k.as_str() {
        "CAPA" | "STLS" | "QUIT" | "NOOP" => {
            let (i, _) = crlf(i)?;
            Ok((
                i,
                match k.as_str() {
                    "CAPA" => Command::Capa,
                    "STLS" => Command::Stls,
                    "QUIT" => Command::Quit,
                    _ => Command::Noop,
                },
            ))
        }
        "USER" => {
            let (i, name) = delimited(tag(" "), to_line_end, crlf).parse(i)?;
            let name = std::str::from_utf8(name).map_err(|_| fail(i))?.trim();
            if name.is_empty() {
                return Err(fail(i));
            }
            Ok((i, Command::User(name.to_owned())))
        }
        "PASS" => {
            let (i, pw) = delimited(tag(" "), to_line_end, crlf).parse(i)?;
            let pw = std::str::from_utf8(pw).map_err(|_| fail(i))?;
            Ok((i, Command::Pass(SecretString::from(pw.to_owned()))))
        }
        "AUTH" => {
            let (i, mechanism) = opt(preceded(tag(" "), mechanism)).parse(i)?;
            let (i, ir) = match mechanism {
                Some(_) => opt(preceded(tag(" "), base64_or_eq)).parse(i)?,
                None => (i, None),
            };
            let (i, _) = crlf(i)?;
            Ok((
                i,
                Command::Auth {
                    mechanism,
                    initial_response: ir.map(SecretString::from),
                },
            ))
        }
        _ => {
            let (i, _) = (to_line_end, crlf).parse(i)?;
            Ok((
                i,
                if k == "APOP" {
                    Command::Apop
                } else {
                    Command::Other(k)
                },
            ))
        }
    }
}

/// A single-line server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK text`
    Ok(String),
    /// `-ERR [CODE] text`
    Err { code: Option<String>, text: String },
    /// `+ text`: a SASL continuation (challenge in base64, or empty).
    Continuation(String),
}

/// Decodes one status line.
pub fn decode_reply(input: &[u8]) -> Result<(&[u8], Reply), DecodeError> {
    finish(reply(input), || None)
}

fn reply(i: &[u8]) -> NomResult<'_, Reply> {
    let (i, first) =
        nom::branch::alt((tag_no_case("+OK"), tag_no_case("-ERR"), tag("+"))).parse(i)?;
    let (i, text) = opt(preceded(tag(" "), to_line_end)).parse(i)?;
    let (i, _) = crlf(i)?;
    let text = String::from_utf8_lossy(text.unwrap_or_default()).into_owned();
    let r = match first {
        b"+" => Reply::Continuation(text),
        f if f.eq_ignore_ascii_case(b"+OK") => Reply::Ok(text),
        _ => match text.strip_prefix('[').and_then(|t| t.split_once(']')) {
            Some((code, rest)) => Reply::Err {
                code: Some(code.to_owned()),
                text: rest.trim_start().to_owned(),
            },
            None => Reply::Err { code: None, text },
        },
    };
    Ok((i, r))
}

/// Encodes the body of a multi-line reply: each line dot-stuffed, then the
/// terminating `.`.
pub fn encode_multiline<S: AsRef<str>>(lines: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        let l = l.as_ref();
        if l.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Decodes the body of a multi-line reply (after its `+OK` line): lines up to
/// the terminating `.`, dot-unstuffed.
pub fn decode_multiline(input: &[u8]) -> Result<(&[u8], Vec<String>), DecodeError> {
    finish(multiline(input), || None)
}

fn multiline(mut i: &[u8]) -> NomResult<'_, Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let (r, line) = to_line_end(i)?;
        let (r, _) = crlf(r)?;
        if line == b"." {
            return Ok((r, lines));
        }
        let line = line.strip_prefix(b".").unwrap_or(line);
        lines.push(String::from_utf8_lossy(line).into_owned());
        i = r;
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
        assert!(matches!(cmd(b"CAPA\r\n"), Command::Capa));
        assert!(matches!(cmd(b"capa\n"), Command::Capa));
        assert!(
            matches!(cmd(b"USER alice@example.test\r\n"), Command::User(ref u) if u == "alice@example.test")
        );
        assert!(
            matches!(cmd(b"PASS pass with spaces \r\n"), Command::Pass(ref p) if p.expose_secret() == "pass with spaces ")
        );
        assert!(matches!(cmd(b"STLS\r\n"), Command::Stls));
        assert!(matches!(cmd(b"QUIT\r\n"), Command::Quit));
        assert!(matches!(cmd(b"NOOP\r\n"), Command::Noop));
        assert!(matches!(
            cmd(b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n"),
            Command::Apop
        ));
        assert!(matches!(cmd(b"RETR 1\r\n"), Command::Other(ref k) if k == "RETR"));
        assert!(matches!(
            cmd(b"AUTH\r\n"),
            Command::Auth {
                mechanism: None,
                initial_response: None
            }
        ));
        assert!(
            matches!(cmd(b"AUTH plain\r\n"), Command::Auth { mechanism: Some(ref m), initial_response: None } if m == "PLAIN")
        );
        match cmd(b"AUTH PLAIN AGEAYg==\r\n") {
            Command::Auth {
                initial_response: Some(ir),
                ..
            } => assert_eq!(ir.expose_secret(), "AGEAYg=="),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_commands() {
        crate::testing::all_malformed(
            decode_command,
            &[
                b"USER\r\n",
                b"USER \r\n",
                b"PASS\r\n",
                b"CAPA x\r\n",
                b"\r\n",
                b"AUTH PLAIN !\r\n",
                b"PASS \xff\r\n",
            ],
        );
    }

    #[test]
    fn reply_known_answers() {
        let cases: Vec<(&[u8], Reply)> = vec![
            (
                b"+OK Dovecot ready.\r\n",
                Reply::Ok("Dovecot ready.".into()),
            ),
            (b"+OK\r\n", Reply::Ok(String::new())),
            (
                b"-ERR [AUTH] Authentication failed.\r\n",
                Reply::Err {
                    code: Some("AUTH".into()),
                    text: "Authentication failed.".into(),
                },
            ),
            (
                b"-ERR [SYS/TEMP] try later\r\n",
                Reply::Err {
                    code: Some("SYS/TEMP".into()),
                    text: "try later".into(),
                },
            ),
            (
                b"-ERR nope\r\n",
                Reply::Err {
                    code: None,
                    text: "nope".into(),
                },
            ),
            (b"+ \r\n", Reply::Continuation(String::new())),
            (b"+\r\n", Reply::Continuation(String::new())),
            (b"+ eyJ9\r\n", Reply::Continuation("eyJ9".into())),
        ];
        for (input, want) in cases {
            let (rest, got) = decode_reply(input).expect("decodes");
            assert!(rest.is_empty());
            assert_eq!(got, want, "{input:?}");
        }
        assert!(matches!(
            decode_reply(b"hello\r\n"),
            Err(DecodeError::Failed { .. })
        ));
    }

    #[test]
    fn multiline_bodies() {
        let (rest, lines) =
            decode_multiline(b"USER\r\nSASL PLAIN XOAUTH2\r\n..dot\r\n.\r\nnext").expect("ok");
        assert_eq!(lines, vec!["USER", "SASL PLAIN XOAUTH2", ".dot"]);
        assert_eq!(rest, b"next");
    }

    #[test]
    fn multiline_round_trip() {
        let lines = vec!["USER", ".starts with a dot", "", "SASL PLAIN"];
        let wire = encode_multiline(&lines);
        assert_eq!(
            wire,
            b"USER\r\n..starts with a dot\r\n\r\nSASL PLAIN\r\n.\r\n"
        );
        let (rest, back) = decode_multiline(&wire).expect("decodes");
        assert!(rest.is_empty());
        assert_eq!(back, lines);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let commands: &[&[u8]] = &[
            b"USER alice\r\n",
            b"PASS secret\r\n",
            b"AUTH PLAIN AGEAYg==\r\n",
            b"CAPA\r\n",
            b"AUTH\r\n",
        ];
        crate::testing::prefixes_are_incomplete(decode_command, commands);
        let replies: &[&[u8]] = &[b"+OK ready\r\n", b"-ERR [AUTH] no\r\n", b"+ \r\n"];
        crate::testing::prefixes_are_incomplete(decode_reply, replies);
        let body = b"A\r\nB\r\n.\r\n";
        for end in 0..body.len() {
            assert_eq!(
                decode_multiline(&body[..end]).err(),
                Some(DecodeError::Incomplete)
            );
        }
    }
}
