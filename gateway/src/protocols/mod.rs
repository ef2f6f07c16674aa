//! The protocols the gateway serves, each a [`crate::session::Dialect`]:
//! its client-side pre-auth machine and its upstream login machine.

pub mod imap;
pub mod pop3;
pub mod smtp;

pub use imap::Imap;
pub use pop3::Pop3;
pub use smtp::Smtp;
