//! The PROXY protocol (HAProxy's v1 text and v2 binary headers), read
//! first on a listener with `proxy_protocol = true`: it names the client
//! behind a TCP load balancer, for the logs, the backoff and the limits.
//! Exactly the header's bytes are read (the client speaks only after the
//! greeting), then parsed by the `ppp` crate.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature (12 bytes).
const V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes.
const V1_MAX: usize = 107;
/// The TLVs a v2 header may carry, at most.
const V2_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("the connection ended before a PROXY header")]
    Closed,
    #[error("not a PROXY header: {0}")]
    Invalid(String),
}

/// Reads the header; the client's address it carries, or `proxy` itself
/// for a v2 LOCAL (health check) or v1 UNKNOWN header.
pub async fn read_header<S: AsyncRead + Unpin>(
    s: &mut S,
    proxy: SocketAddr,
    limit: Duration,
) -> Result<SocketAddr, ProxyError> {
    let bytes = tokio::time::timeout(limit, read_bytes(s))
        .await
        .map_err(|_| ProxyError::Timeout(limit))??;
    parse(&bytes, proxy)
}

async fn read_bytes<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, ProxyError> {
    let closed = |_| ProxyError::Closed;
    let mut buf = vec![0u8; 5];
    s.read_exact(&mut buf).await.map_err(closed)?;
    if buf == b"PROXY" {
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyError::Invalid(
                    "a v1 line longer than 107 bytes".into(),
                ));
            }
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.map_err(closed)?;
            buf.push(b[0]);
        }
        return Ok(buf);
    }
    if buf[..] != V2[..5] {
        return Err(ProxyError::Invalid("neither v1 nor v2".into()));
    }
    buf.resize(16, 0);
    s.read_exact(&mut buf[5..]).await.map_err(closed)?;
    if buf[..12] != V2[..] {
        return Err(ProxyError::Invalid("a bad v2 signature".into()));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err(ProxyError::Invalid(format!("a v2 header of {len} bytes")));
    }
    let start = buf.len();
    buf.resize(start + len, 0);
    s.read_exact(&mut buf[start..]).await.map_err(closed)?;
    Ok(buf)
}

fn parse(bytes: &[u8], proxy: SocketAddr) -> Result<SocketAddr, ProxyError> {
    use ppp::{HeaderResult, v1, v2};
    match HeaderResult::parse(bytes) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => SocketAddr::new(a.source_address.into(), a.source_port),
            v1::Addresses::Tcp6(a) => SocketAddr::new(a.source_address.into(), a.source_port),
            v1::Addresses::Unknown => proxy,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (v2::Command::Local, _) => proxy,
            (_, v2::Addresses::IPv4(a)) => SocketAddr::new(a.source_address.into(), a.source_port),
            (_, v2::Addresses::IPv6(a)) => SocketAddr::new(a.source_address.into(), a.source_port),
            (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => proxy,
        }),
        HeaderResult::V1(Err(e)) => Err(ProxyError::Invalid(format!("v1: {e}"))),
        HeaderResult::V2(Err(e)) => Err(ProxyError::Invalid(format!("v2: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy() -> SocketAddr {
        "10.0.0.1:40000".parse().expect("addr")
    }

    async fn read(bytes: &[u8]) -> Result<SocketAddr, ProxyError> {
        let mut s = bytes;
        read_header(&mut s, proxy(), Duration::from_secs(1)).await
    }

    fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(addrs.len()).expect("len").to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    #[tokio::test]
    async fn v1_and_v2_name_the_client() {
        let got = read(b"PROXY TCP4 192.0.2.7 10.0.0.2 51000 993\r\na1 LOGIN").await;
        assert_eq!(got.expect("v1"), "192.0.2.7:51000".parse().expect("addr"));
        let got = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 993\r\n").await;
        assert_eq!(
            got.expect("v1 v6"),
            "[2001:db8::7]:51000".parse().expect("addr")
        );
        assert_eq!(read(b"PROXY UNKNOWN\r\n").await.expect("unknown"), proxy());
        let mut a = vec![192, 0, 2, 9, 10, 0, 0, 2];
        a.extend_from_slice(&51001u16.to_be_bytes());
        a.extend_from_slice(&993u16.to_be_bytes());
        let got = read(&v2(1, 0x11, &a)).await;
        assert_eq!(got.expect("v2"), "192.0.2.9:51001".parse().expect("addr"));
        // LOCAL: a health check of the balancer itself.
        assert_eq!(read(&v2(0, 0x00, &[])).await.expect("local"), proxy());
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bad in [
            &b"a1 LOGIN alice pw\r\n"[..],
            b"PROXY TCP4 nonsense\r\n",
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x00",
        ] {
            let e = read(bad).await.expect_err("refused");
            assert!(matches!(e, ProxyError::Invalid(_)), "{bad:?}: {e:?}");
        }
        // The connection ends before a whole header.
        for cut in [&b"PROXY TCP4 192.0.2.7 10.0.0.2 51000"[..], b""] {
            let e = read(cut).await.expect_err("refused");
            assert!(matches!(e, ProxyError::Closed), "{cut:?}: {e:?}");
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        let e = read(long.as_bytes()).await.expect_err("refused");
        assert!(matches!(e, ProxyError::Invalid(_)), "{e:?}");
        // A peer that sends nothing is given up on.
        let (mut a, _b) = tokio::io::duplex(64);
        let r = read_header(&mut a, proxy(), Duration::from_millis(50)).await;
        assert!(matches!(r, Err(ProxyError::Timeout(_))));
    }
}
