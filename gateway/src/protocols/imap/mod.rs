//! IMAP through the gateway: the pre-auth machine, the capabilities the
//! client sees, and the dialect that ties them to the upstream login.

pub mod capabilities;
pub mod preauth;

use mailgate_config::UpstreamSecurity;
use mailgate_proto::upstream::imap::Login;

use crate::session::login::Attempt;
use crate::session::residual::{Line, verb};
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

    /// `tag LOGIN` and `tag AUTHENTICATE` are login commands; a line that
    /// ends with a literal (`{n}` or `{n+}`) is followed by its data.
    fn screen(line: &[u8]) -> Line {
        let (_tag, rest) = verb(line);
        let (command, _) = verb(rest);
        if matches!(command.as_slice(), b"LOGIN" | b"AUTHENTICATE") {
            return Line::Credential;
        }
        match literal_at_end(line) {
            Some(n) => Line::RelayWithData(n),
            None => Line::Relay,
        }
    }

    fn refuse(line: &[u8]) -> Vec<u8> {
        let (tag, _) = verb(line);
        let tag = String::from_utf8_lossy(&line[..tag.len()]);
        let tag = if tag.is_empty() || tag.len() > 64 || tag.contains(['{', '}', '"']) {
            "*".into()
        } else {
            tag
        };
        format!("{tag} BAD Already authenticated\r\n").into_bytes()
    }
}

/// The length of the literal a line announces at its end (`{n}` or
/// `{n+}` before the CRLF), if any.
fn literal_at_end(line: &[u8]) -> Option<usize> {
    let body = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let body = body.strip_suffix(b"+").unwrap_or(body);
    let open = body.iter().rposition(|b| *b == b'{')?;
    let digits = &body[open + 1..];
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}
