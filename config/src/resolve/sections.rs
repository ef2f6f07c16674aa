//! The sections that are not providers or accounts: `[gateway]`,
//! `[[listener]]` and `[portal]` (`[store]` is in [`super::store`]).

use super::*;

pub(super) fn gateway(file: &Path, raw: RawGateway, errs: &mut Errors<'_>) -> Gateway {
    let metrics = raw.metrics.and_then(|m| match m.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                "gateway.metrics",
                format!("`{m}` is not an address; write IP:PORT, e.g. \"127.0.0.1:9925\""),
            );
            None
        }
    });
    let max_connections = match raw.max_connections {
        None => None,
        Some(0) => {
            errs.push("gateway.max_connections", "must be at least 1");
            Some(1)
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let hostname = raw.hostname.unwrap_or_else(|| "localhost".into());
    if hostname.is_empty()
        || !hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        errs.push(
            "gateway.hostname",
            format!("`{hostname}` is not a host name (letters, digits, '.' and '-')"),
        );
    }
    let mut trusted_proxies = Vec::new();
    for (i, c) in raw.trusted_proxies.unwrap_or_default().iter().enumerate() {
        let c = c.trim();
        match c
            .parse::<ipnet::IpNet>()
            .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        {
            Ok(n) => trusted_proxies.push(n.trunc()),
            Err(_) => errs.push(
                format!("gateway.trusted_proxies[{i}]"),
                format!("`{c}` is not an address or a CIDR block, e.g. \"10.0.0.0/8\""),
            ),
        }
    }
    let proxy = raw.proxy.and_then(|p| match crate::proxy::parse(&p) {
        Ok(p) => Some(Arc::new(p)),
        Err(e) => {
            errs.push("gateway.proxy", e);
            None
        }
    });
    let no_proxy = match crate::proxy::NoProxy::parse(&raw.no_proxy.unwrap_or_default()) {
        Ok(n) => n,
        Err((i, e)) => {
            errs.push(format!("gateway.no_proxy[{i}]"), e);
            crate::proxy::NoProxy::default()
        }
    };
    Gateway {
        proxy,
        no_proxy,
        trusted_proxies,
        state_dir: relative_to(file, raw.state_dir.as_deref().unwrap_or("state")),
        hostname,
        log_format: choice(errs, "gateway.log_format", raw.log_format).unwrap_or(LogFormat::Text),
        metrics,
        max_connections,
        max_connections_per_ip: raw.max_connections_per_ip.map(|_| {
            bounded(
                errs,
                "gateway.max_connections_per_ip",
                raw.max_connections_per_ip,
                50,
                1,
                1_000_000,
            ) as usize
        }),
        preauth_timeout: duration(
            errs,
            "gateway.preauth_timeout",
            raw.preauth_timeout,
            Duration::from_secs(60),
        ),
        shutdown_grace: duration(
            errs,
            "gateway.shutdown_grace",
            raw.shutdown_grace,
            Duration::from_secs(30),
        ),
        upstream_timeout: duration(
            errs,
            "gateway.upstream_timeout",
            raw.upstream_timeout,
            Duration::from_secs(30),
        ),
        max_line: bounded(errs, "gateway.max_line", raw.max_line, 8192, 512, 1 << 20) as usize,
        max_literal: bounded(
            errs,
            "gateway.max_literal",
            raw.max_literal,
            8192,
            64,
            1 << 20,
        ) as usize,
        max_tag: bounded(errs, "gateway.max_tag", raw.max_tag, 64, 1, 1024) as usize,
        max_failures: bounded(errs, "gateway.max_failures", raw.max_failures, 3, 1, 100) as u32,
    }
}

pub(super) fn listeners(
    file: &Path,
    raw: Vec<RawListener>,
    errs: &mut Errors<'_>,
) -> Vec<Listener> {
    if raw.is_empty() {
        errs.push(
            "listener",
            "no [[listener]] is configured; add one, e.g. protocol = \"imap\", address = \"127.0.0.1:1143\"",
        );
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, l) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("listener[{i}].{k}");
        if l.protocol.is_none() {
            errs.push(key("protocol"), "missing; set imap, pop3 or smtp");
        }
        let Some(protocol) = choice::<Protocol>(errs, &key("protocol"), l.protocol) else {
            continue;
        };
        let address = match l.address.as_deref().map(str::parse::<SocketAddr>) {
            None => {
                errs.push(
                    key("address"),
                    "missing; write IP:PORT, e.g. \"127.0.0.1:1143\"",
                );
                continue;
            }
            Some(Err(_)) => {
                errs.push(
                    key("address"),
                    format!(
                        "`{}` is not an address; write IP:PORT, e.g. \"127.0.0.1:1143\"",
                        l.address.unwrap_or_default()
                    ),
                );
                continue;
            }
            Some(Ok(a)) => a,
        };
        if address.port() != 0 && !seen.insert(address) {
            errs.push(
                key("address"),
                format!("{address} is used by another listener"),
            );
        }
        let tls = choice(errs, &key("tls"), l.tls).unwrap_or(TlsMode::None);
        let insecure_plaintext = l.insecure_plaintext.unwrap_or(false);
        if tls == TlsMode::None && !address.ip().is_loopback() && !insecure_plaintext {
            errs.push(
                key("address"),
                format!(
                    "{address} is not a loopback address and tls = \"none\": passwords would cross the network in clear; use a loopback address, or set insecure_plaintext = true if you accept that"
                ),
            );
        }
        if l.certificate.is_some() != l.key.is_some() {
            errs.push(
                key("certificate"),
                "certificate and key must be set together",
            );
        }
        if tls == TlsMode::None && l.certificate.is_some() {
            errs.push(
                key("certificate"),
                "a certificate is set but tls = \"none\"; set tls = \"starttls\" or \"implicit\"",
            );
        }
        for (k, v) in [("certificate", &l.certificate), ("key", &l.key)] {
            if let Some(p) = v
                && !relative_to(file, p).is_file()
            {
                errs.push(
                    key(k),
                    format!(
                        "{} does not exist or is not a file",
                        relative_to(file, p).display()
                    ),
                );
            }
        }
        out.push(Listener {
            protocol,
            address,
            tls,
            certificate: l.certificate.map(|c| relative_to(file, &c)),
            key: l.key.map(|k| relative_to(file, &k)),
            insecure_plaintext,
            // Behind a PROXY-protocol balancer a loopback listener serves
            // the network: it gets the defaults of one that is not loopback.
            in_band_authorization: l
                .in_band_authorization
                .unwrap_or(address.ip().is_loopback() && !l.proxy_protocol.unwrap_or(false)),
            proxy_protocol: l.proxy_protocol.unwrap_or(false),
        });
    }
    out
}

pub(super) fn portal(file: &Path, p: RawPortal, errs: &mut Errors<'_>) -> Portal {
    let default: SocketAddr = ([127, 0, 0, 1], 3017).into();
    let address = match p.address.as_deref().map(str::parse::<SocketAddr>) {
        None => default,
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            errs.push(
                "portal.address",
                format!(
                    "`{}` is not an address; write IP:PORT, e.g. \"127.0.0.1:3017\"",
                    p.address.unwrap_or_default()
                ),
            );
            default
        }
    };
    let tls = match p.tls.as_deref().map(str::trim) {
        None => false,
        Some(t) if t.eq_ignore_ascii_case("none") => false,
        Some(t) if t.eq_ignore_ascii_case("implicit") => true,
        Some(t) => {
            errs.push("portal.tls", format!("`{t}` is not one of: none, implicit"));
            false
        }
    };
    let insecure_plaintext = p.insecure_plaintext.unwrap_or(false);
    if !tls && !address.ip().is_loopback() && !insecure_plaintext {
        errs.push(
            "portal.address",
            format!(
                "{address} is not a loopback address and tls = \"none\": passwords and sign-ins would cross the network in clear; set tls = \"implicit\", use a loopback address behind a TLS proxy, or set insecure_plaintext = true if you accept that"
            ),
        );
    }
    if p.certificate.is_some() != p.key.is_some() {
        errs.push(
            "portal.certificate",
            "certificate and key must be set together",
        );
    }
    if !tls && p.certificate.is_some() {
        errs.push(
            "portal.certificate",
            "a certificate is set but tls = \"none\"; set tls = \"implicit\"",
        );
    }
    for (k, v) in [("certificate", &p.certificate), ("key", &p.key)] {
        if let Some(f) = v
            && !relative_to(file, f).is_file()
        {
            errs.push(
                format!("portal.{k}"),
                format!(
                    "{} does not exist or is not a file",
                    relative_to(file, f).display()
                ),
            );
        }
    }
    let public_url = p.public_url.and_then(|u| match url::Url::parse(&u) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        _ => {
            errs.push(
                "portal.public_url",
                format!("`{u}` is not an http(s) URL, e.g. \"https://mail-gw.example.com/\""),
            );
            None
        }
    });
    Portal {
        address,
        tls,
        certificate: p.certificate.map(|c| relative_to(file, &c)),
        key: p.key.map(|k| relative_to(file, &k)),
        insecure_plaintext,
        public_url,
        proxy_protocol: p.proxy_protocol.unwrap_or(false),
    }
}
