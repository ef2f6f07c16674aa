//! IMAP through the gateway: the pre-auth machine, the capabilities the
//! client sees, and the dialect that ties them to the upstream login.

pub mod capabilities;
pub mod preauth;

use mailgate_config::UpstreamSecurity;
use mailgate_proto::upstream::imap::Login;

use crate::session::login::Attempt;
use crate::session::upstream::LoggedIn;
use crate::session::{Dialect, Setup};

/// IMAP (RFC 9051/3501).
#[derive(Debug)]
pub struct Imap;

impl Dialect for Imap {
    const PROTOCOL: mailgate_config::Protocol = mailgate_config::Protocol::Imap;
    const TOO_BUSY: &'static [u8] = b"* BYE Too many connections; try again later\r\n";
    type Client = preauth::PreAuth;
    type Hint = ();
    type Upstream = Login;

    fn client(gw: &mailgate_config::Gateway, setup: &Setup) -> preauth::PreAuth {
        preauth::PreAuth::new(preauth::Options {
            hostname: gw.hostname.clone(),
            limits: mailgate_proto::imap::Limits {
                max_line: gw.max_line,
                max_literal: u32::try_from(gw.max_literal).unwrap_or(u32::MAX),
                max_message: 2 * (gw.max_line + gw.max_literal),
            },
            max_failures: gw.max_failures,
            max_tag: gw.max_tag,
            starttls: setup.starttls.is_some(),
            auth_before_tls: setup.auth_before_tls,
            tls: setup.tls,
        })
    }

    fn hint(_: &preauth::PreAuth) {}

    fn upstream(_: &(), a: &Attempt) -> Login {
        let tls = a.server.security == UpstreamSecurity::ImplicitTls;
        Login::new(&a.user, &a.token, tls)
    }

    /// The client's own tag on the `OK`, with the upstream's post-login
    /// capabilities (rewritten: no `AUTH=`).
    fn success(m: &preauth::PreAuth, up: &LoggedIn) -> Vec<u8> {
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
