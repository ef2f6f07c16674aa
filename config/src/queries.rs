//! What the rest of mailgate asks of a configuration: accounts and
//! providers by name, warnings about its choices, secret files that are
//! too readable, the description `check` prints, and the gateway's trust
//! and limits per client address.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::*;

impl Config {
    /// What `check` and `run` warn about in the configuration's choices
    /// (not errors: it works, but less safely than it could).
    /// How old an account's last refresh may grow before the gateway
    /// refreshes it by itself (`[notify] keep_alive`; on by default).
    pub fn keep_alive(&self) -> Option<std::time::Duration> {
        match &self.notify {
            Some(n) => n.keep_alive,
            None => Some(crate::notify::DEFAULT_KEEP_ALIVE),
        }
    }

    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.providers.values() {
            if p.sending != Sending::Smtp && !p.graph.save_to_sent_items {
                out.push(format!(
                    "provider.{}: save_to_sent_items = false sends every message as Graph's JSON, which keeps only the subject, addresses, Message-ID, X- headers, body and attachments (not Date, In-Reply-To, References or signatures); messages over 3 MB are kept in Sent Items anyway",
                    p.name
                ));
            }
            if let Some(what) = placeholder_client_id(&p.client_id) {
                out.push(format!(
                    "provider.{}: client_id is the examples' placeholder: {what}",
                    p.name
                ));
            }
            if p.tenant_open() && !p.is_app_only() {
                out.push(format!(
                    "provider.{}: tenant = \"{}\" lets users of any Microsoft tenant sign in; each account is pinned to the tenant of its first sign-in only. Set allowed_tenants = [\"<your tenant ID>\"] (or tenant to your tenant ID or domain) so that nobody from another organisation can claim an account",
                    p.name,
                    p.tenant.as_deref().unwrap_or("common")
                ));
            }
        }
        out
    }

    /// The secret files that every user of the machine may read (mode
    /// `o+r`), with the key that names each and its mode.
    pub fn readable_secret_files(&self) -> Vec<(String, PathBuf, u32)> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            self.secret_files
                .iter()
                .filter_map(|(k, p)| {
                    let mode = std::fs::metadata(p).ok()?.permissions().mode() & 0o7777;
                    (mode & 0o004 != 0).then(|| (k.clone(), p.clone(), mode))
                })
                .collect()
        }
        #[cfg(not(unix))]
        {
            Vec::new()
        }
    }

    /// The account entry a login name belongs to: an exact entry first, then
    /// a domain entry.
    pub fn find_account(&self, user: &str) -> Option<&Account> {
        let lower = user.trim().to_lowercase();
        self.accounts
            .iter()
            .find(|a| matches!(a.user, UserPattern::Exact(_)) && a.user.matches(&lower))
            .or_else(|| self.accounts.iter().find(|a| a.user.matches(&lower)))
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.get(name)
    }

    /// A human-readable summary of what the file resolved to, for
    /// `mailgate check`.
    pub fn describe(&self) -> String {
        use fmt::Write as _;
        let mut s = String::new();
        let g = &self.gateway;
        let _ = writeln!(s, "configuration: {}", self.file.display());
        let _ = writeln!(s, "gateway:");
        let _ = writeln!(s, "  state_dir        {}", g.state_dir.display());
        let _ = writeln!(s, "  hostname         {}", g.hostname);
        let _ = writeln!(
            s,
            "  log_format       {}",
            match g.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
        );
        if let Some(m) = g.metrics {
            let _ = writeln!(s, "  metrics          {m}");
        }
        match g.max_connections {
            Some(n) => {
                let _ = writeln!(s, "  max_connections  {n}");
            }
            None => {
                let _ = writeln!(
                    s,
                    "  max_connections  from the descriptor limit (at most {DEFAULT_MAX_CONNECTIONS})"
                );
            }
        }
        let _ = writeln!(
            s,
            "  max_connections_per_ip {}",
            g.max_connections_per_ip
                .map_or_else(|| "50 (off loopback)".to_owned(), |n| n.to_string())
        );
        let _ = writeln!(
            s,
            "  preauth_timeout  {}",
            humantime::format_duration(g.preauth_timeout)
        );
        let _ = writeln!(
            s,
            "  shutdown_grace   {}",
            humantime::format_duration(g.shutdown_grace)
        );
        let _ = writeln!(
            s,
            "  upstream_timeout {}",
            humantime::format_duration(g.upstream_timeout)
        );
        let _ = writeln!(
            s,
            "  limits           line {} B, literal {} B, tag {} B, {} failed logins per connection",
            g.max_line, g.max_literal, g.max_tag, g.max_failures
        );
        match &self.store {
            Store::File => {
                let _ = writeln!(
                    s,
                    "store: files under {}",
                    self.gateway.state_dir.join("tokens").display()
                );
            }
            Store::Redis(r) => {
                use secrecy::ExposeSecret as _;
                let hide = |url: &str| {
                    url::Url::parse(url)
                        .map(|mut u| {
                            if u.password().is_some() {
                                let _ = u.set_password(Some("****"));
                            }
                            u.to_string()
                        })
                        .unwrap_or_default()
                };
                let prefix = &r.prefix;
                match &r.sentinels {
                    None => {
                        let shown = hide(r.url.expose_secret());
                        let _ = writeln!(s, "store: redis {shown} prefix {prefix:?}");
                    }
                    Some(sn) => {
                        let listed: Vec<String> =
                            sn.urls.iter().map(|u| hide(u.expose_secret())).collect();
                        let _ = writeln!(
                            s,
                            "store: redis, the primary of {:?} named by sentinels {} prefix {prefix:?}",
                            sn.service,
                            listed.join(", ")
                        );
                    }
                }
                if r.wait_replicas > 0 {
                    let _ = writeln!(
                        s,
                        "  rotated tokens wait for {} replica(s), at most {}",
                        r.wait_replicas,
                        humantime::format_duration(r.wait_timeout)
                    );
                }
            }
        }
        if let Some(p) = &self.portal {
            let _ = writeln!(
                s,
                "portal: {} tls={}{}{}",
                p.address,
                if p.tls { "implicit" } else { "none" },
                p.public_url
                    .as_ref()
                    .map(|u| format!(" public_url={u}"))
                    .unwrap_or_default(),
                if p.insecure_plaintext {
                    " insecure_plaintext"
                } else {
                    ""
                }
            );
        }
        if let Some(n) = &self.notify {
            let command = n.command.as_ref().map(|c| {
                c.iter()
                    .map(|a| format!("{:?}", a.display().to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let _ = writeln!(
                s,
                "notify: command={} command_timeout={} webhook={} keep_alive={} mail_from={}",
                command.map_or_else(|| "none".into(), |c| format!("[{c}]")),
                humantime::format_duration(n.command_timeout),
                // The URL may carry a token: only whether it is set.
                if n.webhook.is_some() { "(set)" } else { "none" },
                n.keep_alive.map_or_else(
                    || "off".into(),
                    |k| humantime::format_duration(k).to_string()
                ),
                n.mail_from.as_deref().unwrap_or("none")
            );
        }
        let _ = writeln!(s, "listeners:");
        for l in &self.listeners {
            let _ = writeln!(
                s,
                "  {:<5} {:<22} tls={}{}{}",
                l.protocol.to_string(),
                l.address,
                match l.tls {
                    TlsMode::None => "none",
                    TlsMode::Starttls => "starttls",
                    TlsMode::Implicit => "implicit",
                },
                if l.insecure_plaintext {
                    " insecure_plaintext"
                } else {
                    ""
                },
                if l.in_band_authorization {
                    " in_band_authorization"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(s, "providers:");
        for p in self.providers.values() {
            let _ = writeln!(
                s,
                "  {} (preset {}, flow {}, client_id {}, {})",
                p.name,
                p.preset,
                p.flow,
                p.client_id,
                if p.client_secret.is_some() {
                    "client secret set"
                } else if p.client_certificate.is_some() {
                    "client certificate"
                } else {
                    "no client secret"
                }
            );
            if let Some(c) = &p.client_certificate {
                let _ = writeln!(
                    s,
                    "    certificate    {} (from {}, key {})",
                    c.subject,
                    c.certificate_file.display(),
                    c.key_file.display()
                );
                let _ = writeln!(
                    s,
                    "    thumbprint     {} (SHA-1, as Entra shows it; x5t#S256 {})",
                    c.thumbprint, c.x5t_s256
                );
                let _ = writeln!(
                    s,
                    "    valid until    {} ({} assertions)",
                    humantime::format_rfc3339_seconds(c.not_after),
                    c.algorithm
                );
            }
            if let Some(t) = &p.tenant {
                let _ = writeln!(s, "    tenant         {t}");
            }
            if !p.allowed_tenants.is_empty() {
                let _ = writeln!(s, "    allowed tenants {}", p.allowed_tenants.join(", "));
            }
            if let Some(sa) = &p.service_account {
                let _ = writeln!(
                    s,
                    "    service acct   {} (key {}, from {})",
                    sa.client_email,
                    sa.private_key_id.as_deref().unwrap_or("without an ID"),
                    sa.file.display()
                );
            }
            if let Some(u) = &p.authorize_url {
                let _ = writeln!(s, "    authorize_url  {u}");
            }
            let _ = writeln!(s, "    token_url      {}", p.token_url);
            if let Some(proxy) = &p.proxy {
                let _ = writeln!(s, "    token proxy    {proxy}");
            }
            if let Some(u) = &p.device_code_url {
                let _ = writeln!(s, "    device_code    {u}");
            }
            let _ = writeln!(s, "    redirect_uri   {}", p.redirect_uri);
            let _ = writeln!(s, "    scopes         {}", p.scopes.join(" "));
            for (name, up) in [("imap", &p.imap), ("pop3", &p.pop3), ("smtp", &p.smtp)] {
                if let Some(up) = up {
                    match &up.proxy {
                        Some(proxy) => {
                            let _ = writeln!(s, "    {name:<14} {up} through {proxy}");
                        }
                        None => {
                            let _ = writeln!(s, "    {name:<14} {up}");
                        }
                    }
                }
            }
            if p.sending != Sending::Smtp {
                let _ = writeln!(
                    s,
                    "    sending        {} via {} (save to Sent Items: {}, max message {} bytes, scopes {})",
                    p.sending,
                    p.graph.url,
                    p.graph.save_to_sent_items,
                    p.graph.max_message_size,
                    p.graph.scopes.join(" ")
                );
            }
            if let Some(ca) = &p.ca_file {
                let _ = writeln!(s, "    ca_file        {}", ca.display());
            }
            let _ = writeln!(
                s,
                "    min_token_life {}",
                humantime::format_duration(p.min_token_life)
            );
        }
        let _ = writeln!(s, "accounts:");
        for a in &self.accounts {
            let _ = write!(s, "  {} -> {}", a.user, a.provider);
            if let Some(u) = &a.upstream_user {
                let _ = write!(s, " (upstream user {u})");
            }
            if a.password_hash.is_some() {
                let _ = write!(s, " (password_hash set)");
            }
            let _ = writeln!(s);
        }
        s
    }
}

impl Gateway {
    /// Connections allowed at once from `ip`.
    /// Whether `ip` is one of `trusted_proxies`.
    pub fn trusts_proxy(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    pub fn connections_per_ip(&self, ip: std::net::IpAddr) -> usize {
        match self.max_connections_per_ip {
            Some(n) => n,
            None if ip.is_loopback() => usize::MAX,
            None => 50,
        }
    }
}

/// What to do when `client_id` is one of the examples' placeholders.
fn placeholder_client_id(client_id: &str) -> Option<&'static str> {
    match client_id.trim() {
        "00000000-0000-0000-0000-000000000000" => Some(
            "Microsoft refuses every sign-in with it (AADSTS700016). Register an application in the Entra admin center (App registrations → New registration; docs/office365.md) and put its Application (client) ID here",
        ),
        "123456789012-abcdefghijklmnopqrstuvwxyz012345.apps.googleusercontent.com" => Some(
            "Google refuses every sign-in with it (invalid_client). Create an OAuth client in the Google Cloud console (APIs & Services → Credentials; docs/gmail.md) and put its client ID here",
        ),
        _ => None,
    }
}
