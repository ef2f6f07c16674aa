//! A scripted XOAUTH2-only IMAP server over TLS on 127.0.0.1.
//!
//! It checks each XOAUTH2 token against the [`FakeOAuth`] it was given,
//! records the exact bytes of every authentication exchange and every line
//! after login, and answers a few commands the way real servers do: a big
//! `FETCH` literal, `IDLE` with an update, `LOGOUT`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::ca::TestCa;
pub use crate::fake::{ERROR_CHALLENGE_JSON, FailureStyle, FakeServer};
use crate::fake::{Lines, Record, check_xoauth2, error_challenge, tls};
use crate::oauth::FakeOAuth;
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
    /// Misbehaviour, for fault tests.
    pub fault: Fault,
}

/// Ways the fake upstream can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Greets with `* BYE` and hangs up.
    ByeGreeting,
    /// Drops the connection when the AUTHENTICATE command arrives.
    ResetDuringLogin,
    /// Answers AUTHENTICATE with `* BYE` and hangs up.
    ByeDuringLogin,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            starttls: false,
            offer_starttls: true,
            sasl_ir: true,
            failure: FailureStyle::Challenge,
            message: b"Subject: hello\r\n\r\nHello world\r\n".to_vec(),
            fault: Fault::None,
        }
    }
}

/// The IMAP fake is a [`FakeServer`].
pub type FakeImap = FakeServer;

impl FakeServer {
    /// A fake IMAP server on 127.0.0.1.
    pub async fn start(ca: &TestCa, oauth: FakeOAuth, opts: Options) -> FakeServer {
        Self::start_on("127.0.0.1:0", ca, oauth, opts).await
    }

    pub async fn start_on(bind: &str, ca: &TestCa, oauth: FakeOAuth, opts: Options) -> FakeServer {
        FakeServer::spawn(bind, ca, oauth, opts, ("imaps", "imap"), serve).await
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
    let mut conn = if opts.starttls {
        let mut plain = Lines::new(tcp);
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
        tls(&acceptor, plain.s).await?
    } else {
        let mut conn = tls(&acceptor, tcp).await?;
        if opts.fault == Fault::ByeGreeting {
            conn.send(b"* BYE Server too busy, try later\r\n").await?;
            return Some(());
        }
        let greeting = format!(
            "* OK [CAPABILITY {}] fake IMAP ready\r\n",
            caps(&opts, true)
        );
        conn.send(greeting.as_bytes()).await?;
        conn
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
        } else if upper.starts_with("AUTHENTICATE XOAUTH2") && opts.fault == Fault::ResetDuringLogin
        {
            return None;
        } else if upper.starts_with("AUTHENTICATE XOAUTH2") && opts.fault == Fault::ByeDuringLogin {
            conn.send(b"* BYE Internal error occurred\r\n").await?;
            return None;
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
            let ok_user = check_xoauth2(&oauth, &b64);
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
                            let ch = error_challenge();
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
            // Mid-session failure: the connection just drops.
            "CRASH" => return None,
            _ => conn.send(format!("{tag} OK {cmd} completed\r\n").as_bytes()).await?,
        }
    }
}
