//! A scripted XOAUTH2-only SMTP submission server over TLS on 127.0.0.1
//! (`smtps://`, or `smtp://` with STARTTLS). It records the EHLO names, the
//! exact bytes of every AUTH exchange, every line after login and every
//! message received with DATA.

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
    /// `smtp://` with STARTTLS instead of implicit TLS.
    pub starttls: bool,
    pub offer_starttls: bool,
    pub failure: FailureStyle,
    /// Office 365 with SMTP AUTH off: every login is refused with
    /// `535 5.7.139`.
    pub smtp_auth_disabled: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            starttls: false,
            offer_starttls: true,
            failure: FailureStyle::Challenge,
            smtp_auth_disabled: false,
        }
    }
}

impl FakeServer {
    pub async fn smtp(ca: &TestCa, oauth: FakeOAuth, opts: Options) -> FakeServer {
        FakeServer::spawn("127.0.0.1:0", ca, oauth, opts, ("smtps", "smtp"), serve).await
    }
}

fn ehlo_reply(tls: bool, opts: &Options) -> String {
    let mut r = String::from("250-fake.smtp.test at your service\r\n");
    if tls {
        r.push_str("250-AUTH LOGIN PLAIN XOAUTH2 OAUTHBEARER\r\n");
    } else if opts.offer_starttls {
        r.push_str("250-STARTTLS\r\n");
    }
    r.push_str("250-8BITMIME\r\n250 PIPELINING\r\n");
    r
}

fn verb(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    s.split([' ', '\r', '\n'])
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
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
        plain.send(b"220 fake.smtp.test ESMTP ready\r\n").await?;
        loop {
            let line = plain.line().await?;
            match verb(&line).as_str() {
                "EHLO" => {
                    rec.ehlo
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&line[5..]).trim().to_string());
                    plain.send(ehlo_reply(false, &opts).as_bytes()).await?;
                }
                "STARTTLS" if opts.offer_starttls => {
                    plain.send(b"220 2.0.0 Ready to start TLS\r\n").await?;
                    if !plain.buf.is_empty() {
                        return None;
                    }
                    break;
                }
                "AUTH" => {
                    rec.plaintext_auth.fetch_add(1, Ordering::SeqCst);
                    plain
                        .send(b"530 5.7.0 Must issue a STARTTLS command first\r\n")
                        .await?;
                }
                "QUIT" => {
                    plain.send(b"221 2.0.0 bye\r\n").await?;
                    return Some(());
                }
                _ => {
                    plain
                        .send(b"530 5.7.0 Must issue a STARTTLS command first\r\n")
                        .await?
                }
            }
        }
        tls(&acceptor, plain.s).await?
    } else {
        let mut c = tls(&acceptor, tcp).await?;
        c.send(b"220 fake.smtp.test ESMTP ready\r\n").await?;
        c
    };

    // Over TLS, before AUTH.
    loop {
        let line = conn.line().await?;
        match verb(&line).as_str() {
            "EHLO" => {
                rec.ehlo
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&line[5..]).trim().to_string());
                conn.send(ehlo_reply(true, &opts).as_bytes()).await?;
            }
            "AUTH" => {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                let mut parts = text.split(' ');
                let mech = parts.nth(1).unwrap_or("").to_ascii_uppercase();
                if mech != "XOAUTH2" {
                    conn.send(b"504 5.7.4 Unrecognized authentication type\r\n")
                        .await?;
                    continue;
                }
                let mut exchange = line.clone();
                let b64 = match parts.next() {
                    Some(ir) => ir.to_string(),
                    None => {
                        conn.send(b"334 \r\n").await?;
                        let resp = conn.line().await?;
                        exchange.extend_from_slice(&resp);
                        String::from_utf8_lossy(&resp).trim_end().to_string()
                    }
                };
                if opts.smtp_auth_disabled {
                    rec.failed_logins.fetch_add(1, Ordering::SeqCst);
                    conn.send(b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.\r\n").await?;
                    rec.auth.lock().unwrap().push(exchange);
                    continue;
                }
                if check_xoauth2(&oauth, &b64).is_some() {
                    rec.auth.lock().unwrap().push(exchange);
                    rec.successful_logins.fetch_add(1, Ordering::SeqCst);
                    conn.send(b"235 2.7.0 Accepted\r\n").await?;
                    break;
                }
                rec.failed_logins.fetch_add(1, Ordering::SeqCst);
                match opts.failure {
                    FailureStyle::Challenge => {
                        conn.send(format!("334 {}\r\n", error_challenge()).as_bytes())
                            .await?;
                        let empty = conn.line().await?;
                        exchange.extend_from_slice(&empty);
                        conn.send(
                            b"535-5.7.8 Username and Password not accepted.\r\n535 5.7.8 https://support.example/BadCredentials\r\n",
                        )
                        .await?;
                    }
                    FailureStyle::PlainNo => {
                        conn.send(b"535 5.7.3 Authentication unsuccessful\r\n")
                            .await?;
                    }
                }
                rec.auth.lock().unwrap().push(exchange);
            }
            "QUIT" => {
                conn.send(b"221 2.0.0 bye\r\n").await?;
                return Some(());
            }
            _ => conn.send(b"530 5.7.0 Authentication Required\r\n").await?,
        }
    }

    // After AUTH: a mail transaction.
    loop {
        let line = conn.line().await?;
        rec.after_login
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&line).into_owned());
        match verb(&line).as_str() {
            "MAIL" | "RCPT" | "RSET" | "NOOP" => conn.send(b"250 2.1.0 OK\r\n").await?,
            "DATA" => {
                conn.send(b"354 Go ahead\r\n").await?;
                let mut message = Vec::new();
                loop {
                    let l = conn.line().await?;
                    if l == b".\r\n" {
                        break;
                    }
                    let l = l.strip_prefix(b".").unwrap_or(&l);
                    message.extend_from_slice(l);
                }
                rec.messages.lock().unwrap().push(message);
                conn.send(b"250 2.0.0 OK queued\r\n").await?;
            }
            "QUIT" => {
                conn.send(b"221 2.0.0 closing connection\r\n").await?;
                return Some(());
            }
            _ => conn.send(b"502 5.5.1 Unrecognized command\r\n").await?,
        }
    }
}
