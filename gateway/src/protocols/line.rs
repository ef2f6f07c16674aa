//! What the line-based protocols share before authentication: the
//! plumbing of the SMTP and POP3 machines ([`LineCore`]), SASL PLAIN, and
//! the sniffing of HTTP requests that a web page made a browser send.

use secrecy::SecretString;
use tracing::info;

use crate::session::login::Failure;
use crate::session::{End, Event, one_line};

/// The plumbing shared by the line-based machines (SMTP, POP3): the
/// client's unparsed bytes, the queued events, the failed-login count, and
/// what the machine waits for (a login, a TLS handshake, or nothing more).
#[derive(Debug, Default)]
pub struct LineCore {
    pub buf: Vec<u8>,
    pub out: std::collections::VecDeque<Event>,
    failures: u32,
    wait: Wait,
}

/// What a line machine waits for; it parses nothing meanwhile.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// It reads commands.
    #[default]
    Nothing,
    Login,
    Tls,
    /// The connection is closing.
    Closed,
}

impl LineCore {
    /// Queues a reply.
    pub fn write(&mut self, s: impl Into<String>) {
        self.out.push_back(Event::Write(s.into().into_bytes()));
    }

    /// Writes `reply` and closes, for `why`.
    pub fn close(&mut self, reply: &str, why: End) {
        if !reply.is_empty() {
            self.write(reply);
        }
        self.out.push_back(Event::Close(why));
        self.wait = Wait::Closed;
    }

    /// Asks the session to log in; nothing is parsed until it answers.
    pub fn ask_login(&mut self, user: String, password: SecretString) {
        self.out.push_back(Event::Login { user, password });
        self.wait = Wait::Login;
    }

    /// Asks for the TLS handshake (after STARTTLS/STLS was accepted):
    /// whatever the client pipelined in clear is dropped, never executed
    /// after the upgrade (CVE-2011-0411, RFC 3207 §4.2).
    pub fn start_tls(&mut self) {
        self.buf.clear();
        self.out.push_back(Event::StartTls);
        self.wait = Wait::Tls;
    }

    /// TLS is up: commands are read again.
    pub fn tls_started(&mut self) {
        self.buf.clear();
        self.wait = Wait::Nothing;
    }

    /// The pending login failed: `reply` to the client, and a close (with
    /// `too_many`, if not empty) once the failures that count reach `max`.
    /// Nothing when no login was pending.
    pub fn login_failed(&mut self, failure: &Failure, max: u32, reply: &str, too_many: &str) {
        if self.wait != Wait::Login {
            return;
        }
        self.wait = Wait::Nothing;
        self.write(format!("{reply} {}\r\n", one_line(failure.text())));
        if failure.counts() {
            self.failures += 1;
            if self.failures >= max {
                info!("closing: too many failed logins");
                self.close(too_many, End::TooManyFailures);
            }
        }
    }

    /// The next whole line, or `None` (more input is needed, or the line was
    /// too long: then `too_long` is written and the connection closes).
    pub fn take_line(
        &mut self,
        max_line: usize,
        too_long: impl FnOnce(usize) -> String,
    ) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        use mailgate_proto::line::{Line, frame_line};
        match frame_line(&self.buf, max_line) {
            Line::Incomplete => None,
            Line::TooLong => {
                info!("closing: client line over the limit");
                self.close(&too_long(max_line), End::Refused);
                None
            }
            Line::Complete(n) => Some(zeroize::Zeroizing::new(self.buf.drain(..n).collect())),
        }
    }

    /// Closes without an answer when a command line is HTTP (SPEC §6);
    /// true when it was.
    pub fn refuse_http(&mut self, line: &[u8]) -> bool {
        if !looks_like_http(line) {
            return false;
        }
        info!("closing without an answer: the client sent HTTP (a web page?)");
        self.buf.clear();
        self.close("", End::Refused);
        true
    }

    /// The event loop of a line-based machine: queued events first, then
    /// one line at a time through `step` until it queues an event or no
    /// whole line is left; nothing while a login or a TLS handshake is
    /// pending, or the connection is closing.
    pub fn next_event<M>(
        m: &mut M,
        core: fn(&mut M) -> &mut LineCore,
        step: fn(&mut M),
    ) -> Option<Event> {
        loop {
            if let Some(e) = core(m).out.pop_front() {
                return Some(e);
            }
            if core(m).wait != Wait::Nothing {
                return None;
            }
            let before = core(m).buf.len();
            step(m);
            let c = core(m);
            if c.out.is_empty() && c.buf.len() == before {
                return None;
            }
        }
    }
}

/// Why a SASL PLAIN response cannot be used.
#[derive(Debug)]
pub enum PlainError {
    /// Not base64, or not `authzid NUL authcid NUL password`.
    Malformed(mailgate_proto::sasl::SaslError),
    /// An authorisation identity other than the user: logging in as someone
    /// else is not supported.
    OtherUser,
}

/// Decodes a base64 SASL PLAIN response into (user, password), the rule
/// for every protocol.
pub fn plain_credentials(b64: &SecretString) -> Result<(String, SecretString), PlainError> {
    use mailgate_proto::sasl::{decode_base64, decode_plain};
    use secrecy::ExposeSecret;
    let c = decode_base64(b64.expose_secret().as_bytes())
        .and_then(|raw| decode_plain(raw.expose_secret()))
        .map_err(PlainError::Malformed)?;
    if c.authzid
        .as_ref()
        .is_some_and(|authz| !authz.eq_ignore_ascii_case(&c.authcid))
    {
        return Err(PlainError::OtherUser);
    }
    Ok((c.authcid, c.password))
}

/// Whether a line a client sent before logging in is HTTP: a request line
/// (`GET /`, `POST / HTTP/1.1`, ...) or a header a browser always sends
/// (`Host:`). A web page can make a browser send such bytes to any local
/// port; the connection is closed without an answer (SPEC §6), so that no
/// web page can speak IMAP, SMTP or POP3 to the gateway.
pub fn looks_like_http(line: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH", b"CONNECT", b"TRACE",
    ];
    const HEADERS: [&[u8]; 6] = [
        b"host:",
        b"user-agent:",
        b"origin:",
        b"content-type:",
        b"content-length:",
        b"referer:",
    ];
    let mut words = line.split(|b| *b == b' ');
    let first = words.next().unwrap_or_default();
    let target = words.next().unwrap_or_default();
    let request = METHODS.iter().any(|m| first.eq_ignore_ascii_case(m))
        && (target.starts_with(b"/")
            || target.starts_with(b"*")
            || target.len() >= 7 && target[..7].eq_ignore_ascii_case(b"http://")
            || target.len() >= 8 && target[..8].eq_ignore_ascii_case(b"https://")
            || line.windows(6).any(|w| w.eq_ignore_ascii_case(b" http/")));
    let header = HEADERS
        .iter()
        .any(|h| line.len() >= h.len() && line[..h.len()].eq_ignore_ascii_case(h));
    request || header
}

#[cfg(test)]
mod tests {
    use super::looks_like_http;

    #[test]
    fn http_lines() {
        for l in [
            &b"GET / HTTP/1.1"[..],
            b"POST / HTTP/1.1",
            b"post /x",
            b"OPTIONS * HTTP/1.1",
            b"GET http://127.0.0.1:1143/ HTTP/1.1",
            b"Host: 127.0.0.1:1143",
            b"HOST:x",
            b"User-Agent: Mozilla/5.0",
        ] {
            assert!(looks_like_http(l), "{}", String::from_utf8_lossy(l));
        }
        for l in [
            &b"a LOGIN erin pw"[..],
            b"GET",
            b"a1 CAPABILITY",
            b"EHLO host",
            b"USER alice",
            b"HELP",
            b"a GET x",
            b"hostname: no",
        ] {
            assert!(!looks_like_http(l), "{}", String::from_utf8_lossy(l));
        }
    }
}
