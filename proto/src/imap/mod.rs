//! IMAP (RFC 9051 / RFC 3501) pieces the gateway needs before authentication.

pub mod command;
pub mod framer;
pub mod response;

pub use command::{Command, CommandBody, decode_command};
pub use framer::{Frame, Framer, Limits};
pub use response::{Code, Response, Status, decode_response};
