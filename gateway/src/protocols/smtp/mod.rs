//! SMTP through the gateway: the pre-auth machine and the dialect that ties
//! it to the upstream login (with the client's EHLO name; the token inline
//! for Gmail, which accepts it and saves a round trip).

pub mod preauth;

use mailgate_config::{Preset, UpstreamSecurity};
use mailgate_proto::upstream::smtp::Login;

use crate::session::login::Attempt;
use crate::session::residual::{Line, verb};
use crate::session::upstream::LoggedIn;
use crate::session::{Dialect, Options};

/// SMTP submission (RFC 5321/4954).
#[derive(Debug)]
pub struct Smtp;

impl Dialect for Smtp {
    const PROTOCOL: mailgate_config::Protocol = mailgate_config::Protocol::Smtp;
    const TOO_BUSY: &'static [u8] = b"421 4.3.2 Too many connections; try again later\r\n";
    type Client = preauth::SmtpPreAuth;
    /// The client's EHLO name.
    type Hint = String;
    type Upstream = Login;

    fn client(opts: Options) -> preauth::SmtpPreAuth {
        preauth::SmtpPreAuth::new(opts)
    }

    fn hint(m: &preauth::SmtpPreAuth) -> String {
        m.ehlo_name().unwrap_or("localhost").to_owned()
    }

    fn upstream(ehlo: &String, a: &Attempt) -> Login {
        let tls = a.server.security == UpstreamSecurity::ImplicitTls;
        let inline = a.provider.preset == Preset::Gmail;
        Login::new(&a.user, &a.token, ehlo, inline, tls)
    }

    fn success(_: &preauth::SmtpPreAuth, _: &LoggedIn) -> Vec<u8> {
        b"235 2.7.0 Authentication successful\r\n".to_vec()
    }

    fn screen(line: &[u8]) -> Line {
        match verb(line).0.as_slice() {
            b"AUTH" => Line::Credential,
            // Message data follows (after the 354, or in the chunk).
            b"DATA" | b"BDAT" => Line::RelayRest,
            _ => Line::Relay,
        }
    }

    fn refuse(_: &[u8]) -> Vec<u8> {
        b"503 5.5.1 Already authenticated\r\n".to_vec()
    }

    /// Relay to the SMTP server, or for an account that sends through
    /// Microsoft Graph, receive the messages here and send them there.
    async fn after_login(s: crate::session::LoggedInSession<Self::Client>) {
        if matches!(s.established, crate::session::Established::Graph(_)) {
            crate::session::graph::submit(s).await;
        } else {
            crate::session::relay_after_login::<Self>(s).await;
        }
    }
}
