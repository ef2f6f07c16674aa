//! SMTP through the gateway: pre-auth state machine, upstream login, session.

pub mod preauth;
pub mod session;
pub mod upstream;
