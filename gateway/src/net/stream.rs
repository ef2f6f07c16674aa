//! The one stream type of both legs of a session. A connection starts in
//! clear and may be upgraded once: on the client leg by the server side of
//! a TLS handshake (implicit TLS, STARTTLS, STLS), on the upstream leg by
//! the client side (implicit TLS, STARTTLS) with the server's certificate
//! checked against its name. Both legs speak the same small vocabulary
//! ([`Stream::read_some`], [`Stream::send`]) during the dialogue before the
//! relay, and both are an [`AsyncBufRead`] for the relay: in clear through
//! an [`OnDemand`] buffer, over TLS through rustls's plaintext buffer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::net::buffer::OnDemand;

/// A connection, in clear or over TLS (either side of the handshake).
#[derive(Debug)]
pub enum Stream {
    Plain(OnDemand<TcpStream>),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    pub fn plain(tcp: TcpStream) -> Self {
        Stream::Plain(OnDemand::new(tcp))
    }

    /// Whether TLS is up.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The TCP connection before TLS; an error once TLS is up (a second
    /// upgrade is a protocol error). Nothing is buffered in clear while
    /// the dialogue reads with [`Stream::read_some`].
    fn into_tcp(self) -> io::Result<TcpStream> {
        match self {
            Stream::Plain(p) => Ok(p.into_inner()),
            Stream::Tls(_) => Err(io::Error::other("TLS is already active")),
        }
    }

    /// Runs the server side of a TLS handshake (the client leg).
    pub async fn accept_tls(self, acceptor: &TlsAcceptor) -> io::Result<Stream> {
        let tls = acceptor.accept(self.into_tcp()?).await?;
        Ok(Stream::Tls(Box::new(TlsStream::Server(tls))))
    }

    /// Runs the client side of a TLS handshake (the upstream leg),
    /// verifying the certificate for `name`.
    pub async fn connect_tls(
        self,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Stream> {
        let tcp = self.into_tcp()?;
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(TlsStream::Client(tls))))
    }

    /// Reads what has arrived (at most `buf.len()` bytes); 0 at the end.
    pub async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf).await
    }

    /// Writes all of `data` and flushes it (TLS buffers writes).
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_all(data).await?;
        self.flush().await
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncBufRead for Stream {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_fill_buf(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_fill_buf(cx),
        }
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).consume(amt),
            Stream::Tls(s) => Pin::new(s.as_mut()).consume(amt),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both sides of the handshake over one type: a client leg accepts TLS
    /// from an upstream leg that connects to it, and bytes cross both ways
    /// through the same vocabulary; a second upgrade is refused.
    #[tokio::test]
    async fn both_sides_upgrade_and_talk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, _) = mailgate_certs::self_signed(dir.path(), "localhost").expect("cert");
        let id = mailgate_certs::load_identity(&cert, &key).expect("identity");
        let acceptor = TlsAcceptor::from(mailgate_certs::server_config(&id).expect("server"));
        let mut roots = rustls::RootCertStore::empty();
        for c in mailgate_certs::load_certificates(&cert).expect("certificate") {
            roots.add(c).expect("root");
        }
        let client_config = Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.expect("accept");
            let mut s = Stream::plain(tcp)
                .accept_tls(&acceptor)
                .await
                .expect("accept tls");
            assert!(s.is_tls());
            let mut buf = [0u8; 16];
            let n = s.read_some(&mut buf).await.expect("read");
            s.send(&buf[..n]).await.expect("echo");
            let again = s.accept_tls(&acceptor).await;
            let e = again.expect_err("a second upgrade is refused");
            assert_eq!(e.to_string(), "TLS is already active");
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut up = Stream::plain(tcp)
            .connect_tls(client_config, name)
            .await
            .expect("connect tls");
        up.send(b"hello").await.expect("send");
        let mut buf = [0u8; 16];
        let n = up.read_some(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"hello");
        server.await.expect("server");
    }
}
