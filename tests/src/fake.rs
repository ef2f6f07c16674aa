//! Plumbing shared by the scripted fake upstreams: what they record, a line
//! reader over plain or TLS streams, the accept loop, and XOAUTH2 checking
//! against the fake OAuth server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailgate_proto::sasl::decode_xoauth2;
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::ca::TestCa;
use crate::oauth::FakeOAuth;

/// How a failed XOAUTH2 login is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureStyle {
    /// Gmail and Dovecot: a continuation with base64 JSON, wait for an empty
    /// line, then the failure.
    Challenge,
    /// Office 365: a plain failure reply.
    PlainNo,
}

pub const ERROR_CHALLENGE_JSON: &str =
    r#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;

/// The base64 error challenge.
pub fn error_challenge() -> String {
    STANDARD.encode(ERROR_CHALLENGE_JSON)
}

#[derive(Debug, Default)]
pub struct Record {
    /// EHLO names received (SMTP).
    pub ehlo: Mutex<Vec<String>>,
    /// Messages received with DATA (SMTP).
    pub messages: Mutex<Vec<Vec<u8>>>,
    /// The AUTHENTICATE command line and any response lines, per attempt.
    pub auth: Mutex<Vec<Vec<u8>>>,
    /// Lines received after a successful login.
    pub after_login: Mutex<Vec<String>>,
    pub successful_logins: AtomicUsize,
    pub failed_logins: AtomicUsize,
    pub connections: AtomicUsize,
    /// Whether any login arrived before TLS (must never happen).
    pub plaintext_auth: AtomicUsize,
}

impl Record {
    pub fn count(&self, c: &AtomicUsize) -> usize {
        c.load(Ordering::SeqCst)
    }
}

pub trait Rw: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Rw for T {}

pub struct Lines<S> {
    pub s: S,
    pub buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Lines<S> {
    pub async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let rest = self.buf.split_off(i + 1);
                return Some(std::mem::replace(&mut self.buf, rest));
            }
            let mut chunk = [0u8; 8192];
            let n = self.s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn send(&mut self, data: &[u8]) -> Option<()> {
        self.s.write_all(data).await.ok()?;
        self.s.flush().await.ok()
    }
}

impl<S> Lines<S> {
    pub fn new(s: S) -> Lines<S> {
        Lines { s, buf: Vec::new() }
    }
}

/// The boxed stream a fake server talks over once TLS is up.
pub type Conn = Lines<Box<dyn Rw>>;

/// Binds `bind` and runs `serve` for every connection.
pub async fn listen<F, Fut>(bind: &str, record: Arc<Record>, serve: F) -> SocketAddr
where
    F: Fn(TcpStream, Arc<Record>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<()>> + Send + 'static,
{
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            record.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp, record.clone()));
        }
    });
    addr
}

/// The TLS acceptor presenting the test certificate.
pub fn acceptor(ca: &TestCa) -> TlsAcceptor {
    TlsAcceptor::from(ca.server_config())
}

/// Upgrades a plain stream to TLS, boxed.
pub async fn tls(acceptor: &TlsAcceptor, tcp: TcpStream) -> Option<Conn> {
    let s = acceptor.accept(tcp).await.ok()?;
    Some(Lines::new(Box::new(s) as Box<dyn Rw>))
}

/// The user of a valid XOAUTH2 initial response (the token is one the fake
/// OAuth server issued for that same user), else `None`.
pub fn check_xoauth2(oauth: &FakeOAuth, b64: &str) -> Option<String> {
    let (user, token) = decode_xoauth2(b64.trim().as_bytes())?;
    let owner = oauth.check_access(token.expose_secret())?;
    // "*": an app-only (client credentials) token, valid for any mailbox;
    // a delegate's token opens the mailboxes delegated to it.
    oauth.may_open(&owner, &user).then_some(user)
}

/// A running fake upstream.
#[derive(Debug, Clone)]
pub struct FakeServer {
    pub addr: SocketAddr,
    pub record: Arc<Record>,
    /// URL schemes for implicit TLS and for STARTTLS.
    pub(crate) schemes: (&'static str, &'static str),
}

impl FakeServer {
    /// The one way a fake upstream starts, whatever its protocol: bound on
    /// `bind`, presenting the test certificate, checking tokens against
    /// `oauth`, running the protocol's `script` for each connection with
    /// its options. `schemes`: its URL schemes for implicit TLS and for
    /// STARTTLS.
    pub async fn spawn<O, F, Fut>(
        bind: &str,
        ca: &TestCa,
        oauth: FakeOAuth,
        opts: O,
        schemes: (&'static str, &'static str),
        script: F,
    ) -> FakeServer
    where
        O: Send + Sync + 'static,
        F: Fn(TcpStream, TlsAcceptor, FakeOAuth, Arc<Record>, Arc<O>) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: std::future::Future<Output = Option<()>> + Send + 'static,
    {
        let record = Arc::new(Record::default());
        let acceptor = acceptor(ca);
        let opts = Arc::new(opts);
        let addr = listen(bind, record.clone(), move |tcp, rec| {
            script(tcp, acceptor.clone(), oauth.clone(), rec, opts.clone())
        })
        .await;
        FakeServer {
            addr,
            record,
            schemes,
        }
    }

    /// `imaps://127.0.0.1:PORT` (implicit TLS) or `imap://...` (STARTTLS),
    /// and the same for the other protocols.
    pub fn url(&self, starttls: bool) -> String {
        let scheme = if starttls {
            self.schemes.1
        } else {
            self.schemes.0
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Every authentication exchange, byte for byte.
    pub fn auth_lines(&self) -> Vec<Vec<u8>> {
        self.record.auth.lock().unwrap().clone()
    }

    /// Lines received after a successful login.
    pub fn after_login(&self) -> Vec<String> {
        self.record.after_login.lock().unwrap().clone()
    }

    pub fn successful_logins(&self) -> usize {
        self.record.count(&self.record.successful_logins)
    }

    pub fn failed_logins(&self) -> usize {
        self.record.count(&self.record.failed_logins)
    }

    pub fn connections(&self) -> usize {
        self.record.count(&self.record.connections)
    }

    pub fn plaintext_auth(&self) -> usize {
        self.record.count(&self.record.plaintext_auth)
    }

    pub fn ehlo_names(&self) -> Vec<String> {
        self.record.ehlo.lock().unwrap().clone()
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.record.messages.lock().unwrap().clone()
    }
}
