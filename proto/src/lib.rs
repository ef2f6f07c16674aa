//! Sans-I/O codecs for mailgate.
//!
//! Everything here is a pure function over `&[u8]`: no sockets, no clocks, no
//! tokio. Parsers are nom 8 *streaming* parsers, so every strict prefix of a
//! valid message decodes to [`DecodeError::Incomplete`], never to an error.
//! Input is framed first (see [`imap::framer`]) with hard caps, and parsed
//! second.

pub mod draft;
pub mod imap;
mod lex;
pub mod line;
pub mod pop3;
pub mod recipients;
pub mod sasl;
pub mod smtp;
pub mod submission;
#[cfg(test)]
mod testing;
pub mod upstream;

pub use secrecy::{ExposeSecret, SecretString};

/// Why a decoder did not return a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More bytes are needed; the input so far is a valid prefix.
    #[error("incomplete input")]
    Incomplete,
    /// The input is not a valid message. `tag` is the command's tag when one
    /// could be read, so that the error can be answered with it.
    #[error("malformed input")]
    Failed { tag: Option<String> },
}

pub(crate) type NomResult<'a, O> = nom::IResult<&'a [u8], O>;

/// Maps the outcome of a top-level nom parser to the crate's decode result.
pub(crate) fn finish<'a, O>(
    res: NomResult<'a, O>,
    tag: impl FnOnce() -> Option<String>,
) -> Result<(&'a [u8], O), DecodeError> {
    match res {
        Ok(ok) => Ok(ok),
        Err(nom::Err::Incomplete(_)) => Err(DecodeError::Incomplete),
        Err(_) => Err(DecodeError::Failed { tag: tag() }),
    }
}
