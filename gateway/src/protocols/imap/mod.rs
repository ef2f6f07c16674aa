//! IMAP through the gateway: the pre-auth machine, the capabilities the
//! client sees, and the dialect that ties them to the upstream login.

pub mod capabilities;
pub mod preauth;

use mailgate_config::UpstreamSecurity;
use mailgate_proto::upstream::imap::Login;

use crate::session::login::Attempt;
use crate::session::upstream::LoggedIn;
use crate::session::{Dialect, Options};

/// IMAP (RFC 9051/3501).
#[derive(Debug)]
pub struct Imap;

impl Dialect for Imap {
    const PROTOCOL: mailgate_config::Protocol = mailgate_config::Protocol::Imap;
    const TOO_BUSY: &'static [u8] = b"* BYE Too many connections; try again later\r\n";
    type Client = preauth::ImapPreAuth;
    type Hint = ();
    type Upstream = Login;

    fn client(opts: Options) -> preauth::ImapPreAuth {
        preauth::ImapPreAuth::new(opts)
    }

    fn hint(_: &preauth::ImapPreAuth) {}

    fn upstream(_: &(), a: &Attempt) -> Login {
        let tls = a.server.security == UpstreamSecurity::ImplicitTls;
        Login::new(&a.user, &a.token, tls)
    }

    /// The client's own tag on the `OK`, with the upstream's post-login
    /// capabilities (rewritten: no `AUTH=`).
    fn success(m: &preauth::ImapPreAuth, up: &LoggedIn) -> Vec<u8> {
        let tag = m.pending_tag().unwrap_or("*");
        match &up.capabilities {
            Some(c) => format!(
                "{tag} OK [CAPABILITY {}] Logged in\r\n",
                capabilities::post_login(c)
            ),
            None => format!("{tag} OK Logged in\r\n"),
        }
        .into_bytes()
    }
}
