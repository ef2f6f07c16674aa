//! Connecting to upstream mail servers and logging in: TCP (through the
//! server's outbound proxy when it has one), TLS with full verification,
//! and the one driver of every protocol's login machine ([`log_in`]), over
//! the same [`Stream`] and vocabulary as the client leg.

use std::sync::Arc;
use std::time::Duration;

use mailgate_config::{Upstream, UpstreamSecurity};
use mailgate_proto::upstream::{Failure, Machine, Note, Step, Success};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::net::stream::Stream;
use crate::net::tunnel::TunnelError;
use tracing::{debug, info, warn};

/// A logged-in upstream session, ready for the relay.
#[derive(Debug)]
pub struct LoggedIn {
    /// Over TLS (a login never ends in clear).
    pub stream: Stream,
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
    Proxy(#[from] crate::net::tunnel::TunnelError),
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
        Some(proxy) => crate::net::tunnel::open(proxy, &up.host, up.port).await?,
        None => TcpStream::connect((up.host.as_str(), up.port))
            .await
            .map_err(|e| UpstreamError::Connect {
                server: up.to_string(),
                reason: e.to_string(),
            })?,
    };
    crate::net::socket::tune(&tcp);
    Ok(tcp)
}

/// Runs the TLS handshake, verifying the certificate for `up.host`.
pub async fn handshake(
    stream: Stream,
    up: &Upstream,
    config: Arc<rustls::ClientConfig>,
) -> Result<Stream, UpstreamError> {
    let name = ServerName::try_from(up.host.clone()).map_err(|e| UpstreamError::Tls {
        server: up.to_string(),
        reason: format!("invalid server name: {e}"),
    })?;
    stream
        .connect_tls(config, name)
        .await
        .map_err(|e| UpstreamError::Tls {
            server: up.to_string(),
            reason: crate::accounts::oauth::chain(&e),
        })
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
    let mut link = Stream::plain(connect_tcp(server).await?);
    if server.security == UpstreamSecurity::ImplicitTls {
        link = handshake(link, server, tls.clone()).await?;
    }
    let protocol = |reason: &str| UpstreamError::Protocol {
        server: server.to_string(),
        reason: reason.to_owned(),
    };
    let mut chunk = vec![0u8; 4096];
    loop {
        while let Some(step) = m.next() {
            match step {
                Step::Send(bytes) => link.send(&bytes).await.map_err(|e| io_error(server, e))?,
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
                    if link.is_tls() {
                        return Err(protocol("the server asked for TLS twice"));
                    }
                    link = handshake(link, server, tls.clone()).await?;
                    debug!("upstream STARTTLS done");
                    m.tls_started();
                }
                Step::Done(Success {
                    capabilities,
                    leftover,
                }) => {
                    if !link.is_tls() {
                        return Err(protocol("the login ended before TLS"));
                    }
                    return Ok(LoggedIn {
                        stream: link,
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
        let n = link
            .read_some(&mut chunk)
            .await
            .map_err(|e| io_error(server, e))?;
        if n == 0 {
            return Err(UpstreamError::Closed {
                server: server.to_string(),
            });
        }
        m.feed(&chunk[..n]);
    }
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
