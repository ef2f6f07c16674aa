//! Connecting to upstream mail servers and logging in: TCP with
//! TCP_NODELAY, TLS with full verification, and the one driver of every
//! protocol's login machine ([`log_in`]).

use std::sync::Arc;
use std::time::Duration;

use mailgate_config::{Upstream, UpstreamSecurity};
use mailgate_proto::upstream::{Failure, Machine, Note, Step, Success};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::session::tunnel::TunnelError;
use tracing::{debug, info, warn};

/// The upstream connection after TLS is up.
pub type UpstreamStream = TlsStream<TcpStream>;

/// A logged-in upstream session, ready for the relay.
#[derive(Debug)]
pub struct LoggedIn {
    pub stream: UpstreamStream,
    /// IMAP: the post-login capabilities the client is shown; `None` for
    /// SMTP and POP3.
    pub capabilities: Option<Vec<String>>,
    /// Bytes the server sent after its success reply.
    pub leftover: Vec<u8>,
}

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
    /// The outbound proxy could not open the tunnel.
    #[error(transparent)]
    Proxy(#[from] crate::session::tunnel::TunnelError),
}

impl UpstreamError {
    /// What happened, in the words a mail client's user is shown before
    /// the details: only a failed connection is "cannot be reached".
    pub fn summary(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "The mail server cannot be reached now",
            UpstreamError::Timeout { .. } => "The mail server did not answer in time",
            UpstreamError::Tls { .. } => "A secure connection to the mail server failed",
            UpstreamError::Closed { .. } | UpstreamError::Io { .. } => {
                "The connection to the mail server broke"
            }
            UpstreamError::Protocol { .. } => {
                "The mail server does not work as the gateway's configuration says"
            }
            UpstreamError::Rejected { .. } => "The mail server refused the login",
            UpstreamError::Unavailable { .. } => "The mail server cannot log in now",
            UpstreamError::Proxy(e) => match e {
                TunnelError::Unreachable { .. } => "The proxy cannot be reached now",
                TunnelError::Refused { .. } => "The proxy refused the connection",
                TunnelError::Broken { .. } => "The proxy failed",
            },
        }
    }
}

impl UpstreamError {
    /// What the client should do about it (the summary's second half).
    pub fn advice(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Closed { .. }
            | UpstreamError::Io { .. }
            | UpstreamError::Unavailable { .. } => {
                "try again later; if it persists, tell the administrator (the gateway's log says why)"
            }
            UpstreamError::Tls { .. } | UpstreamError::Protocol { .. } => {
                "the administrator must check the provider's server settings (the gateway's log says why)"
            }
            UpstreamError::Rejected { .. } => "check that the mailbox allows this protocol",
            UpstreamError::Proxy(_) => {
                "the administrator must check the gateway's proxy settings (the gateway's log says why)"
            }
        }
    }
}

/// Opens a TCP connection (TCP_NODELAY set, keepalive on), through the
/// server's proxy when it has one.
pub async fn connect_tcp(up: &Upstream) -> Result<TcpStream, UpstreamError> {
    let tcp = match &up.proxy {
        Some(proxy) => crate::session::tunnel::open(proxy, &up.host, up.port).await?,
        None => TcpStream::connect((up.host.as_str(), up.port))
            .await
            .map_err(|e| UpstreamError::Connect {
                server: up.to_string(),
                reason: e.to_string(),
            })?,
    };
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
            reason: crate::accounts::oauth::chain(&e),
        })
}

/// The connection during a login: in clear until TLS starts.
enum Link {
    Plain(TcpStream),
    Tls(Box<UpstreamStream>),
}

impl Link {
    async fn read(&mut self, buf: &mut [u8], server: &Upstream) -> Result<usize, UpstreamError> {
        let n = match self {
            Link::Plain(s) => s.read(buf).await,
            Link::Tls(s) => s.read(buf).await,
        }
        .map_err(|e| io_error(server, e))?;
        if n == 0 {
            return Err(UpstreamError::Closed {
                server: server.to_string(),
            });
        }
        Ok(n)
    }

    async fn send(&mut self, data: &[u8], server: &Upstream) -> Result<(), UpstreamError> {
        match self {
            Link::Plain(s) => send(s, data, server).await,
            Link::Tls(s) => send(s, data, server).await,
        }
    }
}

/// Drives a protocol's login machine ([`mailgate_proto::upstream`]) on a
/// new connection to `server`: connects, runs the TLS handshake first
/// (implicit TLS) or when the machine asks (STARTTLS, after checking that
/// the server sent nothing beyond its go-ahead: that would be an injection),
/// sends what the machine says, feeds it what the server sends, logs what
/// it notes. The caller bounds the time ([`within`]).
pub async fn log_in<M: Machine>(
    mut m: M,
    server: &Upstream,
    tls: Arc<rustls::ClientConfig>,
) -> Result<LoggedIn, UpstreamError> {
    let tcp = connect_tcp(server).await?;
    let mut link = match server.security {
        UpstreamSecurity::ImplicitTls => {
            Link::Tls(Box::new(handshake(tcp, server, tls.clone()).await?))
        }
        UpstreamSecurity::StartTls => Link::Plain(tcp),
    };
    let protocol = |reason: &str| UpstreamError::Protocol {
        server: server.to_string(),
        reason: reason.to_owned(),
    };
    let mut chunk = vec![0u8; 4096];
    loop {
        while let Some(step) = m.next() {
            match step {
                Step::Send(bytes) => link.send(&bytes, server).await?,
                Step::Note(Note::Challenge(json)) => {
                    info!(%server, challenge = %json, "upstream XOAUTH2 error challenge");
                }
                Step::Note(Note::NoXoauth2) => {
                    warn!(%server, "the server does not announce XOAUTH2; trying it anyway");
                }
                Step::StartTls => {
                    if !m.buffered().is_empty() {
                        return Err(protocol(
                            "the server sent data after its STARTTLS reply (possible injection); giving up",
                        ));
                    }
                    let Link::Plain(tcp) = link else {
                        return Err(protocol("the server asked for TLS twice"));
                    };
                    link = Link::Tls(Box::new(handshake(tcp, server, tls.clone()).await?));
                    debug!("upstream STARTTLS done");
                    m.tls_started();
                }
                Step::Done(Success {
                    capabilities,
                    leftover,
                }) => {
                    let Link::Tls(stream) = link else {
                        return Err(protocol("the login ended before TLS"));
                    };
                    return Ok(LoggedIn {
                        stream: *stream,
                        capabilities,
                        leftover,
                    });
                }
                Step::Failed(f) => {
                    let server = server.to_string();
                    return Err(match f {
                        Failure::Rejected(detail) => UpstreamError::Rejected { server, detail },
                        Failure::Unavailable(detail) => {
                            UpstreamError::Unavailable { server, detail }
                        }
                        Failure::Protocol(reason) => UpstreamError::Protocol { server, reason },
                    });
                }
            }
        }
        let n = link.read(&mut chunk, server).await?;
        m.feed(&chunk[..n]);
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
