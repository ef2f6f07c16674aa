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
    let name = proxy.to_string();
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| TunnelError::Unreachable {
            proxy: name.clone(),
            reason: e.to_string(),
        })?;
    match proxy.kind {
        ProxyKind::Http => {
            http_connect(&mut tcp, proxy, &target).await?;
            Ok(tcp)
        }
        ProxyKind::Socks5 | ProxyKind::Socks5h => socks5(tcp, proxy, host, port, &target).await,
    }
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
    host: &str,
    port: u16,
    target: &str,
) -> Result<TcpStream, TunnelError> {
    use tokio_socks::tcp::Socks5Stream;
    // socks5: the gateway resolves the name; socks5h: the proxy does.
    let address: tokio_socks::TargetAddr<'_> = if proxy.kind == ProxyKind::Socks5h {
        tokio_socks::TargetAddr::Domain(host.into(), port)
    } else {
        let resolved = tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut a| a.next());
        match resolved {
            Some(a) => tokio_socks::TargetAddr::Ip(a),
            None => {
                return Err(TunnelError::Broken {
                    proxy: proxy.to_string(),
                    reason: format!(
                        "{host} cannot be resolved here (with socks5h:// the proxy resolves it)"
                    ),
                });
            }
        }
    };
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
    done.map(Socks5Stream::into_inner).map_err(|e| {
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
    })
}
