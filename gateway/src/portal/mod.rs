//! The web portal (SPEC §8): people authorise and manage their own account
//! in their own browser. The person who signs in at the provider as an
//! account's identity, in that browser session, is the one who chooses its
//! local password; nothing else can change an account that has tokens.
//!
//! Pages are rendered on the server (no script is needed for anything);
//! every form carries the session's CSRF token; sessions are short-lived
//! HttpOnly, SameSite=Lax cookies (Secure over HTTPS); `state` and `nonce`
//! are checked in constant time and used once; nothing secret is put in a
//! URL or a log. The portal also serves the provider's redirect at the path
//! of each `redirect_uri` that points at it. A mail client told to
//! authorise an account (in-band, SPEC §4) is given a link to the address
//! form filled in with it: the sign-in then runs here, bound to the
//! browser that opens the link.

mod account;
mod app;
mod device;
mod error;
mod extract;
mod finish;
mod home;
mod layers;
mod limits;
pub mod pages;
mod serve;
pub mod sessions;
mod signin;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use mailgate_config::Portal as PortalConfig;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::context::Context;
use crate::net::tls::ListenerTls;
use app::{App, SIGN_INS_PER_MINUTE, host_port};
use sessions::Sessions;

pub use app::ListenerInfo;

/// Largest form body.
const MAX_BODY: usize = 8 * 1024;

/// A running portal.
#[derive(Debug)]
pub struct Portal {
    pub address: SocketAddr,
}

/// Binds the portal and serves it until `stop`.
pub async fn start(
    ctx: Arc<Context>,
    config: PortalConfig,
    listeners: Vec<ListenerInfo>,
    tls: Option<Arc<ListenerTls>>,
    stop: CancellationToken,
) -> anyhow::Result<Portal> {
    let listener = tokio::net::TcpListener::bind(config.address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for the portal; is another program (or `mailgate login`) using it?",
                config.address
            )
        })?;
    let bound = listener.local_addr()?;
    let base = config.base_url(bound);
    let gateway = ctx.config();
    // A browser may resolve `localhost` to ::1: when a redirect URI says
    // `localhost`, that port is the portal's too, or another program could
    // take the redirect there (as the redirect listener of `mailgate
    // login` does).
    let localhost = gateway.providers.values().any(|p| {
        matches!(p.redirect_uri.host(), Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost"))
            && config.serves(&p.redirect_uri, bound)
    });
    let v6 = if localhost && bound.ip() == std::net::Ipv4Addr::LOCALHOST {
        let addr6 = SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), bound.port());
        match tokio::net::TcpListener::bind(addr6).await {
            Ok(l) => Some(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => None,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot listen on {addr6} for the portal (localhost redirects arrive there too)")
                });
            }
        }
    } else {
        None
    };
    // The public name; and on loopback the loopback names (a browser on
    // this machine, or a reverse proxy that does not pass the Host on): a
    // page elsewhere that rebinds its own name to this address is refused.
    let mut hosts = vec![host_port(&base)];
    if bound.ip().is_loopback() {
        for h in ["localhost", "127.0.0.1", "[::1]"] {
            hosts.push(format!("{h}:{}", bound.port()));
        }
    }
    ctx.set_portal_url(base.clone());
    let app = Arc::new(App {
        sessions: Sessions::new(base.scheme() == "https").sharing(
            ctx.accounts
                .fleet()
                .shared()
                .then(|| ctx.accounts.fleet().clone()),
        ),
        hostname: gateway.gateway.hostname.clone(),
        ctx,
        config,
        bound,
        base: base.clone(),
        listeners,
        hosts,
        sign_ins: limits::Budget::new(SIGN_INS_PER_MINUTE, SIGN_INS_PER_MINUTE),
    });
    info!(address = %bound, url = %base, tls = tls.is_some(), "portal listening");
    let router = router(app.clone());
    let limits = serve::limits();
    if let Some(l) = v6 {
        tokio::spawn(serve::serve(
            l,
            tls.clone(),
            router.clone(),
            app.clone(),
            limits.clone(),
            stop.clone(),
        ));
    }
    tokio::spawn(serve::serve(listener, tls, router, app, limits, stop));
    Ok(Portal { address: bound })
}

/// The portal: each file's routes, merged here, under the layers every
/// request passes.
fn router(app: Arc<App>) -> Router {
    Router::new()
        .merge(home::routes())
        .merge(signin::routes())
        .merge(device::routes())
        .merge(account::routes())
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            layers::shared_sessions,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            layers::guard,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_passwords_are_typed_twice_and_long_enough() {
        assert!(signin::new_password("abcdefgh", "abcdefgh").is_ok());
        let differ = signin::new_password("abcdefgh", "abcdefgx").expect_err("differ");
        assert!(differ.contains("differ"), "{differ}");
        let short = signin::new_password("short", "short").expect_err("short");
        assert!(short.contains("at least 8 characters"), "{short}");
    }

    #[test]
    fn host_port_brackets_ipv6() {
        let u = url::Url::parse("http://[::1]:3017/").expect("url");
        assert_eq!(host_port(&u), "[::1]:3017");
    }
}
