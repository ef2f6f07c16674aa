//! `[provider.NAME]`: presets filled in, endpoints and upstream servers
//! checked, and the credentials a provider signs in with.

use super::*;
use crate::{GraphApi, Sending};

pub(super) fn providers(
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

pub(super) fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// An OAuth endpoint: https, or http on a loopback host (for local testing).
pub(super) fn endpoint(
    errs: &mut Errors<'_>,
    key: &str,
    value: Option<String>,
) -> Option<url::Url> {
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

pub(super) fn upstream(
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

pub(super) fn provider(
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
    // `smtp = "graph"` or `"auto"` chooses Graph; "auto" still relays to
    // the preset's SMTP server until a tenant refuses SMTP AUTH.
    let (sending, smtp_url) = match p.smtp.as_deref().map(str::trim) {
        Some(s) if s.eq_ignore_ascii_case("graph") => (Sending::Graph, None),
        Some(s) if s.eq_ignore_ascii_case("auto") => (
            Sending::Auto,
            p.smtp_server.clone().or(pv.smtp.map(Into::into)),
        ),
        _ => (Sending::Smtp, p.smtp.clone().or(pv.smtp.map(Into::into))),
    };
    let smtp = upstream(errs, &key("smtp"), smtp_url, Protocol::Smtp);
    if p.smtp_server.is_some() && sending != Sending::Auto {
        errs.push(
            key("smtp_server"),
            "only smtp = \"auto\" takes smtp_server (the server it tries before Graph)",
        );
    }
    if sending == Sending::Auto && smtp.is_none() && p.smtp.is_some() {
        errs.push(
            key("smtp"),
            "\"auto\" needs an SMTP server to try first: the preset's (office365, outlook) or smtp_server = \"smtp://host:587\"",
        );
    }
    let microsoft = matches!(preset, Preset::Office365 | Preset::Outlook | Preset::Custom);
    if sending != Sending::Smtp && (!microsoft || flow == Flow::ServiceAccount) {
        errs.push(
            key("smtp"),
            format!(
                "\"{sending}\" sends through Microsoft Graph: only office365, outlook and custom providers can (not {preset}, nor a Google service account)"
            ),
        );
    }
    let graph_url = match p.graph_url.as_deref() {
        None => url::Url::parse(crate::GRAPH_URL).ok(),
        Some(u) => match url::Url::parse(u.trim()) {
            Ok(u) if matches!(u.scheme(), "https" | "http") => Some(u),
            _ => {
                errs.push(
                    key("graph_url"),
                    format!(
                        "`{u}` is not an http(s) URL; the default is {}",
                        crate::GRAPH_URL
                    ),
                );
                None
            }
        },
    };
    let graph = GraphApi {
        url: graph_url.unwrap_or_else(|| url::Url::parse(crate::GRAPH_URL).expect("a URL")),
        save_to_sent_items: p.save_to_sent_items.unwrap_or(true),
        max_message_size: super::size(
            errs,
            &key("max_message_size"),
            p.max_message_size.clone(),
            35 * 1000 * 1000,
        ),
        scopes: if matches!(flow, Flow::ClientCredentials) {
            vec!["https://graph.microsoft.com/.default".to_owned()]
        } else {
            vec![
                crate::GRAPH_MAIL_SEND.to_owned(),
                "offline_access".to_owned(),
            ]
        },
    };
    if imap.is_none()
        && pop3.is_none()
        && smtp.is_none()
        && sending != Sending::Graph
        && errs.list.len() == before
    {
        errs.push(
            key("imap"),
            "a custom provider must name at least one server: imap, pop3 or smtp (or smtp = \"graph\")",
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
        sending,
        graph,
    })
}
