//! A scripted XOAUTH2-only IMAP server over TLS on 127.0.0.1.
//!
//! It checks each XOAUTH2 token against the [`FakeOAuth`] it was given,
//! records the exact bytes of every authentication exchange and every line
//! after login, and answers a few commands the way real servers do: a big
//! `FETCH` literal, `IDLE` with an update, `LOGOUT`.

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
    /// Gmail and Dovecot: `+ <base64 JSON>`, wait for an empty line, `NO`.
    Challenge,
    /// Office 365: a plain tagged `NO AUTHENTICATE failed.`
    PlainNo,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// `imap://` with STARTTLS instead of implicit TLS.
    pub starttls: bool,
    /// Offer STARTTLS (only meaningful with `starttls`).
    pub offer_starttls: bool,
    pub sasl_ir: bool,
    pub failure: FailureStyle,
    /// The message `FETCH 1 BODY[]` returns.
    pub message: Vec<u8>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            starttls: false,
            offer_starttls: true,
            sasl_ir: true,
            failure: FailureStyle::Challenge,
            message: b"Subject: hello\r\n\r\nHello world\r\n".to_vec(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Record {
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

#[derive(Debug, Clone)]
pub struct FakeImap {
    pub addr: SocketAddr,
    pub record: Arc<Record>,
}

pub const ERROR_CHALLENGE_JSON: &str =
    r#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;

trait Rw: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Rw for T {}

struct Lines<S> {
    s: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Lines<S> {
    async fn line(&mut self) -> Option<Vec<u8>> {
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

    async fn send(&mut self, data: &[u8]) -> Option<()> {
        self.s.write_all(data).await.ok()?;
        self.s.flush().await.ok()
    }
}

impl FakeImap {
    pub async fn start(ca: &TestCa, oauth: FakeOAuth, opts: Options) -> FakeImap {
        Self::start_on("127.0.0.1:0", ca, oauth, opts).await
    }

    pub async fn start_on(bind: &str, ca: &TestCa, oauth: FakeOAuth, opts: Options) -> FakeImap {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Record::default());
        let acceptor = TlsAcceptor::from(ca.server_config());
        let rec = record.clone();
        let opts = Arc::new(opts);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                rec.connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, oauth, rec, opts) =
                    (acceptor.clone(), oauth.clone(), rec.clone(), opts.clone());
                tokio::spawn(async move {
                    let _ = serve(tcp, acceptor, oauth, rec, opts).await;
                });
            }
        });
        FakeImap { addr, record }
    }

    /// `imaps://127.0.0.1:PORT` or `imap://127.0.0.1:PORT`.
    pub fn url(&self, starttls: bool) -> String {
        let scheme = if starttls { "imap" } else { "imaps" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn auth_lines(&self) -> Vec<Vec<u8>> {
        self.record.auth.lock().unwrap().clone()
    }

    pub fn after_login(&self) -> Vec<String> {
        self.record.after_login.lock().unwrap().clone()
    }

    pub fn successful_logins(&self) -> usize {
        self.record.successful_logins.load(Ordering::SeqCst)
    }

    pub fn failed_logins(&self) -> usize {
        self.record.failed_logins.load(Ordering::SeqCst)
    }
}

fn caps(opts: &Options, tls: bool) -> String {
    let mut c = String::from("IMAP4rev1 ID IDLE");
    if !tls {
        if opts.offer_starttls {
            c.push_str(" STARTTLS");
        }
        c.push_str(" LOGINDISABLED");
    } else {
        if opts.sasl_ir {
            c.push_str(" SASL-IR");
        }
        c.push_str(" AUTH=XOAUTH2 AUTH=OAUTHBEARER");
    }
    c
}

fn split_tag(line: &[u8]) -> (String, String) {
    let s = String::from_utf8_lossy(line).trim_end().to_string();
    match s.split_once(' ') {
        Some((t, rest)) => (t.to_string(), rest.to_string()),
        None => (s, String::new()),
    }
}

async fn serve(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    oauth: FakeOAuth,
    rec: Arc<Record>,
    opts: Arc<Options>,
) -> Option<()> {
    let mut conn: Lines<Box<dyn Rw>> = if opts.starttls {
        let mut plain = Lines {
            s: tcp,
            buf: Vec::new(),
        };
        plain.send(b"* OK fake IMAP ready (STARTTLS)\r\n").await?;
        loop {
            let line = plain.line().await?;
            let (tag, rest) = split_tag(&line);
            let upper = rest.to_ascii_uppercase();
            if upper == "CAPABILITY" {
                let c = caps(&opts, false);
                plain
                    .send(format!("* CAPABILITY {c}\r\n{tag} OK done\r\n").as_bytes())
                    .await?;
            } else if upper == "STARTTLS" && opts.offer_starttls {
                plain
                    .send(format!("{tag} OK Begin TLS negotiation now\r\n").as_bytes())
                    .await?;
                if !plain.buf.is_empty() {
                    return None;
                }
                break;
            } else if upper.starts_with("AUTHENTICATE") || upper.starts_with("LOGIN") {
                rec.plaintext_auth.fetch_add(1, Ordering::SeqCst);
                plain
                    .send(format!("{tag} NO [PRIVACYREQUIRED] TLS required\r\n").as_bytes())
                    .await?;
            } else if upper == "LOGOUT" {
                plain
                    .send(format!("* BYE\r\n{tag} OK LOGOUT completed\r\n").as_bytes())
                    .await?;
                return Some(());
            } else {
                plain
                    .send(format!("{tag} BAD not before TLS\r\n").as_bytes())
                    .await?;
            }
        }
        let tls = acceptor.accept(plain.s).await.ok()?;
        Lines {
            s: Box::new(tls),
            buf: Vec::new(),
        }
    } else {
        let mut tls = acceptor.accept(tcp).await.ok()?;
        tls.write_all(
            format!(
                "* OK [CAPABILITY {}] fake IMAP ready\r\n",
                caps(&opts, true)
            )
            .as_bytes(),
        )
        .await
        .ok()?;
        Lines {
            s: Box::new(tls),
            buf: Vec::new(),
        }
    };

    // Before login.
    let user = loop {
        let line = conn.line().await?;
        let (tag, rest) = split_tag(&line);
        let upper = rest.to_ascii_uppercase();
        if upper == "CAPABILITY" {
            let c = caps(&opts, true);
            conn.send(format!("* CAPABILITY {c}\r\n{tag} OK done\r\n").as_bytes())
                .await?;
        } else if upper.starts_with("AUTHENTICATE XOAUTH2") {
            let mut exchange = line.clone();
            let b64 = match rest.split(' ').nth(2) {
                Some(ir) => ir.to_string(),
                None => {
                    conn.send(b"+ \r\n").await?;
                    let resp = conn.line().await?;
                    exchange.extend_from_slice(&resp);
                    String::from_utf8_lossy(&resp).trim_end().to_string()
                }
            };
            let ok_user = decode_xoauth2(b64.as_bytes()).and_then(|(u, t)| {
                let owner = oauth.check_access(t.expose_secret())?;
                owner.eq_ignore_ascii_case(&u).then_some(u)
            });
            match ok_user {
                Some(u) => {
                    rec.auth.lock().unwrap().push(exchange);
                    rec.successful_logins.fetch_add(1, Ordering::SeqCst);
                    conn.send(
                        format!(
                            "{tag} OK [CAPABILITY IMAP4rev1 ID IDLE MOVE AUTH=XOAUTH2] {u} authenticated (Success)\r\n"
                        )
                        .as_bytes(),
                    )
                    .await?;
                    break u;
                }
                None => {
                    rec.failed_logins.fetch_add(1, Ordering::SeqCst);
                    match opts.failure {
                        FailureStyle::Challenge => {
                            let ch = STANDARD.encode(ERROR_CHALLENGE_JSON);
                            conn.send(format!("+ {ch}\r\n").as_bytes()).await?;
                            let empty = conn.line().await?;
                            exchange.extend_from_slice(&empty);
                            conn.send(
                                format!("{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
                                    .as_bytes(),
                            )
                            .await?;
                        }
                        FailureStyle::PlainNo => {
                            conn.send(format!("{tag} NO AUTHENTICATE failed.\r\n").as_bytes())
                                .await?;
                        }
                    }
                    rec.auth.lock().unwrap().push(exchange);
                }
            }
        } else if upper == "LOGOUT" {
            conn.send(format!("* BYE\r\n{tag} OK LOGOUT completed\r\n").as_bytes())
                .await?;
            return Some(());
        } else {
            conn.send(format!("{tag} BAD not before login\r\n").as_bytes())
                .await?;
        }
    };
    let _ = user;

    // After login.
    loop {
        let line = conn.line().await?;
        let text = String::from_utf8_lossy(&line).to_string();
        rec.after_login.lock().unwrap().push(text.clone());
        let (tag, rest) = split_tag(&line);
        let cmd = rest.split(' ').next().unwrap_or("").to_ascii_uppercase();
        match cmd.as_str() {
            "SELECT" | "EXAMINE" => {
                conn.send(format!("* 1 EXISTS\r\n* FLAGS (\\Seen)\r\n{tag} OK [READ-WRITE] {cmd} completed\r\n").as_bytes())
                    .await?
            }
            "FETCH" => {
                let mut out = format!("* 1 FETCH (BODY[] {{{}}}\r\n", opts.message.len()).into_bytes();
                out.extend_from_slice(&opts.message);
                out.extend_from_slice(format!(")\r\n{tag} OK FETCH completed\r\n").as_bytes());
                conn.send(&out).await?
            }
            "IDLE" => {
                conn.send(b"+ idling\r\n* 2 EXISTS\r\n").await?;
                let done = conn.line().await?;
                rec.after_login
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&done).to_string());
                conn.send(format!("{tag} OK IDLE terminated\r\n").as_bytes()).await?
            }
            "LOGOUT" => {
                conn.send(format!("* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n").as_bytes())
                    .await?;
                return Some(());
            }
            _ => conn.send(format!("{tag} OK {cmd} completed\r\n").as_bytes()).await?,
        }
    }
}
