//! From the raw file to the validated [`Config`]: presets filled in, paths
//! made relative to the file, and every problem collected with its key.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::presets;
use crate::raw::{
    RawAccount, RawConfig, RawGateway, RawListener, RawPortal, RawProvider, RawStore,
};
use crate::{
    Account, AssertionAlg, Choice, Config, ConfigError, ConfigErrors, Flow, Gateway, Listener,
    LogFormat, Portal, Preset, Protocol, Provider, ServiceAccount, Store, TlsMode, Upstream,
    UpstreamSecurity, UserPattern, relative_to,
};

struct Errors<'a> {
    file: &'a Path,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        });
    }
}

pub(crate) fn resolve(file: &Path, raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut errs = Errors {
        file,
        list: Vec::new(),
    };
    let gateway = gateway(file, raw.gateway, &mut errs);
    let listeners = listeners(file, raw.listener, &mut errs);
    for (i, l) in listeners.iter().enumerate() {
        if l.proxy_protocol && gateway.trusted_proxies.is_empty() {
            errs.push(
                format!("listener[{i}].proxy_protocol"),
                "needs [gateway] trusted_proxies: the load balancers whose PROXY headers are believed",
            );
        }
    }
    let providers = providers(file, raw.provider, &gateway, &mut errs);
    let accounts = accounts(raw.account, &providers, &mut errs);
    let portal = raw.portal.map(|p| portal(file, p, &mut errs));
    if portal.as_ref().is_some_and(|p| p.proxy_protocol) && gateway.trusted_proxies.is_empty() {
        errs.push(
            "portal.proxy_protocol",
            "needs [gateway] trusted_proxies: the load balancers whose PROXY headers are believed",
        );
    }
    let store = store(file, raw.store.unwrap_or_default(), &mut errs);
    if errs.list.is_empty() {
        let keys = listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.key.clone().map(|k| (format!("listener[{i}].key"), k)))
            .chain(
                portal
                    .as_ref()
                    .and_then(|p| p.key.clone())
                    .map(|k| ("portal.key".to_owned(), k)),
            );
        Ok(Config {
            file: file.to_path_buf(),
            gateway,
            portal,
            store,
            secret_files: keys.collect(),
            listeners,
            providers,
            accounts,
        })
    } else {
        Err(ConfigErrors(errs.list))
    }
}

/// Parses a [`Choice`] value; `None` when absent or invalid (then reported).
fn choice<T: Choice>(errs: &mut Errors<'_>, key: &str, value: Option<String>) -> Option<T> {
    let v = value?;
    let found = T::CHOICES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(v.trim()))
        .map(|(_, c)| *c);
    if found.is_none() {
        let names: Vec<&str> = T::CHOICES.iter().map(|(n, _)| *n).collect();
        errs.push(key, format!("`{v}` is not one of: {}", names.join(", ")));
    }
    found
}

fn duration(
    errs: &mut Errors<'_>,
    key: &str,
    value: Option<String>,
    default: Duration,
) -> Duration {
    match value {
        None => default,
        Some(s) => match humantime::parse_duration(s.trim()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errs.push(key, "must be longer than zero");
                default
            }
            Err(e) => {
                errs.push(
                    key,
                    format!("`{s}` is not a duration ({e}); write e.g. \"30s\", \"5m\" or \"1h\""),
                );
                default
            }
        },
    }
}

/// A whole-number setting within `min..=max`.
fn bounded(
    errs: &mut Errors<'_>,
    key: &str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> u64 {
    match value {
        None => default,
        Some(v) if (min..=max).contains(&v) => v,
        Some(v) => {
            errs.push(key, format!("{v} is out of range; use {min} to {max}"));
            default
        }
    }
}

fn gateway(file: &Path, raw: RawGateway, errs: &mut Errors<'_>) -> Gateway {
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

fn listeners(file: &Path, raw: Vec<RawListener>, errs: &mut Errors<'_>) -> Vec<Listener> {
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

fn store(file: &Path, s: RawStore, errs: &mut Errors<'_>) -> Store {
    let backend = s.backend.as_deref().map(str::trim).unwrap_or("file");
    if backend.eq_ignore_ascii_case("file") {
        for (k, v) in [
            ("url", &s.url),
            ("url_file", &s.url_file),
            ("prefix", &s.prefix),
        ] {
            if v.is_some() {
                errs.push(
                    format!("store.{k}"),
                    "is only used with backend = \"redis\"",
                );
            }
        }
        return Store::File;
    }
    if !backend.eq_ignore_ascii_case("redis") {
        errs.push(
            "store.backend",
            format!("`{backend}` is not one of: file, redis"),
        );
        return Store::File;
    }
    let url = match (s.url, s.url_file) {
        (Some(_), Some(_)) => {
            errs.push("store.url", "set url or url_file, not both");
            None
        }
        (Some(u), None) => Some(u),
        (None, Some(f)) => {
            let path = relative_to(file, &f);
            match std::fs::read_to_string(&path) {
                Ok(u) if !u.trim().is_empty() => Some(u.trim().to_owned()),
                Ok(_) => {
                    errs.push("store.url_file", format!("{} is empty", path.display()));
                    None
                }
                Err(e) => {
                    errs.push(
                        "store.url_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => {
            errs.push(
                "store.url",
                "backend = \"redis\" needs url (e.g. \"redis://127.0.0.1:6379/0\") or url_file",
            );
            None
        }
    };
    let Some(url) = url else {
        return Store::File;
    };
    // The URL may hold a password: it is never echoed.
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host().is_some() => {}
        _ => {
            errs.push(
                "store.url",
                "is not a redis:// or rediss:// URL with a host, e.g. \"redis://127.0.0.1:6379/0\"",
            );
            return Store::File;
        }
    }
    Store::Redis {
        url: SecretString::from(url),
        prefix: s.prefix.unwrap_or_else(|| "mailgate:".into()),
    }
}

fn portal(file: &Path, p: RawPortal, errs: &mut Errors<'_>) -> Portal {
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

fn providers(
    file: &Path,
    raw: BTreeMap<String, RawProvider>,
    gateway: &Gateway,
    errs: &mut Errors<'_>,
) -> BTreeMap<String, Arc<Provider>> {
    let mut out = BTreeMap::new();
    for (name, p) in raw {
        if let Some(provider) = provider(file, &name, p, gateway, errs) {
            out.insert(name, Arc::new(provider));
        }
    }
    out
}

/// Whether `s` is a GUID in its usual form (8-4-4-4-12 hexadecimal).
pub(crate) fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// An OAuth endpoint: https, or http on a loopback host (for local testing).
fn endpoint(errs: &mut Errors<'_>, key: &str, value: Option<String>) -> Option<url::Url> {
    let s = value?;
    match url::Url::parse(&s) {
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && is_loopback_host(&u)) => Some(u),
        Ok(_) => {
            errs.push(
                key,
                format!("`{s}` must be an https:// URL (http:// only on a loopback host)"),
            );
            None
        }
        Err(e) => {
            errs.push(key, format!("`{s}` is not a URL: {e}"));
            None
        }
    }
}

fn upstream(
    errs: &mut Errors<'_>,
    key: &str,
    value: Option<String>,
    protocol: Protocol,
) -> Option<Upstream> {
    let s = value?;
    let (implicit, plain, implicit_port, plain_port) = match protocol {
        Protocol::Imap => ("imaps", "imap", 993, 143),
        Protocol::Pop3 => ("pop3s", "pop3", 995, 110),
        Protocol::Smtp => ("smtps", "smtp", 465, 587),
    };
    let url = match url::Url::parse(&s) {
        Ok(u) => u,
        Err(e) => {
            errs.push(
                key,
                format!("`{s}` is not a URL ({e}); write e.g. \"{implicit}://mail.example.com\""),
            );
            return None;
        }
    };
    let (security, default_port) = if url.scheme() == implicit {
        (UpstreamSecurity::ImplicitTls, implicit_port)
    } else if url.scheme() == plain {
        (UpstreamSecurity::StartTls, plain_port)
    } else {
        errs.push(
            key,
            format!(
                "`{s}`: the scheme must be {implicit}:// (implicit TLS) or {plain}:// (STARTTLS)"
            ),
        );
        return None;
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => {
            errs.push(key, format!("`{s}` has no host"));
            return None;
        }
    };
    if url.path() != "" && url.path() != "/" || url.query().is_some() || !url.username().is_empty()
    {
        errs.push(
            key,
            format!("`{s}`: only scheme, host and port are allowed"),
        );
        return None;
    }
    Some(Upstream {
        security,
        host,
        port: url.port().unwrap_or(default_port),
        proxy: None,
    })
}

fn provider(
    file: &Path,
    name: &str,
    p: RawProvider,
    gateway: &Gateway,
    errs: &mut Errors<'_>,
) -> Option<Provider> {
    let key = |k: &str| format!("provider.{name}.{k}");
    if p.preset.is_none() {
        errs.push(
            key("preset"),
            "missing; set office365, outlook, gmail or custom",
        );
    }
    let preset = choice::<Preset>(errs, &key("preset"), p.preset)?;
    let flow = choice(errs, &key("flow"), p.flow).unwrap_or(Flow::AuthorizationCode);
    let before = errs.list.len();

    let service_account = match (flow, p.service_account_file) {
        (Flow::ServiceAccount, Some(f)) => {
            service_account_key(&relative_to(file, &f), &key("service_account_file"), errs)
        }
        (Flow::ServiceAccount, None) => {
            errs.push(
                key("service_account_file"),
                "missing; the service_account flow needs the JSON key of the service account (IAM → Service accounts → Keys → Add key → JSON)",
            );
            None
        }
        (_, Some(_)) => {
            errs.push(
                key("service_account_file"),
                "only used with flow = \"service_account\"",
            );
            None
        }
        (_, None) => None,
    };
    if flow == Flow::ServiceAccount && !matches!(preset, Preset::Gmail | Preset::Custom) {
        errs.push(
            key("flow"),
            "service accounts are Google's; for Microsoft app-only access use client_credentials",
        );
    }
    // A service account's client ID is in its key; none is needed here.
    let client_id = p.client_id.unwrap_or_default();
    if client_id.trim().is_empty() && flow != Flow::ServiceAccount {
        errs.push(
            key("client_id"),
            "missing; set the application (client) ID of your app registration",
        );
    }
    let client_secret = match (p.client_secret, p.client_secret_file) {
        (Some(_), Some(_)) => {
            errs.push(
                key("client_secret"),
                "set client_secret or client_secret_file, not both",
            );
            None
        }
        (Some(s), None) => Some(SecretString::from(s)),
        (None, Some(f)) => {
            let path = relative_to(file, &f);
            match std::fs::read_to_string(&path) {
                Ok(s) if !s.trim().is_empty() => Some(SecretString::from(s.trim().to_owned())),
                Ok(_) => {
                    errs.push(
                        key("client_secret_file"),
                        format!("{} is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    errs.push(
                        key("client_secret_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => None,
    };

    let client_certificate = client_certificate(
        file,
        &key,
        preset,
        flow,
        client_secret.is_some(),
        (p.client_certificate, p.client_key, p.client_assertion_alg),
        errs,
    );

    let is_microsoft = matches!(preset, Preset::Office365 | Preset::Outlook);
    if let Some(t) = &p.tenant {
        if !is_microsoft {
            errs.push(
                key("tenant"),
                "only the office365 and outlook presets have a tenant",
            );
        } else if t.is_empty()
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            errs.push(
                key("tenant"),
                format!("`{t}` is not a tenant: use common, organizations, consumers, a tenant ID or a domain"),
            );
        }
    }
    let mut allowed_tenants = Vec::new();
    for (i, t) in p.allowed_tenants.unwrap_or_default().iter().enumerate() {
        let t = t.trim().to_ascii_lowercase();
        if !is_microsoft {
            errs.push(
                key("allowed_tenants"),
                "only the office365 and outlook presets have tenants",
            );
            break;
        }
        if !is_guid(&t) {
            errs.push(
                format!("{}[{i}]", key("allowed_tenants")),
                format!("`{t}` is not a tenant ID (a GUID, as Entra's overview page shows it)"),
            );
        }
        allowed_tenants.push(t);
    }
    let pv = presets::values(preset, p.tenant.as_deref(), flow);
    let tenant = is_microsoft.then(|| {
        p.tenant
            .clone()
            .unwrap_or_else(|| pv.default_tenant.unwrap_or("common").to_owned())
    });

    if preset == Preset::Gmail && flow == Flow::DeviceCode {
        errs.push(
            key("flow"),
            "Google does not allow the device flow for mail scopes; use authorization_code",
        );
    }
    if preset == Preset::Gmail && flow == Flow::ClientCredentials {
        errs.push(
            key("flow"),
            "Google has no client-credentials grant for Gmail; use authorization_code",
        );
    }

    let redirect_uri = p
        .redirect_uri
        .unwrap_or_else(|| "http://localhost:3017/".into());
    let redirect_uri = match url::Url::parse(&redirect_uri) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Some(u),
        Ok(_) | Err(_) => {
            errs.push(
                key("redirect_uri"),
                format!("`{redirect_uri}` is not an http(s) URL, e.g. \"http://localhost:3017/\""),
            );
            None
        }
    };

    let authorize_url = endpoint(
        errs,
        &key("authorize_url"),
        p.authorize_url.or(pv.authorize_url),
    );
    let token_url = endpoint(errs, &key("token_url"), p.token_url.or(pv.token_url));
    let device_code_url = endpoint(
        errs,
        &key("device_code_url"),
        p.device_code_url.or(pv.device_code_url),
    );
    if token_url.is_none() && errs.list.len() == before {
        errs.push(
            key("token_url"),
            "missing; a custom provider must set token_url",
        );
    }
    if flow == Flow::AuthorizationCode && authorize_url.is_none() {
        errs.push(
            key("authorize_url"),
            "missing; the authorization_code flow needs authorize_url",
        );
    }
    if flow == Flow::DeviceCode && device_code_url.is_none() && preset != Preset::Gmail {
        errs.push(
            key("device_code_url"),
            "missing; the device_code flow needs device_code_url",
        );
    }

    let scopes = p.scopes.unwrap_or(pv.scopes);
    if scopes.is_empty()
        || scopes
            .iter()
            .any(|s| s.trim().is_empty() || s.contains(' '))
    {
        errs.push(
            key("scopes"),
            "must list at least one scope, each without spaces",
        );
    }

    let imap = upstream(
        errs,
        &key("imap"),
        p.imap.or(pv.imap.map(Into::into)),
        Protocol::Imap,
    );
    let pop3 = upstream(
        errs,
        &key("pop3"),
        p.pop3.or(pv.pop3.map(Into::into)),
        Protocol::Pop3,
    );
    let smtp = upstream(
        errs,
        &key("smtp"),
        p.smtp.or(pv.smtp.map(Into::into)),
        Protocol::Smtp,
    );
    if imap.is_none() && pop3.is_none() && smtp.is_none() && errs.list.len() == before {
        errs.push(
            key("imap"),
            "a custom provider must name at least one server: imap, pop3 or smtp",
        );
    }

    let ca_file = p.ca_file.map(|c| relative_to(file, &c));
    if let Some(ca) = &ca_file
        && !ca.is_file()
    {
        errs.push(
            key("ca_file"),
            format!("{} does not exist or is not a file", ca.display()),
        );
    }
    let min_token_life = duration(
        errs,
        &key("min_token_life"),
        p.min_token_life,
        Duration::from_secs(30 * 60),
    );

    // The provider's proxy ("direct": none), else the gateway's; a server
    // that no_proxy names is reached directly.
    let proxy = match p.proxy.as_deref().map(str::trim) {
        None => gateway.proxy.clone(),
        Some(d) if d.eq_ignore_ascii_case("direct") => None,
        Some(s) => match crate::proxy::parse(s) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                errs.push(key("proxy"), format!("{e}, or \"direct\" for none"));
                None
            }
        },
    };
    let route = |host: &str| proxy.clone().filter(|_| !gateway.no_proxy.matches(host));
    let [imap, pop3, smtp] = [imap, pop3, smtp].map(|u| {
        u.map(|mut u| {
            u.proxy = route(&u.host);
            u
        })
    });
    let token_proxy = token_url
        .as_ref()
        .and_then(|u| u.host_str().and_then(route));

    if errs.list.len() != before {
        return None;
    }
    Some(Provider {
        proxy: token_proxy,
        name: name.to_owned(),
        preset,
        client_id,
        client_secret,
        tenant,
        allowed_tenants,
        flow,
        redirect_uri: redirect_uri?,
        authorize_url,
        token_url: token_url?,
        device_code_url,
        scopes,
        imap,
        pop3,
        smtp,
        ca_file,
        min_token_life,
        service_account,
        client_certificate,
    })
}

/// `client_certificate`, `client_key` and `client_assertion_alg`: the
/// certificate credential of a confidential Microsoft (or custom) client.
fn client_certificate(
    file: &Path,
    key: &dyn Fn(&str) -> String,
    preset: Preset,
    flow: Flow,
    has_secret: bool,
    (certificate, client_key, alg): (Option<String>, Option<String>, Option<String>),
    errs: &mut Errors<'_>,
) -> Option<crate::ClientCertificate> {
    let algorithm = match &alg {
        Some(_) if certificate.is_none() => {
            errs.push(
                key("client_assertion_alg"),
                "only used with client_certificate and client_key",
            );
            return None;
        }
        _ => choice::<AssertionAlg>(errs, &key("client_assertion_alg"), alg)
            .unwrap_or(AssertionAlg::Ps256),
    };
    let (certificate, client_key) = match (certificate, client_key) {
        (None, None) => return None,
        (Some(c), Some(k)) => (relative_to(file, &c), relative_to(file, &k)),
        (Some(_), None) => {
            errs.push(
                key("client_key"),
                "missing; client_certificate needs the certificate's private key (PEM) in client_key",
            );
            return None;
        }
        (None, Some(_)) => {
            errs.push(
                key("client_certificate"),
                "missing; client_key needs the certificate (PEM) that was uploaded to the app registration",
            );
            return None;
        }
    };
    if has_secret {
        errs.push(
            key("client_certificate"),
            "set a client secret or a client certificate, not both",
        );
        return None;
    }
    if preset == Preset::Gmail || flow == Flow::ServiceAccount {
        errs.push(
            key("client_certificate"),
            "certificate credentials are Microsoft Entra's; Google clients use a client secret or a service account",
        );
        return None;
    }
    match crate::certificate::load(&certificate, &client_key, algorithm) {
        Ok(c) => Some(c),
        Err((part, message)) => {
            errs.push(
                key(match part {
                    crate::certificate::Part::Certificate => "client_certificate",
                    crate::certificate::Part::Key => "client_key",
                }),
                message,
            );
            None
        }
    }
}

/// Reads a service account's JSON key (as Google's console gives it).
fn service_account_key(path: &Path, key: &str, errs: &mut Errors<'_>) -> Option<ServiceAccount> {
    #[derive(serde::Deserialize)]
    struct Key {
        #[serde(rename = "type")]
        kind: Option<String>,
        client_email: Option<String>,
        client_id: Option<String>,
        private_key_id: Option<String>,
        private_key: Option<String>,
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errs.push(key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    // The parser's message could quote the file: only its position.
    let parsed: Key = match serde_json::from_str(&text) {
        Ok(k) => k,
        Err(e) => {
            errs.push(
                key,
                format!(
                    "{} is not a JSON key (line {}, column {})",
                    path.display(),
                    e.line(),
                    e.column()
                ),
            );
            return None;
        }
    };
    let problem = if parsed.kind.as_deref() != Some("service_account") {
        Some("its \"type\" is not \"service_account\"")
    } else if parsed
        .client_email
        .as_deref()
        .is_none_or(|e| !e.contains('@'))
    {
        Some("it has no client_email")
    } else if !parsed
        .private_key
        .as_deref()
        .is_some_and(|k| k.contains("-----BEGIN PRIVATE KEY-----"))
    {
        Some("it has no private_key in PKCS#8 PEM")
    } else {
        None
    };
    if let Some(p) = problem {
        errs.push(
            key,
            format!("{} is not a service account key: {p}", path.display()),
        );
        return None;
    }
    Some(ServiceAccount {
        file: path.to_owned(),
        client_email: parsed.client_email.unwrap_or_default(),
        client_id: parsed.client_id,
        private_key_id: parsed.private_key_id,
        private_key: SecretString::from(parsed.private_key.unwrap_or_default()),
    })
}

fn accounts(
    raw: Vec<RawAccount>,
    providers: &BTreeMap<String, Arc<Provider>>,
    errs: &mut Errors<'_>,
) -> Vec<Account> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, a) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("account[{i}].{k}");
        let Some(user) = a.user.map(|u| u.trim().to_lowercase()) else {
            errs.push(
                key("user"),
                "missing; set the address the mail client logs in with",
            );
            continue;
        };
        let pattern = if let Some(domain) = user.strip_prefix("*@") {
            if domain.is_empty() || domain.contains(['@', '*', ' ']) {
                errs.push(
                    key("user"),
                    format!("`{user}`: write a domain pattern as *@example.org"),
                );
                continue;
            }
            UserPattern::Domain(domain.to_owned())
        } else {
            if user.is_empty()
                || user.contains(['*', ' ', '"', '\\'])
                || user.chars().any(char::is_control)
            {
                errs.push(
                    key("user"),
                    format!("`{user}` is not a user name: an address like alice@example.com, or *@example.com for a whole domain"),
                );
                continue;
            }
            UserPattern::Exact(user.clone())
        };
        if !seen.insert(pattern.clone()) {
            errs.push(key("user"), format!("`{pattern}` is listed twice"));
        }
        let provider_name = a.provider.unwrap_or_default();
        let provider = providers.get(&provider_name);
        if provider_name.is_empty() {
            errs.push(
                key("provider"),
                "missing; name one of the [provider.NAME] sections",
            );
        } else if provider.is_none() {
            let known: Vec<&str> = providers.keys().map(String::as_str).collect();
            errs.push(
                key("provider"),
                format!(
                    "no provider named `{provider_name}` (defined: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        if let Some(h) = &a.password_hash
            && argon2::PasswordHash::new(h).is_err()
        {
            errs.push(
                key("password_hash"),
                "not a PHC string; create one with `mailgate hash-password`",
            );
        }
        if let Some(p) = provider.filter(|p| p.is_app_only())
            && a.password_hash.is_none()
        {
            errs.push(
                key("password_hash"),
                format!(
                    "required with a {} provider (there is no user token to seal); create one with `mailgate hash-password`",
                    p.flow
                ),
            );
        }
        // One password for a whole domain's mailboxes, each opened with the
        // organisation's credentials: whoever knows it reads every mailbox.
        if let (UserPattern::Domain(domain), Some(p)) = (&pattern, provider)
            && p.is_app_only()
        {
            errs.push(
                key("user"),
                format!(
                    "`*@{domain}` with a {} provider would let whoever knows its one password_hash open every mailbox of {domain}; list each mailbox as its own [[account]] with its own password_hash",
                    p.flow
                ),
            );
        }
        out.push(Account {
            user: pattern,
            provider: provider_name,
            upstream_user: a.upstream_user,
            password_hash: a.password_hash,
        });
    }
    out
}
