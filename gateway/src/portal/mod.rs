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
mod limits;
pub mod pages;
pub mod sessions;
mod signin;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mailgate_config::{Flow, Portal as PortalConfig, Protocol, Provider, TlsMode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::accounts::flows::{FlowError, PasswordError};
use crate::accounts::identity::{self, IdentityError};
use crate::accounts::store::{StoreError, TokenFile};
use crate::context::Context;
use crate::net::tls::ListenerTls;
use pages::{MIN, Setting, advice, message, render};
use sessions::{Handle, PendingDevice, PendingSignIn, Sessions, SignedIn, Unsealed};

/// Connections the portal serves at once.
const MAX_CONNECTIONS: usize = 256;
/// Connections one client address may hold (a trusted reverse proxy, which
/// carries many clients, is held only to the total).
const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;
/// Largest form body.
const MAX_BODY: usize = 8 * 1024;
/// Time a browser has to send its request headers (and the TLS handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a whole request may take, body included (a form is a few hundred
/// bytes; a body that trickles in holds nothing longer than this).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection is kept: after it, the connection is closed once
/// its request under way (if any) is answered, so that an idle keep-alive
/// connection holds no place.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Sign-ins one client may start a minute (the address form), and at once.
const SIGN_INS_PER_MINUTE: u32 = 10;

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

struct App {
    ctx: Arc<Context>,
    sessions: Sessions,
    config: PortalConfig,
    bound: SocketAddr,
    base: url::Url,
    hostname: String,
    listeners: Vec<ListenerInfo>,
    /// Host headers the portal answers to.
    hosts: Vec<String>,
    /// Sign-ins started per client.
    sign_ins: limits::Budget,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

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
                .fleet_shared()
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
    let per_address = limits::PerAddress::new(MAX_CONNECTIONS_PER_ADDRESS);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let limits = (permits, per_address);
    if let Some(l) = v6 {
        tokio::spawn(serve(
            l,
            tls.clone(),
            router.clone(),
            app.clone(),
            limits.clone(),
            stop.clone(),
        ));
    }
    tokio::spawn(serve(listener, tls, router, app, limits, stop));
    Ok(Portal { address: bound })
}

fn host_port(u: &url::Url) -> String {
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
fn effective_redirect(config: &PortalConfig, bound: SocketAddr, p: &Provider) -> Option<url::Url> {
    if !config.serves(&p.redirect_uri, bound) {
        return None;
    }
    let mut u = p.redirect_uri.clone();
    if config.public_url.is_none() && u.port().is_none() {
        u.set_port(Some(bound.port())).ok()?;
    }
    Some(u)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/sign-in", post(signin::sign_in))
        .route("/device", get(signin::device))
        .route(
            "/password",
            get(signin::password_form).post(signin::password_save),
        )
        .route("/settings", get(account::settings))
        .route("/account", get(account::account))
        .route("/account/password", post(account::change_password))
        .route("/account/authorize", post(account::authorize_again))
        .route("/account/forget", post(account::forget))
        .route("/sign-out", post(account::sign_out))
        .route("/style.css", get(stylesheet))
        .route("/help", get(|| async { pages::help() }))
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            shared_sessions,
        ))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// Accepts connections (at most [`MAX_CONNECTIONS`] at once, and
/// [`MAX_CONNECTIONS_PER_ADDRESS`] from one address) and serves HTTP/1.1 on
/// each, over TLS when configured: each request within
/// [`REQUEST_TIMEOUT`], each connection for [`CONNECTION_LIFETIME`].
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ListenerTls>>,
    router: Router,
    app: Arc<App>,
    (permits, per_address): (Arc<tokio::sync::Semaphore>, limits::PerAddress),
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "portal accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            info!(peer = %peer, "portal: too many connections; closed");
            continue;
        };
        let (router, tls, stop) = (router.clone(), tls.clone(), stop.clone());
        let (app, per_address) = (app.clone(), per_address.clone());
        tokio::spawn(async move {
            let mut stream = stream;
            let config = app.ctx.config();
            // Behind a TCP load balancer the browser is whom its PROXY
            // header names (believed from trusted_proxies only).
            let peer = if app.config.proxy_protocol {
                if !config.gateway.trusts_proxy(peer.ip()) {
                    info!(peer = %peer, "portal: closed: PROXY headers are believed from trusted_proxies only");
                    return;
                }
                match crate::net::proxy_header::read_header(&mut stream, peer, HEADER_TIMEOUT).await
                {
                    Ok(client) => client,
                    Err(e) => {
                        info!(proxy = %peer, error = %e, "portal: closed: no valid PROXY header");
                        return;
                    }
                }
            } else {
                peer
            };
            // A trusted reverse proxy carries many clients: held to the
            // total only.
            let held = if config.gateway.trusts_proxy(peer.ip()) {
                None
            } else {
                match per_address.hold(peer.ip()) {
                    Some(h) => Some(h),
                    None => {
                        info!(peer = %peer, "portal: too many connections from this address; closed");
                        return;
                    }
                }
            };
            drop(config);
            let _held = (permit, held);
            let svc = hyper::service::service_fn(move |mut req: axum::http::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut r = router.clone();
                async move {
                    match tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        tower_service::Service::call(&mut r, req),
                    )
                    .await
                    {
                        Ok(done) => done,
                        Err(_) => {
                            info!(peer = %peer, "portal: a request took too long; closed");
                            let mut late = StatusCode::REQUEST_TIMEOUT.into_response();
                            late.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                            Ok(late)
                        }
                    }
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let done = match tls {
                None => {
                    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    served(conn, &stop).await
                }
                Some(t) => {
                    let s = match tokio::time::timeout(HEADER_TIMEOUT, t.acceptor().accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            info!(peer = %peer, error = %e, "portal: TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(s), svc);
                    served(conn, &stop).await
                }
            };
            if let Err(e) = done {
                tracing::debug!(peer = %peer, error = %e, "portal connection ended");
            }
        });
    }
}

/// Serves one connection until it ends, the gateway stops, or its
/// [`CONNECTION_LIFETIME`] is over (then it closes after the request under
/// way, which [`REQUEST_TIMEOUT`] bounds).
async fn served<I, S>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    stop: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = stop.cancelled() => return Ok(()),
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {}
    }
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(REQUEST_TIMEOUT, conn).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

/// With the Redis store: the request's session comes from the fleet's
/// store and goes back to it after the handler (a renewed or ended session
/// is deleted under its old cookie), so that any instance can serve any
/// request of a browser.
async fn shared_sessions(
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
    if let Some(c) = &before {
        let config = app.ctx.config();
        let provider = |name: &str| config.provider(name).cloned();
        if let Err(e) = app.sessions.load_shared(c, &provider).await {
            return unavailable(e);
        }
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
async fn guard(
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

fn one_line(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// `r` with the session's cookie set when it is new.
fn with_cookie(app: &App, h: &Handle, mut r: Response) -> Response {
    if let Some(c) = &h.new_cookie
        && let Ok(v) = HeaderValue::from_str(&app.sessions.set_cookie(c))
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn see_other(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "bad redirect").into_response(),
    }
}

fn csrf_refused() -> Response {
    info!("portal: a form without this session's CSRF token was refused");
    message(
        StatusCode::FORBIDDEN,
        "Form expired",
        "This form has expired or was not sent from this site. Go back, reload the page and try again.",
    )
}

/// The session of a form post whose CSRF token is the session's.
fn form_session(app: &App, headers: &HeaderMap, csrf: &str) -> Option<Handle> {
    let h = app.sessions.find(headers)?;
    app.sessions
        .with(&h, |s| s.csrf_ok(csrf))
        .unwrap_or(false)
        .then_some(h)
}

/// A form post from a session whose CSRF token it carries: the session
/// and the form's other fields. Anything else is refused with a page.
struct Posted<T> {
    session: Handle,
    form: T,
}

#[derive(Deserialize)]
struct WithCsrf<T> {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    rest: T,
}

impl<T: serde::de::DeserializeOwned + Send> axum::extract::FromRequest<Arc<App>> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, app: &Arc<App>) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let Form(f) = Form::<WithCsrf<T>>::from_request(req, app)
            .await
            .map_err(IntoResponse::into_response)?;
        match form_session(app, &headers, &f.csrf) {
            Some(session) => Ok(Posted {
                session,
                form: f.rest,
            }),
            None => Err(csrf_refused()),
        }
    }
}

/// The signed-in account of a session: its name and provider.
fn signed_in(app: &App, h: &Handle) -> Option<(String, Arc<Provider>, String)> {
    app.sessions
        .with(h, |s| {
            s.signed_in
                .as_ref()
                .map(|si| (si.user.clone(), si.provider.clone(), s.csrf.clone()))
        })
        .flatten()
}

fn not_signed_in() -> Response {
    see_other("/")
}

fn csrf_of(app: &App, h: &Handle) -> String {
    app.sessions.with(h, |s| s.csrf.clone()).unwrap_or_default()
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../assets/portal.css"),
    )
        .into_response()
}

/// The address form, with `csrf` its token (the session's, or the
/// pre-session form cookie's); `form_cookie` sets that cookie.
fn index_page(
    csrf: &str,
    form_cookie: Option<String>,
    status: StatusCode,
    address: &str,
    error: Option<String>,
) -> Response {
    let mut r = render(
        status,
        &pages::Index {
            csrf,
            address,
            error,
        },
    );
    if let Some(c) = form_cookie
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn index(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let redirect = ["state", "code", "error"]
        .iter()
        .any(|k| q.contains_key(*k));
    if redirect && app.redirect_path("/") {
        return signin::callback(&app, &headers, q).await;
    }
    // A link from a mail client's in-band message fills the form in; the
    // person still sends it. A visit makes no session: the form's token is
    // a cookie of its own until a sign-in starts.
    let address = one_line(q.get("address").map_or("", |a| a.trim()), 320);
    if let Some(h) = app.sessions.find(&headers) {
        return index_page(&csrf_of(&app, &h), None, StatusCode::OK, &address, None);
    }
    let token = sessions::random_token();
    let cookie = app.sessions.set_form_cookie(&token);
    index_page(&token, Some(cookie), StatusCode::OK, &address, None)
}

async fn fallback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if app.redirect_path(uri.path()) {
        return signin::callback(&app, &headers, q).await;
    }
    message(
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is no such page here.",
    )
}

impl App {
    /// Whether `path` is where a provider sends its redirects to the portal.
    fn redirect_path(&self, path: &str) -> bool {
        self.ctx.config().providers.values().any(|p| {
            effective_redirect(&self.config, self.bound, p).is_some_and(|u| u.path() == path)
        })
    }

    fn prover(&self) -> identity::Prover {
        let config = self.ctx.config();
        identity::Prover {
            timeout: config.gateway.upstream_timeout,
            hostname: config.gateway.hostname.clone(),
            prove: self.ctx.prove,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_passwords_are_typed_twice_and_long_enough() {
        assert!(signin::new_password("abcdefgh", "abcdefgh").is_ok());
        assert!(signin::new_password("abcdefgh", "abcdefgx").is_err());
        assert!(signin::new_password("short", "short").is_err());
    }

    #[test]
    fn host_port_brackets_ipv6() {
        let u = url::Url::parse("http://[::1]:3017/").expect("url");
        assert_eq!(host_port(&u), "[::1]:3017");
    }
}
