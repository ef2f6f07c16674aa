//! A lean XOAUTH2-only IMAP and SMTP server over implicit TLS on 127.0.0.1,
//! built for speed rather than for recording: the benchmark's "provider".
//!
//! IMAP: greeting with `SASL-IR AUTH=XOAUTH2`, `AUTHENTICATE XOAUTH2`,
//! `FETCH` (returns one message of the configured size), `IDLE`/`DONE`,
//! `NOOP`, `LOGOUT`. SMTP: `EHLO`, `AUTH XOAUTH2`, `MAIL`, `RCPT`, `DATA`
//! (the body is scanned for its end and dropped), `RSET`, `NOOP`, `QUIT`.
//! Every login must carry the one access token it was started with.
//!
//! It runs in a child process of the benchmark (see [`serve_forever`]), so
//! that its descriptors do not count against the benchmark clients'.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// One mebibyte of message text: 78-character lines and CRLF, no line
/// starting with a dot.
pub fn text_chunk() -> Arc<[u8]> {
    let line: Vec<u8> = (0..78u8).map(|i| b'A' + (i % 26)).collect();
    let mut v = Vec::with_capacity(1 << 20);
    while v.len() + 80 <= 1 << 20 {
        v.extend_from_slice(&line);
        v.extend_from_slice(b"\r\n");
    }
    while v.len() < 1 << 20 {
        v.insert(0, b'x');
    }
    v.into()
}

/// Writes `size` bytes of `chunk` repeated.
pub async fn write_text<W: AsyncWrite + Unpin>(
    w: &mut W,
    chunk: &[u8],
    size: usize,
) -> std::io::Result<()> {
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        w.write_all(&chunk[..n]).await?;
        left -= n;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub imap: SocketAddr,
    pub smtp: SocketAddr,
}

struct Shared {
    /// The one XOAUTH2 initial response accepted, decoded.
    xoauth2: Vec<u8>,
    acceptor: TlsAcceptor,
    message_size: usize,
    chunk: Arc<[u8]>,
}

/// `--upstream DIR SIZE USER TOKEN`: serves with the certificate and key in
/// DIR (`server.pem`, `server.key`), prints `imap=ADDR smtp=ADDR` on one
/// line, and exits when its standard input closes (the benchmark ended).
pub async fn serve_forever(args: &[String]) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let [dir, size, user, token] = args else {
        anyhow::bail!("usage: --upstream DIR SIZE USER TOKEN");
    };
    let dir = std::path::Path::new(dir);
    let certs =
        CertificateDer::pem_file_iter(dir.join("server.pem"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    let addrs = start(Arc::new(config), user, token, size.parse()?).await;
    println!("imap={} smtp={}", addrs.imap, addrs.smtp);
    tokio::task::spawn_blocking(|| {
        use std::io::Read as _;
        let mut sink = [0u8; 64];
        while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await?;
    Ok(())
}

/// Starts both servers; `FETCH` returns a message of `message_size` bytes.
pub async fn start(
    tls: Arc<rustls::ServerConfig>,
    user: &str,
    token: &str,
    message_size: usize,
) -> Addrs {
    let shared = Arc::new(Shared {
        xoauth2: format!("user={user}\x01auth=Bearer {token}\x01\x01").into_bytes(),
        acceptor: TlsAcceptor::from(tls),
        message_size,
        chunk: text_chunk(),
    });
    let imap = listen(shared.clone(), |s, c| Box::pin(imap(s, c))).await;
    let smtp = listen(shared, |s, c| Box::pin(smtp(s, c))).await;
    Addrs { imap, smtp }
}

type Served = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

async fn listen(shared: Arc<Shared>, serve: fn(Arc<Shared>, TcpStream) -> Served) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(serve(shared.clone(), tcp));
                }
                Err(e) => {
                    // Out of descriptors: say so and keep going.
                    eprintln!("bench upstream: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
    addr
}

fn valid(shared: &Shared, b64: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .is_ok_and(|raw| raw == shared.xoauth2)
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

async fn line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    buf.clear();
    Ok(r.read_until(b'\n', buf).await? > 0)
}

async fn imap(shared: Arc<Shared>, tcp: TcpStream) -> std::io::Result<()> {
    let tls = shared.acceptor.accept(tcp).await?;
    let mut s = BufReader::with_capacity(4096, tls);
    s.get_mut()
        .write_all(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 IDLE] bench ready\r\n")
        .await?;
    let mut buf = Vec::new();
    let mut authenticated = false;
    while line(&mut s, &mut buf).await? {
        let text = String::from_utf8_lossy(&buf).trim_end().to_owned();
        let mut words = text.splitn(3, ' ');
        let tag = words.next().unwrap_or("*").to_owned();
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let rest = words.next().unwrap_or("");
        let w = s.get_mut();
        match verb.as_str() {
            "AUTHENTICATE" => {
                let ir = rest
                    .strip_prefix("XOAUTH2 ")
                    .ok_or_else(|| invalid("no SASL-IR"))?;
                if valid(&shared, ir) {
                    authenticated = true;
                    w.write_all(
                        format!("{tag} OK [CAPABILITY IMAP4rev1 IDLE] done\r\n").as_bytes(),
                    )
                    .await?;
                } else {
                    w.write_all(
                        format!("{tag} NO [AUTHENTICATIONFAILED] bad token\r\n").as_bytes(),
                    )
                    .await?;
                }
            }
            "FETCH" if authenticated => {
                let n = shared.message_size;
                w.write_all(format!("* 1 FETCH (BODY[] {{{n}}}\r\n").as_bytes())
                    .await?;
                write_text(w, &shared.chunk, n).await?;
                w.write_all(format!(")\r\n{tag} OK FETCH completed\r\n").as_bytes())
                    .await?;
            }
            "IDLE" if authenticated => {
                w.write_all(b"+ idling\r\n").await?;
                w.flush().await?;
                if !line(&mut s, &mut buf).await? {
                    return Ok(());
                }
                s.get_mut()
                    .write_all(format!("{tag} OK IDLE terminated\r\n").as_bytes())
                    .await?;
            }
            "NOOP" => w.write_all(format!("{tag} OK NOOP\r\n").as_bytes()).await?,
            "LOGOUT" => {
                w.write_all(format!("* BYE bye\r\n{tag} OK LOGOUT\r\n").as_bytes())
                    .await?;
                w.shutdown().await?;
                return Ok(());
            }
            _ => {
                w.write_all(format!("{tag} BAD not here\r\n").as_bytes())
                    .await?
            }
        }
        s.get_mut().flush().await?;
    }
    Ok(())
}

async fn smtp(shared: Arc<Shared>, tcp: TcpStream) -> std::io::Result<()> {
    let tls = shared.acceptor.accept(tcp).await?;
    let mut s = BufReader::with_capacity(64 * 1024, tls);
    s.get_mut().write_all(b"220 bench ESMTP ready\r\n").await?;
    let end = memchr::memmem::Finder::new(b"\r\n.\r\n");
    let mut buf = Vec::new();
    while line(&mut s, &mut buf).await? {
        let text = String::from_utf8_lossy(&buf).trim_end().to_owned();
        let upper = text.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 AUTH XOAUTH2\r\n"
        } else if let Some(ir) = upper.strip_prefix("AUTH XOAUTH2") {
            let ir = if ir.trim().is_empty() {
                s.get_mut().write_all(b"334 \r\n").await?;
                s.get_mut().flush().await?;
                if !line(&mut s, &mut buf).await? {
                    return Ok(());
                }
                String::from_utf8_lossy(&buf).trim().to_owned()
            } else {
                text["AUTH XOAUTH2".len()..].trim().to_owned()
            };
            if valid(&shared, &ir) {
                b"235 2.7.0 Accepted\r\n"
            } else {
                b"535 5.7.8 bad token\r\n"
            }
        } else if upper.starts_with("MAIL") || upper.starts_with("RCPT") {
            b"250 2.1.0 OK\r\n"
        } else if upper == "DATA" {
            s.get_mut().write_all(b"354 go ahead\r\n").await?;
            s.get_mut().flush().await?;
            // The body's end may straddle two reads: keep the last 4 bytes.
            let mut tail: Vec<u8> = b"\r\n".to_vec();
            loop {
                let got = s.fill_buf().await?;
                if got.is_empty() {
                    return Ok(());
                }
                let mut probe = std::mem::take(&mut tail);
                let head = got.len().min(4);
                probe.extend_from_slice(&got[..head]);
                if let Some(i) = end.find(&probe) {
                    let used = i + 5 - (probe.len() - head);
                    s.consume(used);
                    break;
                }
                if let Some(i) = end.find(got) {
                    s.consume(i + 5);
                    break;
                }
                let n = got.len();
                tail = got[n.saturating_sub(4)..].to_vec();
                s.consume(n);
            }
            b"250 2.0.0 queued\r\n"
        } else if upper == "QUIT" {
            s.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            s.get_mut().shutdown().await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 2.0.0 OK\r\n"
        } else {
            b"502 5.5.1 not here\r\n"
        };
        s.get_mut().write_all(reply).await?;
        s.get_mut().flush().await?;
    }
    Ok(())
}
