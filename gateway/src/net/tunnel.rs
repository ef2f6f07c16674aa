//! Mail connections through an outbound proxy: an HTTP proxy's `CONNECT`
//! tunnel, or SOCKS5 (tokio-socks). The tunnel carries the TLS session to
//! the mail server, whose certificate is still checked against its own
//! name: the proxy sees only ciphertext (and, with STARTTLS, the greeting).

use base64::Engine as _;
use mailgate_config::{Proxy, ProxyKind};
use secrecy::ExposeSecret as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The proxy itself cannot be reached.
    #[error("the proxy {proxy} cannot be reached: {reason}")]
    Unreachable { proxy: String, reason: String },
    /// The proxy answered and said no (its status line or SOCKS reply).
    #[error("the proxy {proxy} refused the connection to {target}: {reason}")]
    Refused {
        proxy: String,
        target: String,
        reason: String,
    },
    /// The proxy broke the exchange or answered something else.
    #[error("the proxy {proxy} failed: {reason}")]
    Broken { proxy: String, reason: String },
}

/// The longest answer head accepted from an HTTP proxy.
const MAX_HEAD: usize = 8 * 1024;

/// A TCP connection to `host:port` through `proxy`, ready for TLS (or for
/// the server's plain greeting before STARTTLS).
pub async fn open(proxy: &Proxy, host: &str, port: u16) -> Result<TcpStream, TunnelError> {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    match proxy.kind {
        ProxyKind::Http => {
            let mut tcp = connect_proxy(proxy).await?;
            http_connect(&mut tcp, proxy, &target).await?;
            Ok(tcp)
        }
        ProxyKind::Socks5h => {
            let address = tokio_socks::TargetAddr::Domain(host.into(), port);
            socks5(connect_proxy(proxy).await?, proxy, address)
                .await
                .map_err(|e| socks_error(e, proxy, &target))
        }
        // The name is resolved here; each address is tried in turn (at
        // most four) while the proxy says it cannot reach the last one, as
        // a direct connection would.
        ProxyKind::Socks5 => {
            let addresses: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
                .await
                .map(|a| a.take(4).collect())
                .unwrap_or_default();
            if addresses.is_empty() {
                return Err(TunnelError::Broken {
                    proxy: proxy.to_string(),
                    reason: format!(
                        "{host} cannot be resolved here (with socks5h:// the proxy resolves it)"
                    ),
                });
            }
            use tokio_socks::Error as E;
            let last = addresses.len() - 1;
            let mut error = E::UnknownError;
            for (i, a) in addresses.into_iter().enumerate() {
                let tried = socks5(
                    connect_proxy(proxy).await?,
                    proxy,
                    tokio_socks::TargetAddr::Ip(a),
                )
                .await;
                match tried {
                    Ok(tcp) => return Ok(tcp),
                    Err(
                        E::HostUnreachable
                        | E::NetworkUnreachable
                        | E::ConnectionRefused
                        | E::TtlExpired,
                    ) if i < last => continue,
                    Err(e) => {
                        error = e;
                        break;
                    }
                }
            }
            Err(socks_error(error, proxy, &target))
        }
    }
}

/// The TCP connection to the proxy itself.
async fn connect_proxy(proxy: &Proxy) -> Result<TcpStream, TunnelError> {
    let tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| TunnelError::Unreachable {
            proxy: proxy.to_string(),
            reason: e.to_string(),
        })?;
    // The handshake's small writes must not wait for delayed ACKs.
    crate::net::socket::tune(&tcp);
    Ok(tcp)
}

async fn http_connect(tcp: &mut TcpStream, proxy: &Proxy, target: &str) -> Result<(), TunnelError> {
    let broken = |reason: String| TunnelError::Broken {
        proxy: proxy.to_string(),
        reason,
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, password)) = &proxy.credentials {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{user}:{}", password.expose_secret()));
        request.push_str(&format!("Proxy-Authorization: Basic {basic}\r\n"));
    }
    request.push_str("\r\n");
    let request = zeroize::Zeroizing::new(request);
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| broken(e.to_string()))?;
    // Byte by byte up to the blank line: nothing of the tunnel is read.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(broken(format!(
                "its answer is longer than {MAX_HEAD} bytes"
            )));
        }
        match tcp.read(&mut byte).await {
            Ok(0) => return Err(broken("it closed the connection without an answer".into())),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(broken(e.to_string())),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(broken("its answer is not HTTP".into())),
    }
    let code = response.code.unwrap_or(0);
    if (200..300).contains(&code) {
        return Ok(());
    }
    // The reason phrase is the proxy's text: printable ASCII, bounded.
    let reason: String = response
        .reason
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(100)
        .collect();
    let hint = if code == 407 {
        if proxy.credentials.is_some() {
            " (the proxy's user name or password is wrong)"
        } else {
            " (the proxy wants a user name and password: http://user:password@host:port)"
        }
    } else {
        ""
    };
    Err(TunnelError::Refused {
        proxy: proxy.to_string(),
        target: target.to_owned(),
        reason: format!("HTTP {code} {}{hint}", reason.trim()),
    })
}

async fn socks5(
    tcp: TcpStream,
    proxy: &Proxy,
    address: tokio_socks::TargetAddr<'_>,
) -> Result<TcpStream, tokio_socks::Error> {
    use tokio_socks::tcp::Socks5Stream;
    let done = match &proxy.credentials {
        Some((user, password)) => {
            Socks5Stream::connect_with_password_and_socket(
                tcp,
                address,
                user,
                password.expose_secret(),
            )
            .await
        }
        None => Socks5Stream::connect_with_socket(tcp, address).await,
    };
    done.map(Socks5Stream::into_inner)
}

fn socks_error(e: tokio_socks::Error, proxy: &Proxy, target: &str) -> TunnelError {
    use tokio_socks::Error as E;
    match e {
        E::Io(e) => TunnelError::Broken {
            proxy: proxy.to_string(),
            reason: e.to_string(),
        },
        E::InvalidResponseVersion
        | E::UnknownAuthMethod
        | E::InvalidReservedByte
        | E::UnknownAddressType
        | E::UnknownError => TunnelError::Broken {
            proxy: proxy.to_string(),
            reason: format!("it does not speak SOCKS5 as expected ({e})"),
        },
        other => TunnelError::Refused {
            proxy: proxy.to_string(),
            target: target.to_owned(),
            reason: format!("SOCKS5: {other}"),
        },
    }
}
