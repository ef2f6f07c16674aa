//! The benchmark's clients: IMAP and SMTP, straight to the upstream over
//! TLS with XOAUTH2 ("direct") or to mailgate in plain text with a password
//! ("via mailgate"). Errors are returned, never panicked on, so a load phase
//! can count them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What a client connects to.
#[derive(Clone)]
pub enum Target {
    /// The upstream itself, TLS and XOAUTH2 with this access token.
    Direct {
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        token: String,
    },
    /// mailgate's plain-text listener, with the user's local password.
    Gateway { addr: SocketAddr, password: String },
}

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Conn {
    pub s: BufReader<Box<dyn Io>>,
    line: Vec<u8>,
}

fn err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

async fn within<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .map_err(|_| err("timed out".into()))?
}

impl Conn {
    /// Connects (TLS for a direct target) without reading anything.
    pub async fn open(target: &Target, small: bool) -> std::io::Result<Conn> {
        let cap = if small { 1024 } else { 64 * 1024 };
        let s: Box<dyn Io> = match target {
            Target::Direct { addr, tls, .. } => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                Box::new(TlsConnector::from(tls.clone()).connect(name, tcp).await?)
            }
            Target::Gateway { addr, .. } => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                Box::new(tcp)
            }
        };
        Ok(Conn {
            s: BufReader::with_capacity(cap, s),
            line: Vec::new(),
        })
    }

    pub async fn line(&mut self) -> std::io::Result<String> {
        self.line.clear();
        let n = within(self.s.read_until(b'\n', &mut self.line)).await?;
        if n == 0 {
            return Err(err("connection closed".into()));
        }
        Ok(String::from_utf8_lossy(&self.line).trim_end().to_owned())
    }

    pub async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        let w = self.s.get_mut();
        w.write_all(data).await?;
        w.flush().await
    }

    /// Reads up to the line tagged `tag`; fails unless it is `tag OK`.
    pub async fn tagged_ok(&mut self, tag: &str) -> std::io::Result<()> {
        loop {
            let l = self.line().await?;
            if let Some(rest) = l.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
                return if rest.starts_with("OK") {
                    Ok(())
                } else {
                    Err(err(format!("{tag}: {l}")))
                };
            }
        }
    }

    /// Reads an SMTP reply (all its lines); fails unless its code is `code`.
    pub async fn reply(&mut self, code: &str) -> std::io::Result<()> {
        loop {
            let l = self.line().await?;
            if l.len() < 4 || !l.starts_with(code) {
                return Err(err(format!("expected {code}, got {l:?}")));
            }
            if l.as_bytes()[3] == b' ' {
                return Ok(());
            }
        }
    }

    /// Reads and drops exactly `n` bytes, straight out of the read buffer.
    pub async fn skip(&mut self, mut n: usize) -> std::io::Result<()> {
        while n > 0 {
            let got = within(self.s.fill_buf()).await?;
            if got.is_empty() {
                return Err(err("connection closed in a literal".into()));
            }
            let k = got.len().min(n);
            self.s.consume(k);
            n -= k;
        }
        Ok(())
    }
}

pub fn xoauth2(user: &str, token: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

fn plain(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// Reads the IMAP greeting and logs in; returns the connection.
pub async fn imap_greeted(target: &Target, small: bool) -> std::io::Result<Conn> {
    let mut c = Conn::open(target, small).await?;
    let g = c.line().await?;
    if !g.starts_with("* OK") {
        return Err(err(format!("greeting {g:?}")));
    }
    Ok(c)
}

/// The login command for `target`.
pub async fn imap_login(c: &mut Conn, target: &Target, user: &str) -> std::io::Result<()> {
    match target {
        Target::Direct { token, .. } => {
            c.send(format!("a AUTHENTICATE XOAUTH2 {}\r\n", xoauth2(user, token)).as_bytes())
                .await?
        }
        Target::Gateway { password, .. } => {
            c.send(format!("a LOGIN {user} \"{password}\"\r\n").as_bytes())
                .await?
        }
    }
    c.tagged_ok("a").await
}

/// Connects, reads the greeting and logs in.
pub async fn imap_session(target: &Target, user: &str, small: bool) -> std::io::Result<Conn> {
    let mut c = imap_greeted(target, small).await?;
    imap_login(&mut c, target, user).await?;
    Ok(c)
}

/// `FETCH 1 BODY[]`; returns the literal's size once all of it is read.
pub async fn imap_fetch(c: &mut Conn) -> std::io::Result<usize> {
    c.send(b"f FETCH 1 BODY[]\r\n").await?;
    let head = c.line().await?;
    let n: usize = head
        .rsplit_once('{')
        .and_then(|(_, r)| r.strip_suffix('}'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| err(format!("FETCH reply {head:?}")))?;
    c.skip(n).await?;
    c.tagged_ok("f").await?;
    Ok(n)
}

pub async fn imap_logout(mut c: Conn) -> std::io::Result<()> {
    c.send(b"z LOGOUT\r\n").await?;
    c.tagged_ok("z").await
}

/// Connects, says EHLO and authenticates.
pub async fn smtp_session(target: &Target, user: &str) -> std::io::Result<Conn> {
    let mut c = Conn::open(target, false).await?;
    c.reply("220").await?;
    c.send(b"EHLO bench.client\r\n").await?;
    c.reply("250").await?;
    match target {
        Target::Direct { token, .. } => {
            c.send(format!("AUTH XOAUTH2 {}\r\n", xoauth2(user, token)).as_bytes())
                .await?
        }
        Target::Gateway { password, .. } => {
            c.send(format!("AUTH PLAIN {}\r\n", plain(user, password)).as_bytes())
                .await?
        }
    }
    c.reply("235").await?;
    Ok(c)
}

/// Sends `message` (dot-stuffed, without the final dot) from bench@ to
/// sink@, MAIL, RCPT and DATA pipelined; returns at the `250` after it.
pub async fn smtp_pipelined(c: &mut Conn, message: &[u8]) -> std::io::Result<()> {
    c.send(b"MAIL FROM:<bench@example.test>\r\nRCPT TO:<sink@example.test>\r\nDATA\r\n")
        .await?;
    c.reply("250").await?;
    c.reply("250").await?;
    c.reply("354").await?;
    c.send(message).await?;
    c.send(b".\r\n").await?;
    c.reply("250").await
}

/// Sends one message of `size` bytes; returns once the server queued it.
pub async fn smtp_send(c: &mut Conn, chunk: &[u8], size: usize) -> std::io::Result<()> {
    c.send(b"MAIL FROM:<bench@example.test>\r\n").await?;
    c.reply("250").await?;
    c.send(b"RCPT TO:<sink@example.test>\r\n").await?;
    c.reply("250").await?;
    c.send(b"DATA\r\n").await?;
    c.reply("354").await?;
    let w = c.s.get_mut();
    super::upstream::write_text(w, chunk, size).await?;
    w.write_all(b"\r\n.\r\n").await?;
    w.flush().await?;
    c.reply("250").await
}
