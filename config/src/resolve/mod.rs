//! From the raw file to the validated [`Config`]: presets filled in, paths
//! made relative to the file, and every problem collected with its key.
//! One section per file: `sections` (gateway, listeners, store, portal),
//! `provider`, `credentials`, `accounts`.
//!
//! The one I/O the resolution does, everywhere else pure: reading the
//! secret files it is pointed at (`client_secret_file`, `store.url_file`,
//! a client certificate and its key, a service account's key), so that a
//! secret never has to be written into the configuration itself.

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
mod accounts;
mod credentials;
mod notify;
mod provider;
mod sections;
mod store;

use accounts::accounts;
use credentials::{client_certificate, service_account_key};
pub(crate) use provider::is_guid;
use provider::providers;
use sections::{gateway, listeners, portal};
use store::store;

use crate::{
    Account, AssertionAlg, Choice, Config, ConfigError, ConfigErrors, Flow, Gateway, Listener,
    LogFormat, Portal, Preset, Protocol, Provider, Redis, Sentinels, ServiceAccount, Store,
    TlsMode, Upstream, UpstreamSecurity, UserPattern, relative_to,
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
    let mut providers = providers;
    let accounts = accounts(raw.account, &providers, &mut errs);
    // A delegate sending as a shared mailbox through Graph needs
    // Mail.Send.Shared, asked for only where an account has `shared` (the
    // others' consent stays as it was).
    for a in accounts.iter().filter(|a| !a.shared.is_empty()) {
        if let Some(p) = providers.get_mut(&a.provider).map(Arc::make_mut)
            && !p.is_app_only()
            && !p
                .graph
                .scopes
                .iter()
                .any(|s| s == crate::GRAPH_MAIL_SEND_SHARED)
        {
            p.graph
                .scopes
                .insert(1, crate::GRAPH_MAIL_SEND_SHARED.to_owned());
        }
    }
    let portal = raw.portal.map(|p| portal(file, p, &mut errs));
    if portal.as_ref().is_some_and(|p| p.proxy_protocol) && gateway.trusted_proxies.is_empty() {
        errs.push(
            "portal.proxy_protocol",
            "needs [gateway] trusted_proxies: the load balancers whose PROXY headers are believed",
        );
    }
    let store = store(file, raw.store.unwrap_or_default(), &mut errs);
    let notify = raw.notify.map(|n| notify::notify(file, n, &mut errs));
    if let Some(from) = notify.as_ref().and_then(|n| n.mail_from.as_deref())
        && !accounts
            .iter()
            .any(|a| matches!(&a.user, UserPattern::Exact(u) if u == from))
    {
        errs.push(
            "notify.mail_from",
            format!("`{from}` is not an [[account]] of this configuration (one user, not a *@domain pattern): notices are sent as one of the gateway's own accounts"),
        );
    }
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
            )
            .chain(
                notify
                    .as_ref()
                    .and_then(|n| n.webhook_file.clone())
                    .map(|f| ("notify.webhook_file".to_owned(), f)),
            );
        Ok(Config {
            file: file.to_path_buf(),
            gateway,
            portal,
            store,
            notify,
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

/// A size in bytes: a number with an optional unit (`B`, `KB`, `MB`,
/// `GB`: powers of 1000; `KiB`, `MiB`, `GiB`: of 1024), e.g. `35MB`.
fn size(errs: &mut Errors<'_>, key: &str, value: Option<String>, default: usize) -> usize {
    let Some(s) = value else {
        return default;
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let factor: Option<u64> = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => Some(1),
        "kb" => Some(1000),
        "mb" => Some(1000 * 1000),
        "gb" => Some(1000 * 1000 * 1000),
        "kib" => Some(1 << 10),
        "mib" => Some(1 << 20),
        "gib" => Some(1 << 30),
        _ => None,
    };
    match (n.parse::<u64>().ok(), factor) {
        (Some(n), Some(f)) if n > 0 => usize::try_from(n.saturating_mul(f)).unwrap_or(usize::MAX),
        _ => {
            errs.push(
                key,
                format!("`{s}` is not a size; write e.g. \"35MB\" or \"20MiB\""),
            );
            default
        }
    }
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
