//! Outbound proxies: `[gateway] proxy`, a provider's `proxy` and
//! `[gateway] no_proxy`. Mail connections and token requests go through
//! the proxy that applies to their server.

use std::fmt;
use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};

/// How the proxy is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// `http://`: an HTTP proxy, tunnelled through with `CONNECT`.
    Http,
    /// `socks5://`: SOCKS5, the gateway resolves the server's name.
    Socks5,
    /// `socks5h://`: SOCKS5, the proxy resolves the server's name.
    Socks5h,
}

/// An outbound proxy.
#[derive(Clone)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    /// User name and password (HTTP Basic, or SOCKS5 user/password).
    pub credentials: Option<(String, SecretString)>,
}

impl PartialEq for Proxy {
    fn eq(&self, other: &Proxy) -> bool {
        self.kind == other.kind
            && self.host == other.host
            && self.port == other.port
            && match (&self.credentials, &other.credentials) {
                (None, None) => true,
                (Some((u1, p1)), Some((u2, p2))) => {
                    u1 == u2 && p1.expose_secret() == p2.expose_secret()
                }
                _ => false,
            }
    }
}
impl Eq for Proxy {}

impl Proxy {
    fn scheme(&self) -> &'static str {
        match self.kind {
            ProxyKind::Http => "http",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Socks5h => "socks5h",
        }
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The proxy as a URL with its credentials, for an HTTP client.
    pub fn url_with_credentials(&self) -> SecretString {
        let mut url = format!("{}://", self.scheme());
        if let Some((user, password)) = &self.credentials {
            url.push_str(&percent(user));
            url.push(':');
            url.push_str(&percent(password.expose_secret()));
            url.push('@');
        }
        url.push_str(&self.authority());
        SecretString::from(url)
    }
}

/// The proxy as a URL without its password (for logs and `check`).
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme())?;
        if let Some((user, _)) = &self.credentials {
            write!(f, "{user}@")?;
        }
        f.write_str(&self.authority())
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({self})")
    }
}

/// Everything but unreserved characters percent-encoded (RFC 3986 §2.3).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Parses `http://[user:pass@]host:port`, `socks5://…` or `socks5h://…`.
pub fn parse(s: &str) -> Result<Proxy, String> {
    let example = "write e.g. \"http://proxy.example.net:3128\" or \"socks5h://user:password@127.0.0.1:1080\"";
    // The text is not echoed: it may hold a password.
    let url = url::Url::parse(s.trim()).map_err(|e| format!("not a URL ({e}); {example}"))?;
    let kind = match url.scheme() {
        "http" => ProxyKind::Http,
        "socks5" => ProxyKind::Socks5,
        "socks5h" => ProxyKind::Socks5h,
        "https" => {
            return Err(format!(
                "TLS to the proxy itself (https://) is not supported; {example}"
            ));
        }
        other => return Err(format!("the scheme `{other}` is not a proxy; {example}")),
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(format!("no host; {example}")),
    };
    let Some(port) = url.port() else {
        return Err(format!("no port; {example}"));
    };
    if url.path() != "" && url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "only scheme, user, password, host and port are allowed; {example}"
        ));
    }
    let decode = |s: &str| {
        percent_decode(s).ok_or_else(|| "the user name or password is not valid UTF-8".to_owned())
    };
    let credentials = if url.username().is_empty() {
        if url.password().is_some() {
            return Err("a password without a user name".into());
        }
        None
    } else {
        let user = decode(url.username())?;
        let password = decode(url.password().unwrap_or(""))?;
        if kind != ProxyKind::Http && (user.len() > 255 || password.len() > 255) {
            return Err("SOCKS5 user names and passwords have at most 255 bytes".into());
        }
        Some((user, SecretString::from(password)))
    };
    Ok(Proxy {
        kind,
        host,
        port,
        credentials,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(h, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `[gateway] no_proxy`: the servers reached without the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy(Vec<Pattern>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`: every server.
    All,
    /// An address or a network (`10.0.0.0/8`, `::1`).
    Net(ipnet::IpNet),
    /// A domain and its subdomains (`example.com`, `.example.com`,
    /// `*.example.com`).
    Domain(String),
}

impl NoProxy {
    /// Parses the list; an error names the entry's index.
    pub fn parse(entries: &[String]) -> Result<NoProxy, (usize, String)> {
        let mut out = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let e = e.trim().to_ascii_lowercase();
            let p = if e == "*" {
                Pattern::All
            } else if let Ok(n) = e.parse::<ipnet::IpNet>() {
                Pattern::Net(n.trunc())
            } else if let Ok(a) = e.trim_matches(['[', ']']).parse::<IpAddr>() {
                Pattern::Net(ipnet::IpNet::from(a))
            } else {
                let d = e
                    .strip_prefix("*.")
                    .or_else(|| e.strip_prefix('.'))
                    .unwrap_or(&e);
                if d.is_empty()
                    || !d
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                {
                    return Err((
                        i,
                        format!(
                            "`{e}` is not a host, a domain (.example.com), an address, a network (10.0.0.0/8) or *"
                        ),
                    ));
                }
                Pattern::Domain(d.to_owned())
            };
            out.push(p);
        }
        Ok(NoProxy(out))
    }

    /// Whether `host` (a name or an address) is reached directly.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        let addr = host.parse::<IpAddr>().ok();
        self.0.iter().any(|p| match p {
            Pattern::All => true,
            Pattern::Net(n) => addr.is_some_and(|a| n.contains(&a)),
            Pattern::Domain(d) => {
                addr.is_none()
                    && (host == d
                        || host
                            .strip_suffix(d.as_str())
                            .is_some_and(|rest| rest.ends_with('.')))
            }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_proxies_and_hides_the_password() {
        let p = parse("http://u%40x:p%3Ass@proxy.example:3128").unwrap();
        assert_eq!(p.kind, ProxyKind::Http);
        assert_eq!(p.authority(), "proxy.example:3128");
        let (u, pw) = p.credentials.clone().unwrap();
        assert_eq!((u.as_str(), pw.expose_secret()), ("u@x", "p:ss"));
        assert_eq!(p.to_string(), "http://u@x@proxy.example:3128");
        assert_eq!(
            p.url_with_credentials().expose_secret(),
            "http://u%40x:p%3Ass@proxy.example:3128"
        );
        assert_eq!(
            parse("socks5h://[::1]:1080").unwrap().authority(),
            "[::1]:1080"
        );
        assert_eq!(
            parse("socks5://10.0.0.1:1080").unwrap().kind,
            ProxyKind::Socks5
        );
        for bad in [
            "proxy:3128",
            "https://p:1",
            "ftp://p:1",
            "http://p",
            "http://p:1/x",
            "http://:pw@p:1",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains("pw"), "{bad}: {e}");
        }
    }

    #[test]
    fn no_proxy_matches_hosts_domains_and_networks() {
        let n = NoProxy::parse(&[
            "localhost".into(),
            ".corp.example".into(),
            "*.lan".into(),
            "10.0.0.0/8".into(),
            "::1".into(),
        ])
        .unwrap();
        for yes in [
            "localhost",
            "corp.example",
            "mail.corp.example",
            "x.lan",
            "10.1.2.3",
            "[::1]",
            "MAIL.Corp.Example.",
        ] {
            assert!(n.matches(yes), "{yes}");
        }
        for no in [
            "notcorp.example",
            "example",
            "11.0.0.1",
            "lan.example",
            "127.0.0.1",
        ] {
            assert!(!n.matches(no), "{no}");
        }
        assert!(NoProxy::parse(&["*".into()]).unwrap().matches("anything"));
        assert!(NoProxy::parse(&["a b".into()]).is_err());
    }
}
