//! `[portal]`.

use std::net::SocketAddr;
use std::path::PathBuf;

/// `[portal]`: the web portal (SPEC §8).
#[derive(Debug, Clone)]
pub struct Portal {
    pub address: SocketAddr,
    /// TLS from the first byte (`tls = "implicit"`); else plain HTTP.
    pub tls: bool,
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure_plaintext: bool,
    /// How browsers reach the portal, when not its address (a reverse
    /// proxy, a DNS name).
    pub public_url: Option<url::Url>,
    /// A PROXY v1/v2 header from a `trusted_proxies` address comes first
    /// on each connection and names the browser (a TCP load balancer).
    pub proxy_protocol: bool,
}

impl Portal {
    /// The portal's address as browsers use it.
    pub fn base_url(&self, bound: SocketAddr) -> url::Url {
        if let Some(u) = &self.public_url {
            return u.clone();
        }
        let scheme = if self.tls { "https" } else { "http" };
        let host = match bound.ip() {
            std::net::IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        };
        url::Url::parse(&format!("{scheme}://{host}:{}/", bound.port()))
            .unwrap_or_else(|_| unreachable_url())
    }

    /// Whether a provider's `redirect_uri` points at this portal (bound to
    /// `bound`): the same origin as `public_url`, or, without one, a
    /// loopback `http(s)://` URI on the portal's port (or with no port, RFC
    /// 8252 §7.3) while the portal listens on loopback.
    pub fn serves(&self, redirect_uri: &url::Url, bound: SocketAddr) -> bool {
        if let Some(u) = &self.public_url {
            return u.origin() == redirect_uri.origin();
        }
        let scheme = if self.tls { "https" } else { "http" };
        let loopback = match redirect_uri.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            None => false,
        };
        redirect_uri.scheme() == scheme
            && loopback
            && bound.ip().is_loopback()
            && redirect_uri.port().is_none_or(|p| p == bound.port())
    }
}

fn unreachable_url() -> url::Url {
    // A scheme, an IP and a port always parse.
    url::Url::parse("http://127.0.0.1/").expect("a constant URL")
}
