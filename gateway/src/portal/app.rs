//! The portal's state, shared by every handler, and the small helpers
//! they share.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderValue, header};
use axum::response::Response;
use mailgate_config::{Portal as PortalConfig, Protocol, Provider, TlsMode};

use super::limits;
pub(super) use super::pages::see_other;
use super::sessions::{Handle, Sessions};
use crate::accounts::identity;
use crate::context::Context;

/// Sign-ins one client may start a minute (the address form), and at once.
pub(super) const SIGN_INS_PER_MINUTE: u32 = 10;

/// A gateway listener, as the settings page describes it.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub protocol: Protocol,
    pub bound: SocketAddr,
    pub mode: TlsMode,
    /// The SHA-256 fingerprint when the certificate is the generated,
    /// self-signed one.
    pub self_signed: Option<String>,
}

pub(super) struct App {
    pub ctx: Arc<Context>,
    pub sessions: Sessions,
    pub config: PortalConfig,
    pub bound: SocketAddr,
    pub base: url::Url,
    pub hostname: String,
    pub listeners: Vec<ListenerInfo>,
    /// Host headers the portal answers to.
    pub hosts: Vec<String>,
    /// Sign-ins started per client.
    pub sign_ins: limits::Budget,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

pub(super) fn host_port(u: &url::Url) -> String {
    let host = match u.host() {
        Some(url::Host::Ipv6(a)) => format!("[{a}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// The redirect URI the portal uses for `p`: its configured one when that
/// points at the portal, with the portal's port filled in for a loopback
/// URI without one.
pub(super) fn effective_redirect(
    config: &PortalConfig,
    bound: SocketAddr,
    p: &Provider,
) -> Option<url::Url> {
    if !config.serves(&p.redirect_uri, bound) {
        return None;
    }
    let mut u = p.redirect_uri.clone();
    if config.public_url.is_none() && u.port().is_none() {
        u.set_port(Some(bound.port())).ok()?;
    }
    Some(u)
}

pub(super) fn one_line(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// `r` with the session's cookie set when it is new.
pub(super) fn with_cookie(app: &App, h: &Handle, mut r: Response) -> Response {
    if let Some(c) = &h.new_cookie
        && let Ok(v) = HeaderValue::from_str(&app.sessions.set_cookie(c))
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `csrf` of session `h` (empty when it is gone).
pub(super) fn csrf_of(app: &App, h: &Handle) -> String {
    app.sessions.with(h, |s| s.csrf.clone()).unwrap_or_default()
}

impl App {
    /// The provider of this name in the configuration in force; a session
    /// whose provider is gone is no longer signed in.
    pub(super) fn provider(&self, name: &str) -> Result<Arc<Provider>, super::error::PortalError> {
        self.ctx
            .config()
            .provider(name)
            .cloned()
            .ok_or(super::error::PortalError::NotSignedIn)
    }
}

impl App {
    /// Whether `path` is where a provider sends its redirects to the portal.
    pub(super) fn redirect_path(&self, path: &str) -> bool {
        self.ctx.config().providers.values().any(|p| {
            effective_redirect(&self.config, self.bound, p).is_some_and(|u| u.path() == path)
        })
    }

    pub(super) fn prover(&self) -> identity::Prover {
        let config = self.ctx.config();
        identity::Prover {
            timeout: config.gateway.upstream_timeout,
            hostname: config.gateway.hostname.clone(),
            prove: self.ctx.prove,
        }
    }
}
