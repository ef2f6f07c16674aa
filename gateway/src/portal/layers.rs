//! What wraps every request: the `Host` check and the security headers
//! ([`guard`]), and with a shared fleet the session's trip to and from the
//! fleet ([`shared_sessions`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::{info, warn};

use super::app::{App, host_port, one_line};
use super::limits;
use super::pages::message;
use crate::accounts::store::StoreError;

/// With the Redis store: the request's session comes from the fleet's
/// store and goes back to it after the handler (a renewed or ended session
/// is deleted under its old cookie), so that any instance can serve any
/// request of a browser.
pub(super) async fn shared_sessions(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The stylesheet and the help page need no session: no Redis round
    // trip (let alone a write) for them.
    if !app.sessions.shared() || matches!(req.uri().path(), "/style.css" | "/help") {
        return next.run(req).await;
    }
    let unavailable = |e: StoreError| {
        warn!(error = %e, "portal: the sessions' shared store cannot be used");
        message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The gateway cannot reach its shared store now. Try again in a moment.",
        )
    };
    let before = app.sessions.cookie_in(req.headers());
    if let Some(c) = &before
        && let Err(e) = app.sessions.load_shared(c).await
    {
        return unavailable(e);
    }
    let r = next.run(req).await;
    let after = app.sessions.cookie_set_by(r.headers()).or(before.clone());
    if let Some(b) = &before
        && after.as_ref() != Some(b)
        && let Err(e) = app.sessions.drop_shared(b).await
    {
        return unavailable(e);
    }
    if let Some(a) = after.filter(|a| !a.is_empty())
        && let Err(e) = app.sessions.store_shared(&a).await
    {
        return unavailable(e);
    }
    r
}

/// Every response: refused for an unknown `Host` (DNS rebinding), then the
/// security headers.
pub(super) async fn guard(
    State(app): State<Arc<App>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The client: the peer, or whom a trusted reverse proxy names.
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        let config = app.ctx.config();
        let client = limits::client_of(peer.ip(), req.headers(), |ip| {
            config.gateway.trusts_proxy(ip)
        });
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(client, peer.port())));
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let known = app.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
        || (app.base.port().is_none() && host_port(&app.base).eq_ignore_ascii_case(host));
    let mut r = if known {
        next.run(req).await
    } else {
        info!(host = %one_line(host, 100), "portal: request for an unknown host refused");
        (StatusCode::MISDIRECTED_REQUEST, "unknown host").into_response()
    };
    let h = r.headers_mut();
    let mut form_action = vec!["'self'".to_owned()];
    for p in app.ctx.config().providers.values() {
        if let Some(u) = &p.authorize_url {
            let o = u.origin().ascii_serialization();
            if !form_action.contains(&o) {
                form_action.push(o);
            }
        }
    }
    let csp = format!(
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action {}; frame-ancestors 'none'; base-uri 'none'",
        form_action.join(" ")
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
