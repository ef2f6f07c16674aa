//! Lexical pieces shared by the protocol codecs.

use nom::Parser;
use nom::bytes::streaming::{tag, take_while, take_while1};
use nom::combinator::{map, opt, value};

use crate::NomResult;

/// CRLF, also accepting a bare LF as many scripts send.
pub(crate) fn crlf(i: &[u8]) -> NomResult<'_, ()> {
    value((), (opt(tag("\r")), tag("\n"))).parse(i)
}

/// `base64 = *(4base64-char) [base64-terminal]`, or `=` for an empty
/// response (RFC 4954, RFC 4959). Validity is checked when decoding.
pub(crate) fn base64_or_eq(i: &[u8]) -> NomResult<'_, String> {
    map(
        take_while1(|b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='),
        |b: &[u8]| String::from_utf8_lossy(b).into_owned(),
    )
    .parse(i)
}

/// A command keyword or verb: letters, upper-cased.
pub(crate) fn keyword(i: &[u8]) -> NomResult<'_, String> {
    map(
        take_while1(|b: u8| b.is_ascii_alphabetic()),
        |k: &[u8]| String::from_utf8_lossy(k).to_ascii_uppercase(),
    )
    .parse(i)
}

/// A SASL mechanism name (RFC 4422 §3.1, leniently), upper-cased.
pub(crate) fn mechanism(i: &[u8]) -> NomResult<'_, String> {
    map(
        take_while1(|b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        |m: &[u8]| String::from_utf8_lossy(m).to_ascii_uppercase(),
    )
    .parse(i)
}

/// Everything up to the line end (may be empty), the line end left unread.
pub(crate) fn to_line_end(i: &[u8]) -> NomResult<'_, &[u8]> {
    take_while(|b| b != b'\r' && b != b'\n').parse(i)
}

pub(crate) fn fail(i: &[u8]) -> nom::Err<nom::error::Error<&[u8]>> {
    nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Verify))
}
