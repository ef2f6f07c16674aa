//! SASL mechanisms: PLAIN (RFC 4616) from clients, XOAUTH2 towards providers,
//! and the base64 JSON error challenge providers send on a rejected token.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use nom::Parser;
use nom::branch::alt;
use nom::bytes::streaming::tag;
use nom::combinator::{map, opt};
use nom::sequence::terminated;
use secrecy::{ExposeSecret, SecretString};

use crate::lex::{base64_or_eq, crlf};
use crate::{DecodeError, NomResult, finish};

/// A line answering a SASL continuation request (IMAP `+`, SMTP `334`,
/// POP3 `+`).
#[derive(Debug)]
pub enum SaslLine {
    /// The base64 text of the response (empty for an empty line).
    Response(SecretString),
    /// `*`: the client cancels the exchange.
    Cancel,
}

/// Decodes a SASL response line: `(base64 / "=" / "*") CRLF`.
pub fn decode_sasl_line(input: &[u8]) -> Result<(&[u8], SaslLine), DecodeError> {
    finish(sasl_line(input), || None)
}

fn sasl_line(i: &[u8]) -> NomResult<'_, SaslLine> {
    terminated(
        alt((
            map(tag("*"), |_| SaslLine::Cancel),
            map(opt(base64_or_eq), |b| {
                SaslLine::Response(SecretString::from(b.unwrap_or_default()))
            }),
        )),
        crlf,
    )
    .parse(i)
}

/// Errors of SASL payload decoding. None of them carries the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("the SASL response is not valid base64")]
    Base64,
    #[error("the PLAIN response must be authzid NUL authcid NUL password")]
    MissingNul,
    #[error("the PLAIN response is not valid UTF-8")]
    Utf8,
    #[error("the PLAIN response has an empty user name or password")]
    Empty,
    #[error("the error challenge is not a JSON object")]
    Json,
}

/// Credentials carried by a SASL PLAIN response.
#[derive(Debug)]
pub struct PlainCredentials {
    /// Authorisation identity; `None` when empty.
    pub authzid: Option<String>,
    /// Authentication identity: the user name.
    pub authcid: String,
    pub password: SecretString,
}

/// Decodes a base64 SASL response as sent on the wire. `=` is the empty
/// response (RFC 4954 / RFC 9051 initial response).
pub fn decode_base64(input: &[u8]) -> Result<secrecy::SecretSlice<u8>, SaslError> {
    let input = input.trim_ascii();
    if input == b"=" {
        return Ok(Vec::new().into());
    }
    STANDARD
        .decode(input)
        .map(Into::into)
        .map_err(|_| SaslError::Base64)
}

/// Decodes a PLAIN message (already base64-decoded):
/// `message = [authzid] UTF8NUL authcid UTF8NUL passwd`.
pub fn decode_plain(message: &[u8]) -> Result<PlainCredentials, SaslError> {
    let mut parts = message.splitn(3, |b| *b == 0);
    let authzid = parts.next().ok_or(SaslError::MissingNul)?;
    let authcid = parts.next().ok_or(SaslError::MissingNul)?;
    let password = parts.next().ok_or(SaslError::MissingNul)?;
    if password.contains(&0) {
        return Err(SaslError::MissingNul);
    }
    let authzid = std::str::from_utf8(authzid).map_err(|_| SaslError::Utf8)?;
    let authcid = std::str::from_utf8(authcid).map_err(|_| SaslError::Utf8)?;
    let password = std::str::from_utf8(password).map_err(|_| SaslError::Utf8)?;
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::Empty);
    }
    Ok(PlainCredentials {
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        authcid: authcid.to_owned(),
        password: SecretString::from(password),
    })
}

/// Encodes a PLAIN message (before base64), for tests and clients.
pub fn encode_plain(authzid: &str, authcid: &str, password: &str) -> String {
    STANDARD.encode(format!("{authzid}\0{authcid}\0{password}"))
}

/// The XOAUTH2 initial response:
/// `base64("user=" USER "\x01auth=Bearer " TOKEN "\x01\x01")`.
pub fn encode_xoauth2(user: &str, token: &SecretString) -> SecretString {
    // Held in a SecretString so the cleartext copy is zeroized on drop.
    let raw = SecretString::from(format!(
        "user={user}\x01auth=Bearer {}\x01\x01",
        token.expose_secret()
    ));
    SecretString::from(STANDARD.encode(raw.expose_secret()))
}

/// Decodes an XOAUTH2 initial response into (user, token); `None` when it is
/// not of the form `user=U ^A auth=Bearer T ^A ^A`. For servers and tests.
pub fn decode_xoauth2(b64: &[u8]) -> Option<(String, SecretString)> {
    let raw = STANDARD.decode(b64.trim_ascii()).ok()?;
    let raw = SecretString::from(String::from_utf8(raw).ok()?);
    let body = raw.expose_secret().strip_suffix("\x01\x01")?;
    let (user, auth) = body.split_once('\x01')?;
    let user = user.strip_prefix("user=")?;
    let token = auth.strip_prefix("auth=Bearer ")?;
    if user.is_empty() || token.is_empty() || token.contains('\x01') {
        return None;
    }
    Some((user.to_owned(), SecretString::from(token.to_owned())))
}

/// The decoded JSON of an XOAUTH2 error challenge, e.g.
/// `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorChallenge {
    pub status: Option<String>,
    pub schemes: Option<String>,
    pub scope: Option<String>,
    /// The whole object, for logging.
    pub json: serde_json::Value,
}

/// Decodes a base64 error challenge (the text after `+ ` or `334 `).
pub fn decode_error_challenge(input: &[u8]) -> Result<ErrorChallenge, SaslError> {
    let raw = STANDARD
        .decode(input.trim_ascii())
        .map_err(|_| SaslError::Base64)?;
    let json: serde_json::Value = serde_json::from_slice(&raw).map_err(|_| SaslError::Json)?;
    let obj = json.as_object().ok_or(SaslError::Json)?;
    let field = |k: &str| {
        obj.get(k).and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    Ok(ErrorChallenge {
        status: field("status"),
        schemes: field("schemes"),
        scope: field("scope"),
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_known_answers() {
        // (message, authzid, authcid, password)
        let ok: &[(&[u8], Option<&str>, &str, &str)] = &[
            (b"\0alice\0secret", None, "alice", "secret"),
            (b"admin\0alice\0pw", Some("admin"), "alice", "pw"),
            (
                "\0jos\u{e9}@x.test\0p\u{e4}ss".as_bytes(),
                None,
                "jos\u{e9}@x.test",
                "p\u{e4}ss",
            ),
            (
                b"\0a\0pass word with spaces",
                None,
                "a",
                "pass word with spaces",
            ),
        ];
        for (msg, authz, authc, pw) in ok {
            let c = decode_plain(msg).expect("valid PLAIN");
            assert_eq!(c.authzid.as_deref(), *authz);
            assert_eq!(c.authcid, *authc);
            assert_eq!(c.password.expose_secret(), *pw);
        }
        let bad: &[(&[u8], SaslError)] = &[
            (b"alice", SaslError::MissingNul),
            (b"\0alice", SaslError::MissingNul),
            (b"\0alice\0pw\0x", SaslError::MissingNul),
            (b"\0\xff\0pw", SaslError::Utf8),
            (b"\0a\0\xc3", SaslError::Utf8),
            (b"\0\0pw", SaslError::Empty),
            (b"\0a\0", SaslError::Empty),
        ];
        for (msg, err) in bad {
            assert_eq!(decode_plain(msg).err(), Some(err.clone()), "{msg:?}");
        }
    }

    #[test]
    fn plain_round_trip() {
        let b64 = encode_plain("", "bob@example.test", "hunter2");
        let raw = decode_base64(b64.as_bytes()).expect("base64");
        let c = decode_plain(raw.expose_secret()).expect("plain");
        assert_eq!(c.authcid, "bob@example.test");
        assert_eq!(c.password.expose_secret(), "hunter2");
    }

    #[test]
    fn base64_forms() {
        assert!(
            decode_base64(b"=")
                .expect("empty")
                .expose_secret()
                .is_empty()
        );
        assert_eq!(
            decode_base64(b"AGEAYg==\r\n").expect("ok").expose_secret(),
            b"\0a\0b"
        );
        assert_eq!(decode_base64(b"not base64!").err(), Some(SaslError::Base64));
    }

    #[test]
    fn xoauth2_known_answer() {
        // From Google's XOAUTH2 documentation.
        let token = SecretString::from("ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg");
        let enc = encode_xoauth2("someuser@example.com", &token);
        assert_eq!(
            enc.expose_secret(),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52\
             YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }

    #[test]
    fn sasl_lines() {
        let (_, l) = decode_sasl_line(b"*\r\n").expect("cancel");
        assert!(matches!(l, SaslLine::Cancel));
        let (_, l) = decode_sasl_line(b"AGEAYg==\r\n").expect("resp");
        assert!(matches!(l, SaslLine::Response(ref s) if s.expose_secret() == "AGEAYg=="));
        let (_, l) = decode_sasl_line(b"\r\n").expect("empty");
        assert!(matches!(l, SaslLine::Response(ref s) if s.expose_secret().is_empty()));
        assert!(matches!(
            decode_sasl_line(b"AGEA"),
            Err(DecodeError::Incomplete)
        ));
        assert!(matches!(
            decode_sasl_line(b"not base64\r\n"),
            Err(DecodeError::Failed { .. })
        ));
    }

    #[test]
    fn xoauth2_round_trip() {
        for (user, token) in [("a@b.c", "tok"), ("j\u{f6}rg@x.test", "ya29.a-b_c/d+e=")] {
            let enc = encode_xoauth2(user, &SecretString::from(token));
            let (u, t) = decode_xoauth2(enc.expose_secret().as_bytes()).expect("decodes");
            assert_eq!((u.as_str(), t.expose_secret()), (user, token));
        }
        for bad in [
            "",
            "!!",
            "dXNlcj1hAWF1dGg9QmVhcmVyIHgB",
            "dXNlcj0BYXV0aD1CZWFyZXIgeAEB",
        ] {
            assert!(decode_xoauth2(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn error_challenge_known_answers() {
        let gmail = STANDARD
            .encode(r#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#);
        let c = decode_error_challenge(gmail.as_bytes()).expect("gmail");
        assert_eq!(c.status.as_deref(), Some("400"));
        assert_eq!(c.schemes.as_deref(), Some("Bearer"));
        assert_eq!(c.scope.as_deref(), Some("https://mail.google.com/"));

        let dovecot = STANDARD.encode(r#"{"status":401,"schemes":"bearer","scope":"mail"}"#);
        let c = decode_error_challenge(dovecot.as_bytes()).expect("dovecot");
        assert_eq!(c.status.as_deref(), Some("401"));

        assert_eq!(
            decode_error_challenge(b"%%%").err(),
            Some(SaslError::Base64)
        );
        let not_json = STANDARD.encode("hello");
        assert_eq!(
            decode_error_challenge(not_json.as_bytes()).err(),
            Some(SaslError::Json)
        );
        let array = STANDARD.encode("[1]");
        assert_eq!(
            decode_error_challenge(array.as_bytes()).err(),
            Some(SaslError::Json)
        );
    }
}
