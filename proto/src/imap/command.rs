//! Client commands before authentication (RFC 9051 §6.1, §6.2; RFC 2971 ID).
//!
//! Each parser is named after the ABNF rule it implements. They are nom
//! streaming parsers: a strict prefix of a valid command is `Incomplete`.

use nom::Parser;
use nom::branch::alt;
use nom::bytes::streaming::{tag, tag_no_case, take, take_while, take_while1};
use nom::character::streaming::digit1;
use nom::combinator::{map, map_res, opt, value};
use nom::multi::many0;
use nom::sequence::{delimited, preceded, terminated};
use secrecy::SecretString;

use crate::lex::{base64_or_eq, crlf, fail};
use crate::{DecodeError, NomResult, finish};

/// A tagged client command.
#[derive(Debug)]
pub struct Command {
    pub tag: String,
    pub body: CommandBody,
}

/// The commands the gateway answers or acts on before authentication.
#[derive(Debug)]
pub enum CommandBody {
    Capability,
    Noop,
    Logout,
    StartTls,
    /// `ID` with its parameters (`None` for `NIL`).
    Id(Option<Vec<(String, Option<String>)>>),
    Login {
        username: String,
        password: SecretString,
    },
    Authenticate {
        /// Upper-cased mechanism name.
        mechanism: String,
        /// The raw base64 initial response (`=` for an empty one).
        initial_response: Option<SecretString>,
    },
    /// Any other well-formed command name; its arguments are not parsed.
    Other {
        name: String,
    },
}

/// Decodes one command from the start of `input`, which should hold a
/// message as delimited by the [`Framer`](super::Framer).
pub fn decode_command(input: &[u8]) -> Result<(&[u8], Command), DecodeError> {
    finish(command(input), || {
        let (_, t) = terminated(imap_tag, tag(" ")).parse(input).ok()?;
        Some(t)
    })
}

/// `command = tag SP (command-any / command-auth / command-nonauth) CRLF`
fn command(i: &[u8]) -> NomResult<'_, Command> {
    let (i, tag_) = imap_tag(i)?;
    let (i, _) = tag(" ").parse(i)?;
    let (i, name) = atom(i)?;
    let upper = name.to_ascii_uppercase();
    let (i, body) = match upper.as_str() {
        "CAPABILITY" => map(crlf, |_| CommandBody::Capability).parse(i)?,
        "NOOP" => map(crlf, |_| CommandBody::Noop).parse(i)?,
        "LOGOUT" => map(crlf, |_| CommandBody::Logout).parse(i)?,
        "STARTTLS" => map(crlf, |_| CommandBody::StartTls).parse(i)?,
        "ID" => terminated(preceded(tag(" "), id_params_list), crlf)
            .map(CommandBody::Id)
            .parse(i)?,
        "LOGIN" => terminated(login_args, crlf).parse(i)?,
        "AUTHENTICATE" => terminated(authenticate_args, crlf).parse(i)?,
        _ => {
            // Unknown or post-authentication commands: skip the rest of the
            // message. The framer has already bounded it; literals inside it
            // are consumed by rest_of_command.
            let (i, _) = rest_of_command(i)?;
            (i, CommandBody::Other { name: upper })
        }
    };
    Ok((i, Command { tag: tag_, body }))
}

/// `login = "LOGIN" SP userid SP password`, `userid = astring`,
/// `password = astring`; leniently, an unquoted userid may hold a
/// backslash, as the shared-mailbox login `DELEGATE\SHARED` sent by
/// clients that do not quote the user name (Python's imaplib) does.
fn login_args(i: &[u8]) -> NomResult<'_, CommandBody> {
    let (i, user) = preceded(tag(" "), userid).parse(i)?;
    let (i, pass) = preceded(tag(" "), astring).parse(i)?;
    let username = String::from_utf8(user).map_err(|_| fail(i))?;
    let password = String::from_utf8(pass).map_err(|_| fail(i))?;
    Ok((
        i,
        CommandBody::Login {
            username,
            password: SecretString::from(password),
        },
    ))
}

/// `authenticate = "AUTHENTICATE" SP auth-type [SP initial-resp]`,
/// `initial-resp = (base64 / "=")` (RFC 4959).
fn authenticate_args(i: &[u8]) -> NomResult<'_, CommandBody> {
    let (i, mech) = preceded(tag(" "), atom).parse(i)?;
    let (i, ir) = opt(preceded(tag(" "), base64_or_eq)).parse(i)?;
    Ok((
        i,
        CommandBody::Authenticate {
            mechanism: mech.to_ascii_uppercase(),
            initial_response: ir.map(SecretString::from),
        },
    ))
}

/// `id-params-list = "(" *(string SP nstring) ")" / nil` (RFC 2971; the
/// space-separated list form is accepted).
#[allow(clippy::type_complexity)]
fn id_params_list(i: &[u8]) -> NomResult<'_, Option<Vec<(String, Option<String>)>>> {
    alt((
        value(None, tag_no_case("NIL")),
        map(
            delimited(
                tag("("),
                opt((id_pair, many0(preceded(tag(" "), id_pair)))),
                tag(")"),
            ),
            |pairs| {
                let mut out = Vec::new();
                if let Some((first, rest)) = pairs {
                    out.push(first);
                    out.extend(rest);
                }
                Some(out)
            },
        ),
    ))
    .parse(i)
}

fn id_pair(i: &[u8]) -> NomResult<'_, (String, Option<String>)> {
    let (i, k) = string(i)?;
    let (i, _) = tag(" ").parse(i)?;
    let (i, v) = nstring(i)?;
    let k = String::from_utf8_lossy(&k).into_owned();
    let v = v.map(|v| String::from_utf8_lossy(&v).into_owned());
    Ok((i, (k, v)))
}

/// `tag = 1*<any ASTRING-CHAR except "+">`
pub(crate) fn imap_tag(i: &[u8]) -> NomResult<'_, String> {
    map(
        take_while1(|b| is_astring_char(b) && b != b'+'),
        |t: &[u8]| String::from_utf8_lossy(t).into_owned(),
    )
    .parse(i)
}

/// `atom = 1*ATOM-CHAR`
pub(crate) fn atom(i: &[u8]) -> NomResult<'_, String> {
    map(take_while1(is_atom_char), |t: &[u8]| {
        String::from_utf8_lossy(t).into_owned()
    })
    .parse(i)
}

/// `astring = 1*ASTRING-CHAR / string`
fn astring(i: &[u8]) -> NomResult<'_, Vec<u8>> {
    alt((string, map(take_while1(is_astring_char), <[u8]>::to_vec))).parse(i)
}

/// `userid = astring`, with `\\` also taken in the unquoted form (see
/// [`login_args`]).
fn userid(i: &[u8]) -> NomResult<'_, Vec<u8>> {
    alt((
        string,
        map(
            take_while1(|b| is_astring_char(b) || b == b'\\'),
            <[u8]>::to_vec,
        ),
    ))
    .parse(i)
}

/// `nstring = string / nil`
fn nstring(i: &[u8]) -> NomResult<'_, Option<Vec<u8>>> {
    alt((value(None, tag_no_case("NIL")), map(string, Some))).parse(i)
}

/// `string = quoted / literal`
fn string(i: &[u8]) -> NomResult<'_, Vec<u8>> {
    alt((quoted, literal)).parse(i)
}

/// `quoted = DQUOTE *QUOTED-CHAR DQUOTE`,
/// `QUOTED-CHAR = <any TEXT-CHAR except quoted-specials> / "\" quoted-specials / UTF8-2 / UTF8-3 / UTF8-4`
fn quoted(i: &[u8]) -> NomResult<'_, Vec<u8>> {
    let (mut i, _) = tag("\"").parse(i)?;
    let mut out = Vec::new();
    loop {
        let (rest, chunk) =
            take_while(|b| b != b'"' && b != b'\\' && b != b'\r' && b != b'\n' && b != 0)
                .parse(i)?;
        out.extend_from_slice(chunk);
        let (rest, c) = take(1usize).parse(rest)?;
        match c[0] {
            b'"' => return Ok((rest, out)),
            b'\\' => {
                let (rest, e) = take(1usize).parse(rest)?;
                if e[0] != b'"' && e[0] != b'\\' {
                    return Err(fail(rest));
                }
                out.push(e[0]);
                i = rest;
            }
            _ => return Err(fail(rest)),
        }
    }
}

/// `literal = "{" number64 ["+"] "}" CRLF *CHAR8` (non-synchronising form from
/// RFC 7888). The framer has already bounded the length.
fn literal(i: &[u8]) -> NomResult<'_, Vec<u8>> {
    let (i, len) = delimited(
        tag("{"),
        terminated(
            map_res(digit1, |d: &[u8]| {
                std::str::from_utf8(d)
                    .map_err(|_| ())
                    .and_then(|s| s.parse::<u32>().map_err(|_| ()))
            }),
            opt(tag("+")),
        ),
        tag("}"),
    )
    .parse(i)?;
    let (i, _) = crlf(i)?;
    let (i, data) = take(len as usize).parse(i)?;
    if data.contains(&0) {
        return Err(fail(i));
    }
    Ok((i, data.to_vec()))
}

/// Consumes everything up to and including the command's final CRLF,
/// skipping over literals.
fn rest_of_command(i: &[u8]) -> NomResult<'_, ()> {
    let mut i = i;
    loop {
        let (rest, _) = take_while(|b| b != b'\n' && b != b'{').parse(i)?;
        if let Ok((rest, _)) = literal(rest) {
            i = rest;
            continue;
        }
        match rest.first() {
            None => return Err(nom::Err::Incomplete(nom::Needed::new(1))),
            Some(b'{') => {
                // A brace that does not start a complete literal: it may be
                // one whose data has not all arrived yet.
                match literal(rest) {
                    Err(nom::Err::Incomplete(n)) => return Err(nom::Err::Incomplete(n)),
                    _ => i = &rest[1..],
                }
            }
            Some(_) => return Ok((&rest[1..], ())),
        }
    }
}

/// `ATOM-CHAR = <any CHAR except atom-specials>`
pub(crate) fn is_atom_char(b: u8) -> bool {
    is_astring_char(b) && b != b']'
}

/// `ASTRING-CHAR = ATOM-CHAR / resp-specials`
pub(crate) fn is_astring_char(b: u8) -> bool {
    matches!(b, 0x21..=0x7e) && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn login(input: &[u8]) -> (String, String, String) {
        let (rest, cmd) = decode_command(input).expect("decodes");
        assert!(rest.is_empty(), "left over: {rest:?}");
        match cmd.body {
            CommandBody::Login { username, password } => {
                (cmd.tag, username, password.expose_secret().to_owned())
            }
            other => panic!("not LOGIN: {other:?}"),
        }
    }

    #[test]
    fn login_known_answers() {
        let cases: &[(&[u8], &str, &str, &str)] = &[
            (b"a1 LOGIN alice secret\r\n", "a1", "alice", "secret"),
            (b"a1 login alice secret\n", "a1", "alice", "secret"),
            (
                b"A LOGIN \"alice@x.test\" \"p w\"\r\n",
                "A",
                "alice@x.test",
                "p w",
            ),
            (b"t LOGIN \"a\\\"b\" \"c\\\\d\"\r\n", "t", "a\"b", "c\\d"),
            (
                b"t LOGIN {5}\r\nalice {6}\r\nsecret\r\n",
                "t",
                "alice",
                "secret",
            ),
            (
                b"t LOGIN {5+}\r\nalice {3+}\r\n\"x\"\r\n",
                "t",
                "alice",
                "\"x\"",
            ),
            (b"t LOGIN alice {0}\r\n\r\n", "t", "alice", ""),
            (b"t LOGIN a]b pass]\r\n", "t", "a]b", "pass]"),
            // The shared-mailbox login, unquoted (imaplib) and quoted.
            (
                b"t LOGIN carine@x.test\\info@x.test \"pw\"\r\n",
                "t",
                "carine@x.test\\info@x.test",
                "pw",
            ),
            (
                b"t LOGIN \"carine@x.test\\\\info@x.test\" pw\r\n",
                "t",
                "carine@x.test\\info@x.test",
                "pw",
            ),
            (
                "t LOGIN \"j\u{f6}rg\" \"p\u{e4}ss\"\r\n".as_bytes(),
                "t",
                "j\u{f6}rg",
                "p\u{e4}ss",
            ),
        ];
        for (input, t, u, p) in cases {
            assert_eq!(login(input), (t.to_string(), u.to_string(), p.to_string()));
        }
    }

    #[test]
    fn simple_commands() {
        let cases: &[(&[u8], &str)] = &[
            (b"a CAPABILITY\r\n", "Capability"),
            (b"a noop\r\n", "Noop"),
            (b"a LOGOUT\r\n", "Logout"),
            (b"a StartTLS\r\n", "StartTls"),
            (b"a ID NIL\r\n", "Id"),
            (b"a ID (\"name\" \"mutt\" \"version\" NIL)\r\n", "Id"),
            (b"a SELECT INBOX\r\n", "Other"),
            (b"a APPEND INBOX {3+}\r\nabc\r\n", "Other"),
        ];
        for (input, want) in cases {
            let (rest, cmd) = decode_command(input).expect("decodes");
            assert!(rest.is_empty());
            let got = format!("{:?}", cmd.body);
            assert!(got.starts_with(want), "{got} for {input:?}");
        }
    }

    #[test]
    fn id_params() {
        let (_, cmd) = decode_command(b"x ID (\"name\" \"mutt\" \"os\" NIL)\r\n").expect("id");
        let CommandBody::Id(Some(p)) = cmd.body else {
            panic!("no params")
        };
        assert_eq!(
            p,
            vec![
                ("name".to_string(), Some("mutt".to_string())),
                ("os".to_string(), None)
            ]
        );
        let (_, cmd) = decode_command(b"x ID ()\r\n").expect("empty id");
        assert!(matches!(cmd.body, CommandBody::Id(Some(v)) if v.is_empty()));
    }

    #[test]
    fn authenticate_forms() {
        let (_, cmd) = decode_command(b"a AUTHENTICATE plain\r\n").expect("bare");
        match cmd.body {
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                assert_eq!(mechanism, "PLAIN");
                assert!(initial_response.is_none());
            }
            other => panic!("{other:?}"),
        }
        let (_, cmd) = decode_command(b"a AUTHENTICATE PLAIN AGEAYg==\r\n").expect("ir");
        match cmd.body {
            CommandBody::Authenticate {
                initial_response: Some(ir),
                ..
            } => assert_eq!(ir.expose_secret(), "AGEAYg=="),
            other => panic!("{other:?}"),
        }
        let (_, cmd) = decode_command(b"a AUTHENTICATE PLAIN =\r\n").expect("empty ir");
        assert!(matches!(
            cmd.body,
            CommandBody::Authenticate { initial_response: Some(ref s), .. } if s.expose_secret() == "="
        ));
    }

    #[test]
    fn failures_carry_the_tag() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"a LOGIN\r\n", Some("a")),
            (b"a LOGIN alice\r\n", Some("a")),
            (b"a LOGIN alice pw extra\r\n", Some("a")),
            (b"a NOOP now\r\n", Some("a")),
            (b"a LOGIN \"unterminated\r\n", Some("a")),
            (b"a LOGIN \"bad\\escape\" x\r\n", Some("a")),
            (b"a LOGIN \xff\xfe x\r\n", Some("a")),
            (b"a LOGIN {3}\r\n\xff\xfe\xfd x\r\n", Some("a")),
            (b"a AUTHENTICATE\r\n", Some("a")),
            (b"a AUTHENTICATE PLAIN !!\r\n", Some("a")),
            (b"+tag NOOP\r\n", None),
            (b"\r\n", None),
            (b" NOOP\r\n", None),
            (b"a ID (\"k\")\r\n", Some("a")),
        ];
        for (input, t) in cases {
            match decode_command(input) {
                Err(DecodeError::Failed { tag }) => assert_eq!(tag.as_deref(), *t, "{input:?}"),
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let valid: &[&[u8]] = &[
            b"a1 LOGIN alice secret\r\n",
            b"a1 LOGIN \"al\\\"ice\" {6+}\r\nsecret\r\n",
            b"a1 LOGIN {5}\r\nalice {6}\r\nsecret\r\n",
            b"a2 AUTHENTICATE PLAIN AGEAYg==\r\n",
            b"a3 AUTHENTICATE PLAIN\r\n",
            b"a4 CAPABILITY\r\n",
            b"a5 ID (\"name\" \"x\")\r\n",
            b"a6 ID NIL\r\n",
            b"a7 SELECT {5+}\r\nINBOX\r\n",
        ];
        crate::testing::prefixes_are_incomplete(decode_command, valid);
    }

    #[test]
    fn pipelined_commands_leave_the_rest() {
        let (rest, cmd) = decode_command(b"a LOGIN u p\r\nb SELECT INBOX\r\n").expect("login");
        assert_eq!(cmd.tag, "a");
        assert_eq!(rest, b"b SELECT INBOX\r\n");
    }
}
