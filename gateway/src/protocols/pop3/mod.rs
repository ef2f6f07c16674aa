//! POP3 through the gateway: the pre-auth machine and the dialect that ties
//! it to the upstream login.

pub mod preauth;

use mailgate_config::UpstreamSecurity;
use mailgate_proto::upstream::pop3::Login;

use crate::session::login::Attempt;
use crate::session::upstream::LoggedIn;
use crate::session::{Dialect, Setup};

/// POP3 (RFC 1939/2449/5034).
#[derive(Debug)]
pub struct Pop3;

impl Dialect for Pop3 {
    const PROTOCOL: mailgate_config::Protocol = mailgate_config::Protocol::Pop3;
    const TOO_BUSY: &'static [u8] = b"-ERR [SYS/TEMP] Too many connections; try again later\r\n";
    type Client = preauth::PreAuth;
    type Hint = ();
    type Upstream = Login;

    fn client(gw: &mailgate_config::Gateway, setup: &Setup) -> preauth::PreAuth {
        preauth::PreAuth::new(preauth::Options {
            hostname: gw.hostname.clone(),
            max_line: gw.max_line,
            max_failures: gw.max_failures,
            stls: setup.starttls.is_some(),
            auth_before_tls: setup.auth_before_tls,
            tls: setup.tls,
        })
    }

    fn hint(_: &preauth::PreAuth) {}

    fn upstream(_: &(), a: &Attempt) -> Login {
        let tls = a.server.security == UpstreamSecurity::ImplicitTls;
        Login::new(&a.user, &a.token, tls)
    }

    fn success(_: &preauth::PreAuth, _: &LoggedIn) -> Vec<u8> {
        b"+OK Logged in\r\n".to_vec()
    }
}
