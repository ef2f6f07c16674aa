//! The portal's connections: accepted within the limits (in all, per
//! address), the PROXY header read where configured, TLS where configured,
//! and HTTP/1.1 served by hyper with each request and each connection
//! bounded in time.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::app::App;
use super::limits;
use crate::net::tls::ListenerTls;

/// Connections the portal serves at once.
const MAX_CONNECTIONS: usize = 256;
/// Connections one client address may hold (a trusted reverse proxy, which
/// carries many clients, is held only to the total).
const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;
/// Time a browser has to send its request headers (and the TLS handshake).
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a whole request may take, body included (a form is a few hundred
/// bytes; a body that trickles in holds nothing longer than this).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection is kept: after it, the connection is closed once
/// its request under way (if any) is answered, so that an idle keep-alive
/// connection holds no place.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The connection limits of the portal's listeners (shared by its IPv4
/// and IPv6 sockets).
pub(super) type Limits = (Arc<tokio::sync::Semaphore>, limits::PerAddress);

pub(super) fn limits() -> Limits {
    (
        Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        limits::PerAddress::new(MAX_CONNECTIONS_PER_ADDRESS),
    )
}

/// Accepts connections (at most [`MAX_CONNECTIONS`] at once, and
/// [`MAX_CONNECTIONS_PER_ADDRESS`] from one address) and serves HTTP/1.1 on
/// each, over TLS when configured: each request within
/// [`REQUEST_TIMEOUT`], each connection for [`CONNECTION_LIFETIME`].
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ListenerTls>>,
    router: Router,
    app: Arc<App>,
    (permits, per_address): Limits,
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
