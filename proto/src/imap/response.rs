//! Upstream server replies needed to log in (RFC 9051 §7): the greeting,
//! untagged `CAPABILITY`, continuation requests and tagged status replies.

use nom::Parser;
use nom::branch::alt;
use nom::bytes::streaming::{tag, tag_no_case, take_while, take_while1};
use nom::combinator::{map, opt, value};
use nom::multi::many0;
use nom::sequence::{delimited, preceded, terminated};

use super::command::{atom, imap_tag};
use crate::lex::crlf;
use crate::{DecodeError, NomResult, finish};

/// A status condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    PreAuth,
    Bye,
}

/// A response code, the bracketed part of `resp-text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    Capability(Vec<String>),
    /// Any other code, e.g. `AUTHENTICATIONFAILED` or `ALERT`, with its
    /// argument text if any.
    Other {
        name: String,
        text: Option<String>,
    },
}

/// One server reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `+ text` — a continuation request; the text (base64 challenge or
    /// human text), empty when absent.
    Continuation(String),
    /// `* OK/NO/BAD/PREAUTH/BYE [code] text`
    Status {
        status: Status,
        code: Option<Code>,
        text: String,
    },
    /// `* CAPABILITY ...`
    Capability(Vec<String>),
    /// Any other untagged reply; its text after `* `.
    OtherUntagged(String),
    /// `tag OK/NO/BAD [code] text`
    Tagged {
        tag: String,
        status: Status,
        code: Option<Code>,
        text: String,
    },
}

impl Response {
    /// The capabilities this reply announces, if it announces any.
    pub fn capabilities(&self) -> Option<&[String]> {
        match self {
            Response::Capability(c) => Some(c),
            Response::Status {
                code: Some(Code::Capability(c)),
                ..
            }
            | Response::Tagged {
                code: Some(Code::Capability(c)),
                ..
            } => Some(c),
            _ => None,
        }
    }
}

/// Decodes one reply line. Lines are at most a few KiB before login; the
/// caller bounds them.
pub fn decode_response(input: &[u8]) -> Result<(&[u8], Response), DecodeError> {
    finish(response(input), || None)
}

/// `response = continue-req / response-data / response-tagged`
fn response(i: &[u8]) -> NomResult<'_, Response> {
    alt((continue_req, response_data, response_tagged)).parse(i)
}

/// `continue-req = "+" [SP (resp-text / base64)] CRLF`
fn continue_req(i: &[u8]) -> NomResult<'_, Response> {
    let (i, _) = tag("+").parse(i)?;
    let (i, text) = terminated(opt(preceded(tag(" "), text)), crlf).parse(i)?;
    Ok((i, Response::Continuation(text.unwrap_or_default())))
}

/// `response-data = "*" SP (resp-cond-state / resp-cond-bye / capability-data / ...) CRLF`
fn response_data(i: &[u8]) -> NomResult<'_, Response> {
    let (i, _) = tag("* ").parse(i)?;
    terminated(
        alt((
            map(status_reply, |(status, code, text)| Response::Status {
                status,
                code,
                text,
            }),
            map(
                preceded(tag_no_case("CAPABILITY"), capability_list),
                Response::Capability,
            ),
            map(text, Response::OtherUntagged),
        )),
        crlf,
    )
    .parse(i)
}

/// `response-tagged = tag SP resp-cond-state CRLF`
fn response_tagged(i: &[u8]) -> NomResult<'_, Response> {
    let (i, t) = imap_tag(i)?;
    let (i, _) = tag(" ").parse(i)?;
    let (i, (status, code, text)) = terminated(status_reply, crlf).parse(i)?;
    Ok((
        i,
        Response::Tagged {
            tag: t,
            status,
            code,
            text,
        },
    ))
}

/// `resp-cond-state / resp-cond-auth / resp-cond-bye`, then `resp-text`.
fn status_reply(i: &[u8]) -> NomResult<'_, (Status, Option<Code>, String)> {
    let (i, status) = alt((
        value(Status::PreAuth, tag_no_case("PREAUTH")),
        value(Status::Ok, tag_no_case("OK")),
        value(Status::No, tag_no_case("NO")),
        value(Status::Bad, tag_no_case("BAD")),
        value(Status::Bye, tag_no_case("BYE")),
    ))
    .parse(i)?;
    // Some servers omit the text after the status (`a OK\r\n`).
    let (i, rest) = opt(preceded(tag(" "), resp_text)).parse(i)?;
    let (code, text) = rest.unwrap_or((None, String::new()));
    Ok((i, (status, code, text)))
}

/// `resp-text = ["[" resp-text-code "]" SP] text`
fn resp_text(i: &[u8]) -> NomResult<'_, (Option<Code>, String)> {
    let (i, code) = opt(terminated(
        delimited(tag("["), resp_text_code, tag("]")),
        opt(tag(" ")),
    ))
    .parse(i)?;
    let (i, t) = opt(text).parse(i)?;
    Ok((i, (code, t.unwrap_or_default())))
}

/// `resp-text-code = capability-data / atom [SP 1*<any TEXT-CHAR except "]">]`
fn resp_text_code(i: &[u8]) -> NomResult<'_, Code> {
    alt((
        map(
            preceded(tag_no_case("CAPABILITY"), capability_list),
            Code::Capability,
        ),
        map(
            (
                atom,
                opt(preceded(
                    tag(" "),
                    take_while1(|b| b != b']' && b != b'\r' && b != b'\n'),
                )),
            ),
            |(name, t): (String, Option<&[u8]>)| Code::Other {
                name: name.to_ascii_uppercase(),
                text: t.map(|t| String::from_utf8_lossy(t).into_owned()),
            },
        ),
    ))
    .parse(i)
}

/// `capability-data = "CAPABILITY" *(SP capability)`; `capability = atom`.
fn capability_list(i: &[u8]) -> NomResult<'_, Vec<String>> {
    many0(preceded(tag(" "), atom)).parse(i)
}

/// `text = 1*TEXT-CHAR` (bytes up to the CRLF; 8-bit is tolerated).
fn text(i: &[u8]) -> NomResult<'_, String> {
    map(take_while(|b| b != b'\r' && b != b'\n'), |t: &[u8]| {
        String::from_utf8_lossy(t).into_owned()
    })
    .parse(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn known_answers() {
        let cases: Vec<(&[u8], Response)> = vec![
            (
                b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] Dovecot ready.\r\n",
                Response::Status {
                    status: Status::Ok,
                    code: Some(Code::Capability(caps(&["IMAP4rev1", "SASL-IR", "AUTH=XOAUTH2"]))),
                    text: "Dovecot ready.".into(),
                },
            ),
            (
                b"* OK The Microsoft Exchange IMAP4 service is ready.\r\n",
                Response::Status {
                    status: Status::Ok,
                    code: None,
                    text: "The Microsoft Exchange IMAP4 service is ready.".into(),
                },
            ),
            (
                b"* BYE Session invalidated - AccessTokenExpired\r\n",
                Response::Status {
                    status: Status::Bye,
                    code: None,
                    text: "Session invalidated - AccessTokenExpired".into(),
                },
            ),
            (
                b"* CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1\r\n",
                Response::Capability(caps(&[
                    "IMAP4rev1", "UNSELECT", "IDLE", "NAMESPACE", "QUOTA", "ID", "XLIST",
                    "CHILDREN", "X-GM-EXT-1",
                ])),
            ),
            (b"+ \r\n", Response::Continuation(String::new())),
            (b"+\r\n", Response::Continuation(String::new())),
            (
                b"+ eyJzdGF0dXMiOiI0MDAifQ==\r\n",
                Response::Continuation("eyJzdGF0dXMiOiI0MDAifQ==".into()),
            ),
            (
                b"mg1 OK alice@gmail.com authenticated (Success)\r\n",
                Response::Tagged {
                    tag: "mg1".into(),
                    status: Status::Ok,
                    code: None,
                    text: "alice@gmail.com authenticated (Success)".into(),
                },
            ),
            (
                b"mg1 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n",
                Response::Tagged {
                    tag: "mg1".into(),
                    status: Status::No,
                    code: Some(Code::Other {
                        name: "AUTHENTICATIONFAILED".into(),
                        text: None,
                    }),
                    text: "Invalid credentials (Failure)".into(),
                },
            ),
            (
                b"mg1 NO AUTHENTICATE failed.\r\n",
                Response::Tagged {
                    tag: "mg1".into(),
                    status: Status::No,
                    code: None,
                    text: "AUTHENTICATE failed.".into(),
                },
            ),
            (
                b"mg2 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
                Response::Tagged {
                    tag: "mg2".into(),
                    status: Status::Ok,
                    code: Some(Code::Capability(caps(&["IMAP4rev1", "IDLE"]))),
                    text: "Logged in".into(),
                },
            ),
            (
                b"mg3 BAD\r\n",
                Response::Tagged {
                    tag: "mg3".into(),
                    status: Status::Bad,
                    code: None,
                    text: String::new(),
                },
            ),
            (
                b"* NO [ALERT] Too many simultaneous connections\r\n",
                Response::Status {
                    status: Status::No,
                    code: Some(Code::Other {
                        name: "ALERT".into(),
                        text: None,
                    }),
                    text: "Too many simultaneous connections".into(),
                },
            ),
            (
                b"* 3 EXISTS\r\n",
                Response::OtherUntagged("3 EXISTS".into()),
            ),
            (
                b"mg1 OK [BADCHARSET (UTF-8)] x\r\n",
                Response::Tagged {
                    tag: "mg1".into(),
                    status: Status::Ok,
                    code: Some(Code::Other {
                        name: "BADCHARSET".into(),
                        text: Some("(UTF-8)".into()),
                    }),
                    text: "x".into(),
                },
            ),
        ];
        for (input, want) in cases {
            let (rest, got) = decode_response(input).expect("decodes");
            assert!(rest.is_empty());
            assert_eq!(got, want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn capabilities_accessor() {
        let (_, r) = decode_response(b"a OK [CAPABILITY IMAP4rev1] done\r\n").expect("ok");
        assert_eq!(r.capabilities(), Some(&caps(&["IMAP4rev1"])[..]));
        let (_, r) = decode_response(b"a OK done\r\n").expect("ok");
        assert_eq!(r.capabilities(), None);
    }

    #[test]
    fn malformed() {
        crate::testing::all_malformed(
            decode_response,
            &[b"a FOO bar\r\n", b"\r\n", b"a\r\n", b" OK\r\n"],
        );
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let valid: &[&[u8]] = &[
            b"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n",
            b"* CAPABILITY IMAP4rev1 IDLE\r\n",
            b"+ eyJ9\r\n",
            b"mg1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
            b"mg1 OK\r\n",
        ];
        crate::testing::prefixes_are_incomplete(decode_response, valid);
    }
}
