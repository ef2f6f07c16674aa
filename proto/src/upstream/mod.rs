//! Logging in to an upstream server with XOAUTH2, as sans-I/O machines: one
//! per protocol ([`imap::Login`], [`smtp::Login`], [`pop3::Login`]). Feed a
//! machine the server's bytes with [`Machine::feed`] and take its [`Step`]s
//! with [`Machine::next`] until it needs more input (`None`): bytes to send,
//! TLS to start (STARTTLS / STLS, after which [`Machine::tls_started`]),
//! things worth logging, and finally success (with the capabilities the
//! client must see and the bytes the server sent beyond its reply) or a
//! failure. Connecting, TLS, timeouts and logging are the caller's.
//!
//! Every machine: never sends a token before TLS (a `STARTTLS` mode machine
//! refuses a server that does not offer it), answers an XOAUTH2 error
//! challenge with an empty line, and classifies the final reply as a
//! rejected token, a temporary unavailability or a protocol violation.

pub mod imap;
pub mod pop3;
pub mod smtp;

use std::collections::VecDeque;

use zeroize::Zeroizing;

use crate::DecodeError;

/// Longest reply (a line, or a multi-line SMTP reply) accepted before login.
pub const MAX_REPLY: usize = 64 * 1024;

/// What a login machine asks of its driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes (they may hold the token; wiped on drop).
    Send(Zeroizing<Vec<u8>>),
    /// Run the TLS handshake now, then call [`Machine::tls_started`]. Bytes
    /// the server sent after its go-ahead ([`Machine::buffered`]) are an
    /// injection attempt: the driver must give up.
    StartTls,
    /// Something worth a log line.
    Note(Note),
    /// Logged in.
    Done(Success),
    /// The login failed.
    Failed(Failure),
}

/// What the log should tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The server answered XOAUTH2 with an error challenge (decoded JSON,
    /// or a description of what could not be decoded).
    Challenge(String),
    /// The server does not announce XOAUTH2; it is tried anyway.
    NoXoauth2,
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success {
    /// IMAP: the post-login capabilities (from the tagged `OK` or an
    /// untagged `CAPABILITY`); `None` for SMTP and POP3.
    pub capabilities: Option<Vec<String>>,
    /// Bytes the server sent after its success reply.
    pub leftover: Vec<u8>,
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The server refused the token; its reply (and the decoded error
    /// challenge, if any).
    #[error("refused the token: {0}")]
    Rejected(String),
    /// The server cannot authenticate now (a temporary failure).
    #[error("cannot authenticate now: {0}")]
    Unavailable(String),
    /// The server broke the protocol, or cannot be used safely (no
    /// STARTTLS).
    #[error("{0}")]
    Protocol(String),
}

/// A login machine.
pub trait Machine {
    /// Bytes from the server.
    fn feed(&mut self, data: &[u8]);
    /// The next step; `None` when more input is needed.
    fn next(&mut self) -> Option<Step>;
    /// TLS is up after [`Step::StartTls`]: continue over it.
    fn tls_started(&mut self);
    /// Bytes received and not yet consumed.
    fn buffered(&self) -> &[u8];
}

/// What each machine gives for the shared [`Machine`] implementation.
trait Steps {
    fn core(&mut self) -> &mut Core;
    fn buffer(&self) -> &[u8];
    /// STARTTLS was accepted: nothing is parsed until the handshake.
    fn awaiting_tls(&self) -> bool;
    /// Handles one reply; false when none is complete.
    fn step(&mut self) -> bool;
    /// TLS is up (the clear-text input is gone): what comes next.
    fn resume(&mut self);
}

impl<T: Steps> Machine for T {
    fn feed(&mut self, data: &[u8]) {
        self.core().buf.extend_from_slice(data);
    }

    fn next(&mut self) -> Option<Step> {
        if self.awaiting_tls() && self.core().out.is_empty() {
            return None;
        }
        Core::next(self, T::core, T::step)
    }

    fn tls_started(&mut self) {
        self.core().tls_up();
        self.resume();
    }

    fn buffered(&self) -> &[u8] {
        self.buffer()
    }
}

/// The [`Steps`] of a machine with a `core` field, an `awaiting_tls`
/// method and its own `step` and `resume`.
macro_rules! steps {
    ($t:ty) => {
        impl super::Steps for $t {
            fn core(&mut self) -> &mut super::Core {
                &mut self.core
            }
            fn buffer(&self) -> &[u8] {
                &self.core.buf
            }
            fn awaiting_tls(&self) -> bool {
                self.phase == Phase::Tls
            }
            fn step(&mut self) -> bool {
                <$t>::step(self)
            }
            fn resume(&mut self) {
                <$t>::resume(self)
            }
        }
    };
}
use steps;

/// What every machine shares: who logs in, whether TLS is up, the
/// unparsed input and the queued steps.
#[derive(Debug)]
struct Core {
    user: String,
    token: crate::SecretString,
    /// TLS is up (implicit TLS from the start, or after STARTTLS).
    tls: bool,
    buf: Vec<u8>,
    out: VecDeque<Step>,
    /// A final step was queued; nothing more is parsed.
    finished: bool,
}

impl Core {
    fn new(user: &str, token: &crate::SecretString, tls: bool) -> Core {
        Core {
            user: user.to_owned(),
            token: token.clone(),
            tls,
            buf: Vec::new(),
            out: VecDeque::new(),
            finished: false,
        }
    }

    /// Sends the XOAUTH2 initial response after `prefix` (a command, or
    /// nothing after a continuation).
    fn send_xoauth2(&mut self, prefix: &str) {
        use secrecy::ExposeSecret;
        let ir = crate::sasl::encode_xoauth2(&self.user, &self.token);
        self.send(format!("{prefix}{}\r\n", ir.expose_secret()).into_bytes());
    }

    /// TLS is up: the clear-text input is gone.
    fn tls_up(&mut self) {
        self.buf.clear();
        self.tls = true;
    }

    fn send(&mut self, bytes: impl Into<Vec<u8>>) {
        self.out.push_back(Step::Send(Zeroizing::new(bytes.into())));
    }

    fn fail(&mut self, f: Failure) {
        self.out.push_back(Step::Failed(f));
        self.finished = true;
    }

    fn done(&mut self, capabilities: Option<Vec<String>>) {
        let leftover = std::mem::take(&mut self.buf);
        self.out.push_back(Step::Done(Success {
            capabilities,
            leftover,
        }));
        self.finished = true;
    }

    /// Takes one message off the front of the buffer with `decode`; `None`
    /// when it is incomplete (or after a failure, which is queued).
    fn take<T>(&mut self, decode: impl Fn(&[u8]) -> Result<(&[u8], T), DecodeError>) -> Option<T> {
        if self.finished {
            return None;
        }
        match decode(&self.buf) {
            Ok((rest, t)) => {
                let used = self.buf.len() - rest.len();
                self.buf.drain(..used);
                Some(t)
            }
            Err(DecodeError::Incomplete) if self.buf.len() > MAX_REPLY => {
                self.fail(Failure::Protocol("reply too long".into()));
                None
            }
            Err(DecodeError::Incomplete) => None,
            Err(DecodeError::Failed { .. }) => {
                let shown = String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
                    .trim_end()
                    .to_owned();
                self.fail(Failure::Protocol(format!("unexpected reply: {shown}")));
                None
            }
        }
    }

    /// The step loop of a machine: queued steps first, then one message at
    /// a time through `step` until it queues something or needs input.
    fn next<M>(m: &mut M, core: fn(&mut M) -> &mut Core, step: fn(&mut M) -> bool) -> Option<Step> {
        loop {
            if let Some(s) = core(m).out.pop_front() {
                return Some(s);
            }
            if core(m).finished {
                return None;
            }
            if !step(m) {
                // A decoding failure queues its step without consuming.
                return core(m).out.pop_front();
            }
        }
    }

    /// The error challenge in a continuation: logged, answered with an
    /// empty line; returns its description for the final failure.
    fn challenge(&mut self, text: &str) -> String {
        let decoded = crate::sasl::decode_error_challenge(text.as_bytes())
            .map(|c| c.json.to_string())
            .unwrap_or_else(|_| format!("(undecodable challenge {text:?})"));
        self.out
            .push_back(Step::Note(Note::Challenge(decoded.clone())));
        self.send(b"\r\n".to_vec());
        decoded
    }
}

/// A failure's detail with the challenge that came before it.
fn with_challenge(mut detail: String, challenge: Option<String>) -> String {
    if let Some(c) = challenge {
        detail.push_str(&format!(" (challenge {c})"));
    }
    detail
}

/// Helpers for the machines' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Machine, Step};

    /// Feeds `input` and collects the steps until the machine waits.
    pub fn run<M: Machine>(m: &mut M, input: &[u8]) -> Vec<Step> {
        m.feed(input);
        std::iter::from_fn(|| m.next()).collect()
    }

    /// What was sent, as text.
    pub fn sent(steps: &[Step]) -> String {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Send(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    /// The final step, if any.
    pub fn last(steps: &[Step]) -> Option<&Step> {
        steps
            .iter()
            .rev()
            .find(|s| matches!(s, Step::Done(_) | Step::Failed(_) | Step::StartTls))
    }

    /// A whole script fed one byte at a time gives the same steps as fed
    /// at once.
    pub fn split_everywhere<M: Machine>(make: impl Fn() -> M, script: &[&[u8]]) {
        let whole = play(make(), script, usize::MAX);
        for chunk in [1, 2, 3, 7] {
            assert_eq!(play(make(), script, chunk), whole, "chunks of {chunk}");
        }
    }

    /// The XOAUTH2 response of the tests' user and token.
    pub fn ir() -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode("user=alice@example.test\x01auth=Bearer tok\x01\x01")
    }

    /// Plays server turns: each turn is fed (in chunks of `chunk` bytes),
    /// steps drained; a StartTls is answered with tls_started.
    pub fn play<M: Machine>(mut m: M, script: &[&[u8]], chunk: usize) -> Vec<Step> {
        let mut all = Vec::new();
        let drain = |m: &mut M, all: &mut Vec<Step>| {
            while let Some(s) = m.next() {
                let tls = s == Step::StartTls;
                all.push(s);
                if tls {
                    m.tls_started();
                }
            }
        };
        drain(&mut m, &mut all);
        for turn in script {
            for piece in turn.chunks(chunk.max(1)) {
                m.feed(piece);
                drain(&mut m, &mut all);
            }
        }
        all
    }
}
