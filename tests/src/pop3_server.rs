//! A scripted XOAUTH2-only POP3 server over TLS on 127.0.0.1 (`pop3s://`, or
//! `pop3://` with STLS). One message in the maildrop; it records the exact
//! AUTH exchanges and every line after login.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::ca::TestCa;
use crate::fake::{
    Conn, FailureStyle, FakeServer, Lines, Record, check_xoauth2, error_challenge, tls,
};
use crate::oauth::FakeOAuth;

#[derive(Debug, Clone)]
pub struct Options {
    /// `pop3://` with STLS instead of implicit TLS.
    pub starttls: bool,
    pub offer_stls: bool,
    pub failure: FailureStyle,
    /// The one message of the maildrop.
    pub message: Vec<u8>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            starttls: false,
            offer_stls: true,
            failure: FailureStyle::Challenge,
            message: b"Subject: hi\r\n\r\nHello\r\n.starts with a dot\r\n".to_vec(),
        }
    }
}

impl FakeServer {
    pub async fn pop3(ca: &TestCa, oauth: FakeOAuth, opts: Options) -> FakeServer {
        FakeServer::spawn("127.0.0.1:0", ca, oauth, opts, ("pop3s", "pop3"), serve).await
    }
}

fn keyword(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    s.split([' ', '\r', '\n'])
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// The message dot-stuffed and terminated, as RETR sends it.
pub fn retr_body(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in message.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

async fn serve(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    oauth: FakeOAuth,
    rec: Arc<Record>,
    opts: Arc<Options>,
) -> Option<()> {
    let mut conn: Conn = if opts.starttls {
        let mut plain = Lines::new(tcp);
        plain.send(b"+OK fake POP3 ready\r\n").await?;
        loop {
            let line = plain.line().await?;
            match keyword(&line).as_str() {
                "CAPA" => {
                    let stls = if opts.offer_stls { "STLS\r\n" } else { "" };
                    plain
                        .send(format!("+OK\r\nUSER\r\n{stls}.\r\n").as_bytes())
                        .await?;
                }
                "STLS" if opts.offer_stls => {
                    plain.send(b"+OK Begin TLS negotiation\r\n").await?;
                    if !plain.buf.is_empty() {
                        return None;
                    }
                    break;
                }
                "AUTH" | "USER" | "PASS" => {
                    rec.plaintext_auth.fetch_add(1, Ordering::SeqCst);
                    plain
                        .send(b"-ERR [PRIVACYREQUIRED] TLS required\r\n")
                        .await?;
                }
                "QUIT" => {
                    plain.send(b"+OK bye\r\n").await?;
                    return Some(());
                }
                _ => plain.send(b"-ERR not before TLS\r\n").await?,
            }
        }
        tls(&acceptor, plain.s).await?
    } else {
        let mut c = tls(&acceptor, tcp).await?;
        c.send(b"+OK fake POP3 ready\r\n").await?;
        c
    };

    loop {
        let line = conn.line().await?;
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        match keyword(&line).as_str() {
            "CAPA" => {
                conn.send(b"+OK\r\nUSER\r\nSASL XOAUTH2\r\nUIDL\r\n.\r\n")
                    .await?
            }
            "AUTH" if text.eq_ignore_ascii_case("AUTH XOAUTH2") => {
                conn.send(b"+ \r\n").await?;
                let resp = conn.line().await?;
                let mut exchange = line.clone();
                exchange.extend_from_slice(&resp);
                let b64 = String::from_utf8_lossy(&resp).trim_end().to_string();
                if check_xoauth2(&oauth, &b64).is_some() {
                    rec.auth.lock().unwrap().push(exchange);
                    rec.successful_logins.fetch_add(1, Ordering::SeqCst);
                    conn.send(b"+OK Logged in.\r\n").await?;
                    break;
                }
                rec.failed_logins.fetch_add(1, Ordering::SeqCst);
                if opts.failure == FailureStyle::Challenge {
                    conn.send(format!("+ {}\r\n", error_challenge()).as_bytes())
                        .await?;
                    let empty = conn.line().await?;
                    exchange.extend_from_slice(&empty);
                }
                rec.auth.lock().unwrap().push(exchange);
                conn.send(b"-ERR [AUTH] Authentication failed.\r\n").await?;
            }
            "QUIT" => {
                conn.send(b"+OK bye\r\n").await?;
                return Some(());
            }
            _ => conn.send(b"-ERR [AUTH] log in first\r\n").await?,
        }
    }

    let size = opts.message.len();
    loop {
        let line = conn.line().await?;
        rec.after_login
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&line).into_owned());
        let text = String::from_utf8_lossy(&line)
            .trim_end()
            .to_ascii_uppercase();
        match text.as_str() {
            "STAT" => conn.send(format!("+OK 1 {size}\r\n").as_bytes()).await?,
            "LIST" => {
                conn.send(format!("+OK 1 messages\r\n1 {size}\r\n.\r\n").as_bytes())
                    .await?
            }
            "UIDL" => conn.send(b"+OK\r\n1 uid-0001\r\n.\r\n").await?,
            "RETR 1" => {
                let mut out = format!("+OK {size} octets\r\n").into_bytes();
                out.extend_from_slice(&retr_body(&opts.message));
                conn.send(&out).await?;
            }
            "NOOP" => conn.send(b"+OK\r\n").await?,
            "QUIT" => {
                conn.send(b"+OK Logging out.\r\n").await?;
                return Some(());
            }
            _ => conn.send(b"-ERR unknown command\r\n").await?,
        }
    }
}
