//! A line-oriented test client with literal handling and timeouts, so a
//! broken gateway fails a test instead of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const TIMEOUT: Duration = Duration::from_secs(20);

pub struct LineClient<S = TcpStream> {
    s: S,
    buf: Vec<u8>,
}

/// A line client over TLS.
pub type TlsClient = LineClient<TlsStream<TcpStream>>;

impl LineClient {
    pub async fn connect(addr: SocketAddr) -> LineClient {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        LineClient { s, buf: Vec::new() }
    }

    /// Connects with implicit TLS, verifying the server as `localhost`.
    pub async fn connect_tls(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<TlsClient> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let s = TlsConnector::from(tls).connect(localhost(), tcp).await?;
        Ok(LineClient { s, buf: Vec::new() })
    }

    /// Upgrades after a STARTTLS reply. Nothing may be buffered.
    pub async fn start_tls(self, tls: Arc<rustls::ClientConfig>) -> std::io::Result<TlsClient> {
        assert!(
            self.buf.is_empty(),
            "data after the STARTTLS reply: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let s = TlsConnector::from(tls).connect(localhost(), self.s).await?;
        Ok(LineClient { s, buf: Vec::new() })
    }
}

fn localhost() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").unwrap()
}

impl LineClient {
    /// Connects and reads the IMAP greeting, which must be `* OK ...`.
    pub async fn greeted(addr: SocketAddr) -> LineClient {
        Self::greeted_with(addr, "* OK").await
    }

    /// An SMTP session on `addr`: the greeting, `EHLO`, then `AUTH PLAIN`
    /// as `login` with `password`; the client and the reply to AUTH.
    pub async fn smtp_auth_plain(
        addr: SocketAddr,
        login: &str,
        password: &str,
    ) -> (LineClient, String) {
        use base64::Engine as _;
        let mut c = Self::greeted_with(addr, "220 ").await;
        c.send("EHLO client.test\r\n").await;
        while !c.line().await.starts_with("250 ") {}
        let plain =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{login}\0{password}"));
        c.send(format!("AUTH PLAIN {plain}\r\n")).await;
        let reply = c.line().await;
        (c, reply)
    }

    /// Connects and reads a greeting that must start with `prefix`.
    pub async fn greeted_with(addr: SocketAddr, prefix: &str) -> LineClient {
        let mut c = LineClient::connect(addr).await;
        let g = c.line().await;
        assert!(g.starts_with(prefix), "greeting: {g}");
        c
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineClient<S> {
    async fn fill(&mut self) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(TIMEOUT, self.s.read(&mut chunk))
            .await
            .expect("timed out waiting for the gateway")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next line with its CRLF; empty at EOF.
    pub async fn line_bytes(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let rest = self.buf.split_off(i + 1);
                return std::mem::replace(&mut self.buf, rest);
            }
            if !self.fill().await {
                return std::mem::take(&mut self.buf);
            }
        }
    }

    /// The next line as text, CRLF included.
    pub async fn line(&mut self) -> String {
        String::from_utf8_lossy(&self.line_bytes().await).into_owned()
    }

    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "EOF before {n} bytes");
        }
        let rest = self.buf.split_off(n);
        std::mem::replace(&mut self.buf, rest)
    }

    /// Sends `tag LOGIN user "password"` and returns the whole reply.
    pub async fn login(&mut self, tag: &str, user: &str, password: &str) -> String {
        self.send(format!("{tag} LOGIN {user} {}\r\n", quote(password)))
            .await;
        self.response_text(tag).await
    }

    pub async fn send(&mut self, data: impl AsRef<[u8]>) {
        self.s.write_all(data.as_ref()).await.unwrap();
    }

    /// Raw bytes up to and including the line tagged `tag`, reading IMAP
    /// literals (`{n}` at a line's end) whole.
    pub async fn response(&mut self, tag: &str) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line = self.line_bytes().await;
            assert!(
                !line.is_empty(),
                "EOF before the {tag} reply; got {:?}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&line);
            if let Some(n) = literal_len(&line) {
                let lit = self.read_exact(n).await;
                out.extend_from_slice(&lit);
                continue;
            }
            if line.starts_with(format!("{tag} ").as_bytes()) {
                return out;
            }
        }
    }

    /// The text of `response`.
    pub async fn response_text(&mut self, tag: &str) -> String {
        String::from_utf8_lossy(&self.response(tag).await).into_owned()
    }

    /// Whether the server closes the connection (EOF) within the timeout,
    /// discarding anything it still sends.
    pub async fn closed(&mut self) -> bool {
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(TIMEOUT, self.s.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

fn literal_len(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"\r\n")?;
    let inner = l.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|b| *b == b'{')?;
    std::str::from_utf8(&inner[open + 1..])
        .ok()?
        .trim_end_matches('+')
        .parse()
        .ok()
}

/// An IMAP quoted string.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
