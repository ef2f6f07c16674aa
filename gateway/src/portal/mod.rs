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
//! of each `redirect_uri` that points at it, and hands the redirects of
//! in-band sign-ins (started from a mail client) to them.

pub mod pages;
pub mod sessions;

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
use crate::accounts::redirect::RedirectServer;
use crate::accounts::store::{StoreError, TokenFile};
use crate::session::context::Context;
use crate::session::tls::ListenerTls;
use pages::{MIN, Setting, advice, message, render};
use sessions::{Handle, PendingSignIn, Sessions, SignedIn, Unsealed};

/// Connections the portal serves at once.
const MAX_CONNECTIONS: usize = 256;
/// Largest form body.
const MAX_BODY: usize = 8 * 1024;
/// Time a browser has to send its request headers (and the TLS handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// In-band sign-ins' receivers mounted here, by redirect path.
    inband: Vec<(String, Arc<RedirectServer>)>,
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
    pub base_url: url::Url,
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
    let mut inband = Vec::new();
    for p in gateway.providers.values() {
        if p.flow == Flow::AuthorizationCode
            && let Some(uri) = effective_redirect(&config, bound, p)
            && !inband
                .iter()
                .any(|(path, _): &(String, _)| *path == uri.path())
        {
            let server = Arc::new(RedirectServer::mounted(uri.clone()));
            ctx.inband.adopt(&p.redirect_uri, server.clone()).await;
            inband.push((uri.path().to_owned(), server));
        }
    }
    let app = Arc::new(App {
        sessions: Sessions::new(base.scheme() == "https"),
        hostname: gateway.gateway.hostname.clone(),
        ctx,
        config,
        bound,
        base: base.clone(),
        listeners,
        hosts,
        inband,
    });
    info!(address = %bound, url = %base, tls = tls.is_some(), "portal listening");
    let router = router(app);
    if let Some(l) = v6 {
        tokio::spawn(serve(l, tls.clone(), router.clone(), stop.clone()));
    }
    tokio::spawn(serve(listener, tls, router, stop));
    Ok(Portal {
        address: bound,
        base_url: base,
    })
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
        .route("/sign-in", post(sign_in))
        .route("/password", get(password_form).post(password_save))
        .route("/settings", get(settings))
        .route("/account", get(account))
        .route("/account/password", post(change_password))
        .route("/account/authorize", post(authorize_again))
        .route("/account/forget", post(forget))
        .route("/sign-out", post(sign_out))
        .route("/style.css", get(stylesheet))
        .route("/help", get(|| async { pages::help() }))
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// Accepts connections (at most [`MAX_CONNECTIONS`] at once) and serves
/// HTTP/1.1 on each, over TLS when configured.
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ListenerTls>>,
    router: Router,
    stop: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |mut req: axum::http::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut r = router.clone();
                async move { tower_service::Service::call(&mut r, req).await }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let done = match tls {
                None => {
                    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    tokio::select! {
                        r = conn => r,
                        _ = stop.cancelled() => Ok(()),
                    }
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
                    tokio::select! {
                        r = conn => r,
                        _ = stop.cancelled() => Ok(()),
                    }
                }
            };
            if let Err(e) = done {
                tracing::debug!(peer = %peer, error = %e, "portal connection ended");
            }
        });
    }
}

/// Every response: refused for an unknown `Host` (DNS rebinding), then the
/// security headers.
async fn guard(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
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

fn index_page(
    app: &App,
    h: &Handle,
    status: StatusCode,
    address: &str,
    error: Option<String>,
) -> Response {
    let csrf = csrf_of(app, h);
    with_cookie(
        app,
        h,
        render(
            status,
            &pages::Index {
                csrf: &csrf,
                address,
                error,
            },
        ),
    )
}

async fn index(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let redirect = ["state", "code", "error"]
        .iter()
        .any(|k| q.contains_key(*k));
    if redirect && app.inband_or_portal_path("/") {
        return callback(&app, &headers, "/", q).await;
    }
    let h = app.sessions.find_or_create(&headers);
    index_page(&app, &h, StatusCode::OK, "", None)
}

async fn fallback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if app.inband_or_portal_path(uri.path()) {
        return callback(&app, &headers, uri.path(), q).await;
    }
    message(
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is no such page here.",
    )
}

impl App {
    /// Whether `path` is where a provider sends its redirects to the portal.
    fn inband_or_portal_path(&self, path: &str) -> bool {
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

#[derive(Deserialize)]
struct AddressForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    address: String,
}

async fn sign_in(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<AddressForm>,
) -> Response {
    let Some(h) = form_session(&app, &headers, &form.csrf) else {
        return csrf_refused();
    };
    let address = one_line(form.address.trim(), 320);
    let Some(user) = crate::accounts::account_name(&address).filter(|u| u.contains('@')) else {
        return index_page(
            &app,
            &h,
            StatusCode::BAD_REQUEST,
            &address,
            Some("Enter your whole e-mail address, e.g. name@example.com.".into()),
        );
    };
    let backoff = app.ctx.accounts.backoff();
    if !backoff.locked(&user, peer.ip()).is_zero() {
        info!(user = %user, "portal: address form refused during backoff");
        return index_page(
            &app,
            &h,
            StatusCode::TOO_MANY_REQUESTS,
            &address,
            Some("Too many attempts from here. Wait a minute, then try again.".into()),
        );
    }
    let config = app.ctx.config();
    let Some(provider) = config
        .find_account(&user)
        .and_then(|a| config.provider(&a.provider))
        .cloned()
    else {
        info!(user = %user, "portal: an address that no account matches");
        backoff.failure(&user, peer.ip(), false);
        return index_page(
            &app,
            &h,
            StatusCode::NOT_FOUND,
            &address,
            Some(format!(
                "{user} is not served by this gateway. Check the address, or ask your administrator."
            )),
        );
    };
    start_sign_in(&app, &h, user, provider, false)
}

/// Sends the browser to the provider's sign-in for `user`.
fn start_sign_in(
    app: &App,
    h: &Handle,
    user: String,
    provider: Arc<Provider>,
    again: bool,
) -> Response {
    match provider.flow {
        Flow::AuthorizationCode => {}
        Flow::DeviceCode => {
            return message(
                StatusCode::BAD_REQUEST,
                "Authorised with a code",
                format!(
                    "{user} is authorised with a device code, not in the browser: log in from your mail program with the password you want, and follow its instructions, or ask your administrator."
                ),
            );
        }
        Flow::ClientCredentials => {
            return message(
                StatusCode::BAD_REQUEST,
                "No sign-in needed",
                format!(
                    "{user} is served with the organisation's own credentials: your administrator gives you its password."
                ),
            );
        }
    }
    let Some(redirect) = effective_redirect(&app.config, app.bound, &provider) else {
        warn!(
            provider = %provider.name,
            redirect_uri = %provider.redirect_uri,
            portal = %app.base,
            "portal: the provider's redirect_uri does not point at the portal"
        );
        return advice(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not set up for the portal",
            format!("This gateway cannot sign in {user} here yet."),
            format!(
                "The administrator must register {} as a redirect URI of the app and set redirect_uri to it in provider {}.",
                app.base, provider.name
            ),
        );
    };
    let request = match app
        .ctx
        .accounts
        .oauth()
        .authorization_request(&provider, &redirect, &user)
    {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "portal: cannot build the sign-in request");
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in unavailable",
                e.to_string(),
            );
        }
    };
    let to = request.url.to_string();
    let stored = app.sessions.with(h, |s| {
        s.pending = Some(PendingSignIn {
            request,
            user: user.clone(),
            provider: provider.clone(),
            again,
            started: Instant::now(),
        })
    });
    if stored.is_none() {
        return not_signed_in();
    }
    info!(user = %user, again, "portal: sign-in sent to the provider");
    with_cookie(app, h, see_other(&to))
}

/// The provider's redirect: the session's own sign-in (its `state`, once),
/// else an in-band sign-in's, else nothing.
async fn callback(
    app: &App,
    headers: &HeaderMap,
    path: &str,
    q: HashMap<String, String>,
) -> Response {
    let state = q.get("state").map(String::as_str).unwrap_or("");
    let h = app.sessions.find(headers);
    let pending = h
        .as_ref()
        .and_then(|h| {
            app.sessions.with(h, |s| {
                let mine = s.pending.as_ref().is_some_and(|p| {
                    bool::from(
                        p.request
                            .state
                            .expose_secret()
                            .as_bytes()
                            .ct_eq(state.as_bytes()),
                    )
                });
                if mine { s.pending.take() } else { None }
            })
        })
        .flatten();
    let (Some(h), Some(pending)) = (h, pending) else {
        if let Some((_, server)) = app.inband.iter().find(|(p, _)| p == path)
            && server.expects(state)
        {
            return server.deliver(&q).into_response();
        }
        app.ctx.metrics.portal_sign_in("unknown_state");
        info!("portal: a redirect for no sign-in of this browser was ignored");
        return message(
            StatusCode::BAD_REQUEST,
            "Sign-in not recognised",
            "This sign-in was started in another browser, has expired, or was already used. Start again from the first page.",
        );
    };
    if pending.started.elapsed() > sessions::SIGN_IN {
        app.ctx.metrics.portal_sign_in("unknown_state");
        return message(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "The sign-in took too long. Start again from the first page.",
        );
    }
    let csrf = csrf_of(app, &h);
    let user = pending.user.clone();
    if let Some(error) = q.get("error") {
        let error = one_line(error, 100);
        let description = one_line(q.get("error_description").map_or("", String::as_str), 300);
        app.ctx.metrics.portal_sign_in("provider_error");
        info!(user = %user, error = %error, "portal: the provider refused the sign-in");
        return render(
            StatusCode::BAD_REQUEST,
            &pages::ProviderError {
                csrf: &csrf,
                address: &user,
                advice: pages::provider_advice(&error, &description),
                error: &error,
                description: &description,
            },
        );
    }
    let Some(code) = q.get("code") else {
        app.ctx.metrics.portal_sign_in("failed");
        return message(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The provider sent no authorisation. Start again from the first page.",
        );
    };
    let provider = pending.provider.clone();
    let grant = match app
        .ctx
        .accounts
        .oauth()
        .exchange_code(
            &provider,
            &pending.request,
            &SecretString::from(code.clone()),
        )
        .await
    {
        Ok(g) => g,
        Err(e) => {
            app.ctx.metrics.portal_sign_in("failed");
            warn!(user = %user, error = %e, "portal: the authorization code exchange failed");
            let (code, detail) = match &e {
                crate::accounts::oauth::OAuthError::InvalidGrant(d) => {
                    ("invalid_grant", d.as_str())
                }
                crate::accounts::oauth::OAuthError::Declined(d) => ("access_denied", d.as_str()),
                crate::accounts::oauth::OAuthError::Other { code, description } => {
                    (code.as_str(), description.as_str())
                }
                _ => ("", ""),
            };
            return advice(
                StatusCode::BAD_GATEWAY,
                "Sign-in failed",
                e.to_string(),
                pages::provider_advice(code, detail),
            );
        }
    };
    let upstream_user = app.ctx.accounts.upstream_user_of(&user);
    let checked = identity::confirm(
        &provider,
        &grant,
        identity::Expected {
            user: &user,
            upstream_user: &upstream_user,
            nonce: Some(&pending.request.nonce),
        },
        &app.prover(),
    )
    .await;
    let who = match checked {
        Ok(who) => who,
        Err(IdentityError::Mismatch {
            signed_in,
            expected,
        }) => {
            app.ctx.metrics.portal_sign_in("wrong_identity");
            info!(user = %user, signed_in = %signed_in, "portal: the sign-in was for another identity; nothing stored");
            return render(
                StatusCode::FORBIDDEN,
                &pages::WrongIdentity {
                    csrf: &csrf,
                    signed_in: &signed_in,
                    expected: &expected,
                },
            );
        }
        Err(e) => {
            app.ctx.metrics.portal_sign_in("wrong_identity");
            warn!(user = %user, error = %e, "portal: the sign-in's identity is not the account's; nothing stored");
            return message(StatusCode::FORBIDDEN, "Sign-in not accepted", e.to_string());
        }
    };
    if pending.again {
        let same = app
            .sessions
            .with(&h, |s| {
                s.signed_in.as_ref().is_some_and(|si| si.user == user)
            })
            .unwrap_or(false);
        if !same {
            app.ctx.metrics.portal_sign_in("failed");
            return not_signed_in();
        }
    }
    let (replaces, usable) = match app.ctx.accounts.store().load(&user) {
        Ok(Some(f)) => {
            let usable = !f.needs_authorization;
            (Some(f), usable)
        }
        Ok(None) => (None, false),
        Err(e) => {
            app.ctx.metrics.portal_sign_in("failed");
            warn!(user = %user, error = %e, "portal: cannot read the account's tokens");
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Account unavailable",
                "The gateway cannot read this account's stored access now. Tell your administrator (the error is in the gateway's log).",
            );
        }
    };
    let wants_password = pending.again || !usable;
    let Some(h) = app.sessions.renew(&h) else {
        return not_signed_in();
    };
    app.sessions.with(&h, |s| {
        s.signed_in = Some(SignedIn {
            user: user.clone(),
            provider,
            unsealed: wants_password.then(|| Unsealed {
                grant,
                replaces,
                at: Instant::now(),
            }),
        })
    });
    app.ctx.metrics.portal_sign_in("ok");
    info!(user = %user, identity = %who, "portal: signed in as the account's identity");
    with_cookie(
        app,
        &h,
        see_other(if wants_password {
            "/password"
        } else {
            "/account"
        }),
    )
}

/// Whether the session holds tokens that wait for a password.
fn has_unsealed(app: &App, h: &Handle) -> bool {
    app.sessions
        .with(h, |s| {
            s.signed_in
                .as_ref()
                .and_then(|si| si.unsealed.as_ref())
                .is_some_and(|u| u.at.elapsed() < sessions::UNSEALED)
        })
        .unwrap_or(false)
}

async fn password_form(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(h) = app.sessions.find(&headers) else {
        return not_signed_in();
    };
    let Some((user, provider, csrf)) = signed_in(&app, &h) else {
        return not_signed_in();
    };
    if !has_unsealed(&app, &h) {
        return see_other("/account");
    }
    password_page(&csrf, &user, &provider, StatusCode::OK, None)
}

fn password_page(
    csrf: &str,
    user: &str,
    provider: &Provider,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let provider_name = match provider.preset {
        mailgate_config::Preset::Gmail => "Google",
        mailgate_config::Preset::Office365 | mailgate_config::Preset::Outlook => "Microsoft",
        _ => "mail provider",
    };
    render(
        status,
        &pages::Password {
            csrf,
            user,
            provider_name,
            error,
            min: MIN,
        },
    )
}

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

/// Checks a new password typed twice.
fn new_password(first: &str, second: &str) -> Result<SecretString, String> {
    if first != second {
        return Err("The two passwords differ. Type the same password twice.".into());
    }
    if first.chars().count() < MIN {
        return Err(format!("The password must have at least {MIN} characters."));
    }
    Ok(SecretString::from(first.to_owned()))
}

async fn password_save(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    let Some(h) = form_session(&app, &headers, &form.csrf) else {
        return csrf_refused();
    };
    let Some((user, provider, csrf)) = signed_in(&app, &h) else {
        return not_signed_in();
    };
    if !has_unsealed(&app, &h) {
        return message(
            StatusCode::BAD_REQUEST,
            "Sign in again",
            "This sign-in is no longer waiting for a password. Start again from the first page.",
        );
    }
    let password = match new_password(&form.password, &form.confirm) {
        Ok(p) => p,
        Err(e) => return password_page(&csrf, &user, &provider, StatusCode::BAD_REQUEST, Some(e)),
    };
    // Taken out, so that the same tokens are never sealed twice.
    let Some(Some(unsealed)) = app.sessions.with(&h, |s| {
        s.signed_in.as_mut().and_then(|si| si.unsealed.take())
    }) else {
        return not_signed_in();
    };
    let sealed = app
        .ctx
        .accounts
        .seal_grant(
            &user,
            &provider.name,
            unsealed.grant,
            &password,
            unsealed.replaces,
        )
        .await;
    match sealed {
        Ok(()) => {
            info!(user = %user, "portal: tokens stored, sealed with the password the owner chose");
            see_other("/settings?saved=1")
        }
        Err(FlowError::Store(StoreError::Changed { .. })) => message(
            StatusCode::CONFLICT,
            "Changed meanwhile",
            "This account was changed meanwhile (from another browser or on the gateway); nothing was stored. Start again from the first page.",
        ),
        Err(e) => {
            warn!(user = %user, error = %e, "portal: the tokens could not be stored");
            message(StatusCode::SERVICE_UNAVAILABLE, "Not stored", e.to_string())
        }
    }
}

#[derive(Deserialize)]
struct SavedQuery {
    #[serde(default)]
    saved: Option<String>,
}

async fn settings(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<SavedQuery>,
) -> Response {
    let Some(h) = app.sessions.find(&headers) else {
        return not_signed_in();
    };
    let Some((user, _, _)) = signed_in(&app, &h) else {
        return not_signed_in();
    };
    let rows = app.settings(&user);
    render(
        StatusCode::OK,
        &pages::Settings {
            user: &user,
            saved: q.saved.is_some(),
            listeners: &rows,
        },
    )
}

impl App {
    /// The host a mail program uses for a listener bound to `ip`.
    fn mail_host(&self, ip: IpAddr) -> String {
        if let Some(h) = self.config.public_url.as_ref().and_then(|u| u.host_str()) {
            return h.trim_matches(['[', ']']).to_owned();
        }
        if ip.is_loopback() {
            return ip.to_string();
        }
        if ip.is_unspecified() {
            return self.hostname.clone();
        }
        ip.to_string()
    }

    fn settings(&self, user: &str) -> Vec<Setting> {
        self.listeners
            .iter()
            .map(|l| {
                let (title, kind) = match l.protocol {
                    Protocol::Imap => ("Incoming mail (IMAP)", "IMAP"),
                    Protocol::Pop3 => ("Incoming mail (POP3)", "POP3"),
                    Protocol::Smtp => ("Outgoing mail (SMTP)", "SMTP"),
                };
                let encryption = match l.mode {
                    TlsMode::Implicit => "SSL/TLS",
                    TlsMode::Starttls => "STARTTLS",
                    TlsMode::None if l.bound.ip().is_loopback() => {
                        "None (the connection stays on this computer)"
                    }
                    TlsMode::None => "None",
                };
                let host = self.mail_host(l.bound.ip());
                let text = format!(
                    "{kind} server: {host}\nPort: {}\nEncryption: {encryption}\nUser name: {user}\nAuthentication: normal password",
                    l.bound.port()
                );
                Setting {
                    id: format!("{}-{}", l.protocol, l.bound.port()),
                    title: title.to_owned(),
                    host,
                    port: l.bound.port(),
                    encryption,
                    fingerprint: l.self_signed.clone(),
                    text,
                }
            })
            .collect()
    }
}

fn time(t: Option<u64>) -> String {
    match t {
        Some(s) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
                .to_string()
                .replace('T', " ")
                .replace('Z', " UTC")
        }
        None => "never".into(),
    }
}

fn account_page(
    app: &App,
    h: &Handle,
    status: StatusCode,
    message: Option<String>,
    error: Option<String>,
) -> Response {
    let Some((user, _, csrf)) = signed_in(app, h) else {
        return not_signed_in();
    };
    let file: Option<TokenFile> = app.ctx.accounts.store().load(&user).ok().flatten();
    let state = match &file {
        None => "No access stored: authorise again to set it up",
        Some(f) if f.needs_authorization => {
            "Needs authorisation: the provider ended the access; authorise again"
        }
        Some(_) => "Ready: your mail program can sign in",
    };
    let f = file.as_ref();
    render(
        status,
        &pages::Account {
            csrf: &csrf,
            user: &user,
            state,
            expires: time(f.and_then(|f| f.expires_at)),
            last_refresh: time(f.and_then(|f| f.last_refresh)),
            sealed_at: time(f.map(|f| f.sealed_at)),
            last_error: f
                .and_then(|f| f.last_error.clone())
                .unwrap_or_else(|| "none".into()),
            message,
            error,
            min: MIN,
        },
    )
}

async fn account(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(h) = app.sessions.find(&headers) else {
        return not_signed_in();
    };
    account_page(&app, &h, StatusCode::OK, None, None)
}

#[derive(Deserialize)]
struct ChangeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    old: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    confirm: String,
}

async fn change_password(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<ChangeForm>,
) -> Response {
    let Some(h) = form_session(&app, &headers, &form.csrf) else {
        return csrf_refused();
    };
    let Some((user, _, _)) = signed_in(&app, &h) else {
        return not_signed_in();
    };
    let new = match new_password(&form.new, &form.confirm) {
        Ok(p) => p,
        Err(e) => return account_page(&app, &h, StatusCode::BAD_REQUEST, None, Some(e)),
    };
    let old = SecretString::from(form.old);
    let done = app
        .ctx
        .accounts
        .change_password(&user, &old, &new, peer.ip())
        .await;
    let (status, error) = match done {
        Ok(()) => {
            info!(user = %user, "portal: local password changed");
            return account_page(
                &app,
                &h,
                StatusCode::OK,
                Some("Your password is changed. Use the new one in your mail programs.".into()),
                None,
            );
        }
        Err(PasswordError::WrongPassword) => {
            info!(user = %user, "portal: password change with a wrong current password");
            (
                StatusCode::FORBIDDEN,
                "The current password is wrong; nothing was changed.".to_owned(),
            )
        }
        Err(PasswordError::Refused(crate::accounts::LoginError::BadCredentials)) => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many wrong passwords. Wait a minute, then try again.".to_owned(),
        ),
        Err(PasswordError::Refused(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The gateway is busy. Try again in a moment.".to_owned(),
        ),
        Err(PasswordError::NoTokens(_)) => (
            StatusCode::CONFLICT,
            "No access is stored for this account: authorise again instead.".to_owned(),
        ),
        Err(PasswordError::TooShort) => (
            StatusCode::BAD_REQUEST,
            format!("The password must have at least {MIN} characters."),
        ),
        Err(PasswordError::Store(e)) => {
            warn!(user = %user, error = %e, "portal: password change failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "The password could not be changed now; nothing was changed. Reload the page and try again.".to_owned(),
            )
        }
    };
    account_page(&app, &h, status, None, Some(error))
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn authorize_again(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(h) = form_session(&app, &headers, &form.csrf) else {
        return csrf_refused();
    };
    let Some((user, provider, _)) = signed_in(&app, &h) else {
        return not_signed_in();
    };
    start_sign_in(&app, &h, user, provider, true)
}

async fn forget(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(h) = form_session(&app, &headers, &form.csrf) else {
        return csrf_refused();
    };
    let Some((user, _, _)) = signed_in(&app, &h) else {
        return not_signed_in();
    };
    if let Err(e) = app.ctx.accounts.store().remove(&user) {
        warn!(user = %user, error = %e, "portal: forgetting the account failed");
        return account_page(
            &app,
            &h,
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            Some("The account could not be forgotten now. Try again.".into()),
        );
    }
    info!(user = %user, "portal: the owner forgot the account's tokens");
    app.sessions.end(&h);
    let mut r = message(
        StatusCode::OK,
        "Account forgotten",
        format!(
            "mailgate no longer holds access for {user}. Mail programs cannot sign in until you set it up again from the first page."
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&app.sessions.clear_cookie()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn sign_out(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(h) = form_session(&app, &headers, &form.csrf) else {
        return csrf_refused();
    };
    app.sessions.end(&h);
    let mut r = see_other("/");
    if let Ok(v) = HeaderValue::from_str(&app.sessions.clear_cookie()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_passwords_are_typed_twice_and_long_enough() {
        assert!(new_password("abcdefgh", "abcdefgh").is_ok());
        assert!(new_password("abcdefgh", "abcdefgx").is_err());
        assert!(new_password("short", "short").is_err());
    }

    #[test]
    fn host_port_brackets_ipv6() {
        let u = url::Url::parse("http://[::1]:3017/").expect("url");
        assert_eq!(host_port(&u), "[::1]:3017");
    }
}
