//! POP3 through the gateway: the pre-auth machine and the dialect that ties
//! it to the upstream login.

pub mod preauth;

use mailgate_config::UpstreamSecurity;
use mailgate_proto::upstream::pop3::Login;

use crate::session::login::Attempt;
use crate::session::residual::{Line, verb};
use crate::session::upstream::LoggedIn;
use crate::session::{Dialect, Options};

/// POP3 (RFC 1939/2449/5034).
#[derive(Debug)]
pub struct Pop3;

impl Dialect for Pop3 {
    const PROTOCOL: mailgate_config::Protocol = mailgate_config::Protocol::Pop3;
    const TOO_BUSY: &'static [u8] = b"-ERR [SYS/TEMP] Too many connections; try again later\r\n";
    type Client = preauth::Pop3PreAuth;
    type Hint = ();
    type Upstream = Login;

    fn client(opts: Options) -> preauth::Pop3PreAuth {
        preauth::Pop3PreAuth::new(opts)
    }

    fn hint(_: &preauth::Pop3PreAuth) {}

    fn upstream(_: &(), a: &Attempt) -> Login {
        let tls = a.server.security == UpstreamSecurity::ImplicitTls;
        Login::new(&a.user, &a.token, tls)
    }

    fn success(_: &preauth::Pop3PreAuth, _: &LoggedIn) -> Vec<u8> {
        b"+OK Logged in\r\n".to_vec()
    }

    fn screen(line: &[u8]) -> Line {
        match verb(line).0.as_slice() {
            b"USER" | b"PASS" | b"APOP" | b"AUTH" => Line::Credential,
            _ => Line::Relay,
        }
    }

    fn refuse(_: &[u8]) -> Vec<u8> {
        b"-ERR Already authenticated\r\n".to_vec()
    }
}
