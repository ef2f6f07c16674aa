//! mailgate: an OAuth 2.0 gateway for IMAP, POP3 and SMTP.
//!
//! Mail clients log in locally with a plain password; mailgate maps the user
//! to an account, keeps its OAuth tokens sealed and fresh, logs in upstream
//! with XOAUTH2 over verified TLS and then relays the session untouched.

pub mod accounts;
pub mod argon;
pub mod backoff;
pub mod cli;
pub mod flows;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod imap;
pub mod inband;
pub mod logging;
pub mod login;
pub mod metrics;
pub mod oauth;
pub mod pop3;
pub mod redirect;
pub mod relay;
pub mod server;
pub mod session;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod upstream;

pub use server::{Gateway, start};
