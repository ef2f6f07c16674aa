//! The protocols the gateway serves, each a [`crate::session::Dialect`]:
//! its client-side pre-auth machine and its upstream login machine.

pub mod imap;
pub mod line;
pub mod pop3;
pub mod proof;
pub mod smtp;

pub use imap::Imap;
pub use pop3::Pop3;
pub use smtp::Smtp;

#[cfg(test)]
mod tests {
    use crate::session::Options;
    use crate::session::testing::http_is_closed_silently;

    /// The rule of every protocol: a browser's request gets no answer.
    #[test]
    fn http_requests_are_closed_without_an_answer() {
        http_is_closed_silently(super::imap::preauth::ImapPreAuth::new(Options::default()));
        http_is_closed_silently(super::pop3::preauth::Pop3PreAuth::new(Options::default()));
        http_is_closed_silently(super::smtp::preauth::SmtpPreAuth::new(Options::default()));
    }
}
