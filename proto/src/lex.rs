//! Lexical pieces shared by the protocol codecs.

use nom::Parser;
use nom::bytes::streaming::{tag, take_while1};
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

pub(crate) fn fail(i: &[u8]) -> nom::Err<nom::error::Error<&[u8]>> {
    nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Verify))
}
