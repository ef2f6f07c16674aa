//! Connecting to upstream mail servers: TCP with TCP_NODELAY, TLS with full
//! verification, and a bounded line reader for the login dialogue. Shared by
//! every protocol.

use std::sync::Arc;
use std::time::Duration;

use mailgate_config::Upstream;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The upstream connection after TLS is up.
pub type UpstreamStream = TlsStream<TcpStream>;

/// A logged-in upstream session, ready for the relay.
#[derive(Debug)]
pub struct LoggedIn {
    pub stream: UpstreamStream,
    /// Bytes the server sent after its success reply.
    pub leftover: Vec<u8>,
}

/// Longest reply line accepted from an upstream before login.
pub const MAX_REPLY_LINE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("TLS with {server} failed: {reason}")]
    Tls { server: String, reason: String },
    #[error("{server} did not answer in time")]
    Timeout { server: String },
    #[error("{server} closed the connection")]
    Closed { server: String },
    #[error("the connection to {server} failed: {reason}")]
    Io { server: String, reason: String },
    #[error("{server}: {reason}")]
    Protocol { server: String, reason: String },
    /// The server refused the token; `detail` is its reply (and the decoded
    /// error challenge, if any).
    #[error("{server} refused the token: {detail}")]
    Rejected { server: String, detail: String },
    /// The server is up but cannot authenticate now (e.g. `NO [UNAVAILABLE]`).
    #[error("{server} cannot authenticate now: {detail}")]
    Unavailable { server: String, detail: String },
}

/// Opens a TCP connection (TCP_NODELAY set, keepalive on).
pub async fn connect_tcp(up: &Upstream) -> Result<TcpStream, UpstreamError> {
    let addr = (up.host.as_str(), up.port);
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| UpstreamError::Connect {
            server: up.to_string(),
            reason: e.to_string(),
        })?;
    tune(&tcp);
    Ok(tcp)
}

/// TCP_NODELAY (no Nagle delay against delayed ACKs on small writes) and
/// keepalive, for either leg.
pub fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15));
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// Runs the TLS handshake, verifying the certificate for `up.host`.
pub async fn handshake(
    tcp: TcpStream,
    up: &Upstream,
    config: Arc<rustls::ClientConfig>,
) -> Result<UpstreamStream, UpstreamError> {
    let name = ServerName::try_from(up.host.clone()).map_err(|e| UpstreamError::Tls {
        server: up.to_string(),
        reason: format!("invalid server name: {e}"),
    })?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls {
            server: up.to_string(),
            reason: crate::oauth::chain(&e),
        })
}

/// Reads reply lines, keeping whatever follows them.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
}

impl LineReader {
    /// Reads one line (with its CRLF) of at most [`MAX_REPLY_LINE`] bytes.
    pub async fn read_line<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        server: &Upstream,
    ) -> Result<Vec<u8>, UpstreamError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let rest = self.buf.split_off(i + 1);
                return Ok(std::mem::replace(&mut self.buf, rest));
            }
            if self.buf.len() > MAX_REPLY_LINE {
                return Err(UpstreamError::Protocol {
                    server: server.to_string(),
                    reason: "reply line too long".into(),
                });
            }
            self.fill(stream, server).await?;
        }
    }

    /// Reads until `decode` finds a whole message at the start of the
    /// buffer (e.g. a multi-line SMTP reply), and consumes it.
    pub async fn read_message<S, T>(
        &mut self,
        stream: &mut S,
        server: &Upstream,
        decode: impl Fn(&[u8]) -> Result<(&[u8], T), mailgate_proto::DecodeError>,
    ) -> Result<T, UpstreamError>
    where
        S: AsyncRead + Unpin,
    {
        loop {
            match decode(&self.buf) {
                Ok((rest, t)) => {
                    let used = self.buf.len() - rest.len();
                    self.buf.drain(..used);
                    return Ok(t);
                }
                Err(mailgate_proto::DecodeError::Incomplete) => {}
                Err(mailgate_proto::DecodeError::Failed { .. }) => {
                    let shown =
                        String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)]).into_owned();
                    return Err(UpstreamError::Protocol {
                        server: server.to_string(),
                        reason: format!("unexpected reply: {}", shown.trim_end()),
                    });
                }
            }
            if self.buf.len() > MAX_REPLY_LINE {
                return Err(UpstreamError::Protocol {
                    server: server.to_string(),
                    reason: "reply too long".into(),
                });
            }
            self.fill(stream, server).await?;
        }
    }

    async fn fill<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        server: &Upstream,
    ) -> Result<(), UpstreamError> {
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| io_error(server, e))?;
        if n == 0 {
            return Err(UpstreamError::Closed {
                server: server.to_string(),
            });
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Bytes received beyond the last line read.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_buffered(self) -> Vec<u8> {
        self.buf
    }
}

/// Writes all of `data` and flushes (TLS streams buffer).
pub async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    data: &[u8],
    server: &Upstream,
) -> Result<(), UpstreamError> {
    stream
        .write_all(data)
        .await
        .map_err(|e| io_error(server, e))?;
    stream.flush().await.map_err(|e| io_error(server, e))
}

/// An I/O error on an established connection; an unexpected end (a TLS
/// peer hanging up without close_notify) is a plain close.
fn io_error(server: &Upstream, e: std::io::Error) -> UpstreamError {
    if matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
    ) {
        UpstreamError::Closed {
            server: server.to_string(),
        }
    } else {
        UpstreamError::Io {
            server: server.to_string(),
            reason: e.to_string(),
        }
    }
}

/// Runs `fut` under the upstream timeout.
pub async fn within<T>(
    limit: Duration,
    server: &Upstream,
    fut: impl std::future::Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(UpstreamError::Timeout {
            server: server.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    /// Both legs get TCP_NODELAY and keepalive.
    #[tokio::test]
    async fn tune_sets_nodelay_and_keepalive() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        for sock in [&c, &s] {
            super::tune(sock);
            assert!(sock.nodelay().expect("nodelay"));
            assert!(socket2::SockRef::from(sock).keepalive().expect("keepalive"));
        }
    }
}
