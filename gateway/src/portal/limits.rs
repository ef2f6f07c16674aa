//! What one client may ask of the portal: who the client is (its own
//! address, or the one a trusted reverse proxy names), how many sign-ins
//! it may start a minute, and how many connections it may hold.
//!
//! Behind a reverse proxy every request comes from the proxy's address: a
//! budget per peer address would make one person's mistakes everyone's.
//! So `Forwarded` (RFC 7239) and `X-Forwarded-For` are read, but only from
//! a peer in `[gateway] trusted_proxies` (anyone else could name any
//! address), and the client is the nearest hop that is not a trusted proxy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use axum::http::HeaderMap;

/// The client of a request from `peer`: `peer` itself, unless `peer` is a
/// trusted proxy, in which case the nearest untrusted address it forwards
/// for.
pub fn client_of(peer: IpAddr, headers: &HeaderMap, trusted: impl Fn(IpAddr) -> bool) -> IpAddr {
    if !trusted(peer) {
        return peer;
    }
    let hops = forwarded_for(headers);
    hops.iter()
        .rev()
        .copied()
        .find(|ip| !trusted(*ip))
        .or_else(|| hops.first().copied())
        .unwrap_or(peer)
}

/// The addresses a request was forwarded for, nearest last: `Forwarded`'s
/// `for=` when present, else `X-Forwarded-For`. Obfuscated or unknown
/// names (`for=unknown`, `for=_hidden`) are left out.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    let forwarded: Vec<IpAddr> = values(axum::http::header::FORWARDED)
        .into_iter()
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(v))?
            })
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    values(axum::http::HeaderName::from_static("x-forwarded-for"))
        .into_iter()
        .filter_map(parse_node)
        .collect()
}

/// An address as a proxy writes it: `192.0.2.1`, `192.0.2.1:4711`,
/// `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_node(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Ok(ip) = v.parse() {
        return Some(ip);
    }
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    v.rsplit_once(':')?.0.parse().ok()
}

/// The key a client is counted under: its address, an IPv6 client by its
/// /64 (a host has a whole network to pick addresses from).
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Clients remembered at most; past it the fullest buckets (clients that
/// asked for nothing lately) are forgotten.
const MAX_CLIENTS: usize = 100_000;

/// A token bucket per client: `burst` requests at once, refilled at
/// `per_minute`.
#[derive(Debug)]
pub struct Budget {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    per_minute: f64,
    burst: f64,
}

impl Budget {
    pub fn new(per_minute: u32, burst: u32) -> Budget {
        Budget {
            buckets: Mutex::new(HashMap::new()),
            per_minute: f64::from(per_minute),
            burst: f64::from(burst),
        }
    }

    /// Takes one request from `client`'s budget; `false` when it has none
    /// left now.
    pub fn take(&self, client: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CLIENTS {
            let (rate, burst) = (self.per_minute, self.burst);
            map.retain(|_, (left, at)| {
                *left + now.duration_since(*at).as_secs_f64() * rate / 60.0 < burst
            });
        }
        let (left, at) = map.entry(bucket_key(client)).or_insert((self.burst, now));
        let refilled = (*left + now.duration_since(*at).as_secs_f64() * self.per_minute / 60.0)
            .min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *left = refilled - 1.0;
            true
        } else {
            *left = refilled;
            false
        }
    }
}

/// The portal's per-address cap on connections (the key is the
/// address's bucket: an IPv6 client counts by its /64).
#[derive(Debug, Clone)]
pub struct PerAddress {
    held: crate::net::per_address::PerAddress,
    max: usize,
}

impl PerAddress {
    pub fn new(max: usize) -> PerAddress {
        PerAddress {
            held: Default::default(),
            max,
        }
    }

    /// A place for one more connection from `ip`, if it has fewer than the
    /// cap open.
    pub fn hold(&self, ip: IpAddr) -> Option<crate::net::per_address::Held> {
        self.held.hold(bucket_key(ip), self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn forwarded_addresses_are_believed_from_trusted_proxies_only() {
        let proxy: IpAddr = "10.0.0.5".parse().expect("ip");
        let trusted = |ip: IpAddr| ip == proxy || ip == "10.0.0.6".parse::<IpAddr>().expect("ip");
        let xff = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.7")]);
        // From the proxy: the nearest untrusted hop (the leftmost entries
        // are whatever the client wrote).
        assert_eq!(
            client_of(proxy, &xff, trusted),
            "203.0.113.7".parse::<IpAddr>().expect("ip")
        );
        // From anyone else: the header is the client's own words.
        let stranger: IpAddr = "203.0.113.9".parse().expect("ip");
        assert_eq!(client_of(stranger, &xff, trusted), stranger);
        // Forwarded wins, with ports, quotes and IPv6.
        let fwd = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.6",
            ),
            ("x-forwarded-for", "192.0.2.99"),
        ]);
        assert_eq!(
            client_of(proxy, &fwd, trusted),
            "2001:db8::7".parse::<IpAddr>().expect("ip")
        );
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_of(proxy, &unknown, trusted), proxy);
    }

    #[test]
    fn budgets_refill_and_are_per_client() {
        let b = Budget::new(60, 3);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!((0..3).all(|_| b.take(a)));
        assert!(!b.take(a), "the burst is spent");
        assert!(b.take("192.0.2.2".parse().expect("ip")), "another client");
        // One IPv6 network is one client.
        let v6 = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!((0..3).all(|_| b.take(v6("2001:db8::1"))));
        assert!(!b.take(v6("2001:db8::2")));
    }

    #[test]
    fn connections_per_address_are_capped_and_given_back() {
        let p = PerAddress::new(2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let one = p.hold(a).expect("room");
        let _two = p.hold(a).expect("room");
        assert!(p.hold(a).is_none());
        assert!(p.hold("192.0.2.2".parse().expect("ip")).is_some());
        drop(one);
        assert!(p.hold(a).is_some());
    }
}
